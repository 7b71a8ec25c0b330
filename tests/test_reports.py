"""Several reports from one run (``--format FMT[=PATH]``, ``format = [...]``) and the CI formats
gitlab, junit, rdjson and json-lines, each validated against what its consumer publishes: junit
parsed back by junitparser (and checked against a JUnit XSD), gitlab and rdjson against JSON
schemas written from their published documentation, SARIF against the published schema
(``test_formats.validate``)."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
from junitparser import Error, Failure, JUnitXml, Skipped
from test_formats import finding
from test_formats import validate as validate_sarif

from biaslint.findings import Edit, Fix, Location, RuleScope, Severity, TargetResult
from biaslint.report import FORMATS, get_reporter

# model[0]: BL002 error; model[2]: BL002 warning (verdicts checked by training in test_bl002.py).
# Each build appends a line to builds.log beside the file: the tests count the builds.
COUNTED = """\
from pathlib import Path

import torch.nn as nn


def build():
    with open(Path(__file__).with_name("builds.log"), "a") as log:
        log.write("built\\n")
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 10))
    # one init call per layer: two findings with two causes (report.groups keeps them apart)
    nn.init.zeros_(model[0].weight)  # default biases: an error and a warning (a stall)
    nn.init.zeros_(model[2].weight)
    return model
