"""Every rule's documented bad example triggers it and its good example does not (Fixit-style)."""

from __future__ import annotations

import pytest

from biaslint.rules import all_rules

RULES = all_rules()


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_bad_example_triggers(rule, lint_source):
    result = lint_source(rule.bad_example, select=(rule.code,), **dict(rule.example_target))
    assert result.error is None
    assert any(f.code == rule.code for f in result.findings), result.notes


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_good_example_is_quiet(rule, lint_source):
    result = lint_source(rule.good_example, select=(rule.code,), **dict(rule.example_target))
    assert [f for f in result.findings if f.code == rule.code] == []


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_rule_metadata(rule):
    import re

    assert re.fullmatch(r"BL\d{3}", rule.code)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule.name)
    assert rule.summary and rule.what_it_does.strip() and rule.why_bad.strip()
    assert "build" in rule.bad_example and "build" in rule.good_example
