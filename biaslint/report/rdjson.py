"""``--format rdjson``: reviewdog's Diagnostic Format as one JSON document (its
``DiagnosticResult``: ``source``, ``severity`` and ``diagnostics``, each with ``message``,
``location.path`` and ``location.range``, ``severity``, ``source``, ``code`` and
``suggestions``), for ``reviewdog -f=rdjson``.

Positions follow the format: lines from 1, columns from 1 in UTF-8 bytes (a layer's recorded
column already counts bytes; a fix's edit counts characters and is converted on its line). A
fix's edits become suggestions when they all lie in the file the diagnostic points at
(reviewdog applies a suggestion there). A target that could not be linted is one ERROR
diagnostic filed under what the target names.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from biaslint.findings import Severity, TargetResult
from biaslint.report.groups import Group, groups_of, short_layers
from biaslint.report.paths import place, place_at, relative
from biaslint.sources import line_of

SEVERITY = {Severity.ERROR: "ERROR", Severity.WARNING: "WARNING", Severity.INFO: "INFO"}
SOURCE = {"name": "biaslint"}


def render(results: Sequence[TargetResult]) -> str:
    diagnostics = []
    for result in results:
        if result.error:
            path, line = place(result.target)
            diagnostics.append({"message": f"{result.target}: not linted: {result.error}",
                                "location": {"path": path, "range": {"start": {"line": line}}},
                                "severity": "ERROR", "source": SOURCE})
        diagnostics.extend(_entry(result.target, g) for g in groups_of(result.findings))
    payload: dict[str, Any] = {"source": SOURCE}
    severities = [f.severity for r in results for f in r.findings] + \
        [Severity.ERROR for r in results if r.error]
    if severities:
        payload["severity"] = SEVERITY[max(severities)]
    payload["diagnostics"] = diagnostics
    return json.dumps(payload, indent=2)


def _entry(target: str, group: Group) -> dict[str, Any]:
    """One diagnostic per finding, or per group of findings with one cause
    (``report.groups``), at the cause's place."""
    finding = group.first
    loc = group.location
    path, line = place_at(target, loc)
    start = {"line": line}
    if loc is not None and loc.col:
        start["column"] = loc.col
    layers = f"{finding.module or '<root>'}" if group.single else \
        f"{len(group.members)} {group.noun}: {short_layers(group.layers)}"
    message = f"{group.headline()} ({target}: {layers}, {finding.module_type})"
    fix = group.fix_text()
    if fix:
        message += f"\nfix: {fix}"
    diagnostic: dict[str, Any] = {
        "message": message,
        "location": {"path": path, "range": {"start": start}},
        "severity": SEVERITY[group.severity],
        "source": SOURCE,
        "code": {"value": finding.code},
    }
    edits = list(dict.fromkeys(e for f in group.members if f.fix is not None
                               for e in f.fix.edits))
    if edits and all(relative(e.file) == path for e in edits):
        diagnostic["suggestions"] = [{"range": {"start": _position(e.file, e.line, e.col),
                                                "end": _position(e.file, e.end_line, e.end_col)},
                                      "text": e.content} for e in edits]
    return diagnostic


def _position(file: str, line: int, col: int) -> dict[str, int]:
    """An edit's 1-based character column as reviewdog's 1-based UTF-8 byte column (the same
    where the line cannot be read or is ASCII)."""
    text = line_of(file, line)
    return {"line": line, "column": len(text[:col - 1].encode("utf-8")) + 1 if text else col}

