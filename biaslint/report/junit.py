"""``--format junit``: JUnit XML, as CI dashboards (GitLab, Jenkins, Azure, GitHub test-report
actions) show test results: one ``testsuite`` per target, one ``testcase`` per target and
selected rule (``classname`` the target, ``name`` the rule's code and name).

A testcase is

* a ``failure`` when the rule has findings on the target (``message`` their count, the body one
  line per finding), whatever ``--fail-on`` says (the exit code applies it);
* ``skipped`` when the rule has none but did not judge some of the layers it applies to (the
  message counts them, the body gives each with its reason): not a pass, since the rule did not
  look, and not a failure of the model. ``--allow-incomplete`` decides the exit code, not this;
* passed otherwise.

A target that could not be built or linted is one testcase, ``lint``, in ``error``. What made an
analysis incomplete beyond the rules' own scopes (a real forward a rule read that raised, layers
a training-mode forward skips at random) is a skipped testcase ``analysis``; the target's notes
go to the suite's ``system-out``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Sequence

from biaslint.findings import Finding, RuleScope, TargetResult
from biaslint.report.groups import Group, groups_of, short_layers
from biaslint.report.groups import where as group_where

# Characters XML 1.0 cannot hold (a message quoting a model's output could carry one).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def render(results: Sequence[TargetResult]) -> str:
    root = ET.Element("testsuites", name="biaslint")
    for result in results:
        root.append(_suite(result))
    _count(root, list(root))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def _suite(result: TargetResult) -> ET.Element:
    suite = ET.Element("testsuite", name=result.target)
    if result.error:
        case = _case(suite, result.target, "lint")
        _outcome(case, "error", f"not linted: {result.error}", "", "TargetError")
    else:
        scopes = {scope.code: scope for scope in result.rules}
        codes = list(scopes) + sorted({f.code for f in result.findings} - set(scopes))
        for code in codes:
            _rule_case(suite, result, code, scopes.get(code))
        if result.incomplete and not any(scope.unjudged for scope in result.rules):
            case = _case(suite, result.target, "analysis")
            _outcome(case, "skipped", "analysis incomplete", "\n".join(result.incomplete))
    if result.notes or result.incomplete:
        out = ET.SubElement(suite, "system-out")
        out.text = _xml("\n".join([*(f"not judged: {line}" for line in result.incomplete),
                                   *(f"note: {note}" for note in result.notes)]))
    _count(suite, suite.findall("testcase"))
    return suite


def _rule_case(suite: ET.Element, result: TargetResult, code: str,
               scope: RuleScope | None) -> None:
    findings = [f for f in result.findings if f.code == code]
    case = _case(suite, result.target, f"{code} {_rule_name(code, findings)}".strip())
    unjudged = [f"not judged: {layer or '<root>'} ({reason})"
                for layer, reason in (scope.unjudged if scope is not None else ())]
    if findings:
        count = f"{len(findings)} finding{'s' if len(findings) != 1 else ''}"
        _outcome(case, "failure", count,
                 "\n".join([*(_entry(result.target, g) for g in groups_of(findings)),
                            *unjudged]), code)
    elif scope is not None and unjudged:
        _outcome(case, "skipped", f"judged {scope.judged} of {scope.total} layers",
                 "\n".join(unjudged))


def _entry(target: str, group: Group) -> str:
    """A finding, or a group of findings with one cause (``report.groups``), as one line of a
    failure's body: where, what, and the fix."""
    finding = group.first
    where = group_where(group.location) if group.location else target
    layers = f"{finding.module or '<root>'}" if group.single else \
        f"{len(group.members)} {group.noun}: {short_layers(group.layers)}"
    line = (f"{where}: {finding.code} [{group.severity}] {group.headline()} "
            f"({layers}: {finding.module_type})")
    fix = group.fix_text()
    if fix:
        line += f"; fix: {fix}"
    return line


def _rule_name(code: str, findings: list[Finding]) -> str:
    if findings:
        return findings[0].name
    from biaslint.rules import rule_by_code

    rule = rule_by_code(code)
    return rule.name if rule is not None else ""


def _case(suite: ET.Element, target: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=_xml(target), name=_xml(name))


def _outcome(case: ET.Element, kind: str, message: str, body: str, type_: str = "") -> None:
    element = ET.SubElement(case, kind, message=_xml(message))
    if type_:
        element.set("type", type_)
    if body:
        element.text = _xml(body)


def _count(element: ET.Element, cases: list[ET.Element]) -> None:
    """``tests``, ``failures``, ``errors`` and ``skipped`` of a suite (from its testcases) or of
    the whole (from its suites)."""
    if element.tag == "testsuites":
        totals = {key: sum(int(suite.get(key, "0")) for suite in cases)
                  for key in ("tests", "failures", "errors", "skipped")}
    else:
        totals = {"tests": len(cases),
                  **{key: sum(1 for case in cases if case.find(tag) is not None)
                     for key, tag in (("failures", "failure"), ("errors", "error"),
                                      ("skipped", "skipped"))}}
    for key, value in totals.items():
        element.set(key, str(value))


def _xml(text: str) -> str:
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)
