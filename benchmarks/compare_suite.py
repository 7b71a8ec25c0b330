"""Compare the findings two runs of the test suite made (``BIASLINT_SUITE_LOG=FILE pytest``).

Each line of a log is one lint result: the test that made it, the target, and its findings
(rule, layer, parameter, severity, message). The logs are compared per test as multisets of
findings; every difference is printed and the exit code is 1 if there is any.

    python benchmarks/compare_suite.py BEFORE.jsonl AFTER.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict


def _load(path: str) -> dict[str, Counter[str]]:
    per_test: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            key = row["test"]
            per_test[key][json.dumps(["result", row["target"], row["incomplete"] > 0,
                                      row["error"]])] += 1
            for finding in row["findings"]:
                per_test[key][json.dumps(finding)] += 1
    return per_test


def main(argv: list[str]) -> int:
    before, after = _load(argv[0]), _load(argv[1])
    differences = 0
    for test in sorted(set(before) | set(after)):
        old, new = before.get(test, Counter()), after.get(test, Counter())
        for item in sorted((old - new).elements()):
            print(f"{test}: only before: {item}")
            differences += 1
        for item in sorted((new - old).elements()):
            print(f"{test}: only after:  {item}")
            differences += 1
    findings = sum(count for per in before.values() for key, count in per.items()
                   if not key.startswith('["result"'))
    print(f"{len(before)} tests with lints before, {len(after)} after; "
          f"{findings} findings before; {differences} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
