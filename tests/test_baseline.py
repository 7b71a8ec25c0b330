"""--write-baseline / --baseline: fail only on new findings; survive unrelated edits."""

from __future__ import annotations

import json

import pytest

from biaslint.errors import ConfigError
from biaslint.findings import Finding, Location, Severity, TargetResult
from biaslint.run.baseline import apply_baseline, fingerprint, read_baseline, write_baseline

# model[0]: BL002 error; model[2]: BL002 warning (verdicts checked by training in test_bl002.py).
BAD = """\
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 10))
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        nn.init.zeros_(hidden.bias)
    return model
"""
# The same model with one more zero hidden layer (model[4]) in front of a new output layer: a
# new BL002 finding on module "4". model[2]'s verdict changes (its consumer is now constant too)
# but its fingerprint (target, code, module, parameter) does not.
WORSE = BAD.replace("nn.Linear(64, 10))", "nn.Linear(64, 10), nn.Tanh(), nn.Linear(10, 10))") \
    .replace("(model[0], model[2])", "(model[0], model[2], model[4])")


def test_write_then_check_passes_and_counts(cli, write_target, tmp_path):
    target = write_target(BAD, stem="base_model")
    written = cli(target, "--write-baseline", "baseline.json")
    assert written.exit_code == 0, written.output
    assert "baseline with 2 findings written to baseline.json" in written.output
    payload = json.loads((tmp_path / "baseline.json").read_text())
    assert {(e["code"], e["module"], e["parameter"]) for e in payload["findings"]} == \
        {("BL002", "0", "weight"), ("BL002", "2", "weight")}
    checked = cli(target, "--baseline", "baseline.json")
    assert checked.exit_code == 0, checked.output
    assert "no findings" in checked.output and "2 findings in the baseline not shown" in \
        checked.output


def test_survives_unrelated_edits_that_move_lines(cli, write_target, tmp_path):
    target = write_target(BAD, stem="moving")
    assert cli(target, "--write-baseline", "b.json").exit_code == 0
    path = tmp_path / "moving.py"
    path.write_text('"""A docstring added above."""\n\n# and a comment\n' + BAD)
    result = cli(target, "--baseline", "b.json")
    assert result.exit_code == 0, result.output


def test_new_findings_fail_and_are_the_only_ones_shown(cli, write_target, tmp_path):
    target = write_target(BAD, stem="growing")
    assert cli(target, "--write-baseline", "b.json").exit_code == 0
    (tmp_path / "growing.py").write_text(WORSE)
    result = cli(target, "--baseline", "b.json", "--format", "json")
    assert result.exit_code == 1
    findings = json.loads(result.output)["results"][0]["findings"]
    assert [f["module"] for f in findings] == ["4"], findings


def test_fixed_findings_are_counted(cli, write_target, tmp_path):
    target = write_target(BAD, stem="fixing")
    assert cli(target, "--write-baseline", "b.json").exit_code == 0
    (tmp_path / "fixing.py").write_text(BAD.replace(
        "for hidden in (model[0], model[2]):", "for hidden in ():"))
    result = cli(target, "--baseline", "b.json")
    assert result.exit_code == 0
    assert "2 baseline findings no longer found" in result.output
    assert "--write-baseline" in result.output


def _finding(module: str, code: str = "BL002", line: int = 1) -> Finding:
    return Finding(code=code, name="n", severity=Severity.ERROR, module=module,
                   module_type="Linear", message=f"msg {line}", location=Location("m.py", line),
                   parameter="weight")


def test_fingerprint_counts_duplicates_and_targets(tmp_path):
    old = [TargetResult("a:build", findings=(_finding("fc"), _finding("fc", line=9))),
           TargetResult("b:build", findings=(_finding("fc"),))]
    path = str(tmp_path / "b.json")
    assert write_baseline(path, old) == 3
    baseline = read_baseline(path)
    assert baseline[("a:build", "BL002", "fc", "weight")] == 2
    now = [TargetResult("a:build", findings=(_finding("fc", line=5),) * 3),
           TargetResult("b:build", findings=())]
    outcome = apply_baseline(now, baseline)
    assert outcome.known == 2 and outcome.fixed == 1
    assert len(outcome.results[0].findings) == 1  # a third identical finding is new
    assert fingerprint("a:build", _finding("fc", line=1)) == \
        fingerprint("a:build", _finding("fc", line=99))


def test_targets_that_did_not_run_do_not_count_as_fixed(tmp_path):
    path = str(tmp_path / "b.json")
    write_baseline(path, [TargetResult("a:build", findings=(_finding("fc"),)),
                          TargetResult("other:build", findings=(_finding("fc"),))])
    outcome = apply_baseline([TargetResult("a:build", findings=(_finding("fc"),))],
                             read_baseline(path))
    assert outcome.fixed == 0 and outcome.known == 1


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ("not json", "not a biaslint baseline"),
    ('{"version": 99, "findings": []}', "not a version 1"),
    ('{"version": 1, "findings": [{"code": "BL002"}]}', "malformed entry"),
])
def test_bad_baseline_files(tmp_path, content, words):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        read_baseline(str(path))


def test_bad_baseline_is_exit_2_on_the_cli(cli, write_target):
    target = write_target(BAD)
    result = cli(target, "--baseline", "missing.json")
    assert result.exit_code == 2 and "create it with --write-baseline" in result.stderr
    both = cli(target, "--baseline", "x.json", "--write-baseline", "y.json")
    assert both.exit_code == 2
