"""The command line. Click and nothing else: parsing, dispatch, exit codes.

Importing this module does not import torch, so ``--help``, ``--version`` and ``rules`` are fast.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import click

from . import __version__
from .errors import BiaslintError
from .findings import Severity

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class _DefaultToCheck(click.Group):
    """``biaslint TARGET ...`` means ``biaslint check TARGET ...``."""

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
    biaslint rules                           list the rules
    biaslint rule CODE                       show a rule's documentation

    TARGET is pkg.module:attr or path/to/file.py:attr, where attr is a function or class that
    builds an nn.Module (or returns (module, example_inputs)), or a module instance.
    """


def _split_codes(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(c.strip().upper() for v in values for c in v.split(",") if c.strip())


@main.command("check")
@click.argument("targets", nargs=-1)
@click.option("--input-shape", "input_shapes", multiple=True, metavar="D,D,...",
              help="Shape of a random example input, once per positional input "
                   "(e.g. --input-shape 2,3,224,224), when the target gives none.")
@click.option("--select", multiple=True, metavar="CODES",
              help="Only these rule codes or prefixes (comma-separated).")
@click.option("--ignore", multiple=True, metavar="CODES", help="Skip these rule codes or prefixes.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
              help="Exit 1 when a finding is at or above this severity [default: warning].")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default=None,
              help="Output format [default: text].")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Write the report to this file; the terminal still gets the summary.")
@click.option("--class-priors", default=None, metavar="P,P,...|@FILE",
              help="Class priors for BL005: probabilities or counts, or @file (JSON, CSV/TXT, .npy).")
@click.option("--head", type=click.Choice(["softmax", "sigmoid"]), default=None,
              help="Classifier head kind for BL005 [default: softmax if K > 1, sigmoid if K = 1].")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def check(targets: tuple[str, ...], input_shapes: tuple[str, ...], select: tuple[str, ...],
          ignore: tuple[str, ...], fail_on: str | None, fmt: str | None, output: str | None,
          class_priors: str | None, head: str | None, debug: bool) -> None:
    """Lint the models that TARGETS build."""
    try:
        code = _run_check(targets, input_shapes, select, ignore, fail_on, fmt, output,
                          class_priors, head, debug)
    except BiaslintError as exc:
        if debug:
            raise
        click.echo(f"biaslint: error: {exc}", err=True)
        code = EXIT_ERROR
    sys.exit(code)


def _run_check(targets: tuple[str, ...], input_shapes: tuple[str, ...], select: tuple[str, ...],
               ignore: tuple[str, ...], fail_on: str | None, fmt: str | None, output: str | None,
               class_priors: str | None, head: str | None, debug: bool) -> int:
    from .settings import Settings, TargetConfig
    from .target import parse_shape, parse_target

    if not targets:
        raise BiaslintError("no target given: run biaslint MODULE:ATTR (e.g. "
                            "biaslint mymodel:build) or see biaslint --help")
    for text in targets:
        parse_target(text)
    shapes = tuple(parse_shape(s) for s in input_shapes)
    settings = Settings(select=_split_codes(select), ignore=_split_codes(ignore),
                        fail_on=Severity.parse(fail_on or "warning"), debug=debug)
    priors = None
    if class_priors is not None:
        from .priors import parse_priors

        priors = parse_priors(class_priors)
    configs = [TargetConfig(target=t, input_shapes=shapes, class_priors=priors, head=head)
               for t in targets]
    return _lint_and_report(configs, settings, fmt or "text", output)


def _lint_and_report(configs: Sequence[Any], settings: Any, fmt: str, output: str | None) -> int:
    from rich.console import Console

    from .engine import lint
    from .findings import TargetResult
    from .report import get_reporter
    from .report.text import print_results

    results: list[TargetResult] = []
    failed_load = False
    err = Console(stderr=True, highlight=False)
    for config in configs:
        try:
            results.append(lint(config, settings))
        except BiaslintError as exc:
            if settings.debug:
                raise
            failed_load = True
            err.print(f"biaslint: error: {exc}", soft_wrap=True, markup=False)
            results.append(TargetResult(target=config.target, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: say so, keep linting the rest
            if settings.debug:
                raise
            failed_load = True
            message = (f"internal error while linting {config.target}: "
                       f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
            err.print(f"biaslint: error: {message}", soft_wrap=True, markup=False)
            results.append(TargetResult(target=config.target, error=message))

    console = Console(highlight=False)
    if output:
        text = get_reporter(fmt)(results)
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        print_results(results, console, show_findings=False)
        console.print(f"report written to {output}", highlight=False)
    elif fmt == "text":
        print_results(results, console)
    else:
        click.echo(get_reporter(fmt)(results))

    if failed_load:
        return EXIT_ERROR
    worst = max((f.severity for r in results for f in r.findings), default=None)
    return EXIT_FINDINGS if worst is not None and worst >= settings.fail_on else EXIT_CLEAN


@main.command("rules")
def rules_command() -> None:
    """List the rules."""
    from rich.console import Console
    from rich.table import Table

    from .rules import all_rules

    table = Table(box=None, pad_edge=False)
    for column in ("code", "name", "severity", "summary"):
        table.add_column(column)
    for rule in all_rules():
        table.add_row(rule.code, rule.name, str(rule.severity), rule.summary)
    Console(highlight=False).print(table)


@main.command("rule")
@click.argument("code")
def rule_command(code: str) -> None:
    """Show the documentation of rule CODE."""
    from .docs import rule_page
    from .rules import rule_by_code

    rule = rule_by_code(code)
    if rule is None:
        click.echo(f"biaslint: error: no rule {code!r}; biaslint rules lists them", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(rule_page(rule))
