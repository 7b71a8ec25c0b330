"""The command line. Click and nothing else: parsing, dispatch, exit codes.

Importing this module does not import torch, so ``--help``, ``--version``, ``rules`` and ``rule``
are fast; nor does ``check`` before the arguments and the configuration are checked, so a usage
error is told at once (torch loads with the first target). Settings merge defaults <
``[tool.biaslint]`` < command line (see ``config.py``).
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING

import click

from biaslint.errors import BiaslintError
from biaslint.report import FORMATS
from biaslint.version import __version__

if TYPE_CHECKING:
    from biaslint.run.check import Outcome

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT


class _DefaultToCheck(click.Group):
    """``biaslint TARGET ...`` (and plain ``biaslint``) means ``biaslint check ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands
                        and args[0] not in ("--help", "-h", "--version")):
            args = ["check", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToCheck, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="biaslint")
def main() -> None:
    """Lint a PyTorch model for bias and initialization mistakes.

    \b
    biaslint TARGET [TARGET ...] [options]   lint the models the targets build
    biaslint [options]                       lint the targets in [tool.biaslint]
    biaslint rules                           list the rules
    biaslint rule CODE                       show a rule's documentation

    TARGET is pkg.module:attr or path/to/file.py:attr, where attr is a function or class that
    builds an nn.Module (or returns (module, example_inputs)), or a module instance.
    """


@main.command("check")
@click.argument("targets", nargs=-1)
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Read [tool.biaslint] from this file [default: nearest pyproject.toml "
                   "that has one].")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="D,D,...",
              help="Shape of a random example input, once per positional input "
                   "(e.g. --input-shape 2,3,224,224), when the target gives none; "
                   "2,16:int (or 2,16:int<512) for integer ids such as tokens.")
@click.option("--select", multiple=True, metavar="CODES",
              help="Only these rule codes or prefixes (comma-separated).")
@click.option("--ignore", multiple=True, metavar="CODES", help="Skip these rule codes or prefixes.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
              help="Exit 1 when a finding is at or above this severity [default: warning].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format [default: text].")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write the report to this file; the terminal still gets the summary.")
@click.option("--class-priors", default=None, metavar="P,P,...|@FILE",
              help="Class priors for BL005: probabilities or counts, "
                   "or @file (JSON, CSV/TXT, .npy).")
@click.option("--head", type=click.Choice(["softmax", "sigmoid"]), default=None,
              help="Classifier head kind for BL005 [default: softmax if K > 1, sigmoid if K = 1].")
@click.option("--target-mean", default=None, metavar="M[,M,...]",
              help="Mean of the regression target for BL008: one number, or one per output.")
@click.option("--device", type=click.Choice(["cpu", "meta"]), default=None,
              help="Build the model on this device. meta: no parameter memory, so models of "
                   "any size lint on a laptop; values are read from the recorded init calls "
                   "[default: as the target builds it].")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None,
              help="Report and fail only on findings not recorded in this baseline file.")
@click.option("--write-baseline", type=click.Path(dir_okay=False), default=None,
              help="Record the current findings in this file (and exit 0 unless an error).")
@click.option("-q", "--quiet", is_flag=True,
              help="No summary, notes or progress: only the findings (text) or the report.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Lint this many targets at once, each in its own process.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS",
              help="Give up on a target after this long (each target then runs in its own "
                   "process, so a crash or hang costs only that target).")
@click.option("--changed-since", "changed_since", default=None, metavar="REF",
              help="Lint only the targets whose recorded source files (those their build and "
                   "forward ran, cached by earlier runs) differ from git REF; say which were "
                   "skipped and why. Exit by the linted targets.")
@click.option("--allow-incomplete", is_flag=True,
              help="Exit 0/1 by the findings even when part of a model could not be judged "
                   "(by default that is exit 2: a gate must not pass what it did not check).")
@click.option("--fix", is_flag=True,
              help="Apply the safe fixes to your files (bias=False where a norm cancels the "
                   "bias), then lint again and report what remains.")
@click.option("--unsafe-fixes", is_flag=True,
              help="With --fix or --diff: also apply fixes that change initial values (init "
                   "calls, forget-gate and prior biases).")
