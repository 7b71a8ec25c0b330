"""``--format sarif``: SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

One run; ``tool.driver.rules`` lists every registered rule with its help text (the same Markdown
as its page), and each result carries ``ruleId``, ``ruleIndex``, ``level``, a message, the
physical location of the layer's construction site, the module as a logical location and a
line-independent ``partialFingerprints`` entry (the baseline's fingerprint), so code scanning
tracks a finding across edits. Findings of one rule with one cause are one result
(``report.groups``): at the cause's place, every layer a logical location. Target errors
become ``toolExecutionNotifications``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePath
from typing import Any, Sequence
from urllib.parse import quote

from biaslint.findings import Finding, Location, Severity, TargetResult
from biaslint.report.groups import Group, groups_of, short_layers
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
        "results": [_result(r.target, g, index) for r in results
                    for g in groups_of(r.findings)],
        "columnKind": "unicodeCodePoints",
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def _result(target: str, group: Group, index: dict[str, int]) -> dict[str, Any]:
    """One result per group of findings with one cause (``report.groups``): at the cause's
    place, the members' layers as logical locations and their places as related ones."""
    finding = group.first
    text = group.headline()
    fix_text = group.fix_text()
    if not group.single:
        text += f". {group.noun.capitalize()} ({len(group.members)}): {short_layers(group.layers)}"
    if fix_text:
        text += ". Fix: " + fix_text
    result: dict[str, Any] = {
        "ruleId": finding.code,
        "level": _LEVEL[group.severity],
        "message": {"text": text},
        "partialFingerprints": {"biaslintFingerprint/v1": group_fingerprint(target, group)},
        "properties": {"target": target, "module": finding.module,
                       "moduleType": finding.module_type, "parameter": finding.parameter},
    }
    if not group.single:
        result["properties"].update(count=len(group.members), modules=group.layers)
    if finding.code in index:
        result["ruleIndex"] = index[finding.code]
    location: dict[str, Any] = {"logicalLocations": [
        {"fullyQualifiedName": f.module or "<root>", "kind": "module"}
        for f in group.members[:_LOGICAL]]}
    if group.location is not None:
        location["physicalLocation"] = _physical(group.location)
    result["locations"] = [location]
    related = list(dict.fromkeys(f.location for f in group.members if f.location is not None
                                 and f.location != group.location))[:_LOGICAL]
    if related and not group.single:
        result["relatedLocations"] = [{"id": i, "physicalLocation": _physical(loc)}
                                      for i, loc in enumerate(related)]
    edits = list(dict.fromkeys(e for f in group.members if f.fix is not None
                               for e in f.fix.edits))
    if edits and finding.fix is not None:
        # SARIF fixes: one artifactChange per file, regions as 1-based line/column.
        changes: dict[str, list[dict[str, Any]]] = {}
        for e in edits:
            changes.setdefault(e.file, []).append({
                "deletedRegion": {"startLine": e.line, "startColumn": e.col,
                                  "endLine": e.end_line, "endColumn": e.end_col},
                "insertedContent": {"text": e.content}})
        result["fixes"] = [{
            "description": {"text": finding.fix.title},
            "artifactChanges": [{"artifactLocation": {"uri": _uri(path)}, "replacements": r}
                                for path, r in changes.items()]}]
        result["properties"]["fixApplicability"] = finding.fix.applicability
    return result


# At most this many layers of a group are listed as logical and related locations.
_LOGICAL = 100


def _physical(loc: Location) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": loc.line}
    if loc.col:
        region["startColumn"] = loc.col
    if loc.end_line and loc.end_line > loc.line:
        region["endLine"] = loc.end_line
    return {"artifactLocation": {"uri": _uri(loc.file)}, "region": region}


def group_fingerprint(target: str, group: Group) -> str:
    """A finding's own fingerprint for a group of one; for a group, its cause without line
    numbers (a config value, an init call and its arguments in a file, a constructor's file and
    first layer), so code scanning tracks it across edits."""
    if group.single:
        return fingerprint(target, group.first)
    key = "\0".join([target, group.code, group.cause_identity()])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


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
