"""The Python API for a model you already hold: ``biaslint.check(model)``.

    with biaslint.recording():          # optional: records where each layer and init was written
        model = build(...)
    report = biaslint.check(model, torch.randn(2, 3, 224, 224))
    report                              # in Jupyter: the HTML report, signal plot included
    print(report)                       # the text report
    report.findings, report.ok, report.to_json()

``check`` runs the same pipeline as the command line from its second stage on (capture ->
analyse -> rules); the build already happened. Where construction was recorded
(``recording()``), findings point at the lines that built each layer, as on the command line;
otherwise at the model's class source (the ``self.x = ...`` line that made the layer, when it
can be found there).
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from biaslint.errors import ConfigError
from biaslint.findings import Finding, Severity, TargetResult

if TYPE_CHECKING:
    import torch.nn as nn

    from biaslint.load.sites import BuildRecord

class Recording:
    """What one ``with biaslint.recording():`` block saw being built."""

    def __init__(self) -> None:
        self.record: BuildRecord | None = None

    def covers(self, model: "nn.Module") -> bool:
        """Whether ``model`` (or one of its modules) was constructed inside the block."""
        return self.record is not None and any(
            self.record.site_of(m) is not None for m in model.modules())


@contextmanager
def recording() -> Iterator[Recording]:
    """Record where the code inside the block constructs each module and initializes each
    parameter; ``check`` then points its findings at those lines (a notebook cell's included).
    Torch is patched only inside the block and restored on the way out, even on an error."""
    from biaslint.load.held import remember
    from biaslint.load.sites import record_build

    handle = Recording()
    with record_build() as record:
        handle.record = record
        try:
            yield handle
        finally:
            remember(record)


@dataclass
class Report:
    """The outcome of ``check``: the findings, what was judged, and the reports as text,
    HTML and JSON."""

    results: tuple[TargetResult, ...]
    fail_on: Severity = Severity.WARNING
    allow_incomplete: bool = False

    @property
    def result(self) -> TargetResult:
        return self.results[0]

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    @property
    def failing(self) -> list[Finding]:
        """The findings at or above ``fail_on``: those that make ``ok`` false."""
        return [f for f in self.findings if f.severity >= self.fail_on]

    @property
    def incomplete(self) -> list[str]:
        """What the selected rules could not judge (an error of the target included)."""
        return [line for r in self.results
                for line in ((f"{r.target}: {r.error}",) if r.error else r.incomplete)]

    @property
    def ok(self) -> bool:
        """What exit 0 means on the command line: no failing finding, and everything judged
        (unless ``allow_incomplete``); an error is never ok."""
        if any(r.error for r in self.results):
            return False
        if self.failing:
            return False
        return self.allow_incomplete or not any(r.incomplete for r in self.results)

    @property
    def exit_code(self) -> int:
        """The command line's exit code for this outcome: 0, 1 (findings) or 2 (incomplete
        analysis, or an error)."""
        if any(r.error for r in self.results) or (
                not self.allow_incomplete and any(r.incomplete for r in self.results)):
            return 2
        return 1 if self.failing else 0

    @property
    def signal(self) -> Any:
        """The signal-propagation curves of the (first) target, or None."""
        return self.results[0].signal if self.results else None

    def to_json(self) -> str:
        from biaslint.report.json import render

        return render(self.results)

    def to_html(self) -> str:
        """The whole self-contained page (what ``--format html`` writes)."""
        from biaslint.report.html import render

        return render(self.results)

    def _repr_html_(self) -> str:
        from biaslint.report.html import fragment

        return fragment(self.results)

    def __str__(self) -> str:
        from biaslint.report.text import render_plain

        return render_plain(self.results)  # its summary says what was not judged, and why

    def __repr__(self) -> str:
        names = ", ".join(r.target for r in self.results)
        return (f"<biaslint.Report {names}: {len(self.findings)} finding(s), "
                f"{'ok' if self.ok else 'not ok'}>")


def check(model: "nn.Module", example_inputs: Any = None, *, name: str | None = None,
          recording: Recording | None = None, optimizer: Any = None,
          **settings: Any) -> Report:
    """Lint a model that is already built.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs
    (without them, ``model.example_input_array`` if the model has one, as Lightning modules
    do; else only what needs no forward is judged, and the report says what was not).
    ``name``: the target's name in the reports (default the model's class name and where it
    was defined, or the test that checks it under pytest: ``MyNet (models.py:12)``).
    ``recording``: a ``Recording`` to take sites from (default the newest ``recording()``
    block that built this model). ``optimizer``: the model's ``torch.optim`` optimizer (or a
    list of them), for the rules that read it (BL011: weight decay on biases and norms).

    Settings (all optional; the rows of ``biaslint.run.schema`` marked for ``check``):
    ``select``, ``ignore`` (codes or prefixes), ``fail_on`` ("error"/"warning"/"info"),
    ``class_priors``, ``head``, ``target_mean``, ``input_shapes`` (used when there are no
    example inputs), ``allow_incomplete``, ``severity`` ({code: severity}), ``rule_options``
    ({code: {option: value}}), ``per_module_ignores``, ``signal`` (measure signal
    propagation; default True), ``plugins`` (modules of the project's own rules, importable
    from the working directory; see ``biaslint.rules.plugins``).
    """
    import torch.nn as nn

    from biaslint.load.build import unwrap_compiled
    from biaslint.load.held import default_name, load_held
    from biaslint.run.schema import given, run_settings, target_config

    values = {"signal": True, **given(settings, "check")}
    if not isinstance(model, nn.Module):
        raise ConfigError(f"biaslint.check takes an nn.Module, not {type(model).__name__}: "
                          "for a target string use biaslint.testing.assert_clean or the CLI")
    compiled: list[str] = []
    model = unwrap_compiled(model, compiled)
    run = run_settings(values)
    config = target_config(str(name or default_name(model)), values)
    loaded = load_held(model, example_inputs, config.target, config.input_shapes,
                       recording.record if recording is not None else None, optimizer)
    loaded.notes[:0] = compiled
    return Report((_lint(loaded, config, run),), run.fail_on, run.allow_incomplete)


def _lint(loaded: Any, config: Any, settings: Any) -> TargetResult:
    from biaslint.engine import lint_loaded
    from biaslint.errors import BiaslintError
    from biaslint.load.guard import preserved_state

    try:
        with preserved_state():
            return lint_loaded(loaded, config, settings)
    except BiaslintError as exc:
        return TargetResult(target=config.target, error=str(exc))


def check_target(target: str, **settings: Any) -> Report:
    """Lint a target string (``pkg.mod:build``) as the command line would, with the
    ``[tool.biaslint]`` settings of the nearest pyproject.toml (given settings win; the rows
    of ``biaslint.run.schema`` marked for ``check_target``)."""
    from biaslint.engine import lint
    from biaslint.errors import BiaslintError
    from biaslint.run.check import CheckOptions, plan
    from biaslint.run.schema import python_keys

    known = python_keys("check_target")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ConfigError(f"biaslint.check_target: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    signal = settings.pop("signal", True)
    plan_ = plan(CheckOptions((target,), caller="check_target", **settings))
    plan_ = dataclasses.replace(plan_, settings=dataclasses.replace(
        plan_.settings, signal=bool(signal)))
    workdir = plan_.workdir
    before = os.getcwd()
    if workdir:
        os.chdir(workdir)
    try:
        config = plan_.configs[0]
        try:
            result = lint(config, plan_.settings)
        except BiaslintError as exc:
            result = TargetResult(target=config.target, error=str(exc))
    finally:
        os.chdir(before)
    return Report((result,), plan_.settings.fail_on, plan_.settings.allow_incomplete)
