"""Rules of a project's own (issue 29, item 8): a plugin module named in ``[tool.biaslint]
plugins`` (or ``--plugin``, or ``check(plugins=...)``) or an installed package's
``biaslint.rules`` entry point adds rules with the built-in ones' API, and they take part
everywhere the built-in ones do: selection, options, severities, suppressions, the listing,
the pages, the reports, baselines, isolated processes.

The plugin is ``tests/fixtures/plugin/acme_rules.py`` (the README shows the same text): ACME001
flags an ``nn.Linear`` whose ``out_features`` is not a multiple of 8.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from biaslint.errors import ConfigError
from biaslint.rules import all_rules, plugged, rule_by_code
from biaslint.rules.pages import rule_page
from biaslint.rules.plugins import load_plugins
from biaslint.settings import PluginModule

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "plugin" / "acme_rules.py"
README = Path(__file__).resolve().parents[1] / "README.md"

# A hidden width of 100 (not a multiple of 8) on line 5; the good model's widths are aligned.
# No example inputs: the built-in rules that need a forward say so and judge nothing.
BAD = """\
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(16, 100), nn.ReLU(), nn.Linear(100, 24))
"""
GOOD = BAD.replace("100", "96")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the cwd) with the plugin module beside bad.py and good.py; every module
    the test imported from it is forgotten afterwards, so the next test imports its own copy."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "acme_rules.py")
    (folder / "bad.py").write_text(BAD)
    (folder / "good.py").write_text(GOOD)
    monkeypatch.chdir(folder)
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("acme_rules", "other_rules", "broken_rules", "bad", "good")):
            del sys.modules[name]


def _configure(folder: Path, body: str = "") -> None:
    (folder / "pyproject.toml").write_text(
        f'[tool.biaslint]\nplugins = ["acme_rules"]\n{textwrap.dedent(body)}')


def _codes(output: str) -> list[str]:
    return re.findall(r"^\S+:\d+:\d+: (\S+) ", output, re.M)


def _error_line(result) -> str:
    """The one ``biaslint: error:`` line of a usage error, exit 2, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("biaslint: error: "), result.stderr
    return lines[0]


# -- through [tool.biaslint] plugins ------------------------------------------------------------


def test_a_configured_plugin_rule_reports_and_sets_the_exit_code(cli, project):
    _configure(project)
    bad = cli("bad.py:build", "--select", "ACME")
    assert bad.exit_code == 1, bad.output
    assert _codes(bad.stdout) == ["ACME001"]
    line = bad.stdout.splitlines()[0]
    # Where the layer was written, what is wrong, and the fix.
    assert line.startswith("bad.py:5:") and "out_features 100 is not a multiple of 8" in line
    assert "fix: Make it 104 wide: out_features=104" in bad.stdout
    good = cli("good.py:build", "--select", "ACME001")
    assert good.exit_code == 0, good.output
    assert _codes(good.stdout) == []


def test_select_ignore_options_and_severity_reach_a_plugin_rule(cli, project):
    _configure(project)
    # Not selected, or ignored: not run (BL002 alone finds nothing in this model).
    assert "ACME001" not in cli("bad.py:build", "--select", "BL002").stdout
    assert "ACME001" not in cli("bad.py:build", "--ignore", "ACME001").stdout
    # Everything selected (the default): it runs beside the built-in rules.
    assert "ACME001" in _codes(cli("bad.py:build").stdout)
    # Its option, read from the file like a built-in rule's: 100 is a multiple of 4.
    _configure(project, "[tool.biaslint.rules.ACME001]\nmultiple = 4\n")
    assert cli("bad.py:build", "--select", "ACME").exit_code == 0
    _configure(project, "[tool.biaslint.rules.ACME001]\nmultipel = 4\n")
    assert "did you mean 'multiple'" in _error_line(cli("bad.py:build"))
    _configure(project, '[tool.biaslint.severity]\nACME001 = "info"\n')
    info = cli("bad.py:build", "--select", "ACME")
    assert info.exit_code == 0 and "ACME001 [info]" in info.stdout
    _configure(project, '[tool.biaslint.per-module-ignores]\n"0" = ["ACME"]\n')
    assert cli("bad.py:build", "--select", "ACME").exit_code == 0


