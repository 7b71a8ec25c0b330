"""``--format sarif``: SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

One run; ``tool.driver.rules`` lists every registered rule with its help text (the same Markdown
as its page), and each result carries ``ruleId``, ``ruleIndex``, ``level``, a message, the
physical location of the layer's construction site, the module as a logical location and a
line-independent ``partialFingerprints`` entry (the baseline's fingerprint), so code scanning
tracks a finding across edits. Target errors become ``toolExecutionNotifications``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePath
from typing import Any, Sequence
from urllib.parse import quote

from biaslint.findings import Finding, Severity, TargetResult
from biaslint.version import __version__

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def render(results: Sequence[TargetResult]) -> str:
    return json.dumps(sarif_log(results), indent=2)


def sarif_log(results: Sequence[TargetResult]) -> dict[str, Any]:
    from biaslint.rules import all_rules
    from biaslint.rules.pages import rule_page

    rules = all_rules()
    index = {rule.code: i for i, rule in enumerate(rules)}
    driver = {
        "name": "biaslint",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": [
            {
                "id": rule.code,
                "name": rule.name,
                "shortDescription": {"text": rule.summary},
                "fullDescription": {"text": " ".join(rule.what_it_does.split())},
                "help": {"text": rule.summary + ". Fix: " + " ".join(rule.fix_text.split()),
                         "markdown": rule_page(rule)},
                "defaultConfiguration": {"level": _LEVEL[rule.severity]},
                "properties": {"tags": ["pytorch", "initialization"]},
            }
            for rule in rules
        ],
    }
    errors = [r for r in results if r.error]
    run: dict[str, Any] = {
        "tool": {"driver": driver},
        "invocations": [{
            "executionSuccessful": not errors,
            "toolExecutionNotifications": [
                {"level": "error", "message": {"text": f"{r.target}: {r.error}"}} for r in errors
            ] + [
                # What a rule could not judge: a pass that did not look is not a pass.
                {"level": "warning", "associatedRule": {"id": scope.code},
                 "message": {"text": f"{r.target}: {scope.code} judged {scope.judged} of "
                             f"{scope.total} layers; not judged: "
                             + "; ".join(f"{layer or '<root>'} ({reason})"
                                         for layer, reason in scope.unjudged[:20])}}
                for r in results for scope in r.rules if scope.unjudged
            ],
            "properties": {"targets": {r.target: {
                "incomplete": list(r.incomplete),
                "rules": {scope.code: scope.as_dict() for scope in r.rules}}
                for r in results}},
        }],
        "results": [_result(r.target, f, index) for r in results for f in r.findings],
        "columnKind": "unicodeCodePoints",
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def _result(target: str, finding: Finding, index: dict[str, int]) -> dict[str, Any]:
    text = finding.message
    if finding.fix is not None:
        text += ". Fix: " + finding.fix.title + (f": {finding.fix.code}" if finding.fix.code
                                                   else "")
    result: dict[str, Any] = {
        "ruleId": finding.code,
        "level": _LEVEL[finding.severity],
        "message": {"text": text},
        "partialFingerprints": {"biaslintFingerprint/v1": fingerprint(target, finding)},
        "properties": {"target": target, "module": finding.module,
                       "moduleType": finding.module_type, "parameter": finding.parameter},
    }
    if finding.code in index:
        result["ruleIndex"] = index[finding.code]
    location: dict[str, Any] = {"logicalLocations": [
        {"fullyQualifiedName": finding.module or "<root>", "kind": "module"}]}
    loc = finding.location
    if loc is not None:
        region: dict[str, Any] = {"startLine": loc.line}
        if loc.col:
            region["startColumn"] = loc.col
        if loc.end_line and loc.end_line > loc.line:
            region["endLine"] = loc.end_line
        location["physicalLocation"] = {"artifactLocation": {"uri": _uri(loc.file)},
                                        "region": region}
    result["locations"] = [location]
    fix = finding.fix
    if fix is not None and fix.edits:
        # SARIF fixes: one artifactChange per file, regions as 1-based line/column.
        changes: dict[str, list[dict[str, Any]]] = {}
        for e in fix.edits:
            changes.setdefault(e.file, []).append({
                "deletedRegion": {"startLine": e.line, "startColumn": e.col,
                                  "endLine": e.end_line, "endColumn": e.end_col},
                "insertedContent": {"text": e.content}})
        result["fixes"] = [{
            "description": {"text": fix.title},
            "artifactChanges": [{"artifactLocation": {"uri": _uri(path)}, "replacements": r}
                                for path, r in changes.items()]}]
        result["properties"]["fixApplicability"] = fix.applicability
    return result


def _uri(path: str) -> str:
    """A relative path stays relative (code scanning resolves it against the checkout)."""
    if os.path.isabs(path):
        return PurePath(path).as_uri()
    return quote(PurePath(path).as_posix())


def fingerprint(target: str, finding: Finding) -> str:
    """The baseline's fingerprint (``biaslint.run.baseline``: target, code, layer, parameter;
    no line, no message) as a digest; the gitlab report uses it too."""
    parts = [target, finding.code, finding.module, finding.parameter]
    if not finding.module and finding.location is not None:
        # Module-less findings (BL100 on a comment) would all share one fingerprint, and code
        # scanning would merge them: add the file and what the comment names, still no line.
        parts += [finding.location.file, ",".join(finding.data.get("codes", ()))]
    key = "\0".join(parts)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
