"""``--format github``: GitHub Actions workflow commands, one annotation per finding.

``::error file=F,line=L,endLine=E,col=C,title=T::MESSAGE`` (``::warning`` for warnings,
``::notice`` for info). GitHub requires escaping: in the message ``%``, CR and LF become
``%25``, ``%0D`` and ``%0A``; property values additionally escape ``:`` and ``,`` as ``%3A`` and
``%2C`` (the rules of @actions/core's ``escapeData`` / ``escapeProperty``).
"""

from __future__ import annotations

from typing import Sequence

from biaslint.findings import Finding, Severity, TargetResult

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
        for finding in result.findings:
            lines.append(_annotation(result.target, finding))
    return "\n".join(lines) + ("\n" if lines else "")


def _annotation(target: str, finding: Finding) -> str:
    props: dict[str, str] = {}
    loc = finding.location
    if loc is not None:
        props["file"] = loc.file.replace("\\", "/")
        props["line"] = str(loc.line)
        if loc.end_line and loc.end_line != loc.line:
            props["endLine"] = str(loc.end_line)
        if loc.col:
            props["col"] = str(loc.col)
    props["title"] = f"{finding.code} {finding.name}"
    module = finding.module or "<root>"
    message = f"{finding.message}\n{target}: {module} ({finding.module_type})"
    if finding.fix is not None:
        fix = finding.fix.title + (f": {finding.fix.code}" if finding.fix.code else "")
        message += f"\nfix: {fix}"
    return _command(_COMMAND[finding.severity], props, message)


def _command(kind: str, props: dict[str, str], message: str) -> str:
    rendered = ",".join(f"{key}={escape_property(value)}" for key, value in props.items())
    return f"::{kind} {rendered}::{escape_data(message)}"
