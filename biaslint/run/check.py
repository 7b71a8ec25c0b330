"""The run behind ``biaslint check``: merge the command line with ``[tool.biaslint]`` into a
plan, lint every target (in process, or each in its own process), apply the baseline, and hand
the results to the reporters. The CLI turns the outcome into an exit code.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import click

from biaslint.errors import BiaslintError, ConfigError
from biaslint.findings import Severity

if TYPE_CHECKING:
    from biaslint.run.reports import Report, Reports

# The format that plots signal propagation (one more forward and backward per target): measured
# when any of the run's reports is one, or when ``--signal`` asks (the json report then carries
# the curves). A CI gate reading JSON does not pay for a plot nobody looks at.
SIGNAL_FORMATS = ("html",)

NO_TARGET = ("no target given and none configured: run biaslint MODULE:ATTR (e.g. biaslint "
             "mymodel:build), or list them in pyproject.toml under [tool.biaslint] as "
             "targets = [\"mymodel:build\"]")


@dataclass(frozen=True)
class Outcome:
    """What the run found, for the exit code: a target could not be linted, and the worst
    severity among the findings that count (none when a baseline is written)."""

    failed: bool
    worst: Severity | None
    fail_on: Severity
    # Some selected rule did not judge part of a target, and that was not allowed.
    incomplete: bool = False


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the lint, after the reports of ``reported`` of the ``total`` targets were
    printed (the text and json-lines reports on stdout stream target by target; the others
    print nothing before the end)."""

    def __init__(self, reported: int, total: int) -> None:
        super().__init__(reported, total)
        self.reported = reported
        self.total = total


class CheckOptions:
    """What the check command was given: the targets, and by setting name
    (``biaslint.run.schema``) the values given, each parsed by its row. ``caller``: the Python
    entry point that gave them ("check_target"), None for the command line; errors name it.
    None, an empty list and an unset flag mean "not given"; a setting not given reads as its
    row's default."""

    def __init__(self, targets: Sequence[str] = (), *, caller: str | None = None,
                 **values: Any) -> None:
        from biaslint.run.schema import BY_NAME, Source, parse_values

        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
        self.targets = tuple(targets)
        values = {name: value for name, value in values.items() if not (
            value is None or value == () or (BY_NAME[name].is_flag and value is False))}

        def source(name: str, value: Any) -> Source:
            if caller is not None:
                return Source(f"biaslint.{caller} {name}={value!r}")
            row = BY_NAME[name]
            return Source(f"{row.flag} {' '.join(value) if row.multiple else value}")

        plugins = None
        if "plugins" not in values and any(BY_NAME[name].names_rules for name in values):
            # ``--select ACME001`` names a rule of the file's plugins.
            from biaslint.run.config import configured_plugins

            plugins = configured_plugins(values.get("config"))
        self.given: dict[str, Any] = parse_values(values, source, plugins)

    def __getattr__(self, name: str) -> Any:
        from biaslint.run.schema import BY_NAME

        if name not in BY_NAME:
            raise AttributeError(name)
        return self.given.get(name, BY_NAME[name].default)


@dataclass(frozen=True)
class Plan:
    """The merged run: targets to lint, settings, and the reports requested (``--format``
    or the file's ``format``; ``biaslint.run.reports.resolve`` adds ``--output``)."""

    configs: tuple[Any, ...]
    settings: Any
    reports: tuple[Report, ...]
    workdir: str | None  # lint from the config's folder when the targets came from it
    config_file: str | None = None  # the pyproject.toml read, if any


@contextmanager
def rules_in_force(plugins: Sequence[str] = (), config: str | None = None) -> Iterator[None]:
    """The rules ``biaslint rules`` and ``biaslint rule`` show take part in the block: the
    built-in ones, the installed entry points', and those of ``--plugin`` (else of the
    config file's ``plugins``)."""
    from biaslint.rules import plugged
    from biaslint.run.config import configured_plugins
    from biaslint.run.schema import plugin_rules

    given = CheckOptions(plugins=tuple(plugins), config=config).given
    modules = given["plugins"] if "plugins" in given else configured_plugins(config)
    with plugged(plugin_rules(modules)):
        yield


