"""The human report: one block per finding (location, code, severity, message, source, fix), one
per group of findings with one cause (``report.groups``: the count, the layers in short form,
one fix), and a summary per target."""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from biaslint.findings import Finding, Severity, TargetResult
from biaslint.report.groups import Group, groups_of, short_layers, where
from biaslint.sources import line_of

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def print_results(results: Sequence[TargetResult], console: Console,
                  show_findings: bool = True, errors_shown: bool = False) -> None:
    """``errors_shown``: each target's error already went to stderr as its one line, so the
    summary only says the target was not linted."""
    for result in results:
        for group in groups_of(result.findings) if show_findings else ():
            if group.single:
                _print_finding(group.first, console)
            else:
                _print_group(group, console)
        _print_summary(result, console, errors_shown)


def render_plain(results: Sequence[TargetResult]) -> str:
    console = Console(width=100, no_color=True, force_terminal=False, highlight=False,
                      emoji=False)
    with console.capture() as capture:
        print_results(results, console)
    return capture.get()


def _print_finding(finding: Finding, console: Console) -> None:
    label = finding.module or "<root>"
    _print_head(finding.location, finding.code, finding.severity,
                f"{finding.message}  ({label}: {finding.module_type})", console)
    wrap = console.is_terminal
    if finding.fix is not None:
        title = f"    fix: {finding.fix.title}" + (":" if finding.fix.code else "")
        code = finding.fix.code
        if wrap and code and len(title) + 1 + len(code) > console.width:
            # Code is never broken: on a narrow terminal it gets a line of its own.
            for line in _lines(title, console.width, 9, True):
                console.print(Text(line, style="green"), soft_wrap=True, highlight=False)
            console.print(Text(f"        {code}", style="bold"), soft_wrap=True, highlight=False)
            return
        fix = Text("    fix: ", style="green")
        fix.append(finding.fix.title)
        if code:
            fix.append(": ")
            fix.append(code, style="bold")
        console.print(fix, soft_wrap=True, highlight=False)


def _print_head(loc: Any, code: str, severity: Severity, message: str,
                console: Console) -> None:
    """The first lines of a finding or a group: place, code, severity, message, source line."""
    shown = where(loc)
    prefix = f"{shown}: {code} [{severity}] "
    style = _STYLE[severity]
    wrap = console.is_terminal  # files and pipes get one line per item, for grep and diff
    for index, line in enumerate(_lines(prefix + message, console.width, 4, wrap)):
        text = Text(line)
        if index == 0:
            text.stylize("bold", 0, len(shown))
            text.stylize(style, len(shown) + 2, len(prefix) - 1)
        console.print(text, soft_wrap=True, highlight=False)
    if loc is not None:
        source = line_of(loc.file, loc.line).rstrip()  # the text the build read
        if source:
            console.print(Text(f"    {loc.line:>4} | {source}", style="dim"), soft_wrap=True,
                          highlight=False)


def _print_group(group: Group, console: Console) -> None:
    """Findings of one rule with one cause: said once, with the count, the layers in short
    form and one fix."""
    first = group.first
    _print_head(group.location, group.code, group.severity,
                f"{group.headline()}  ({first.module_type})", console)
    wrap = console.is_terminal
    for line in _lines(f"    {group.noun} ({len(group.members)}): {short_layers(group.layers)}",
                       console.width, 8, wrap):
        console.print(Text(line, style="dim"), soft_wrap=True, highlight=False)
    fix = group.fix_text()
    if fix:
        for index, line in enumerate(_lines(f"    fix: {fix}", console.width, 9, wrap)):
            text = Text(line)
            if index == 0:
                text.stylize("green", 0, 8)
            console.print(text, soft_wrap=True, highlight=False)


def _lines(text: str, width: int, indent: int, wrap: bool) -> list[str]:
    """``text`` wrapped at ``width`` with a hanging indent, words never broken; one line when
    not wrapping."""
    if not wrap or len(text) <= width:
        return [text]
    import textwrap

    return textwrap.wrap(text, width=max(width, 40), subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False) or [text]


def _print_summary(result: TargetResult, console: Console, errors_shown: bool = False) -> None:
    if result.error:
        if errors_shown:
            console.print(f"[bold red]{escape(result.target)}: not linted[/] (error above)",
                          soft_wrap=True, highlight=False)
        else:
            console.print(f"[bold red]{escape(result.target)}: error:[/] {escape(result.error)}",
                          soft_wrap=True, highlight=False)
        return
    counts = {s: sum(1 for f in result.findings if f.severity is s) for s in Severity}
    parts = [f"{counts[s]} {s}" + ("s" if counts[s] != 1 else "")
             for s in (Severity.ERROR, Severity.WARNING, Severity.INFO) if counts[s]]
    found = ", ".join(parts) if parts else "no findings"
    cov = result.coverage
    coverage = ""
    if cov is not None:
        coverage = f"; coverage {cov.ratio:.0%} ({cov.traced}/{cov.total} layers traced)"
        if cov.not_called:
            coverage = (f"; coverage {cov.ratio:.0%} ({cov.traced}/{cov.total} called layers "
                        f"traced, {len(cov.not_called)} not called)")
    console.print(f"[bold]{escape(result.target)}[/]: {found}{escape(coverage)}", highlight=False,
                  soft_wrap=True)
    if cov is not None and cov.untraced:
        shown = ", ".join(cov.untraced[:6]) + (f" and {len(cov.untraced) - 6} more"
                                              if len(cov.untraced) > 6 else "")
        console.print(f"  not traced: {escape(shown)}", style="dim", highlight=False,
                      soft_wrap=True)
    if cov is not None and cov.not_called:
        shown = ", ".join(cov.not_called[:6]) + (f" and {len(cov.not_called) - 6} more"
                                                if len(cov.not_called) > 6 else "")
        console.print("  not called by the forward on these inputs, so outside the graph: "
                      f"{escape(shown)}",
                      style="dim", highlight=False, soft_wrap=True)
    partial = [scope for scope in result.rules if scope.unjudged]
    if partial:
        judged = ", ".join(f"{scope.code} {scope.judged} of {scope.total} layers"
                           for scope in partial)
        console.print(f"  judged only: {escape(judged)}; why the rest was not:",
                      style="bold yellow", soft_wrap=True, highlight=False)
    for part in result.incomplete:
        console.print(f"  not judged: {escape(part)}", style="bold yellow", soft_wrap=True,
                      highlight=False)
    for note in result.notes:
        console.print(f"  note: {escape(note)}", style="dim", soft_wrap=True, highlight=False)


def render_findings_only(results: Sequence[TargetResult]) -> str:
    """One line per finding and nothing else (``-q``; errors already went to stderr)."""
    lines = []
    for result in results:
        for group in groups_of(result.findings):
            lines.append(f"{where(group.location)}: {group.code} [{group.severity}] "
                         f"{group.headline()}\n")
    return "".join(lines)
