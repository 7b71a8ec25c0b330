"""Parse target strings and input shapes. No torch import: the CLI validates these cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from biaslint.errors import InputShapeError, TargetError


@dataclass(frozen=True)
class TargetSpec:
    """``pkg.module:attr`` or ``path/to/file.py:attr`` split into its parts."""

    text: str
    module: str  # dotted module name or a path to a .py file
    attr: str

    @property
    def is_path(self) -> bool:
        return self.module.endswith(".py") or "/" in self.module or "\\" in self.module


# Files a model is saved to (checkpoints, pickles, exports): not code, so not a target.
SAVED_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".safetensors", ".bin", ".onnx",
                  ".h5", ".joblib")


def parse_target(text: str) -> TargetSpec:
    if _saved_file(text):
        raise TargetError(
            f"{text}: biaslint lints the code that builds a model, not a saved file: point it "
            "at the function or class that builds it (e.g. mymodel.py:build)")
    if ":" not in text:
        raise TargetError(
            f"target {text!r} has no ':attr': write MODULE:ATTR or FILE.py:ATTR, "
            f"e.g. {text}:build"
        )
    # rsplit keeps Windows drive letters (C:\\x.py:build) in the module part.
    module, attr = text.rsplit(":", 1)
    if not module or not attr:
        raise TargetError(f"target {text!r} is incomplete: write MODULE:ATTR or FILE.py:ATTR")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise TargetError(f"target {text!r}: {attr!r} is not a Python attribute name")
    return TargetSpec(text=text, module=module, attr=attr)


def _saved_file(text: str) -> bool:
    """Whether ``text`` (``model.pt``, ``ckpt/last.ckpt:model``) names a saved model file. Its
    module part may also be a dotted module whose last part is such a suffix (``tools.bin``):
    that one counts as a file only when it is not importable (its package is not found)."""
    import os

    module, _, attr = text.rpartition(":")
    if not module or not all(part.isidentifier() for part in attr.split(".")):
        module = text  # no ':attr' (the colon of a Windows drive letter, or none)
    if not module.lower().endswith(SAVED_SUFFIXES):
        return False
    if "/" in module or "\\" in module or os.path.isfile(module):
        return True
    first = module.split(".", 1)[0]
    if not first.isidentifier():
        return True
    if os.path.isdir(first) or os.path.isfile(f"{first}.py"):  # a package of the project
        return False
    import importlib.util

    try:
        return importlib.util.find_spec(first) is None  # a top-level name: nothing imported
    except (ImportError, ValueError):
        return True


class IntShape(tuple):
    """The shape of an integer input (token ids), drawn uniformly from ``[0, high)``; ``high``
    None means: the smallest vocabulary among the model's embeddings."""

    high: int | None

    def __new__(cls, dims: tuple[int, ...], high: int | None = None) -> "IntShape":
        shape = super().__new__(cls, dims)
        shape.high = high
        return shape

    def __reduce__(self) -> Any:  # worker processes receive it whole
        return (IntShape, (tuple(self), self.high))


def parse_shape(text: str) -> tuple[int, ...]:
    """``2,3,224,224`` (or ``2x3x224x224``) to a tuple of positive ints; ``2,16:int`` (or
    ``2,16:int<512``) to an ``IntShape``: integer inputs such as token ids."""
    text, _, kind = text.partition(":")
    high: int | None = None
    if kind:
        name, _, bound = kind.replace(" ", "").partition("<")
        try:
            high = int(bound) if bound else None
        except ValueError:
            name = "?"
        if name != "int" or (high is not None and high <= 0):
            raise InputShapeError(
                f"--input-shape {text}:{kind}: after ':' give 'int' (ids below the smallest "
                "embedding's vocabulary) or 'int<N' (ids in [0, N)), e.g. 2,16:int<512")
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:  # also an empty part: "2,,3" or ""
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise InputShapeError(
            f"--input-shape {text!r} is not a shape: give positive integers separated by "
            "commas, e.g. --input-shape 2,3,224,224 (2,16:int for token ids)"
        )
    return IntShape(dims, high) if kind else dims
