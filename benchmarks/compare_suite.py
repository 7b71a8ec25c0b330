"""Compare the findings two runs of the test suite made (``BIASLINT_SUITE_LOG=FILE pytest``).

Each line of a log is one lint result: the test that made it, the target, and its findings
(rule, layer, parameter, severity, message). The logs are compared per test as multisets of
findings; every difference is printed and the exit code is 1 if there is any. ``--codes``
compares only the findings of those rules (a rule added in between finds things the earlier
commit could not); tests that exist on one side only are counted and listed apart.

    python benchmarks/compare_suite.py BEFORE.jsonl AFTER.jsonl [--codes BL001,BL002]
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict


def _load(path: str, codes: set[str] | None = None) -> dict[str, Counter[str]]:
    per_test: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            key = row["test"]
            per_test[key][json.dumps(["result", row["target"], row["incomplete"] > 0,
                                      row["error"]])] += 1
            for finding in row["findings"]:
                if codes is None or finding[0] in codes:
                    per_test[key][json.dumps(finding)] += 1
    return per_test


def main(argv: list[str]) -> int:
    codes = None
    if "--codes" in argv:
        at = argv.index("--codes")
        codes = {c.strip() for c in argv[at + 1].split(",")}
        argv = argv[:at] + argv[at + 2:]
    before, after = _load(argv[0], codes), _load(argv[1], codes)
    differences = 0
    for side, only in (("before", set(before) - set(after)), ("after", set(after) - set(before))):
        shown = sorted(only)[:10]
        more = f" and {len(only) - 10} more" if len(only) > 10 else ""
        print(f"{len(only)} test(s) with lints only {side}"
              + (f": {', '.join(shown)}{more}" if only else ""))
    for test in sorted(set(before) & set(after)):
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