"""
GOOD = "import torch.nn as nn\n\n\ndef build():\n    return nn.Sequential(nn.Linear(4, 4))\n"

# A GitHub workflow command as @actions/core writes it: ``::KIND k=v,k=v::MESSAGE``, where
# property values escape "%", CR, LF, ":" and "," and the message escapes "%", CR and LF.
GITHUB_COMMAND = re.compile(r"^::(error|warning|notice)"
                            r"( (file|line|endLine|col|endColumn|title)=[^,:\r\n]*"
                            r"(,(file|line|endLine|col|endColumn|title)=[^,:\r\n]*)*)?"
                            r"::[^\r\n]*$")

# GitLab's "Code Quality report format" (docs.gitlab.com/ci/testing/code_quality/, "Code
# Quality report format"): an array of issues with these required fields; severity one of
# info, minor, major, critical, blocker; location.path relative; lines.begin from 1.
GITLAB_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["description", "check_name", "fingerprint", "severity", "location"],
        "properties": {
            "description": {"type": "string", "minLength": 1},
            "check_name": {"type": "string", "minLength": 1},
            "fingerprint": {"type": "string", "minLength": 1},
            "severity": {"enum": ["info", "minor", "major", "critical", "blocker"]},
            "location": {
                "type": "object",
                "required": ["path", "lines"],
                "properties": {
                    "path": {"type": "string", "pattern": r"^[^/\\][^\\]*$"},
                    "lines": {"type": "object", "required": ["begin"],
                              "properties": {"begin": {"type": "integer", "minimum": 1},
                                             "end": {"type": "integer", "minimum": 1}},
                              "additionalProperties": False},
                },
            },
        },
    },
}

# reviewdog's Reviewdog Diagnostic Format (github.com/reviewdog/reviewdog, proto/rdf/
# reviewdog.proto and its generated proto/rdf/jsonschema/DiagnosticResult.jsonschema): the
# field names and types of DiagnosticResult, Diagnostic, Location, Range, Position, Source, Code
# and Suggestion, the Severity enum, "start" required in a Range, lines and columns from 1.
# Stricter than the published schema on one point: no field it does not name
# (additionalProperties false), so a misspelled key fails.
_POSITION = {"type": "object", "properties": {"line": {"type": "integer", "minimum": 1},
                                              "column": {"type": "integer", "minimum": 1}},
             "additionalProperties": False}
_RANGE = {"type": "object", "required": ["start"],
          "properties": {"start": _POSITION, "end": _POSITION}, "additionalProperties": False}
_SOURCE = {"type": "object", "required": ["name"],
           "properties": {"name": {"type": "string"}, "url": {"type": "string"}},
           "additionalProperties": False}
_SEVERITY = {"enum": ["UNKNOWN_SEVERITY", "ERROR", "WARNING", "INFO"]}
RDJSON_SCHEMA = {
    "type": "object",
    "required": ["diagnostics"],
    "properties": {
        "source": _SOURCE,
        "severity": _SEVERITY,
        "diagnostics": {"type": "array", "items": {
            "type": "object",
            "required": ["message", "location"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "location": {"type": "object", "required": ["path"],
                             "properties": {"path": {"type": "string"}, "range": _RANGE},
                             "additionalProperties": False},
                "severity": _SEVERITY,
                "source": _SOURCE,
                "code": {"type": "object", "required": ["value"],
                         "properties": {"value": {"type": "string"}, "url": {"type": "string"}},
                         "additionalProperties": False},
                "suggestions": {"type": "array", "items": {
                    "type": "object", "required": ["range", "text"],
                    "properties": {"range": _RANGE, "text": {"type": "string"}},
                    "additionalProperties": False}},
                "original_output": {"type": "string"},
            },
            "additionalProperties": False,
        }},
    },
    "additionalProperties": False,
}

# The JUnit XML structure CI servers read, written here from the elements and attributes the
# Jenkins JUnit schema (jenkinsci/xunit-plugin, junit-10.xsd) defines for what biaslint emits:
# testsuites > testsuite > testcase, whose child is at most one of failure, error and skipped;
# counts are non-negative integers; name is required.
JUNIT_XSD = """\
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:complexType name="outcome" mixed="true">
    <xs:attribute name="message" type="xs:string"/>
    <xs:attribute name="type" type="xs:string"/>
  </xs:complexType>
  <xs:attributeGroup name="counts">
    <xs:attribute name="name" type="xs:string" use="required"/>
    <xs:attribute name="tests" type="xs:nonNegativeInteger" use="required"/>
    <xs:attribute name="failures" type="xs:nonNegativeInteger"/>
    <xs:attribute name="errors" type="xs:nonNegativeInteger"/>
    <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
  </xs:attributeGroup>
  <xs:element name="testsuites">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="testsuite" minOccurs="0" maxOccurs="unbounded">
          <xs:complexType>
            <xs:sequence>
              <xs:element name="testcase" minOccurs="0" maxOccurs="unbounded">
                <xs:complexType>
                  <xs:choice minOccurs="0">
                    <xs:element name="failure" type="outcome"/>
                    <xs:element name="error" type="outcome"/>
                    <xs:element name="skipped" type="outcome"/>
                  </xs:choice>
                  <xs:attribute name="name" type="xs:string" use="required"/>
                  <xs:attribute name="classname" type="xs:string"/>
                </xs:complexType>
              </xs:element>
              <xs:element name="system-out" type="xs:string" minOccurs="0"/>
            </xs:sequence>
            <xs:attributeGroup ref="counts"/>
          </xs:complexType>
        </xs:element>
      </xs:sequence>
      <xs:attributeGroup ref="counts"/>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""


def results() -> list[TargetResult]:
    """Three targets: findings of two rules and a rule that judged only part of the layers; a
    target that could not be built; a clean one."""
    return [
        TargetResult("pkg/model.py:build", findings=(
            finding(), finding(module="decoder.fc", severity=Severity.WARNING),
            finding(code="BL001", name="redundant-bias", severity=Severity.INFO,
                    parameter="bias")),
            rules=(RuleScope("BL001", 3), RuleScope("BL002", 4),
                   RuleScope("BL003", 2, (("head", "holds NaN or Inf"),))),
            incomplete=("1 layer holds NaN or Inf",), notes=("a note",)),
        TargetResult("broken.py:build", error="no module named 'torch_geometric'"),
        TargetResult("clean.py:build", rules=(RuleScope("BL001", 1), RuleScope("BL002", 1))),
    ]


def error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def counted_target(tmp_path: Path) -> str:
    (tmp_path / "counted.py").write_text(COUNTED)
    return "counted.py:build"


def builds(tmp_path: Path) -> int:
    log = tmp_path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


