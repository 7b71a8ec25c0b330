"""Class priors for BL005: parse ``--class-priors`` into a normalized probability vector.

Accepted forms (probabilities or counts; both are normalized to sum to 1):

* ``"0.9,0.09,0.01"`` or ``"900,90,10"``: one value per class, in class-index order.
* ``"@path.json"``: a JSON list of numbers, or an object ``{label: count}``. Object keys that are
  all integers are class indices; otherwise classes keep the order the object is written in.
* ``"@path.csv"`` / ``"@path.txt"`` (any other extension is read as text):
  - one row of comma-separated numbers: the counts or probabilities;
  - ``label,count`` rows (two columns): counts per label, in the order written;
  - one value per line: counts, unless it is a list of *labels* (one per training example). A
    column is read as labels when it holds non-numbers, or integers with repeats (a labels file
    has more lines than classes; a counts file rarely repeats a count). Integer labels are class
    indices (0..K-1, absent classes count 0); text labels are sorted, like
    ``torchvision.datasets.ImageFolder`` sorts its class folders.
* ``"@path.npy"``: a 1-D array of counts or probabilities, or of integer labels (read as labels
  by the same rule as above).

No torch import: this runs while the command line is parsed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any, Sequence

from biaslint.errors import PriorsError


def parse_priors(text: str) -> tuple[float, ...]:
    """Parse ``--class-priors`` text into probabilities summing to 1 (raises ``PriorsError``)."""
    text = text.strip()
    if not text:
        raise PriorsError("--class-priors is empty: give probabilities like 0.9,0.1 or @file")
    if text.startswith("@"):
        path = text[1:].strip()
        values = _read_file(path)
        source = f"--class-priors @{path}"
    else:
        values = [_number(token, "--class-priors") for token in _tokens(text)]
        source = "--class-priors"
    return normalize(values, source)


class Priors(tuple):
    """Normalized priors (a plain tuple of floats) that remember the values as given.

    ``raw`` matters for multi-label sigmoid heads, whose priors are per-label positive rates
    that need not sum to 1.
    """

    raw: tuple[float, ...]

    def __new__(cls, normalized: Sequence[float], raw: Sequence[float]) -> "Priors":
        self = super().__new__(cls, normalized)
        self.raw = tuple(float(v) for v in raw)
        return self

    def __reduce__(self) -> tuple[type, tuple[tuple[float, ...], tuple[float, ...]]]:
        # Sent to worker processes (-j, --timeout): both the values and the raw rates.
        return (type(self), (tuple(self), self.raw))


def normalize(values: Sequence[float], source: str = "class priors") -> tuple[float, ...]:
    """Check counts/probabilities and scale them to sum to 1 (a ``Priors`` tuple)."""
    if len(values) == 0:
        raise PriorsError(f"{source}: no values found; give one probability or count per class")
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise PriorsError(f"{source}: value {i} is {v}; priors must be finite numbers")
        if v < 0:
            raise PriorsError(f"{source}: value {i} is negative ({v:g}); priors must be >= 0")
    total = float(sum(values))
    if total <= 0:
        raise PriorsError(f"{source}: all values are zero; at least one class needs a prior > 0")
    return Priors([float(v) / total for v in values], values)


def _tokens(text: str) -> list[str]:
    return [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]


def _number(token: str, source: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise PriorsError(f"{source}: {token!r} is not a number; give probabilities or "
                          "counts like 0.9,0.1, or @file") from None


def _read_file(path: str) -> list[float]:
    if not path:
        raise PriorsError("--class-priors @: no file name after '@'")
    if not os.path.isfile(path):
        raise PriorsError(f"--class-priors @{path}: no such file")
    source = f"--class-priors @{path}"
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            return _from_npy(path, source)
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except PriorsError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PriorsError(f"{source}: cannot read it ({type(exc).__name__}: {exc})") from None
    if ext == ".json":
        return _from_json(content, source)
    return _from_text(content, source)


def _from_json(content: str, source: str) -> list[float]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise PriorsError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, list):
        if data and all(isinstance(v, str) for v in data):
            return _label_counts(data)
        if not all(_is_number(v) for v in data):
            raise PriorsError(f"{source}: the JSON list must hold numbers (counts or "
                              "probabilities) or labels")
        return [float(v) for v in data]
    if isinstance(data, dict):
        if not all(_is_number(v) for v in data.values()):
            raise PriorsError(f"{source}: the JSON object must map labels to counts")
        keys = list(data)
        if keys and all(_is_int_text(k) for k in keys):
            indexed = {int(k): float(v) for k, v in data.items()}
            if min(indexed) < 0:
                raise PriorsError(f"{source}: class index {min(indexed)} is negative")
            return [indexed.get(i, 0.0) for i in range(max(indexed) + 1)]
        return [float(v) for v in data.values()]
    raise PriorsError(f"{source}: expected a JSON list of numbers or an object "
                      "{label: count}")


def _from_text(content: str, source: str) -> list[float]:
    rows = [[c.strip() for c in line.split(",")] for line in content.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise PriorsError(f"{source}: the file is empty")
    if len(rows) == 1:
        return [_number(c, source) for c in rows[0] if c]
    widths = {len(r) for r in rows}
    if widths == {2}:
        start = 0 if _is_float_text(rows[0][1]) else 1  # skip a header row like "label,count"
        return [_number(r[1], source) for r in rows[start:]]
    if widths != {1}:
        raise PriorsError(f"{source}: expected one row of values, one value per line, or "
                          "label,count rows")
    column = [r[0] for r in rows]
    return _column(column, source)


def _column(column: Sequence[Any], source: str) -> list[float]:
    if all(_is_float_text(str(v)) for v in column):
        numbers = [float(v) for v in column]
        integers = all(n.is_integer() for n in numbers)
        if integers and len(set(numbers)) < len(numbers):
            return _label_counts([int(n) for n in numbers])
        return numbers
    return _label_counts([str(v) for v in column])


def _label_counts(labels: Sequence[Any]) -> list[float]:
    counts = Counter(labels)
    if all(isinstance(k, int) for k in counts):
        if min(counts) < 0:
            raise PriorsError(f"class labels must be indices >= 0, found {min(counts)}")
        return [float(counts.get(i, 0)) for i in range(max(counts) + 1)]
    return [float(counts[k]) for k in sorted(counts, key=str)]


def _from_npy(path: str, source: str) -> list[float]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch
        raise PriorsError(f"{source}: reading .npy needs numpy") from None
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # any unreadable file is the user's to fix
        raise PriorsError(f"{source}: cannot read it as .npy ({type(exc).__name__})") from None
    array = np.asarray(array).reshape(-1) if array.ndim <= 1 or array.size == max(array.shape) \
        else None
    if array is None:
        raise PriorsError(f"{source}: expected a 1-D array of counts, probabilities or labels")
    if array.dtype.kind in "iub":
        return _column([int(v) for v in array.tolist()], source)
    if array.dtype.kind == "f":
        return [float(v) for v in array.tolist()]
    if array.dtype.kind in "US":
        return _label_counts([str(v) for v in array.tolist()])
    raise PriorsError(f"{source}: unsupported array dtype {array.dtype}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
