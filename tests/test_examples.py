"""The shipped examples: one model that makes every seed mistake, one that makes none."""

from __future__ import annotations

from pathlib import Path

import pytest

from biaslint.engine import lint
from biaslint.rules import all_rules
from biaslint.settings import TargetConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PRIORS = (0.9, 0.05, 0.03, 0.02)


@pytest.fixture(autouse=True)
def _in_examples(monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)


def test_every_registered_rule_fires_on_the_mistakes_example():
    result = lint(TargetConfig.of("examples/mistakes.py:build", class_priors=PRIORS))
    codes = {f.code for f in result.findings}
    expected = {r.code for r in all_rules() if r.code in {"BL001", "BL002", "BL003", "BL004",
                                                           "BL005"}}
    assert expected <= codes, (expected - codes, result.notes)
    assert all(f.location and f.location.file == "examples/mistakes.py" for f in result.findings)


def test_the_clean_example_is_clean():
    result = lint(TargetConfig.of("examples/clean.py:build", class_priors=PRIORS))
    assert result.findings == (), [f.message for f in result.findings]
    assert result.coverage is not None and result.coverage.ratio == 1.0


def test_the_readme_tour_shows_what_the_tool_prints():
    """The tour's findings (location and code of each) are the ones the command really gives."""
    import re

    from click.testing import CliRunner

    from biaslint.cli import main

    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A one-minute tour", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    command, shown = tour.strip().split("\n", 1)
    args = command.removeprefix("$ biaslint ").split()
    result = CliRunner().invoke(main, args)
    finding = re.compile(r"^(\S+:\d+:\d+): (BL\d{3}) \[(\w+)\]", re.M)
    assert result.exit_code == 1
    assert finding.findall(shown) == finding.findall(result.stdout)
    assert shown.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