def test_a_suppression_comment_names_a_plugin_rule(cli, project):
    _configure(project)
    model = ("import torch.nn as nn\n\n\ndef build():\n    return nn.Sequential(\n"
             "        nn.Linear(16, {width}),  # biaslint: ignore[ACME001]\n"
             "        nn.ReLU(), nn.Linear({width}, 24))\n")
    (project / "quiet.py").write_text(model.format(width=100))
    result = cli("quiet.py:build", "--select", "ACME001,BL100")
    assert result.exit_code == 0, result.output
    assert _codes(result.stdout) == []  # suppressed, and BL100 knows the code
    # The same comment on an aligned layer suppresses nothing, and BL100 says so.
    (project / "unused.py").write_text(model.format(width=96))
    assert _codes(cli("unused.py:build", "--select", "ACME001,BL100").stdout) == ["BL100"]
    # Without the plugin, ACME001 is no rule's code: BL100 says that of the first comment.
    (project / "pyproject.toml").unlink()
    unknown = cli("quiet.py:build", "--select", "BL100")
    assert _codes(unknown.stdout) == ["BL100"] and "ACME001" in unknown.stdout


def test_the_command_line_plugin_flag_needs_no_config(cli, project):
    assert "ACME001" not in cli("bad.py:build").stdout  # not named: not loaded
    result = cli("bad.py:build", "--plugin", "acme_rules", "--select", "ACME")
    assert result.exit_code == 1 and _codes(result.stdout) == ["ACME001"], result.output
    # A code of no rule loaded is refused as for the built-in ones.
    assert "'ACME001' matches no rule" in _error_line(cli("bad.py:build", "--select", "ACME001"))


def test_the_rule_listing_and_page_show_plugin_rules(cli, project):
    listing = cli("rules", "--plugin", "acme_rules")
    assert listing.exit_code == 0 and "ACME001" in listing.stdout and "BL001" in listing.stdout
    assert "ACME001" not in cli("rules").stdout
    _configure(project)
    assert "linear-width-unaligned" in cli("rules").stdout  # the file's plugins
    with plugged(load_plugins([PluginModule("acme_rules", str(project))])):
        rule = rule_by_code("ACME001")
        assert rule is not None
        page = rule_page(rule)
    shown = cli("rule", "acme001")
    assert shown.exit_code == 0 and shown.stdout == page


def test_reports_and_baselines_carry_plugin_findings(cli, project):
    _configure(project)
    sarif = json.loads(cli("bad.py:build", "--select", "ACME", "--format", "sarif").stdout)
    [run] = sarif["runs"]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert rules["ACME001"]["name"] == "linear-width-unaligned" and "BL001" in rules
    [found] = run["results"]
    assert found["ruleId"] == "ACME001" and run["tool"]["driver"]["rules"][
        found["ruleIndex"]]["id"] == "ACME001"
    data = json.loads(cli("bad.py:build", "--select", "ACME", "--format", "json").stdout)
    [finding] = data["results"][0]["findings"]
    assert finding["code"] == "ACME001" and finding["line"] == 5
    written = cli("bad.py:build", "--select", "ACME", "--write-baseline", "base.json")
    assert written.exit_code == 0 and "ACME001" in (project / "base.json").read_text()
    known = cli("bad.py:build", "--select", "ACME", "--baseline", "base.json")
    assert known.exit_code == 0 and _codes(known.stdout) == []


def test_a_plugin_rule_runs_in_an_isolated_process(cli, project):
    _configure(project)
    result = cli("bad.py:build", "good.py:build", "--select", "ACME", "--timeout", "300")
    assert result.exit_code == 1, result.output
    assert _codes(result.stdout) == ["ACME001"]


def test_check_takes_plugins_as_a_keyword(project):
    import biaslint

    sys.path.insert(0, str(project))
    try:
        from bad import build
    finally:
        sys.path.remove(str(project))
    report = biaslint.check(build(), plugins=["acme_rules"], select=["ACME"])
    assert [f.code for f in report.findings] == ["ACME001"] and report.exit_code == 1
    with pytest.raises(ConfigError, match="matches no rule"):
        biaslint.check(build(), select=["ACME"])


# -- through an installed package's entry point --------------------------------------------------


def _install(site: Path, value: str) -> None:
    """A distribution as pip leaves it: its module and its .dist-info with the entry point."""
    site.mkdir(exist_ok=True)
    shutil.copy(FIXTURE, site / "acme_rules.py")
    info = site / "acme_rules-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rules\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[biaslint.rules]\nacme = {value}\n")


