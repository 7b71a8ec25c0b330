"""``--format github``: GitHub Actions workflow commands, one annotation per finding, or per
group of findings with one cause (``report.groups``), at the cause's place.

``::error file=F,line=L,endLine=E,col=C,title=T::MESSAGE`` (``::warning`` for warnings,
``::notice`` for info). GitHub requires escaping: in the message ``%``, CR and LF become
``%25``, ``%0D`` and ``%0A``; property values additionally escape ``:`` and ``,`` as ``%3A`` and
``%2C`` (the rules of @actions/core's ``escapeData`` / ``escapeProperty``).
"""

from __future__ import annotations

from typing import Sequence

from biaslint.findings import Severity, TargetResult
from biaslint.report.groups import Group, groups_of, short_layers

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(results: Sequence[TargetResult]) -> str:
    lines = []
    for result in results:
        if result.error:
            lines.append(_command("error", {"title": f"biaslint: {result.target}"},
                                  f"{result.target}: {result.error}"))
        for group in groups_of(result.findings):
            lines.append(_annotation(result.target, group))
    return "\n".join(lines) + ("\n" if lines else "")


def _annotation(target: str, group: Group) -> str:
    """One annotation per group of findings with one cause, at the cause's place."""
    finding = group.first
    props: dict[str, str] = {}
    loc = group.location
    if loc is not None:
        props["file"] = loc.file.replace("\\", "/")
        props["line"] = str(loc.line)
        if loc.end_line and loc.end_line != loc.line:
            props["endLine"] = str(loc.end_line)
        if loc.col:
            props["col"] = str(loc.col)
    props["title"] = f"{finding.code} {finding.name}" + \
        ("" if group.single else f" ({len(group.members)} layers)")
    if group.single:
        where = f"{finding.module or '<root>'} ({finding.module_type})"
    else:
        where = f"{short_layers(group.layers)} ({finding.module_type})"
    message = f"{group.headline()}\n{target}: {where}"
    fix = group.fix_text()
    if fix:
        message += f"\nfix: {fix}"
    return _command(_COMMAND[group.severity], props, message)


def _command(kind: str, props: dict[str, str], message: str) -> str:
    rendered = ",".join(f"{key}={escape_property(value)}" for key, value in props.items())
    return f"::{kind} {rendered}::{escape_data(message)}"