def run_check(options: CheckOptions) -> Outcome:
    if options.changed_since is not None and options.write_baseline:
        raise ConfigError("--changed-since and --write-baseline do not go together: a baseline "
                          "written from the changed targets alone would drop the others' "
                          "findings; write it from a full run")
    if options.baseline and options.write_baseline:
        raise ConfigError("--baseline and --write-baseline do not go together: write the "
                          "baseline first, then check against it")
    _reports_apart(options)
    # Resolve the user's paths before a possible chdir to the config's folder.
    baseline, write_to = (os.path.abspath(p) if p else None for p in
                          (options.baseline, options.write_baseline))
    if write_to:
        # Checked before the work: a lint that ends in "cannot write" wasted all of it.
        if not os.path.isdir(os.path.dirname(write_to)):
            raise ConfigError(f"--write-baseline {_shown(write_to)}: the folder "
                              f"{_shown(os.path.dirname(write_to))} does not exist; create it "
                              "or write somewhere else")
        if os.path.isdir(write_to):
            raise ConfigError(f"--write-baseline {_shown(write_to)} is a folder; give a file name")
    plan_ = plan(options)
    if options.shard is not None:  # before --changed-since: the split is of every target
        from biaslint.run.shard import shard_configs

        plan_ = dataclasses.replace(plan_, configs=shard_configs(
            plan_.configs, options.shard, options.shard_times, options.quiet))
    elif options.shard_times is not None:
        raise ConfigError("--shard-times goes with --shard K/N")
    from biaslint.run.reports import resolve

    # Each report's file is checked here too, before the work. A run that writes a baseline
    # or a diff writes no report (``_reports_apart``).
    reports = resolve(() if write_to or options.diff else plan_.reports, options.output,
                      baseline)
    from biaslint.rules import plugged
    from biaslint.run.schema import plugin_rules

    # The plugin rules take part in the whole run: the lint, the cache key, the reports.
    with plugged(plugin_rules(plan_.settings.plugins)):
        return _run_plan(plan_, options, reports, baseline, write_to)


def _reports_apart(options: CheckOptions) -> None:
    """``--write-baseline`` and ``--diff`` write no report (the baseline file is their output;
    the diff is stdout's): reports asked for on the command line with them are refused rather
    than dropped. The file's ``format`` stays for the runs that report."""
    asked = [row for row in ("fmt", "output") if row in options.given]
    for flag, given in (("--write-baseline", options.write_baseline), ("--diff", options.diff)):
        if given and asked:
            raise ConfigError(f"{flag} writes no report, so --format and --output do not go "
                              f"with it: run {flag} and the reports separately")


def _run_plan(plan_: Plan, options: CheckOptions, reports: Reports, baseline: str | None,
              write_to: str | None) -> Outcome:
    fixing = options.fix or options.diff
    plan_, tracking = _changed_since(plan_, options, record=not fixing)
    known = None
    if baseline:
        from biaslint.run.baseline import read_baseline

        known = read_baseline(baseline)  # a bad baseline file is refused before the work
    # The text report goes out target by target as each is done; machine formats, files and
    # baselines are one document written at the end.
    if options.unsafe_fixes and not fixing:
        raise ConfigError("--unsafe-fixes goes with --fix or --diff")
    if fixing and (write_to or baseline):
        raise ConfigError("--fix and --diff do not go with baselines: fix first, then write "
                          "or check the baseline")
    # -q streams too: its findings lines, target by target.
    streamed = reports.streamed
    stream = _Stream(len(plan_.configs), known, quiet=options.quiet, fmt=streamed) \
        if streamed and not (write_to or fixing) else None
    isolated = (options.jobs > 1 or options.timeout is not None) and not options.debug
    # Report from there too: locations are relative to it and the text report reads the source.
    with _working_directory(plan_.workdir):
        from rich.console import Console

        from biaslint.report.progress import target_progress

        err = Console(stderr=True, highlight=False, emoji=False)
        running = min(options.jobs, len(plan_.configs)) if isolated else 1
        try:
            with target_progress(err, len(plan_.configs), enabled=False if options.quiet
                                 else None, jobs=max(1, running)) as progress:
                if stream is not None:
                    stream.progress = progress  # reports go out above the live display
                if not plan_.configs:
                    results = []  # --changed-since skipped every target
                elif isolated:
                    results = _lint_isolated(plan_.configs, plan_.settings, options.jobs,
                                             options.timeout, progress=progress,
                                             on_result=stream)
                else:
                    results = _lint_all(plan_.configs, plan_.settings, progress=progress,
                                        on_result=stream)
        except KeyboardInterrupt:
            # Say what the user already has: the reports streamed before the Ctrl-C stand.
            raise Interrupted(len(stream.shown) if stream is not None else 0,
                              len(plan_.configs)) from None
        if stream is not None:
            stream.progress = None
        if tracking is not None and not fixing:
            _record(tracking, plan_, results, options.quiet)
        if stream is not None:
            stream.flush()
            results = stream.results(results)
        if fixing:
            return _fix(results, plan_, options, reports)
        outcome = _finish(results, plan_, reports, known, write_to, options.quiet,
                          printed=stream is not None)
    if tracking is not None and tracking.changes is not None and not options.quiet:
        total = len(plan_.configs) + tracking.skipped
        click.echo(f"biaslint: --changed-since {tracking.changes.ref}: linted "
                   f"{len(plan_.configs)} of {total} target{'s' if total != 1 else ''}, skipped "
                   f"{tracking.skipped} whose source files are unchanged", err=True)
    return outcome


