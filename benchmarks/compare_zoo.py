"""Compare two zoo sweeps (``zoo.py --out A --findings A/findings.md`` and the same into B).

Findings are compared line by line (rule, model, module, parameter, full message and data);
per model, the ``zoo.csv`` columns that describe what was found (coverage, untraced, opaque,
notes, errors) are compared too. Prints every difference and exits 1 if there is any.

    python benchmarks/compare_zoo.py BEFORE_DIR AFTER_DIR
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter

COLUMNS = ("layers", "traced", "coverage", "not_called", "findings", "untraced", "opaque", "notes",
           "error")


def _rows(folder: str) -> dict[tuple[str, str], dict[str, str]]:
    with open(os.path.join(folder, "zoo.csv"), encoding="utf-8") as handle:
        return {(r["family"], r["model"]): r for r in csv.DictReader(handle)}


def _findings(folder: str) -> Counter[str]:
    path = os.path.join(folder, "findings.md")
    with open(path, encoding="utf-8") as handle:
        return Counter(line.rstrip("\n") for line in handle if line.startswith("- **"))


def main(argv: list[str]) -> int:
    before, after = argv
    differences = 0
    old, new = _findings(before), _findings(after)
    for line in sorted((old - new).elements()):
        print(f"only before: {line}")
        differences += 1
    for line in sorted((new - old).elements()):
        print(f"only after:  {line}")
        differences += 1
    rows_before, rows_after = _rows(before), _rows(after)
    for key in sorted(set(rows_before) | set(rows_after)):
        a, b = rows_before.get(key), rows_after.get(key)
        if a is None or b is None:
            print(f"{key[0]}:{key[1]}: only {'after' if a is None else 'before'}")
            differences += 1
            continue
        for column in COLUMNS:
            if a.get(column, "") != b.get(column, ""):
                print(f"{key[0]}:{key[1]} {column}: {a.get(column)!r} -> {b.get(column)!r}")
                differences += 1
    print(f"{sum(old.values())} findings before, {sum(new.values())} after; "
          f"{len(rows_before)} models before, {len(rows_after)} after; {differences} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
