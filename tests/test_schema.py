"""One settings schema: the config file, the command line, ``check()`` / ``check_target`` and the
rules all read ``biaslint.run.schema``, so a new rule input is one row plus the rule's code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from biaslint.errors import ConfigError
from biaslint.rules import all_rules
from biaslint.run import schema
from biaslint.run.schema import BY_NAME, SETTINGS, Setting, Source, rows


def test_every_rule_input_is_a_row_and_every_input_row_is_read():
    inputs = {row.name for row in rows("input")}
    declared = {name for rule in all_rules() for name in rule.inputs}
    assert declared <= inputs, declared - inputs
    assert inputs <= declared, f"input rows no rule reads: {inputs - declared}"


def test_names_keys_and_flags_are_unique():
    for attribute in ("name", "key", "flag"):
        values = [getattr(row, attribute) for row in SETTINGS if getattr(row, attribute)]
        assert len(values) == len(set(values)), attribute


def test_the_command_line_offers_every_row_with_a_flag():
    from biaslint.cli import check

    flags = {flag for param in check.params for flag in getattr(param, "opts", ())}
    assert {row.flag for row in SETTINGS if row.flag} <= flags


@pytest.mark.parametrize("row", [r for r in SETTINGS if r.key], ids=lambda r: r.name)
def test_every_file_key_is_read_and_refuses_a_wrong_type(tmp_path, row):
    from biaslint.run.config import load_config

    path = tmp_path / "pyproject.toml"
    where = f"targets = [{{target = \"m.py:build\", {row.key} = {{}}}}]" \
        if row.scope in ("target", "input") else f"{row.key} = 1.5"
    path.write_text(f"[tool.biaslint]\n{where}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert row.key in str(info.value) and "pyproject.toml" in str(info.value)


def test_a_new_rule_input_is_one_row_plus_the_rules_code(tmp_path, monkeypatch):
    """Add a row of scope "input"; a rule that names it in ``inputs`` reads the value given in
    the config file, on the command line or to ``check()``, with nothing else changed."""
    from biaslint.engine.lint import _context
    from biaslint.rules.base import Rule
    from biaslint.run.check import CheckOptions, plan
    from biaslint.settings import Settings

    row = Setting("label_smoothing", "input", schema.positive_number,
                  "Label smoothing of the loss, for a rule that reads it.",
                  key="label-smoothing", flag="--label-smoothing",
                  python=("check", "check_target"), metavar="EPS")
    monkeypatch.setattr(schema, "SETTINGS", (*SETTINGS, row))
    monkeypatch.setitem(BY_NAME, row.name, row)

    class Reads(Rule):
        code = "BL999"
        name = "reads-label-smoothing"
        inputs = ("label_smoothing",)

    # The file: a target's table takes the key.
    if True:
        (tmp_path / "pyproject.toml").write_text(
            '[tool.biaslint]\ntargets = [{target = "m.py:build", label-smoothing = 0.1}]\n')
        monkeypatch.chdir(tmp_path)
        [config] = plan(CheckOptions()).configs
        assert _context(Reads(), config, Settings()).inputs == {"label_smoothing": 0.1}
        # The command line (as Python, and as a flag on a command built from the table).
        [config] = plan(CheckOptions(("m.py:build",), label_smoothing=0.2)).configs
        assert _context(Reads(), config, Settings()).inputs == {"label_smoothing": 0.2}
        from biaslint.cli import _schema_options

        @click.command()
        @_schema_options
        def command(**options: object) -> None:
            click.echo(repr(CheckOptions(("m.py:build",), **options).given))

        result = CliRunner().invoke(command, ["--label-smoothing", "0.3"])
        assert result.exit_code == 0 and "'label_smoothing': 0.3" in result.output, result.output
        # check(): a keyword it knows, parsed by the row.
        assert schema.given({"label_smoothing": 0.4}, "check") == {"label_smoothing": 0.4}
        with pytest.raises(ConfigError, match="label_smoothing"):
            schema.given({"label_smoothing": -1}, "check")


def test_a_rule_reads_only_the_inputs_it_declares():
    from biaslint.engine.lint import _context
    from biaslint.rules import rule_by_code
    from biaslint.settings import Settings, TargetConfig

    config = TargetConfig.of("m.py:build", class_priors=(0.9, 0.1), target_mean=(2.0,))
    bl008 = rule_by_code("BL008")
    assert bl008 is not None
    context = _context(bl008(), config, Settings())
    assert context.inputs == {"target_mean": (2.0,)}
    with pytest.raises(KeyError):
        context.inputs["class_priors"]


def test_one_parser_for_every_source():
    """The same text means the same value from the file, the command line and Python."""
    from biaslint.run.check import CheckOptions

    from_file = schema.parse("class_priors", [9, 1], Source("pyproject.toml: x"))
    from_flag = CheckOptions(("m.py:build",), class_priors="9,1").given["class_priors"]
    from_python = schema.given({"class_priors": (9, 1)}, "check")["class_priors"]
    assert from_file == pytest.approx((0.9, 0.1))
    assert from_flag == pytest.approx(from_file) and from_python == pytest.approx(from_file)
    for source in ("--input-shape", "biaslint.check input_shapes"):
        assert schema.parse("input_shapes", "2,3", Source(source)) == ((2, 3),)
    with pytest.raises(ConfigError, match=r"^--fail-on x: 'x' is not one of"):
        CheckOptions(fail_on="x")
    with pytest.raises(ConfigError, match=r"biaslint.check_target fail_on='x'"):
        CheckOptions(fail_on="x", caller="check_target")
    assert replace(BY_NAME["fmt"]).attribute == "fmt"


def test_priors_file_in_the_config_is_relative_to_the_file(tmp_path):
    (tmp_path / "priors.json").write_text("[3, 1]")
    value = schema.parse("class_priors", "@priors.json", Source("x", base=Path(tmp_path)))
    assert value == str(tmp_path / "priors.json")  # read when a target is linted with it
    assert schema.read_priors(value) == pytest.approx((0.75, 0.25))
    config = schema.target_config("m.py:build", {"class_priors": value})
    assert config.inputs["class_priors"] == pytest.approx((0.75, 0.25))


def test_the_readmes_rule_input_row_is_a_valid_row():
    """The contributor section shows a new input as one row: it is one, as written."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(Setting\(.*?\)),?\n```", readme, re.S)
    assert match, "the README lost its rule-input row"
    row = eval(match.group(1), vars(schema))  # noqa: S307 - our own README, a test
    assert isinstance(row, Setting) and row.scope == "input"
    assert row.parse("0.1", Source(row.flag or "")) == 0.1
