"""``--format gitlab``: GitLab's Code Quality report (a JSON array of issues; GitLab's "Code
Quality report format": ``description``, ``check_name``, ``fingerprint``, ``severity``,
``location.path``, ``location.lines.begin``), for ``artifacts: reports: codequality``.

Findings of one rule with one cause are one issue (``report.groups``), at the cause's place.
The fingerprint is the baseline's for a single finding (target, code, layer, parameter; no
line, no message), the cause's without lines for a group, so
GitLab tracks a finding across edits; GitLab keeps one issue per fingerprint, so a second
finding with the same one gets its own, derived from the first and its rank. A target that
could not be linted is one issue (``check_name`` ``biaslint/target-error``) filed under what
the target names.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from biaslint.findings import Severity, TargetResult
from biaslint.report.groups import Group, groups_of, short_layers
from biaslint.report.paths import place, place_at
from biaslint.report.sarif import group_fingerprint

# GitLab's scale is info, minor, major, critical, blocker. Our error (a mistake that costs the
# training) is major; a target biaslint could not lint at all is critical (nothing was
# checked); blocker is left to what stops a merge by policy, which is the user's call.
SEVERITY = {Severity.INFO: "info", Severity.WARNING: "minor", Severity.ERROR: "major"}
TARGET_ERROR = "biaslint/target-error"


def render(results: Sequence[TargetResult]) -> str:
    issues = []
    for result in results:
        if result.error:
            issues.append(_error(result))
        issues.extend(_entry(result.target, group) for group in groups_of(result.findings))
    return json.dumps(_unique(issues), indent=2)


def _entry(target: str, group: Group) -> dict[str, Any]:
    """One issue per finding, or per group of findings with one cause (``report.groups``)."""
    loc = group.location
    path, line = place_at(target, loc)
    lines = {"begin": line}
    if loc is not None and loc.end_line and loc.end_line > loc.line:
        lines["end"] = loc.end_line
    description = f"{group.code} {group.headline()}"
    if not group.single:
        description += (f". {group.noun.capitalize()} ({len(group.members)}): "
                        f"{short_layers(group.layers)}")
    fix = group.fix_text()
    if fix:
        description += f". Fix: {fix}"
    return {"description": description, "check_name": group.code,
            "fingerprint": group_fingerprint(target, group), "severity": SEVERITY[group.severity],
            "location": {"path": path, "lines": lines}}


def _error(result: TargetResult) -> dict[str, Any]:
    path, line = place(result.target)
    digest = hashlib.sha256(f"{TARGET_ERROR}\0{result.target}".encode()).hexdigest()[:32]
    return {"description": f"{result.target}: not linted: {result.error}",
            "check_name": TARGET_ERROR, "fingerprint": digest, "severity": "critical",
            "location": {"path": path, "lines": {"begin": line}}}


def _unique(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The n-th repeat of a fingerprint gets one of its own (its rank among the repeats, in
    report order, which is stable from run to run)."""
    seen: dict[str, int] = {}
    for issue in issues:
        base = issue["fingerprint"]
        rank = seen.get(base, 0)
        seen[base] = rank + 1
        if rank:
            issue["fingerprint"] = hashlib.sha256(f"{base}\0{rank}".encode()).hexdigest()[:32]
    return issues
