"""Rule documentation as Markdown, generated from each rule's own docstrings and examples.

The pages in the top-level ``rules/`` folder are this output; a test fails when they drift.
"""

from __future__ import annotations

from .rules.base import Rule


def rule_page(rule: type[Rule]) -> str:
    lines = [
        f"# {rule.code} `{rule.name}`",
        "",
        f"Default severity: **{rule.severity}**. {rule.summary}.",
        "",
        "## What it does",
        "",
        rule.what_it_does.strip(),
        "",
        "## Why is this bad?",
        "",
        rule.why_bad.strip(),
        "",
        "## Example",
        "",
        "```python",
        rule.bad_example.rstrip(),
        "```",
        "",
        "## Use instead",
        "",
        "```python",
        rule.good_example.rstrip(),
        "```",
    ]
    if rule.fix_text:
        lines += ["", "## Fix", "", rule.fix_text.strip()]
    if rule.options:
        lines += ["", "## Options", ""]
        lines += [f"- `{o.name}` (default `{o.default!r}`): {o.help}" for o in rule.options]
    if rule.references:
        lines += ["", "## References", ""]
        lines += [f"- {ref}" for ref in rule.references]
    return "\n".join(lines) + "\n"