def _changed_since(plan_: Plan, options: CheckOptions, record: bool) -> tuple[Plan, Any]:
    """Inside a git work tree, record each target's source files (``biaslint.run.changes``); with
    ``--changed-since``, drop the targets whose recorded files are unchanged, saying why each
    target is linted or skipped. Outside a work tree (and without the flag), the plan as is."""
    from dataclasses import replace

    from biaslint.run.changes import Tracking

    tracking = Tracking.start(options.changed_since, plan_.config_file, plan_.workdir)
    if tracking is None:
        return plan_, None
    configs = plan_.configs
    if tracking.changes is not None:
        configs, skipped, lines = tracking.select(configs, plan_.settings)
        tracking.skipped = len(skipped)
        for line in lines if not options.quiet else ():
            click.echo(f"biaslint: {line}", err=True)
    settings = replace(plan_.settings, record_sources=True) if record else plan_.settings
    return replace(plan_, configs=tuple(configs), settings=settings), tracking


def _record(tracking: Any, plan_: Plan, results: list[Any], quiet: bool) -> None:
    """Keep what the targets just linted ran, for a later ``--changed-since``."""
    if not tracking.record(plan_.configs, results, plan_.settings):
        return
    problem = tracking.write()
    if problem and tracking.changes is not None and not quiet:
        click.echo(f"biaslint: note: could not write the --changed-since cache "
                   f"{_shown(str(tracking.file))}: {problem}", err=True)


def _fix(results: list[Any], plan_: Plan, options: CheckOptions, reports: Reports) -> Outcome:
    """``--diff``: show what ``--fix`` would write, exit 1 if anything. ``--fix``: write it.

    Both first check every planned edit on a copy (``biaslint.run.verify``): only the fixes that
    pass are shown or written, and the lint of the checked copy is the report after ``--fix``
    (targets that import no edited file keep their first lint)."""
    import linecache

    from biaslint.fix.apply import plan_fixes, project_root, summary
    from biaslint.run.verify import verify
    from biaslint.sources import forget

    root = project_root(plan_.config_file)
    changes = plan_fixes(results, options.unsafe_fixes, root)
    failed = any(r.error for r in results)
    checked = ""
    verified = None
    if changes.texts:
        verified = verify(changes, results, plan_.configs, plan_.settings, root,
                          options.unsafe_fixes, max(1, options.jobs), options.timeout)
        kept = plan_fixes(results, options.unsafe_fixes, root, keep=verified.accepted)
        kept.skipped.extend((finding, f"the check on a copy failed: {why}")
                            for finding, why in verified.rejected)
        # What the first plan left out (a file changed since the build, an overlap, a file
        # that cannot be edited) was never checked, so the second plan drops it without a
        # word: say it as the first plan did.
        said = {id(f) for f in kept.applied} | {id(f) for f, _ in kept.skipped} | \
            {id(f) for _, _, fs in kept.refused for f in fs}
        kept.skipped.extend((f, why) for f, why in changes.skipped if id(f) not in said)
        kept.refused.extend((path, why, [f for f in fs if id(f) not in said])
                            for path, why, fs in changes.refused
                            if any(id(f) not in said for f in fs))
        changes = kept
        checked = "; ".join([f"{verified.builds} build{'s' if verified.builds != 1 else ''}, "
                             f"{verified.seconds:.1f} s", *verified.notes])
    if options.diff:
        click.echo(changes.diff(), nl=False)
        remaining = [f for r in results for f in r.findings
                     if not any(f is a for a in changes.applied)]
        click.echo(summary(changes, remaining, wrote=False, checked=checked), err=True)
        return Outcome(failed, Severity.ERROR if changes.texts else None, Severity.INFO)
    if changes.texts:
        assert verified is not None
        planned = set(changes.texts)
        written = changes.write()
        for path in written:
            forget(path)  # the report after --fix reads the new text
        linecache.checkcache()
        # A planned file left alone at the last moment (it changed while the fixes were
        # checked): the copy's lint of its targets counts fixes that were not written.
        unwritten = planned - set(written)
        results = [verified.results.get(index, result) for index, result in enumerate(results)]
        stale = [index for index in verified.affected if index not in verified.results
                 or verified.files.get(index, set()) & unwritten]
        if stale:  # a target the check built but did not lint: lint it as written
            again = _lint_isolated([plan_.configs[i] for i in stale], plan_.settings,
                                   max(1, options.jobs), options.timeout)
            for index, result in zip(stale, again):
                results[index] = result
    outcome = _finish(results, plan_, reports, None, None, options.quiet)
    remaining = [f for r in results for f in r.findings]
    click.echo(summary(changes, remaining, wrote=True, checked=checked), err=True)
    return outcome


