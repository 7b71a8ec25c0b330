"""The command line. Click and nothing else: parsing, dispatch, exit codes.

Importing this module does not import torch, so ``--help``, ``--version``, ``rules`` and ``rule``
are fast; nor does ``check`` before the arguments and the configuration are checked, so a usage
error is told at once (torch loads with the first target). Settings merge defaults <
``[tool.biaslint]`` < command line (see ``config.py``).
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable

import click

from biaslint.errors import BiaslintError
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
    biaslint merge -o OUT FILE [FILE ...]    merge the reports of --shard runs

    TARGET is pkg.module:attr or path/to/file.py:attr, where attr is a function or class that
    builds an nn.Module (or returns (module, example_inputs)), or a module instance.
    """


def _schema_options(command: Callable[..., None]) -> Callable[..., None]:
    """The command's options, one per row of ``biaslint.run.schema`` that has a flag."""
    from biaslint.run.schema import SETTINGS

    for row in reversed([r for r in SETTINGS if r.flag]):
        names = [flag for flag in (row.short, row.flag) if flag] + [row.name]
        kind: Any = None
        if row.choices:
            kind = click.Choice(list(row.choices))
        elif row.number is int:
            kind = click.IntRange(min=1)
        elif row.number is float:
            kind = click.FloatRange(min=0, min_open=True)
        elif row.name in _PATHS:
            kind = click.Path(dir_okay=False)
        if row.is_flag and row.off_flag:
            on_off = f"{row.flag}/{row.off_flag}"
            command = click.option(on_off, row.name, default=None, help=row.help)(command)
        elif row.is_flag:
            command = click.option(*names, is_flag=True, help=row.help)(command)
        else:
            command = click.option(*names, type=kind, multiple=row.multiple, default=None,
                                   metavar=row.metavar, help=row.help)(command)
    return command


# The options that name a file.
_PATHS = ("config", "output", "baseline", "write_baseline")


@main.command("check")
@click.argument("targets", nargs=-1)
@_schema_options
def check(targets: tuple[str, ...], **options: Any) -> None:
    """Lint the models that TARGETS build (or the targets configured in pyproject.toml)."""
    from biaslint.process import interrupts, own_process

    if _OWN_PROCESS:
        own_process()
    debug = bool(options.get("debug"))
    warm = options.pop("warm", None)
    if options.get("watch"):  # here, without torch: each of its lints is warm
        _end(_watch(targets, options, debug))
    if _OWN_PROCESS and _warm(warm, options):
        _end(_lint_warm(debug))
    try:
        with interrupts():
            code = _exit_code(_run(targets, options))
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


def _warm(given: bool | None, options: dict[str, Any]) -> bool:
    """Whether to lint in a child of the warm server: ``--warm``/``--cold``, else the file's
    ``warm``; never from a child of it. A file that cannot be read is the cold run's to say."""
    from biaslint.process import is_warm_child

    if is_warm_child():
        return False
    if given is not None:
        return bool(given)
    from biaslint.run.config import load_config

    try:
        return bool(load_config(options.get("config")).values.get("warm", False))
    except BiaslintError:
        return False


def _lint_warm(debug: bool) -> int:
    from biaslint.serve.client import lint

    try:
        return lint(sys.argv[1:])
    except (BiaslintError, OSError) as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"biaslint: error: --warm: {exc}; run with --cold to lint in this process",
                   err=True)
        return EXIT_ERROR


def _watch(targets: tuple[str, ...], options: dict[str, Any], debug: bool) -> int:
    from biaslint.serve.watch import watch

    try:
        return watch(targets, options)
    except KeyboardInterrupt:
        return EXIT_CLEAN
    except BiaslintError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"biaslint: error: {exc}", err=True)
        return EXIT_ERROR


def _run(targets: tuple[str, ...], options: dict[str, Any]) -> Outcome:
    from biaslint.run.check import CheckOptions, run_check

    return run_check(CheckOptions(targets, **options))


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


def _exit_code(outcome: Outcome) -> int:
    if outcome.failed or outcome.incomplete:
        return EXIT_ERROR
    worst = outcome.worst
    return EXIT_FINDINGS if worst is not None and worst >= outcome.fail_on else EXIT_CLEAN


