"""``[tool.biaslint]``: discovery, validation (exit 2 naming key and file), precedence."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from biaslint.errors import ConfigError
from biaslint.findings import Severity
from biaslint.run.config import find_pyproject, load_config

# model[0] gets a BL002 error, model[2] a BL002 warning (verdicts checked in test_bl002.py).
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
GOOD = "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(4, 4))\n"


def write_pyproject(folder: Path, body: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = \"demo\"\n\n[tool.biaslint]\n" + textwrap.dedent(body))
    return path


def error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# -- discovery -------------------------------------------------------------------------------------

def test_nearest_pyproject_with_the_table_wins(tmp_path):
    write_pyproject(tmp_path, 'select = ["BL002"]\n')
    inner = tmp_path / "pkg" / "sub"
    inner.mkdir(parents=True)
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\nname = \"inner\"\n")  # no table
    assert find_pyproject(inner) == tmp_path / "pyproject.toml"
    assert load_config(start=inner).values["select"] == ("BL002",)


def test_no_pyproject_means_defaults(tmp_path):
    config = load_config(start=tmp_path)
    assert config.path is None and config.targets == () and "select" not in config.values


# -- validation ------------------------------------------------------------------------------------

def test_full_table_is_read(tmp_path):
    path = write_pyproject(tmp_path, """\
        targets = ["models.py:build",
                   {target = "pkg.m:make", input-shape = [2, 16], head = "sigmoid"},
                   {target = "two.py:build", input-shape = ["2,3", "2,5"], class-priors = [9, 1]}]
        select = ["BL00"]
        ignore = "BL004"
        fail-on = "error"
        format = "sarif"
        per-module-ignores = {"encoder.*" = ["BL002"]}
        severity = {BL002 = "warning"}
        """)
    config = load_config(str(path))
    assert [t["target"] for t in config.targets] == ["models.py:build", "pkg.m:make",
                                                     "two.py:build"]
    assert config.targets[1]["input_shapes"] == ((2, 16),)
    assert config.targets[1]["head"] == "sigmoid"
    assert config.targets[2]["input_shapes"] == ((2, 3), (2, 5))
    assert config.targets[2]["class_priors"] == pytest.approx((0.9, 0.1))
    values = config.values
    assert values["select"] == ("BL00",) and values["ignore"] == ("BL004",)
    assert values["fail_on"] is Severity.ERROR
    assert [(r.fmt, r.path) for r in values["fmt"]] == [("sarif", None)]
    assert values["per_module_ignores"] == {"encoder.*": ("BL002",)}
    assert values["severity"] == {"BL002": Severity.WARNING}


@pytest.mark.parametrize("body, key, words", [
    ('fail_on = "error"\n', "tool.biaslint.fail_on", "did you mean 'fail-on'"),
    ('colour = true\n', "tool.biaslint.colour", "unknown key"),
    ('select = "BL002"\nfail-on = 3\n', "tool.biaslint.fail-on", "not an integer"),
    ('fail-on = "fatal"\n', "tool.biaslint.fail-on", "'fatal' is not one of"),
    ('format = "xml"\n', "tool.biaslint.format", "'xml' is not one of"),
    ('select = [1]\n', "tool.biaslint.select", "list of rule codes"),
    ('select = ["BL999"]\n', "tool.biaslint.select", "matches no rule"),
    ('targets = "m.py:build"\n', "tool.biaslint.targets", "must be a list"),
    ('targets = [{input-shape = [1]}]\n', "targets[0].target", "missing"),
    ('targets = [{target = "m.py:build", input_shape = [1]}]\n', "targets[0].input_shape",
     "did you mean 'input-shape'"),
    ('targets = [{target = "m.py:build", input-shape = [0, 3]}]\n', "targets[0].input-shape",
     "positive"),
    ('targets = [{target = "m.py:build", head = "tanh"}]\n', "targets[0].head", "not one of"),
    ('targets = [{target = "m.py:build", class-priors = true}]\n', "targets[0].class-priors",
     "list of numbers"),
    ('severity = {BL777 = "error"}\n', "tool.biaslint.severity.BL777", "not a rule code"),
    ('severity = {BL002 = "loud"}\n', "tool.biaslint.severity.BL002", "not one of"),
    ('per-module-ignores = {"a.*" = 3}\n', "per-module-ignores", "list of rule codes"),
    ('[tool.biaslint.rules.BL002]\nthreshold = 1\n', "tool.biaslint.rules.BL002.threshold",
     "no options"),
    ('[tool.biaslint.rules.BL999]\n', "tool.biaslint.rules.BL999", "not a rule code"),
])
def test_bad_key_or_type_names_key_and_file(tmp_path, body, key, words):
    path = write_pyproject(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message and key in message and words in message, message


def test_rule_options_are_checked_against_the_rules_own_options(tmp_path):
    from biaslint.rules import all_rules

    with_options = [r for r in all_rules() if r.options]
    if not with_options:
        pytest.skip("no registered rule has options yet")
    rule = with_options[0]
    option = rule.options[0]
    good = write_pyproject(tmp_path, f"[tool.biaslint.rules.{rule.code}]\n"
                                     f"{option.name} = {_toml(option.default)}\n")
    read = load_config(str(good)).values["rule_options"]
    assert read == {rule.code: {option.name: option.default}}
    bad = write_pyproject(tmp_path, f"[tool.biaslint.rules.{rule.code}]\nno_such_option = 1\n")
    with pytest.raises(ConfigError, match=rf"rules\.{rule.code}\.no_such_option: unknown key"):
        load_config(str(bad))
    if isinstance(option.default, (int, float)) and not isinstance(option.default, bool):
        wrong = write_pyproject(tmp_path, f"[tool.biaslint.rules.{rule.code}]\n"
                                          f"{option.name} = \"high\"\n")
        with pytest.raises(ConfigError, match=rf"{option.name}: must be"):
            load_config(str(wrong))


def _toml(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def test_invalid_toml_is_one_line_exit_2(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.biaslint]\nselect = [\n")
    (tmp_path / "m.py").write_text(GOOD)
    assert "not valid TOML" in error_line(cli("--config", "pyproject.toml", "m.py:build"))


def test_cli_exits_2_naming_key_and_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pyproject(tmp_path, 'fail_on = "error"\n')
    (tmp_path / "m.py").write_text(GOOD)
    line = error_line(cli("m.py:build"))
    assert "pyproject.toml" in line and "fail_on" in line and "fail-on" in line


def test_missing_config_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "no such file" in error_line(cli("--config", "nope.toml", "m.py:build"))


def test_cli_select_is_validated(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--select BL999" in error_line(cli("--select", "BL999", "m.py:build"))


# -- behaviour -------------------------------------------------------------------------------------

def test_no_target_and_none_configured_says_how(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(cli())
    assert "targets = [" in line and "[tool.biaslint]" in line


def test_configured_targets_are_linted_without_arguments(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_cfg.py").write_text(BAD)
    (tmp_path / "good_cfg.py").write_text(GOOD)
    write_pyproject(tmp_path, 'targets = ["bad_cfg.py:build", {target = "good_cfg.py:build"}]\n')
    result = cli()
    assert result.exit_code == 1, result.output
    # the two zeroed layers: one init call in a loop (line 8), one group
    assert "bad_cfg.py:8:9: BL002 [error] 2 layers" in result.output
    assert "good_cfg.py:build: no findings" in result.output


def test_configured_targets_resolve_from_the_config_folder(cli, tmp_path, monkeypatch):
    (tmp_path / "bad_sub.py").write_text(BAD)
    write_pyproject(tmp_path, 'targets = ["bad_sub.py:build"]\n')
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    result = cli("--format", "json", "--output", "report.json")
    assert result.exit_code == 1, result.output + result.stderr
    assert (sub / "report.json").is_file()  # --output stays relative to where we ran
    assert "bad_sub.py:build" in result.output


def test_precedence_defaults_pyproject_cli(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prec.py").write_text(BAD)
    # Only the BL002 warning (model[2]) is left when fail-on = error and model[0] is ignored.
    write_pyproject(tmp_path, 'fail-on = "error"\nper-module-ignores = {"0" = ["BL002"]}\n')
    assert cli("prec.py:build").exit_code == 0
    assert cli("prec.py:build", "--fail-on", "warning").exit_code == 1  # CLI wins
    write_pyproject(tmp_path, 'severity = {BL002 = "info"}\n')
    result = cli("prec.py:build")
    assert result.exit_code == 0 and "BL002 [info]" in result.output
    assert cli("prec.py:build", "--fail-on", "info").exit_code == 1


def test_select_from_config_and_cli_override(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sel.py").write_text(BAD)
    write_pyproject(tmp_path, 'ignore = ["BL002"]\n')
    assert cli("sel.py:build").exit_code == 0
    assert cli("sel.py:build", "--ignore", "BL100").exit_code == 1


def test_format_from_config(cli, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmt.py").write_text(GOOD)
    write_pyproject(tmp_path, 'format = "json"\n')
    payload = json.loads(cli("fmt.py:build").output)
    assert payload["results"][0]["target"] == "fmt.py:build"


def test_target_table_applies_to_the_same_target_on_the_command_line(tmp_path, monkeypatch):
    from biaslint.run.check import CheckOptions, plan

    monkeypatch.chdir(tmp_path)
    write_pyproject(tmp_path, 'targets = [{target = "shape.py:build", input-shape = "2,5", '
                              'head = "sigmoid"}]\n')
    [config] = plan(CheckOptions(targets=("shape.py:build",))).configs
    assert config.input_shapes == ((2, 5),) and config.inputs["head"] == "sigmoid"
    [config] = plan(CheckOptions(targets=("shape.py:build",), input_shapes=("2,4",),
                                  head="softmax")).configs
    assert config.input_shapes == ((2, 4),) and config.inputs["head"] == "softmax"  # CLI wins
    [config] = plan(CheckOptions(targets=("other.py:build",))).configs
    assert config.input_shapes == () and "head" not in config.inputs


def test_class_priors_file_is_relative_to_the_config(cli, tmp_path, monkeypatch):
    from biaslint.run.check import CheckOptions, plan

    (tmp_path / "priors.json").write_text("[90, 10]")
    write_pyproject(tmp_path,
                    'targets = [{target = "x.py:build", class-priors = "@priors.json"}]\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    planned = plan(CheckOptions())
    assert planned.configs[0].inputs["class_priors"] == pytest.approx((0.9, 0.1))
    assert plan(CheckOptions(class_priors="1,3")).configs[0].inputs["class_priors"] == \
        pytest.approx((0.25, 0.75))


def test_option_names_accept_kebab_and_snake_case(tmp_path):
    from biaslint.rules import all_rules

    named = [(r, o) for r in all_rules() for o in r.options
             if ("_" in o.name or "-" in o.name) and not isinstance(o.default, (list, tuple))]
    if not named:
        pytest.skip("no multi-word rule option registered yet")
    rule, option = named[0]
    other = option.name.replace("_", "-") if "_" in option.name else option.name.replace("-", "_")
    path = write_pyproject(tmp_path, f"[tool.biaslint.rules.{rule.code}]\n"
                                     f"{other} = {_toml(option.default)}\n")
    assert load_config(str(path)).values["rule_options"][rule.code] == {option.name: option.default}


def test_rule_option_from_pyproject_reaches_the_rule(cli, tmp_path, monkeypatch):
    from biaslint.rules import rule_by_code

    rule = rule_by_code("BL004")
    if rule is None or not any(o.name == "min_forget_bias" for o in rule.options):
        pytest.skip("BL004 with min_forget_bias is not registered")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lstm_opt.py").write_text(rule.bad_example)
    assert cli("lstm_opt.py:build", "--select", "BL004").exit_code == 1
    # A threshold below any possible forget bias: the rule must stay quiet.
    write_pyproject(tmp_path, "[tool.biaslint.rules.BL004]\nmin-forget-bias = -1000\n")
    result = cli("lstm_opt.py:build", "--select", "BL004")
    assert result.exit_code == 0 and "BL004" not in result.output, result.output
