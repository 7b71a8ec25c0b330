"""The command line. Click and nothing else: parsing, dispatch, exit codes.

Importing this module does not import torch, so ``--help``, ``--version``, ``rules`` and ``rule``
are fast. Settings merge defaults < ``[tool.biaslint]`` < command line (see ``config.py``).
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import click

from biaslint import __version__
from biaslint.errors import BiaslintError, ConfigError
from biaslint.findings import Severity

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
FORMATS = ("text", "json", "github", "sarif")

NO_TARGET = ("no target given and none configured: run biaslint MODULE:ATTR (e.g. biaslint "
             "mymodel:build), or list them in pyproject.toml under [tool.biaslint] as "
             "targets = [\"mymodel:build\"]")


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


def _split_codes(values: Sequence[str], option: str) -> tuple[str, ...]:
    from biaslint.config import known_prefix

    codes = tuple(c.strip().upper() for v in values for c in v.split(",") if c.strip())
    for code in codes:
        if not known_prefix(code):
            raise ConfigError(f"{option} {code}: matches no rule (biaslint rules lists them)")
    return codes


@dataclass(frozen=True)
class CheckOptions:
    """What was given on the command line; ``None`` / empty means "not given"."""

    targets: tuple[str, ...] = ()
    config: str | None = None
    input_shapes: tuple[str, ...] = ()
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    fmt: str | None = None
    output: str | None = None
    class_priors: str | None = None
    head: str | None = None
    baseline: str | None = None
    write_baseline: str | None = None
    quiet: bool = False
    debug: bool = False
    jobs: int = 1
    timeout: float | None = None


@main.command("check")
@click.argument("targets", nargs=-1)
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Read [tool.biaslint] from this file [default: nearest pyproject.toml "
                   "that has one].")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="D,D,...",
              help="Shape of a random example input, once per positional input "
                   "(e.g. --input-shape 2,3,224,224), when the target gives none.")
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
              help="Class priors for BL005: probabilities or counts, or @file (JSON, CSV/TXT, .npy).")
@click.option("--head", type=click.Choice(["softmax", "sigmoid"]), default=None,
              help="Classifier head kind for BL005 [default: softmax if K > 1, sigmoid if K = 1].")
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
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def check(targets: tuple[str, ...], config: str | None, input_shapes: tuple[str, ...],
          select: tuple[str, ...], ignore: tuple[str, ...], fail_on: str | None, fmt: str | None,
          output: str | None, class_priors: str | None, head: str | None, baseline: str | None,
          write_baseline: str | None, quiet: bool, jobs: int, timeout: float | None,
          debug: bool) -> None:
    """Lint the models that TARGETS build (or the targets configured in pyproject.toml)."""
    options = CheckOptions(targets, config, input_shapes, select, ignore, fail_on, fmt, output,
                           class_priors, head, baseline, write_baseline, quiet, debug, jobs,
                           timeout)
    try:
        code = _run_check(options)
    except BiaslintError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"biaslint: error: {exc}", err=True)
        code = EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a bug of ours: still exit 2, not Python's 1
        if debug:
            traceback.print_exc()
        click.echo(f"biaslint: error: internal error: {type(exc).__name__}: {exc}"
                   f"{'' if debug else ' (run with --debug for the traceback)'}", err=True)
        code = EXIT_ERROR
    sys.exit(code)


@dataclass(frozen=True)
class _Plan:
    """The merged run: targets to lint, settings, and where the report goes."""

    configs: tuple[Any, ...]
    settings: Any
    fmt: str
    workdir: str | None  # lint from the config's folder when the targets came from it


def _run_check(options: CheckOptions) -> int:
    if options.baseline and options.write_baseline:
        raise ConfigError("--baseline and --write-baseline do not go together: write the "
                          "baseline first, then check against it")
    # Resolve the user's paths before a possible chdir to the config's folder.
    output, baseline, write_to = (os.path.abspath(p) if p else None for p in
                                  (options.output, options.baseline, options.write_baseline))
    plan = _plan(options)
    # Report from there too: locations are relative to it and the text report reads the source.
    with _working_directory(plan.workdir):
        if (options.jobs > 1 or options.timeout is not None) and not options.debug:
            results = _lint_isolated(plan.configs, plan.settings, options.jobs, options.timeout,
                                     quiet=options.quiet)
        else:
            results = _lint_all(plan.configs, plan.settings, quiet=options.quiet)
        return _finish(results, plan, output, baseline, write_to, options.quiet)


def _plan(options: CheckOptions) -> _Plan:
    from biaslint.config import load_config
    from biaslint.settings import Settings, TargetConfig
    from biaslint.target import parse_shape, parse_target

    file = load_config(options.config)
    select = _split_codes(options.select, "--select") if options.select else file.select or ()
    ignore = _split_codes(options.ignore, "--ignore") if options.ignore else file.ignore or ()
    fail_on = Severity.parse(options.fail_on) if options.fail_on else \
        file.fail_on or Severity.WARNING
    settings = Settings(select=select, ignore=ignore, fail_on=fail_on,
                        severity_overrides=file.severity, rule_options=file.rule_options,
                        per_module_ignores=file.per_module_ignores, debug=options.debug)

    shapes = tuple(parse_shape(s) for s in options.input_shapes)
    priors = _priors(options.class_priors) if options.class_priors is not None else None
    configured = {t.target: t for t in file.targets}
    if options.targets:
        entries = [configured.get(t) for t in options.targets]
        names = list(options.targets)
        workdir = None
    elif file.targets:
        entries = list(file.targets)
        names = [t.target for t in file.targets]
        workdir = str(file.root)
    else:
        raise ConfigError(NO_TARGET)
    configs = []
    for name, entry in zip(names, entries):
        parse_target(name)
        # The command line wins over the target's table, which wins over the defaults.
        configs.append(TargetConfig(
            target=name,
            input_shapes=shapes or (entry.input_shapes if entry else ()),
            class_priors=priors if priors is not None else (
                _priors(entry.class_priors) if entry and entry.class_priors else None),
            head=options.head or (entry.head if entry else None),
        ))
    return _Plan(tuple(configs), settings, options.fmt or file.format or "text", workdir)


def _priors(text: str) -> tuple[float, ...]:
    from biaslint.priors import parse_priors

    return parse_priors(text)


@contextmanager
def _working_directory(path: str | None) -> Iterator[None]:
    if path is None or os.path.abspath(path) == os.getcwd():
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _lint_all(configs: Sequence[Any], settings: Any, quiet: bool = False) -> list[Any]:
    """Lint each target in turn; a target that fails to load becomes an error result."""
    from rich.console import Console

    from biaslint.engine import lint
    from biaslint.findings import TargetResult
    from biaslint.report.progress import target_progress

    results: list[TargetResult] = []
    err = Console(stderr=True, highlight=False, emoji=False)
    with target_progress(err, len(configs), enabled=False if quiet else None) as progress:
        for config in configs:
            on_stage = progress.start(config.target)
            try:
                results.append(lint(config, settings, on_stage=on_stage))
            except BiaslintError as exc:
                if settings.debug:
                    raise
                err.print(f"biaslint: error: {exc}", soft_wrap=True, markup=False)
                results.append(TargetResult(target=config.target, error=str(exc)))
            except Exception as exc:  # noqa: BLE001 - a bug of ours: say so, keep linting the rest
                if settings.debug:
                    raise
                message = (f"internal error while linting {config.target}: "
                           f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
                err.print(f"biaslint: error: {message}", soft_wrap=True, markup=False)
                results.append(TargetResult(target=config.target, error=message))
            progress.done()
    return results


def _lint_isolated(configs: Sequence[Any], settings: Any, jobs: int,
                   timeout: float | None, quiet: bool = False) -> list[Any]:
    """Lint each target in its own process; errors (load, crash, timeout) go to stderr."""
    from rich.console import Console

    from biaslint.parallel import lint_many
    from biaslint.report.progress import target_progress

    err = Console(stderr=True, highlight=False, emoji=False)
    with target_progress(err, len(configs), enabled=False if quiet else None) as progress:
        stage = progress.start(f"{min(jobs, len(configs))} at a time")

        def done(index: int) -> None:
            stage(f"({configs[index].target} finished)")
            progress.done()

        results = lint_many(configs, settings, jobs=jobs, timeout=timeout, on_done=done)
    for result in results:
        if result.error:
            where = "" if result.target in result.error else f"{result.target}: "
            click.echo(f"biaslint: error: {where}{result.error}", err=True)
    return results


def _finish(results: list[Any], plan: _Plan, output: str | None, baseline: str | None,
            write_to: str | None, quiet: bool) -> int:
    from rich.console import Console

    from biaslint.report import get_reporter
    from biaslint.report.text import print_results

    console = Console(highlight=False, emoji=False)
    failed_load = any(r.error for r in results)
    if write_to:
        from biaslint.baseline import write_baseline

        count = write_baseline(write_to, results)
        if not quiet:
            print_results(results, console, show_findings=False, errors_shown=True)
            console.print(f"baseline with {count} finding{'s' if count != 1 else ''} written "
                          f"to {_shown(write_to)}", highlight=False, markup=False)
        return EXIT_ERROR if failed_load else EXIT_CLEAN
    if baseline:
        from biaslint.baseline import apply_baseline, read_baseline

        results = list(apply_baseline(results, read_baseline(baseline)).results)

    if output:
        text = get_reporter(plan.fmt)(results)
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        if not quiet:
            print_results(results, console, show_findings=False, errors_shown=True)
            console.print(f"report written to {_shown(output)}", highlight=False, markup=False)
    elif plan.fmt == "text":
        if quiet:
            _print_findings_only(results, console)
        else:
            print_results(results, console, errors_shown=True)
    else:
        text = get_reporter(plan.fmt)(results)
        click.echo(text if text.endswith("\n") or not text else text + "\n", nl=False)

    if failed_load:
        return EXIT_ERROR
    worst = max((f.severity for r in results for f in r.findings), default=None)
    return EXIT_FINDINGS if worst is not None and worst >= plan.settings.fail_on else EXIT_CLEAN


def _print_findings_only(results: Sequence[Any], console: Any) -> None:
    # The text reporter adds a summary per target; --quiet wants one line per finding (errors
    # already went to stderr).
    for result in results:
        for finding in result.findings:
            loc = finding.location
            where = f"{loc.file}:{loc.line}:{loc.col}" if loc else "<unknown>"
            click.echo(f"{where}: {finding.code} [{finding.severity}] {finding.message}")


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


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
    from biaslint.docs import rule_page
    from biaslint.rules import rule_by_code

    rule = rule_by_code(code)
    if rule is None:
        click.echo(f"biaslint: error: no rule {code!r}; biaslint rules lists them", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(rule_page(rule), nl=False)