class _Stream:
    """Prints each target's text report as soon as it is done: in the order the targets finish
    at a terminal, in the order they were given otherwise (a log or a file diffs the same every
    run), each as soon as it and every target before it are done. ``quiet``: only the findings
    lines (``-q``). ``fmt``: the report streamed, text or json-lines."""

    def __init__(self, count: int, known: Any = None, quiet: bool = False,
                 fmt: str = "text") -> None:
        from rich.console import Console

        self.console = Console(highlight=False, emoji=False)
        self.known = known
        self.quiet = quiet
        self.fmt = fmt
        self.ready: dict[int, Any] = {}
        self.shown: dict[int, Any] = {}
        self.next = 0
        self.count = count
        # The live display while it may be drawn: a report block must go out through it
        # (``TargetProgress.print_report``), or the block and the live line garble each other.
        self.progress: Any = None

    def __call__(self, index: int, result: Any) -> None:
        if self.known is not None:
            from biaslint.run.baseline import apply_baseline

            [result] = apply_baseline([result], self.known).results
        self.ready[index] = result
        if self.console.is_terminal:
            self._show(index)
        while self.next in self.ready:
            if self.next not in self.shown:
                self._show(self.next)
            self.next += 1

    def _show(self, index: int) -> None:
        from biaslint.report import get_reporter
        from biaslint.report.text import print_results

        result = self.shown[index] = self.ready[index]
        if self.quiet:  # no live display with -q: nothing to print around
            click.echo(get_reporter("findings" if self.fmt == "text" else self.fmt)([result]),
                       nl=False)
            return

        def write(console: Any) -> None:
            if self.fmt == "text":
                print_results([result], console, errors_shown=True)
            else:  # as rendered: no markup, no wrapping
                console.out(get_reporter(self.fmt)([result]), end="", highlight=False)

        if self.progress is not None:
            self.progress.print_report(self.console, write)
        else:
            write(self.console)

    def flush(self) -> None:
        for index in sorted(self.ready):
            if index not in self.shown:
                self._show(index)

    def results(self, fallback: list[Any]) -> list[Any]:
        """The results as reported (baseline applied), in the order of the targets."""
        return [self.shown.get(i, r) for i, r in enumerate(fallback)]


def plan(options: CheckOptions) -> Plan:
    """The run: the command line (or API) wins over ``[tool.biaslint]``, which wins over the
    defaults; per target, its own table sits between the file's values and what was given."""
    from biaslint.run.config import load_config
    from biaslint.run.schema import rows, run_settings, target_config
    from biaslint.target import parse_target

    file = load_config(options.config)
    # An unset flag is not "given" (CheckOptions drops it), so the file's value stands.
    values = {**file.values, **options.given}
    settings = run_settings(values)
    configured = {t["target"]: t for t in file.targets}
    if options.targets:
        entries = [configured.get(t, {"target": t}) for t in options.targets]
        workdir = None
    elif file.targets:
        entries = list(file.targets)
        workdir = str(file.root)
    else:
        raise ConfigError(NO_TARGET)
    per_target = [row.name for row in rows("target", "input")]
    configs = []
    for entry in entries:
        parse_target(entry["target"])
        # The command line wins over the target's table, which wins over the defaults.
        given = {name: options.given[name] for name in per_target if name in options.given}
        configs.append(target_config(entry["target"], {**entry, **given}))
    reports = values.get("fmt") or ()
    if any(report.fmt in SIGNAL_FORMATS for report in reports):
        settings = dataclasses.replace(settings, signal=True)
    return Plan(tuple(configs), settings, reports, workdir, str(file.path) if file.path else None)


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