@click.option("--diff", is_flag=True,
              help="Print the diff --fix would write and write nothing; exit 1 if there is "
                   "something to change.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def check(targets: tuple[str, ...], config: str | None, input_shapes: tuple[str, ...],
          select: tuple[str, ...], ignore: tuple[str, ...], fail_on: str | None, fmt: str | None,
          output: str | None, class_priors: str | None, head: str | None, baseline: str | None,
          write_baseline: str | None, quiet: bool, jobs: int, timeout: float | None,
          allow_incomplete: bool, fix: bool, unsafe_fixes: bool, diff: bool,
          target_mean: str | None, device: str | None, changed_since: str | None,
          debug: bool) -> None:
    """Lint the models that TARGETS build (or the targets configured in pyproject.toml)."""
    from biaslint.process import interrupts, own_process
    from biaslint.run.check import CheckOptions, run_check

    if _OWN_PROCESS:
        own_process()

    options = CheckOptions(targets, config, input_shapes, select, ignore, fail_on, fmt, output,
                           class_priors, head, baseline, write_baseline, quiet, debug, jobs,
                           timeout, allow_incomplete, fix, unsafe_fixes, diff, device,
                           target_mean, changed_since)
    try:
        with interrupts():
            code = _exit_code(run_check(options))
    except KeyboardInterrupt as exc:
        click.echo(f"biaslint: interrupted (Ctrl-C): {_interrupted(exc)}", err=True)
        code = EXIT_INTERRUPTED
    except BiaslintError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"biaslint: error: {exc}", err=True)
        code = EXIT_ERROR
    except Exception as exc:  # a bug of ours: still exit 2, not Python's 1
        if debug:
            traceback.print_exc()
        click.echo(f"biaslint: error: internal error: {type(exc).__name__}: {exc}"
                   f"{'' if debug else ' (run with --debug for the traceback)'}", err=True)
        code = EXIT_ERROR
    _end(code)


def run() -> None:
    """The ``biaslint`` command (and ``python -m biaslint``): ``main`` in a process of its own."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    main()


_OWN_PROCESS = False


def _end(code: int) -> None:
    """Exit with ``code``. In biaslint's own process, once a lint imported torch, without
    tearing the interpreter down: with torch loaded that takes 0.5-0.8 s, which every commit's
    hook would wait for, and nothing of it is biaslint's. What an exit does for the user's code
    still happens: the ``atexit`` handlers run (logging's flush, ``weakref.finalize``,
    multiprocessing's cleanup) and the streams are flushed. While a thread the user's code
    started is still running, or a profiler or tracer watches the process (``python -m
    cProfile`` writes its figures after the program returns), the exit is the normal one."""
    import threading

    waiting = any(t.is_alive() and not t.daemon for t in threading.enumerate()
                  if t is not threading.main_thread())
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if not _OWN_PROCESS or "torch" not in sys.modules or waiting or watched:
        sys.exit(code)
    import atexit
    import os

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: nothing left to tell
                pass
        os._exit(code)


def _interrupted(exc: KeyboardInterrupt) -> str:
    """What the user has after a Ctrl-C: the text report streams target by target, so the
    reports printed before it stand."""
    from biaslint.run.check import Interrupted

    if isinstance(exc, Interrupted) and exc.reported:
        return (f"{exc.reported} of {exc.total} target{'s' if exc.total != 1 else ''} "
                "reported above, the others not")
    return "nothing was reported"


def _exit_code(outcome: "Outcome") -> int:
    if outcome.failed or outcome.incomplete:
        return EXIT_ERROR
    worst = outcome.worst
    return EXIT_FINDINGS if worst is not None and worst >= outcome.fail_on else EXIT_CLEAN


@main.command("rules")
def rules_command() -> None:
    """List the rules."""
    from rich.console import Console
    from rich.table import Table

    from biaslint.rules import all_rules

    table = Table(box=None, pad_edge=False)
    for column in ("code", "name", "severity", "summary"):
        table.add_column(column)
    for rule in all_rules():
        table.add_row(rule.code, rule.name, str(rule.severity), rule.summary)
    Console(highlight=False, emoji=False).print(table)


@main.command("rule")
@click.argument("code")
def rule_command(code: str) -> None:
    """Show the documentation of rule CODE (the text of its page in rules/)."""
    from biaslint.rules import rule_by_code
    from biaslint.rules.pages import rule_page

    rule = rule_by_code(code)
    if rule is None:
        click.echo(f"biaslint: error: no rule {code!r}; biaslint rules lists them", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(rule_page(rule), nl=False)
