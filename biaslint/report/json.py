"""``--format json``: a versioned, documented schema (see README, "JSON output").

Top level: ``{"schema_version": 1, "tool": {...}, "results": [TargetResult...]}``; each result
has ``target``, ``findings``, ``coverage``, ``notes``, ``error`` and ``groups`` (findings of one
rule with one cause: the count, the cause, one fix, and the indices of the members).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from biaslint.findings import TargetResult
from biaslint.report.groups import groups_of, short_layers
from biaslint.version import __version__

SCHEMA_VERSION = 1


def render(results: Sequence[TargetResult]) -> str:
    payload = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "biaslint", "version": __version__},
        "results": [{**r.as_dict(), "groups": groups(r)} for r in results],
    }
    return json.dumps(payload, indent=2, sort_keys=False)


def groups(result: TargetResult) -> list[dict[str, Any]]:
    """The groups of more than one finding with one cause (``report.groups``); ``members``
    index the result's ``findings``, which keep every member."""
    position = {id(f): i for i, f in enumerate(result.findings)}
    listed = []
    for group in groups_of(result.findings):
        if group.single:
            continue
        cause = group.first.cause
        listed.append({
            "code": group.code,
            "severity": str(group.severity),
            "count": len(group.members),
            "cause": cause.as_dict() if cause is not None else None,
            "location": group.location.as_dict() if group.location else None,
            "layers": short_layers(group.layers),
            "fix": group.fix_text() or None,
            "members": [position[id(f)] for f in group.members],
        })
    return listed