# -- the acceptance test -------------------------------------------------------------------------

def test_one_run_writes_text_sarif_github_and_junit_and_builds_the_model_once(
        cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    target = counted_target(tmp_path)
    result = cli(target, "--format", "sarif=out/biaslint.sarif", "--format", "github=gh.log",
                 "--format", "junit=out/junit.xml")
    assert result.exit_code == 1, result.output
    assert builds(tmp_path) == 1  # one build, one capture, four reports
    # text on stdout, the findings and the summary, then where each file went
    assert f"{target}: 1 error, 1 warning" in result.stdout
    assert result.stdout.count("BL002 [") == 2
    for path in ("out/biaslint.sarif", "gh.log", "out/junit.xml"):
        assert f"report written to {path}" in result.stdout
    sarif = json.loads((tmp_path / "out/biaslint.sarif").read_text())
    validate_sarif(sarif)
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["BL002", "BL002"]
    commands = (tmp_path / "gh.log").read_text().splitlines()
    assert len(commands) == 2 and all(GITHUB_COMMAND.match(c) for c in commands), commands
    assert commands[0].startswith("::error file=counted.py,line=9,")
    # junit, parsed back: its counts are the SARIF run's (one testcase per judged rule; a
    # failure per rule with findings)
    [suite] = JUnitXml.fromfile(str(tmp_path / "out/junit.xml"))
    scopes = sarif["runs"][0]["invocations"][0]["properties"]["targets"][target]["rules"]
    assert suite.name == target and suite.tests == len(scopes) == len(list(suite))
    assert (suite.failures, suite.errors) == (1, 0)
    assert suite.skipped == sum(1 for s in scopes.values() if s["unjudged"])
    [failed] = [case for case in suite if not case.is_passed and not case.is_skipped]
    assert failed.name == "BL002 zero-constant-weight"
    assert failed.result[0].message == "2 findings"


def test_several_reports_from_the_config_file(cli, tmp_path, monkeypatch):
    """``format = [...]`` in [tool.biaslint]: files relative to the config's folder (as
    ``@priors.json`` is), one on stdout; the command line's --format replaces the list."""
    counted_target(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.biaslint]
        targets = ["counted.py:build"]
        format = ["github", "junit=reports/junit.xml", "gitlab=reports/codequality.json"]
        """))
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    result = cli()
    assert result.exit_code == 1, result.output + result.stderr
    assert builds(tmp_path) == 1
    commands = result.stdout.splitlines()
    assert len(commands) == 2 and all(GITHUB_COMMAND.match(c) for c in commands), commands
    assert "report written to" in result.stderr  # stdout holds the annotations alone
    xml = JUnitXml.fromfile(str(tmp_path / "reports/junit.xml"))
    assert [s.failures for s in xml] == [1]
    issues = json.loads((tmp_path / "reports/codequality.json").read_text())
    jsonschema.Draft7Validator(GITLAB_SCHEMA).validate(issues)
    assert [i["location"]["path"] for i in issues] == ["counted.py", "counted.py"]
    assert not (sub / "reports").exists()
    # the command line wins: its one format replaces the file's list
    payload = json.loads(cli("--format", "json").stdout)
    assert payload["results"][0]["target"] == "counted.py:build"


def test_a_format_in_the_file_with_a_folder_that_does_not_exist(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counted_target(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.biaslint]\nformat = ["sarif=missing/biaslint.sarif"]\n')
    line = error_line(cli("counted.py:build"))
    assert "tool.biaslint.format 'sarif=missing/biaslint.sarif'" in line
    assert "does not exist" in line and builds(tmp_path) == 0


# -- what stdout gets ----------------------------------------------------------------------------

def test_text_moved_to_a_file_leaves_the_summary(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = counted_target(tmp_path)
    result = cli(target, "--input-shape", "2,16", "--format", "text=report.txt",
                 "--format", "json=report.json")
    assert result.exit_code == 1
    assert "BL002 [" not in result.stdout and f"{target}: 1 error, 1 warning" in result.stdout
    assert (tmp_path / "report.txt").read_text().count("BL002 [") == 2
    # json carries no signal curves unless asked: no report here plots them
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["signal"] is None
    assert builds(tmp_path) == 1


def test_the_signal_is_measured_when_a_report_plots_it_or_when_asked(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = counted_target(tmp_path)
    result = cli(target, "--input-shape", "2,16", "--format", "html=report.html",
                 "--format", "json=report.json")
    assert result.exit_code == 1
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["signal"]
    assert 'class="mark act' in (tmp_path / "report.html").read_text()
    result = cli(target, "--input-shape", "2,16", "--format", "json=asked.json", "--signal")
    assert result.exit_code == 1
    assert json.loads((tmp_path / "asked.json").read_text())["results"][0]["signal"]
    assert builds(tmp_path) == 2  # one build per run


def test_a_machine_format_on_stdout_keeps_it_one_document(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = counted_target(tmp_path)
    result = cli(target, "--format", "json", "--format", "junit=junit.xml")
    payload = json.loads(result.stdout)
    assert payload["results"][0]["target"] == target
    assert "report written to junit.xml" in result.stderr
    assert (tmp_path / "junit.xml").is_file()


def test_quiet_writes_the_files_and_prints_only_the_findings(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = counted_target(tmp_path)
    result = cli(target, "-q", "--format", "rdjson=rd.json")
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(": BL002 [" in line for line in lines)
    jsonschema.Draft7Validator(RDJSON_SCHEMA).validate(json.loads((tmp_path / "rd.json")
                                                                  .read_text()))


def test_json_lines_on_stdout_streams_each_target_then_its_summary(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = counted_target(tmp_path)
    (tmp_path / "good.py").write_text(GOOD)
    result = cli(target, "good.py:build", "--format", "json-lines")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["type"], r["target"]) for r in records] == [
        ("finding", target), ("finding", target), ("target", target),
        ("target", "good.py:build")]
    assert records[0]["code"] == "BL002" and records[2]["findings"] == 2
    assert records[3]["error"] is None and records[3]["coverage"]["total"] == 1


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_json_lines_at_a_terminal_stay_whole_lines_above_the_live_display(tmp_path):
    """On a terminal (CI unset) the records go out through the live display, which must neither
    wrap nor style them: each line still parses."""
    from pty_run import on_a_terminal

    (tmp_path / "first.py").write_text(COUNTED)
    (tmp_path / "second.py").write_text(COUNTED)
    _, raw = on_a_terminal(["first.py:build", "second.py:build", "--format", "json-lines"],
                           tmp_path, columns=80)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    records = [json.loads(line) for line in re.split(r"[\r\n]+", text)
               if line.startswith("{")]
    assert sorted((r["type"], r["target"]) for r in records) == sorted(
        [("finding", t) for t in ("first.py:build", "second.py:build")] * 2
        + [("target", "first.py:build"), ("target", "second.py:build")])


@pytest.mark.parametrize("args, words", [
    (("--format", "json", "--format", "sarif"), ("--format json and --format sarif",
                                                 "would each print on stdout")),
    (("--format", "json=r.out", "--format", "sarif=r.out"), ("write the same file r.out",)),
    (("--format", "json", "--format", "sarif=s.sarif", "--output", "r.json"),
     ("--output names one file but 2 reports",)),
    (("--format", "json=a.json", "--output", "b.json"), ("both name the file of the json",)),
    (("--format", "sarif=nowhere/a.sarif"), ("--format sarif=nowhere/a.sarif",
                                             "the folder nowhere does not exist")),
    (("--format", "xml=a.xml"), ("'xml' is not one of text, json",)),
    (("--format", "sarif="), ("names no file after '='",)),
    (("--format", "json=b.json", "--baseline", "b.json"), ("would overwrite the --baseline",)),
    (("--write-baseline", "b.json", "--format", "sarif=a.sarif"),
     ("--write-baseline writes no report",)),
    (("--diff", "--format", "json"), ("--diff writes no report",)),
])
def test_ambiguous_reports_are_refused_before_the_work(cli, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.json").write_text('{"version": 1, "findings": []}')
    line = error_line(cli(counted_target(tmp_path), *args))
    assert all(word in line for word in words), line
    assert builds(tmp_path) == 0


def test_output_with_one_format_is_the_one_report_form(cli, tmp_path, monkeypatch):
    """``--format X --output F`` as before: the file, and the summary on the terminal."""
    monkeypatch.chdir(tmp_path)
    target = counted_target(tmp_path)
    result = cli(target, "--format", "gitlab", "--output", "cq.json")
    assert "report written to cq.json" in result.stdout and "BL002 [" not in result.stdout
    jsonschema.Draft7Validator(GITLAB_SCHEMA).validate(json.loads((tmp_path / "cq.json")
                                                                  .read_text()))


# -- each format -----------------------------------------------------------------------------------

def test_every_format_renders_every_case():
    for fmt in FORMATS:
        assert get_reporter(fmt)(results()), fmt
        assert isinstance(get_reporter(fmt)([]), str), fmt


def test_junit_counts_and_outcomes_parse_back(tmp_path):
    import xmlschema

    path = tmp_path / "junit.xml"
    path.write_text(get_reporter("junit")(results()))
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(path))
    xml = JUnitXml.fromfile(str(path))
    suites = {suite.name: suite for suite in xml}
    model, broken, clean = (suites[t.target] for t in results())
    # BL001 and BL002 have findings; BL003 judged 2 of 3 layers and found nothing
    assert (model.tests, model.failures, model.errors, model.skipped) == (3, 2, 0, 1)
    outcomes = {case.name: case.result for case in model}
    assert isinstance(outcomes["BL002 zero-constant-weight"][0], Failure)
    assert outcomes["BL002 zero-constant-weight"][0].message == "2 findings"
    body = outcomes["BL002 zero-constant-weight"][0].text
    assert body.count("\n") == 1 and "pkg/model.py:12:5: BL002 [error]" in body
    assert "decoder.fc" in body and "fix: Use: nn.init.x_(w)" in body
    assert isinstance(outcomes["BL003 fan-in-blind-init"][0], Skipped)
    assert outcomes["BL003 fan-in-blind-init"][0].message == "judged 2 of 3 layers"
    assert "head (holds NaN or Inf)" in outcomes["BL003 fan-in-blind-init"][0].text
    assert (broken.tests, broken.errors) == (1, 1)
    assert isinstance(next(iter(broken)).result[0], Error)
    assert "torch_geometric" in next(iter(broken)).result[0].message
    assert (clean.tests, clean.failures, clean.skipped) == (2, 0, 0)
    assert all(case.is_passed for case in clean)
    assert all(case.classname == suite.name for suite in xml for case in suite)
    root = xml  # the totals are the suites' sums
    assert (root.tests, root.failures, root.errors, root.skipped) == (6, 2, 1, 1)


def test_junit_xsd_rejects_what_it_should():
    import xmlschema

    schema = xmlschema.XMLSchema(JUNIT_XSD)
    text = get_reporter("junit")(results())
    assert schema.is_valid(text)
    for broken in (text.replace('tests="3"', 'tests="three"'),
                   text.replace("<failure ", "<skipped /><failure ", 1),  # two outcomes
                   text.replace('<testcase classname="clean.py:build" name=',
                                '<testcase classname="clean.py:build" nom=', 1)):
        assert broken != text and not schema.is_valid(broken)


def test_junit_drops_what_xml_cannot_hold():
    text = get_reporter("junit")([TargetResult("t", findings=(finding(message="bell\x07 ok"),))])
    [suite] = JUnitXml.fromstring(text)
    assert "bell\N{REPLACEMENT CHARACTER} ok" in next(iter(suite)).result[0].text


def test_gitlab_issues_validate_and_fingerprints_are_unique_and_stable():
    issues = json.loads(get_reporter("gitlab")(results()))
    validator = jsonschema.Draft7Validator(GITLAB_SCHEMA)
    validator.validate(issues)
    assert [i["severity"] for i in issues] == ["major", "minor", "info", "critical"]
    assert issues[0]["check_name"] == "BL002"
    assert issues[0]["location"] == {"path": "pkg/model.py", "lines": {"begin": 12, "end": 14}}
    assert issues[3]["check_name"] == "biaslint/target-error"
    assert issues[3]["location"]["path"] == "broken.py"
    # the same finding twice (one fingerprint in the baseline's terms) gets two issues
    twice = json.loads(get_reporter("gitlab")([TargetResult("t", findings=(finding(),) * 2)]))
    assert len({i["fingerprint"] for i in twice}) == 2
    # a moved line or a new message keeps the fingerprint
    moved = json.loads(get_reporter("gitlab")([TargetResult("pkg/model.py:build", findings=(
        finding(location=Location("pkg/model.py", 40, 1), message="other"),))]))
    assert moved[0]["fingerprint"] == issues[0]["fingerprint"]
    for breakage in (lambda i: i[0].update(severity="error"),
                     lambda i: i[0]["location"].update(path="/abs/model.py"),
                     lambda i: i[0]["location"]["lines"].update(begin=0),
                     lambda i: i[0].pop("fingerprint")):
        broken = json.loads(json.dumps(issues))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)


def test_rdjson_validates_with_positions_in_bytes_and_suggestions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A fix whose edit starts after a non-ASCII character: reviewdog counts UTF-8 bytes.
    (tmp_path / "m.py").write_text("x = 'é'; nn.init.zeros_(w)\n")
    start = "x = 'é'; ".__len__() + 1
    edit = Edit("m.py", start - 1, start + 16, "nn.init.x_(w)", 1, start, 1, start + 17, "")
    fixed = finding(location=Location("m.py", 1, 11), fix=Fix("Use", "nn.init.x_(w)",
                                                              edits=(edit,)))
    payload = json.loads(get_reporter("rdjson")(results() + [TargetResult("m.py:build",
                                                                          findings=(fixed,))]))
    validator = jsonschema.Draft7Validator(RDJSON_SCHEMA)
    validator.validate(payload)
    assert payload["severity"] == "ERROR" and payload["source"] == {"name": "biaslint"}
    first = payload["diagnostics"][0]
    assert first["location"] == {"path": "pkg/model.py",
                                 "range": {"start": {"line": 12, "column": 5}}}
    assert first["code"] == {"value": "BL002"} and first["severity"] == "ERROR"
    assert "suggestions" not in first  # its fix has no edits
    assert [d["severity"] for d in payload["diagnostics"]] == \
        ["ERROR", "WARNING", "INFO", "ERROR", "ERROR"]
    [suggestion] = payload["diagnostics"][-1]["suggestions"]
    assert suggestion == {"range": {"start": {"line": 1, "column": start + 1},
                                    "end": {"line": 1, "column": start + 18}},
                          "text": "nn.init.x_(w)"}
    for breakage in (lambda p: p["diagnostics"][0].update(severity="error"),
                     lambda p: p["diagnostics"][0]["location"].pop("path"),
                     lambda p: p["diagnostics"][0]["location"]["range"]["start"]
                     .update(column=0),
                     lambda p: p["diagnostics"][0].update(codes={"value": "BL002"})):
        broken = json.loads(json.dumps(payload))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)


def test_json_lines_records_concatenate_per_target():
    render = get_reporter("json-lines")
    whole = render(results())
    assert whole == "".join(render([r]) for r in results())
    records = [json.loads(line) for line in whole.splitlines()]
    assert [r["type"] for r in records] == ["finding"] * 3 + ["target"] * 3
    by_target = {r["target"]: r for r in records if r["type"] == "target"}
    assert by_target["broken.py:build"]["error"].startswith("no module named")
    assert by_target["pkg/model.py:build"]["rules"]["BL003"]["unjudged"] == [
        {"layer": "head", "reason": "holds NaN or Inf"}]