def _lint_all(configs: Sequence[Any], settings: Any, progress: Any = None,
              on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Lint each target in turn; a target that fails to load becomes an error result.
    ``progress``: the live display (``report.progress.TargetProgress``), if any."""
    from biaslint.engine import lint
    from biaslint.findings import TargetResult
    from biaslint.report.progress import TargetProgress

    results: list[TargetResult] = []
    progress = progress or TargetProgress(None, len(configs))
    for index, config in enumerate(configs):
        on_stage = progress.start(config.target)
        try:
            results.append(lint(config, settings, on_stage=on_stage))
        except BiaslintError as exc:
            if settings.debug:
                raise
            progress.say(f"biaslint: error: {exc}")  # above the live display
            results.append(TargetResult(target=config.target, error=str(exc)))
        except Exception as exc:  # a bug of ours: say so, keep linting the rest
            if settings.debug:
                raise
            message = (f"internal error while linting {config.target}: "
                       f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
            progress.say(f"biaslint: error: {message}")
            results.append(TargetResult(target=config.target, error=message))
        progress.done()
        if on_result is not None:
            on_result(index, results[-1])
    return results


def _lint_isolated(configs: Sequence[Any], settings: Any, jobs: int,
                   timeout: float | None, progress: Any = None,
                   on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Lint each target in its own process; errors (load, crash, timeout) go to stderr. The
    live display (``progress``, if any) shows each running target at its stage."""
    from biaslint.report.progress import TargetProgress
    from biaslint.run.parallel import lint_many

    progress = progress or TargetProgress(None, len(configs))
    stages: dict[int, Callable[[str], None]] = {}

    def stage(index: int, name: str) -> None:
        if name == "start":
            stages[index] = progress.start(configs[index].target, key=index, stage="start")
        elif index in stages:
            stages[index](name)

    def done(index: int, result: Any) -> None:
        stages.pop(index, None)
        progress.done(key=index)
        if result.error:
            where = "" if result.target in result.error else f"{result.target}: "
            progress.say(f"biaslint: error: {where}{result.error}")
        if on_result is not None:
            on_result(index, result)

    return lint_many(configs, settings, jobs=jobs, timeout=timeout, on_done=done,
                     on_stage=stage)


def _finish(results: list[Any], plan: Plan, reports: Reports, baseline: Any,
            write_to: str | None, quiet: bool, printed: bool = False) -> Outcome:
    """Write the reports (unless ``printed``: stdout's already went out target by target,
    baseline applied) and decide the outcome. ``baseline``: the fingerprints read."""
    from rich.console import Console

    from biaslint.report.text import print_results

    console = Console(highlight=False, emoji=False)
    failed_load = any(r.error for r in results)
    if write_to:
        from biaslint.run.baseline import write_baseline

        count = write_baseline(write_to, results)
        if not quiet:
            print_results(results, console, show_findings=False, errors_shown=True)
            console.print(f"baseline with {count} finding{'s' if count != 1 else ''} written "
                          f"to {_shown(write_to)}", highlight=False, markup=False)
        return Outcome(failed_load, None, plan.settings.fail_on)
    if baseline is not None and not printed:
        from biaslint.run.baseline import apply_baseline

        results = list(apply_baseline(results, baseline).results)

    reports.write(results, quiet, printed)

    worst = max((f.severity for r in results for f in r.findings), default=None)
    incomplete = any(r.incomplete for r in results) and not plan.settings.allow_incomplete
    if incomplete:
        partial = [r for r in results if r.incomplete]
        click.echo(f"biaslint: error: analysis incomplete for {len(partial)} target(s) "
                   f"({partial[0].target}: {partial[0].incomplete[0]}); to accept an "
                   "incomplete analysis instead, pass --allow-incomplete (or "
                   "allow-incomplete = true)",
                   err=True)
    return Outcome(failed_load, worst, plan.settings.fail_on, incomplete)


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