def _rule_sources(command: Callable[..., None]) -> Callable[..., None]:
    """``--plugin`` and ``--config`` for the commands that show rules: the rows' own flags."""
    from biaslint.run.schema import BY_NAME

    plugin, config = BY_NAME["plugins"], BY_NAME["config"]
    command = click.option(str(config.flag), "config", type=click.Path(dir_okay=False),
                           default=None, help=config.help)(command)
    return click.option(str(plugin.flag), "plugins", multiple=True, metavar=plugin.metavar,
                        help=plugin.help)(command)


def _showing_rules(plugins: tuple[str, ...], config: str | None, show: Callable[[], None]) -> None:
    """Run ``show`` with the project's plugin rules taking part; a plugin that cannot be
    loaded is one error line and exit 2."""
    from biaslint.run.check import rules_in_force

    try:
        with rules_in_force(plugins, config):
            show()
    except BiaslintError as exc:
        click.echo(f"biaslint: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)


@main.command("server")
@click.argument("action", type=click.Choice(["start", "status", "stop"]))
def server_command(action: str) -> None:
    """The warm server of this project (--warm, warm = true): start it now, show it, or stop
    it. It starts on its own when a lint asks for it and ends after 15 idle minutes."""
    from biaslint.serve import address, client

    if action == "start":
        path = address.socket_path(address.project_folder(), address.current_key())
        try:
            client.reach(path, client.IDLE).close()
        except (BiaslintError, OSError) as exc:
            click.echo(f"biaslint: error: server start: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        click.echo(f"biaslint: warm server listening on {path}")
    elif action == "stop":
        stopped = client.stop()
        click.echo(f"biaslint: stopped {len(stopped)} warm server(s)")
    else:
        found = client.status()
        if not found:
            click.echo("biaslint: no warm server for this project")
        for path, info in found:
            if info is None:
                click.echo(f"{path}: not answering")
            else:
                click.echo(f"{path}: pid {info['pid']}, {info['served']} lint(s) served, "
                           f"{info['running']} running, {info['modules']} modules loaded, "
                           f"{info['threads']} thread(s), ends after "
                           f"{info['idle_after']:.0f} s idle")


@main.command("lsp")
def lsp_command() -> None:
    """A language server on stdin and stdout (LSP): on save, the targets that read the file
    are linted warm and their findings shown at the lines that built the layers, with the
    fixes as code actions. Needs pygls: pip install 'biaslint[lsp]'."""
    try:
        from biaslint.serve.lsp import main as serve
    except ImportError as exc:
        click.echo(f"biaslint: error: biaslint lsp needs pygls ({exc}): pip install "
                   "'biaslint[lsp]'", err=True)
        sys.exit(EXIT_ERROR)
    serve()


@main.command("merge")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the merged file here [default: stdout].")
@click.option("-q", "--quiet", is_flag=True, default=False, help="Say nothing on stderr.")
def merge_command(files: tuple[str, ...], output: str | None, quiet: bool) -> None:
    """Merge the files of several shards (--shard K/N) into one: JSON reports, SARIF logs,
    baselines, or source caches (.biaslint_cache/sources.json, for --shard-times), all of
    one kind. A target in two reports is refused: shards never overlap."""
    from biaslint.run.merge import write_merged

    try:
        said = write_merged(files, output)
    except BiaslintError as exc:
        click.echo(f"biaslint: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    if not quiet:
        click.echo(f"biaslint: {said}", err=True)


@main.command("rules")
@_rule_sources
def rules_command(plugins: tuple[str, ...], config: str | None) -> None:
    """List the rules (the project's own too: --plugin, [tool.biaslint] plugins, installed
    biaslint.rules entry points)."""
    from rich.console import Console
    from rich.table import Table

    from biaslint.rules import all_rules

    def show() -> None:
        table = Table(box=None, pad_edge=False)
        for column in ("code", "name", "severity", "summary"):
            table.add_column(column)
        for rule in all_rules():
            table.add_row(rule.code, rule.name, str(rule.severity), rule.summary)
        Console(highlight=False, emoji=False).print(table)

    _showing_rules(plugins, config, show)


@main.command("rule")
@click.argument("code")
@_rule_sources
def rule_command(code: str, plugins: tuple[str, ...], config: str | None) -> None:
    """Show the documentation of rule CODE (the text of its page in rules/)."""
    from biaslint.rules import rule_by_code
    from biaslint.rules.pages import rule_page

    def show() -> None:
        rule = rule_by_code(code)
        if rule is None:
            click.echo(f"biaslint: error: no rule {code!r}; biaslint rules lists them", err=True)
            sys.exit(EXIT_ERROR)
        click.echo(rule_page(rule), nl=False)

    _showing_rules(plugins, config, show)