@pytest.mark.parametrize("value", ["acme_rules:AlignedLinear", "acme_rules"])
def test_an_entry_point_adds_its_rules_without_configuration(cli, project, tmp_path,
                                                            monkeypatch, value):
    (project / "acme_rules.py").unlink()  # only the installed copy
    _install(tmp_path / "site", value)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    [point] = importlib.metadata.entry_points(group="biaslint.rules")
    assert point.value == value and point.dist is not None and point.dist.name == "acme-rules"
    result = cli("bad.py:build", "--select", "ACME001")
    assert result.exit_code == 1 and _codes(result.stdout) == ["ACME001"], result.output
    assert "ACME001" in cli("rules").stdout
    # Named as a plugin module too, it is the same rule, not a second one with its code.
    _configure(project)
    assert _codes(cli("bad.py:build", "--select", "ACME").stdout) == ["ACME001"]


def test_an_entry_point_that_is_no_rule_is_one_error_line(cli, project, tmp_path, monkeypatch):
    _install(tmp_path / "site", "acme_rules:Fix")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    line = _error_line(cli("bad.py:build"))
    assert "entry point acme = 'acme_rules:Fix' of acme-rules 0.1" in line
    assert "not a Rule subclass or a module" in line


# -- a plugin that is wrong: one line saying what, where and what to do -------------------------


