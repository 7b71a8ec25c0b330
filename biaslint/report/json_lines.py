"""``--format json-lines``: one JSON object per line (JSON Lines), for streaming: on stdout
each target's lines go out as soon as that target is done.

Two kinds of record, each with ``"type"``:

* ``"finding"``: one per finding, the ``--format json`` finding object plus ``target``;
* ``"target"``: one per target, after its findings: ``target``, ``findings`` (the count),
  ``error`` (null, or why it was not linted), ``coverage``, ``incomplete``, ``rules`` and
  ``notes`` and ``groups`` (findings with one cause) as in ``--format json``.

A target's lines do not depend on the other targets, so shards' files concatenate.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from biaslint.findings import Finding, TargetResult
from biaslint.report.json import groups


def render(results: Sequence[TargetResult]) -> str:
    lines: list[str] = []
    for result in results:
        lines.extend(json.dumps(_entry(result.target, f)) for f in result.findings)
        lines.append(json.dumps(_target(result)))
    return "".join(line + "\n" for line in lines)


def _entry(target: str, finding: Finding) -> dict[str, Any]:
    return {"type": "finding", "target": target, **finding.as_dict()}


def _target(result: TargetResult) -> dict[str, Any]:
    full = result.as_dict()
    return {"type": "target", "target": result.target, "findings": len(result.findings),
            "error": result.error, "coverage": full["coverage"], "incomplete": full["incomplete"],
            "rules": full["rules"], "notes": full["notes"], "groups": groups(result)}
