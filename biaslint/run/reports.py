"""Where the reports of one run go: ``--format FMT[=PATH]`` (repeatable), ``--output`` and
``[tool.biaslint] format``. One lint, any number of reports: each is rendered from the same
results at the end (the text report, and json-lines on stdout, stream target by target).

The rules, checked before the work (``resolve``):

* a format without a path goes to stdout; at most one may;
* when no format takes stdout, the text report stays there (streamed), unless a text report
  was sent to a file, in which case the terminal gets the per-target summary;
* ``--output PATH`` is the one-report spelling: with one format (given or from the file) it is
  that format's file, and the terminal gets the summary, as before several reports existed;
  with several formats it is refused (each names its own file instead);
* two reports never write one file, nor the ``--baseline`` file; a report's folder must exist.

No torch import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import click

from biaslint.errors import BiaslintError, ConfigError

# The formats printed target by target as each target is done, when on stdout.
STREAMED = ("text", "json-lines")


@dataclass(frozen=True)
class Report:
    """One requested report: its format, and its file (None: stdout). ``given``: how the user
    wrote it, to name it in a message ("--format sarif=a.sarif")."""

    fmt: str
    path: str | None = None
    given: str = ""

    @property
    def named(self) -> str:
        return self.given or f"--format {self.fmt}" + (f"={self.path}" if self.path else "")


@dataclass(frozen=True)
class Reports:
    """The reports of a run, resolved: ``files`` (absolute paths), and what stdout gets:
    ``stdout`` a format, or None for each target's summary line (the reports all went to
    files and one of them is the text report, or ``--output`` was given)."""

    files: tuple[Report, ...] = ()
    stdout: str | None = "text"

    @property
    def streamed(self) -> str | None:
        """The format printed on stdout target by target, if any."""
        return self.stdout if self.stdout in STREAMED else None

    def write(self, results: Sequence[Any], quiet: bool, printed: bool = False) -> None:
        """Write every file, then what stdout gets (unless ``printed``: it was streamed), then
        one line per file written (on stderr when stdout holds a machine-readable report)."""
        from rich.console import Console

        from biaslint.report import get_reporter
        from biaslint.report.text import print_results

        for report in self.files:
            text = get_reporter(report.fmt)(results)
            assert report.path is not None
            try:
                with open(report.path, "w", encoding="utf-8") as handle:
                    handle.write(text if not text or text.endswith("\n") else text + "\n")
            except OSError as exc:
                raise BiaslintError(f"{report.named}: cannot write {shown(report.path)}: "
                                    f"{exc.strerror or exc}") from None
        console = Console(highlight=False, emoji=False)
        if self.stdout is None:
            if not quiet:
                print_results(results, console, show_findings=False, errors_shown=True)
        elif printed:
            pass
        elif self.stdout == "text":
            if quiet:
                click.echo(get_reporter("findings")(results), nl=False)
            else:
                print_results(results, console, errors_shown=True)
        else:
            text = get_reporter(self.stdout)(results)
            click.echo(text if text.endswith("\n") or not text else text + "\n", nl=False)
        if not quiet:
            aside = self.stdout not in (None, "text")  # keep stdout one document
            for report in self.files:
                assert report.path is not None
                click.echo(f"report written to {shown(report.path)}", err=aside)


def resolve(requested: Sequence[Report], output: str | None,
            baseline: str | None = None) -> Reports:
    """The run's reports from those requested and ``--output``; paths made absolute (against
    the current directory: those from the config file already are). One ``ConfigError`` line
    for each combination that cannot be meant."""
    requested = list(requested) or [Report("text")]
    if output:
        if len(requested) > 1:
            raise ConfigError(
                f"--output names one file but {len(requested)} reports are requested ("
                + ", ".join(r.named for r in requested) + "); give each its own file instead: "
                "--format FMT=PATH")
        [only] = requested
        if only.path:
            raise ConfigError(f"--output {output} and {only.named} both name the file of the "
                              f"{only.fmt} report; give one")
        # The one-report form: the file, and the summary on the terminal.
        one = (Report(only.fmt, os.path.abspath(output), f"--output {output}"),)
        check_files(one, baseline)
        return Reports(one, None)
    on_stdout = [r for r in requested if r.path is None]
    if len(on_stdout) > 1:
        raise ConfigError(" and ".join(r.named for r in on_stdout) + " would each print on "
                          "stdout; give all but one of them a file: --format FMT=PATH")
    files = tuple(Report(r.fmt, os.path.abspath(r.path), r.named)
                  for r in requested if r.path is not None)
    check_files(files, baseline)
    if on_stdout:
        stdout: str | None = on_stdout[0].fmt
    else:
        stdout = None if any(r.fmt == "text" for r in files) else "text"
    return Reports(files, stdout)


def check_files(files: Sequence[Report], baseline: str | None) -> None:
    """Each report's file is its own, in a folder that exists (checked before the work: a lint
    that ends in "cannot write" wasted all of it)."""
    seen: dict[str, Report] = {}
    for report in files:
        path = report.path
        assert path is not None
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise ConfigError(f"{seen[key].named} and {report.named} write the same file "
                              f"{shown(path)}; give each report its own file")
        seen[key] = report
        if baseline and key == os.path.normcase(os.path.realpath(baseline)):
            raise ConfigError(f"{report.named} would overwrite the --baseline file "
                              f"{shown(path)}; write the report somewhere else")
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise ConfigError(f"{report.named}: the folder {shown(folder)} does not exist; "
                              "create it or write somewhere else")
        if os.path.isdir(path):
            raise ConfigError(f"{report.named}: that is a folder; give a file name")


def shown(path: str) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
