"""The top-level rules/ folder: one generated page per registered rule, kept in sync.

Regenerate with ``python -m biaslint.rules.pages rules`` (from the repository root).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from biaslint.rules import all_rules
from biaslint.rules.pages import (
    INDEX,
    expected_pages,
    page_name,
    rule_page,
    stale_pages,
    write_pages,
)

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "rules"
RULES = all_rules()
REGENERATE = "run `python -m biaslint.rules.pages rules` from the repository root"


def test_every_page_is_present_and_current():
    problems = stale_pages(PAGES)
    assert not problems, f"rule pages out of date: {problems}; {REGENERATE}"


def test_stale_missing_and_orphan_pages_are_detected(tmp_path):
    write_pages(tmp_path)
    assert stale_pages(tmp_path) == []
    first = page_name(RULES[0])
    (tmp_path / first).write_text((tmp_path / first).read_text() + "edited by hand\n")
    (tmp_path / page_name(RULES[-1])).unlink()
    (tmp_path / "BL999.md").write_text("# gone\n")
    problems = stale_pages(tmp_path)
    assert f"{first} (stale)" in problems
    assert f"{page_name(RULES[-1])} (missing)" in problems
    assert "BL999.md (no such rule)" in problems
    write_pages(tmp_path)
    assert stale_pages(tmp_path) == [] and not (tmp_path / "BL999.md").exists()


def test_generator_check_mode_exit_codes(tmp_path, capsys):
    from biaslint.rules.pages import main

    assert main([str(tmp_path), "--check"]) == 1
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0


def test_index_links_every_rule():
    index = expected_pages()[INDEX]
    for rule in RULES:
        assert f"[{rule.code}]({page_name(rule)})" in index


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_page_has_every_section(rule):
    page = rule_page(rule)
    assert page.startswith(f"# {rule.code} `{rule.name}`\n")
    assert f"**{rule.severity}**" in page and rule.summary in page
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
        assert heading in page
    if rule.fix_text:
        assert "## Fix" in page
    for option in rule.options:
        assert f"`{option.name}`" in page
    for reference in rule.references:
        assert reference in page


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_biaslint_rule_prints_the_page(rule, cli):
    result = cli("rule", rule.code.lower())
    assert result.exit_code == 0
    assert result.output == rule_page(rule)


def _code_block(page: str, heading: str) -> str:
    match = re.search(rf"^{re.escape(heading)}\n\n```python\n(.*?)\n```$", page, re.S | re.M)
    assert match, f"no python block under {heading!r}"
    return match.group(1) + "\n"


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_examples_on_the_page_run(rule, lint_source):
    """Lint the code exactly as the checked-in page shows it: bad triggers, good does not."""
    path = PAGES / page_name(rule)
    if not path.is_file():
        pytest.fail(f"{path.name} missing; {REGENERATE}")
    page = path.read_text(encoding="utf-8")
    options = dict(rule.example_target)
    bad = lint_source(_code_block(page, "## Example"), select=(rule.code,), **options)
    assert bad.error is None
    assert any(f.code == rule.code for f in bad.findings), (rule.code, bad.notes)
    good = lint_source(_code_block(page, "## Use instead"), select=(rule.code,), **options)
    assert [f for f in good.findings if f.code == rule.code] == []
