"""Baselines: accept today's findings, fail only on new ones.

A finding's fingerprint is (target, code, module qualified name, parameter). Line numbers and
messages are left out on purpose: an unrelated edit above a layer moves its line, and messages
carry measured numbers that may change with the seed; neither makes it a new finding. Two findings
with one fingerprint are counted, so a second one is still new.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from biaslint.errors import ConfigError
from biaslint.findings import Finding, TargetResult
from biaslint.version import __version__

BASELINE_VERSION = 1
Fingerprint = tuple[str, str, str, str]


def fingerprint(target: str, finding: Finding) -> Fingerprint:
    return (target, finding.code, finding.module, finding.parameter)


def write_baseline(path: str, results: Sequence[TargetResult]) -> int:
    """Write every finding of the targets that ran; returns how many."""
    entries = [
        {"target": r.target, "code": f.code, "module": f.module, "parameter": f.parameter,
         "message": f.message}  # the message is for readers of the file, not for matching
        for r in results if r.error is None for f in r.findings
    ]
    entries.sort(key=lambda e: (e["target"], e["code"], e["module"], e["parameter"]))
    payload = {"version": BASELINE_VERSION, "tool": {"name": "biaslint", "version": __version__},
               "findings": entries}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return len(entries)


def read_baseline(path: str) -> Counter[Fingerprint]:
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--baseline {path}: no such file (create it with --write-baseline "
                          f"{path})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--baseline {path}: not a biaslint baseline: {exc}") from None
    if not isinstance(payload, dict) or payload.get("version") != BASELINE_VERSION \
            or not isinstance(payload.get("findings"), list):
        raise ConfigError(f"--baseline {path}: not a version {BASELINE_VERSION} biaslint baseline "
                          f"(write a new one with --write-baseline {path})")
    counts: Counter[Fingerprint] = Counter()
    for entry in payload["findings"]:
        try:
            counts[(str(entry["target"]), str(entry["code"]), str(entry["module"]),
                    str(entry.get("parameter", "")))] += 1
        except (KeyError, TypeError):
            raise ConfigError(f"--baseline {path}: malformed entry {entry!r}") from None
    return counts


@dataclass(frozen=True)
class BaselineOutcome:
    results: tuple[TargetResult, ...]  # with the baselined findings removed
    known: int  # findings that matched the baseline and are not reported
    fixed: int  # baseline entries of the targets that ran that no longer occur


def apply_baseline(results: Sequence[TargetResult], baseline: Counter[Fingerprint]
                   ) -> BaselineOutcome:
    """Keep only findings not in the baseline; count the baselined and the disappeared ones."""
    remaining = Counter(baseline)
    kept_results = []
    known = 0
    for result in results:
        kept = []
        for finding in result.findings:
            key = fingerprint(result.target, finding)
            if remaining[key] > 0:
                remaining[key] -= 1
                known += 1
            else:
                kept.append(finding)
        note = _note(len(result.findings) - len(kept),
                     _fixed_for(result, remaining) if result.error is None else 0)
        notes = result.notes + ((note,) if note else ())
        kept_results.append(replace(result, findings=tuple(kept), notes=notes))
    ran = {r.target for r in results if r.error is None}
    fixed = sum(n for key, n in remaining.items() if key[0] in ran and n > 0)
    return BaselineOutcome(tuple(kept_results), known, fixed)


def _fixed_for(result: TargetResult, remaining: Counter[Fingerprint]) -> int:
    return sum(n for key, n in remaining.items() if key[0] == result.target and n > 0)


def _note(known: int, fixed: int) -> str:
    parts = []
    if known:
        parts.append(f"{known} finding{'s' if known != 1 else ''} in the baseline not shown")
    if fixed:
        parts.append(f"{fixed} baseline finding{'s' if fixed != 1 else ''} no longer found: "
                     "refresh the baseline with --write-baseline")
    return "; ".join(parts)