def _write_plugin(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


RULE = FIXTURE.read_text()


@pytest.mark.parametrize("change, words", [
    (('code = "ACME001"', 'code = "BL001"'), "prefix BL, which is biaslint's own"),
    (('code = "ACME001"', 'code = "acme1"'), "'acme1' does not look like a rule code"),
    (('code = "ACME001"', 'code = "ACMEX001"'), "2-4 capital letters then 3 digits"),
    (('    why_bad = """', '    why_not = """'), "why_bad is missing or empty"),
    (('name = "linear-width-unaligned"', 'name = "Linear width"'), "not kebab-case"),
    (("severity = Severity.WARNING", 'severity = "warning"'), "severity must be"),
    (("    def check(", "    def judge("), "no check(self, model, context)"),
    (('class AlignedLinear(Rule):', 'class AlignedLinear:'), "defines no Rule subclass"),
    (('    fix_text = ', '    inputs = ("label_smoothing",)\n    fix_text = '),
     "reads the input(s) label_smoothing"),
])
def test_a_wrong_rule_is_one_error_line_naming_it(cli, project, change, words):
    _write_plugin(project, "broken_rules", RULE.replace(*change))
    (project / "pyproject.toml").write_text('[tool.biaslint]\nplugins = ["broken_rules"]\n')
    line = _error_line(cli("bad.py:build"))
    assert line.startswith("biaslint: error: pyproject.toml: tool.biaslint.plugins: ")
    assert words in line and "broken_rules" in line


def test_a_plugin_that_does_not_import_is_one_error_line(cli, project):
    (project / "pyproject.toml").write_text('[tool.biaslint]\nplugins = ["acme_rulez"]\n')
    line = _error_line(cli("bad.py:build"))
    assert "plugin module 'acme_rulez' cannot be imported (ModuleNotFoundError" in line
    assert "install it, or put it in" in line
    _write_plugin(project, "broken_rules", "import not_installed_xyz\n")
    line = _error_line(cli("bad.py:build", "--plugin", "broken_rules"))
    assert line.startswith("biaslint: error: --plugin broken_rules: ")
    assert "No module named 'not_installed_xyz'" in line
    assert "'acme rules' is not a module name" in _error_line(
        cli("bad.py:build", "--plugin", "acme rules"))


def test_debug_shows_the_traceback_of_a_plugin_that_does_not_import(cli, project):
    _write_plugin(project, "broken_rules", "raise RuntimeError('half-written')\n")
    result = cli("bad.py:build", "--plugin", "broken_rules", "--debug")
    assert result.exit_code == 2
    # The plugin's own line, which only the traceback shows.
    assert "Traceback" in result.stderr and "raise RuntimeError('half-written')" in result.stderr


def test_two_plugins_with_one_code_are_refused(cli, project):
    _write_plugin(project, "other_rules", RULE.replace("AlignedLinear", "OtherWidth"))
    (project / "pyproject.toml").write_text(
        '[tool.biaslint]\nplugins = ["acme_rules", "other_rules"]\n')
    line = _error_line(cli("bad.py:build"))
    assert "other_rules.OtherWidth" in line and "code ACME001 is taken by acme_rules." in line


def test_a_crashing_plugin_rule_is_blamed_on_its_plugin(cli, project):
    _write_plugin(project, "broken_rules", RULE.replace(
        "multiple = context.option(self, \"multiple\")", "multiple = 0"))
    result = cli("bad.py:build", "--plugin", "broken_rules", "--select", "ACME")
    assert result.exit_code == 2
    assert "a bug of the plugin rule broken_rules.AlignedLinear: report it to its authors" \
        in result.stderr + result.stdout


def test_the_loader_takes_only_the_public_rules_a_module_defines(project):
    _write_plugin(project, "other_rules", """\
        from acme_rules import AlignedLinear  # imported: not this module's
        from biaslint.rules import Rule


        class _Base(Rule):  # a shared base: private, not a rule
            pass
        """)
    with pytest.raises(ConfigError, match="defines no Rule subclass"):
        load_plugins([PluginModule("other_rules", str(project))], entry_points=False)
    [rule] = load_plugins([PluginModule("acme_rules", str(project))], entry_points=False)
    assert rule.code == "ACME001" and rule not in all_rules()
    with plugged([rule]):
        assert rule in all_rules() and rule_by_code("acme001") is rule
    assert rule not in all_rules()  # the block ended


# -- pages and example tests, as for the built-in rules -----------------------------------------


def test_the_page_generator_writes_a_plugin_rules_pages(project, capsys):
    from biaslint.rules.pages import main

    out = project / "docs"
    assert main([str(out), "--plugin", "acme_rules"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ACME001.md", "README.md"]
    [rule] = load_plugins([PluginModule("acme_rules", str(project))], entry_points=False)
    assert (out / "ACME001.md").read_text() == rule_page(rule)
    assert "[ACME001](ACME001.md)" in (out / "README.md").read_text()
    assert main([str(out), "--plugin", "acme_rules", "--check"]) == 0
    (out / "ACME001.md").write_text("edited\n")
    assert main([str(out), "--plugin", "acme_rules", "--check"]) == 1
    assert "--plugin acme_rules" in capsys.readouterr().err
    assert main([str(out), "--plugin", "acme_rulez"]) == 2
    assert "acme_rulez" in capsys.readouterr().err


def test_assert_examples_lints_a_plugin_rules_examples(project):
    from biaslint.testing import assert_examples

    [rule] = load_plugins([PluginModule("acme_rules", str(project))], entry_points=False)
    assert_examples(rule)

    class Swapped(rule):
        bad_example, good_example = rule.good_example, rule.bad_example

    with pytest.raises(AssertionError, match="bad_example does not trigger it"):
        assert_examples(Swapped)

    class Loud(rule):
        good_example = rule.bad_example

    with pytest.raises(AssertionError, match="good_example triggers it: 0: out_features 100"):
        assert_examples(Loud)


def test_the_readme_shows_the_tested_plugin():
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- plugin-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README: no plugin example block"
    assert match.group(1) == FIXTURE.read_text()
    assert 'plugins = ["acme_rules"]' in text
    assert '[project.entry-points."biaslint.rules"]\nacme = "acme_rules"' in text


def test_an_installed_plugin_in_a_real_process(project, tmp_path):
    """The command as users run it, in a process of its own, with the package on its path."""
    import os
    import subprocess

    (project / "acme_rules.py").unlink()
    _install(tmp_path / "site", "acme_rules:AlignedLinear")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path / "site")])}
    proc = subprocess.run([sys.executable, "-m", "biaslint", "bad.py:build", "--select",
                           "ACME001"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert _codes(proc.stdout) == ["ACME001"]


def test_an_edited_plugin_rule_keys_its_targets_anew(project):
    """``--changed-since`` keys a target's record with its settings: a plugin rule's source is
    part of them, so editing the rule lints again."""
    from biaslint.run.changes import settings_key
    from biaslint.settings import Settings, TargetConfig

    config, settings = TargetConfig("bad.py:build"), Settings()
    without = settings_key(config, settings, str(project))
    [rule] = load_plugins([PluginModule("acme_rules", str(project))], entry_points=False)
    with plugged([rule]):
        first = settings_key(config, settings, str(project))
        (project / "acme_rules.py").write_text(RULE.replace("multiple`", "multiple` (edited)"))
        edited = settings_key(config, settings, str(project))
    assert len({without, first, edited}) == 3
    assert settings_key(config, settings, str(project)) == without


def test_a_plugin_installed_between_two_lints_of_one_process_is_seen(project, tmp_path,
                                                                     monkeypatch):
    """The installed entry points are read once per lint, not three times (10 ms each), and
    read again when a folder on sys.path changes: a plugin installed from a notebook between
    two lints is seen by the second."""
    from biaslint.rules.plugins import entry_point_rules

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = entry_point_rules()
    assert "ACME001" not in {rule.code for rule, _ in before}
    calls = []
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: calls.append(kw) or real(**kw))
    assert entry_point_rules() == before and not calls  # nothing changed: not read again
    _install(site, "acme_rules:AlignedLinear")
    assert "ACME001" in {rule.code for rule, _ in entry_point_rules()}
    assert calls
