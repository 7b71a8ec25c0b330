"""The pipeline: load -> capture -> analyse -> rules, one target at a time.

This is the Python API: ``lint(TargetConfig("pkg.mod:build"))`` returns a ``TargetResult``.
``lint`` builds the target and hands it to ``lint_loaded``, which runs the steps of ``_Lint``;
what the rules could not judge is counted in ``biaslint.engine.unjudged``, and the findings
pass through ``biaslint.engine.post`` last.
"""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Callable, ContextManager, cast

from biaslint.engine import unjudged
from biaslint.engine.post import post_process, unfrozen
from biaslint.errors import BiaslintError, TargetError, memory_error, out_of_memory
from biaslint.findings import Finding, RuleScope, TargetResult
from biaslint.settings import Settings, TargetConfig

if TYPE_CHECKING:  # the pipeline's own types; importing them here would load torch
    from biaslint.analysis.model import AnalysedModel
    from biaslint.analysis.signal import Signal
    from biaslint.capture.trace import Capture
    from biaslint.load.build import ExampleInputs, LoadedTarget
    from biaslint.load.files import SourceFiles
    from biaslint.load.kept import KeptModel
    from biaslint.rules.base import Rule, RuleContext

# Called with the stage about to run ("build", "capture", "analysis", "rules"); the CLI's
# progress display listens. Optional, so ``lint(config, settings)`` stays the whole API.
StageCallback = Callable[[str], None]

# What a rule reads from the real forward on the example inputs: "forward", what it judges
# with (the rule does not run without one); "measure", what it checks its derived claims on
# (the rule runs without one, its claims then derived only); "output", the same, on what the
# model returns. See ``Rule.reads``.
_REAL_FORWARD = frozenset({"forward", "measure", "output"})


def lint(config: TargetConfig, settings: Settings = Settings(),
         on_stage: StageCallback | None = None) -> TargetResult:
    """Lint one target. User errors (bad target, failing build) raise ``BiaslintError``."""
    if not settings.record_sources:
        return _build_and_lint(config, settings, on_stage)
    from dataclasses import replace

    from biaslint.load.files import combined, recording_sources

    # The import and build run under a call tracer; the capture and the rules' forwards (a
    # few million Python calls for a large model, where a tracer would cost seconds) record
    # only the project modules they import and the files they open: the code they run is the
    # code the build defined or imported.
    build = recording_sources(config.target)
    rest = recording_sources(config.target, trace=False)
    seen: list[SourceFiles] = []
    result = _build_and_lint(config, settings, on_stage, (build, rest), seen)
    recording = combined(seen)
    return replace(result, sources=recording if recording.files is not None else None)


def _build_and_lint(config: TargetConfig, settings: Settings, on_stage: StageCallback | None,
                    scopes: tuple[ContextManager[SourceFiles | None], ...] | None = None,
                    seen: list[SourceFiles] | None = None) -> TargetResult:
    """Build the target under a fixed seed (nothing it changes leaks: working folder,
    environment, ``sys.path``, default device, warnings, RNG) and lint it; the build runs
    under ``scopes[0]``, the rest under ``scopes[1]``, and what each recorded goes to ``seen``."""
    from contextlib import nullcontext

    from biaslint.load.build import load_target
    from biaslint.load.guard import (
        compiled_code_eager,
        old_objects_frozen,
        preserved_state,
        target_scope,
    )

    build_scope, rest_scope = scopes or (nullcontext(), nullcontext())
    timings: dict[str, float] = {}
    try:
        with target_scope(), compiled_code_eager():
            if on_stage is not None:
                on_stage("build")
            with old_objects_frozen() as built, preserved_state():
                start = time.perf_counter()
                with build_scope as recorded:
                    loaded = load_target(config.target, config.input_shapes,
                                         device=getattr(config, "device", None),
                                         compare_config=compares_config(settings))
                if seen is not None and recorded is not None:
                    seen.append(recorded)
                timings["build"] = time.perf_counter() - start
                built()  # what the build imported and made lives as long as the lint
                with rest_scope as recorded:
                    result = lint_loaded(loaded, config, settings, timings, on_stage=on_stage)
                if seen is not None and recorded is not None:
                    seen.append(recorded)
                return result
    except BiaslintError:
        raise
    except Exception as exc:
        if out_of_memory(exc):  # the capture or an analysis: the same advice as the build
            raise memory_error(config.target, "the lint", exc) from exc
        raise


def compares_config(settings: Settings) -> bool:
    """Whether a selected rule reads the differential build (``Rule.reads`` "config")."""
    from biaslint.rules import plugged, selected
    from biaslint.rules.plugins import load_plugins

    with plugged(load_plugins(settings.plugins)):
        return any("config" in rule.reads for rule in selected(settings.select, settings.ignore))


def lint_loaded(loaded: LoadedTarget, config: TargetConfig, settings: Settings,
                timings: dict[str, float] | None = None,
                on_stage: StageCallback | None = None) -> TargetResult:
    """Capture, analyse and run the rules on an already built ``LoadedTarget``."""
    from biaslint.load.guard import (
        attention_fast_path_off,
        compiled_code_eager,
        old_objects_frozen,
        reentrant_checkpoints_plain,
    )
    from biaslint.load.kept import KeptModel
    from biaslint.load.unwritten import DRAWN_STD, drawn_in
    from biaslint.rules import plugged
    from biaslint.rules.plugins import load_plugins

    # The user's model comes back as it was, and every rule judges the values the build made,
    # even when the forward writes to its own parameters (see ``KeptModel``). The project's own
    # rules (``settings.plugins``, installed entry points) take part beside the built-in ones.
    # Memory the build never wrote reads as a fixed draw while the lint runs (and as it was
    # after): what it held differs from run to run, and so would every measurement through it.
    with drawn_in(loaded.model, loaded.unwritten_masks) as drawn:
        kept = KeptModel(loaded.model)
        with old_objects_frozen(), plugged(load_plugins(settings.plugins)), \
                attention_fast_path_off(), compiled_code_eager(), \
                reentrant_checkpoints_plain():
            try:
                result = _Lint(loaded, config, settings, kept, timings, on_stage).run()
            finally:
                kept.restore()
    if drawn:
        from dataclasses import replace

        result = replace(result, notes=(*result.notes, (
            f"the entries no call of the build wrote were read as fixed "
            f"trunc_normal(std={DRAWN_STD}) draws, the init BL012 suggests, not as what the "
            "memory held (it differs from run to run), so the other rules judged the model "
            f"as it trains once they are initialized: {'; '.join(drawn)}")))
    return result


def _inputs_hint(error: str) -> str:
    """What to do about example inputs the forward rejects."""
    if "Expected more than 1 value per channel when training" in error:
        # the rules measure in training mode, where BatchNorm needs a batch statistic
        return ("the example batch holds one sample, and BatchNorm in training mode (where "
                "biaslint measures) needs more than one value per channel: give a batch of 2 or "
                "more (--input-shape 2,..., or return (model, example_inputs) from the build)")
    return ("give inputs it accepts (--input-shape, one per positional input, :int for ids, or "
            "return (model, example_inputs) from the build)")


class _Lint:
    """One target through capture, analysis and the rules, collecting what it notes, what it
    could not judge and what it found. The model's values are put back after every forward."""

    def __init__(self, loaded: LoadedTarget, config: TargetConfig, settings: Settings,
                 kept: KeptModel, timings: dict[str, float] | None,
                 on_stage: StageCallback | None) -> None:
        from biaslint.rules import selected

        self.loaded, self.config, self.settings, self.kept = loaded, config, settings, kept
        self.stage: StageCallback = on_stage or (lambda name: None)
        self.timings = dict(timings or {})
        self.rules = [rule_cls() for rule_cls in selected(settings.select, settings.ignore)]
        self.notes: list[str] = []
        self.incomplete: list[str] = []
        self.findings: list[Finding] = []
        self.ran: list[str] = []  # the rules that ran to the end (BL100 reads it)
        self.scopes: list[RuleScope] = []

    def run(self) -> TargetResult:
        captured = self.capture()
        analysed, signal, signal_notes = self.analyse(captured)
        self.stage("rules")
        start = time.perf_counter()
        self.notes = [*self.loaded.notes, *captured.notes, *signal_notes]
        blocked = unjudged.blocked(analysed, captured.coverage,
                                   any("unwritten" in rule.explains for rule in self.rules))
        no_forward = analysed.no_forward()
        analysed.gradients_wanted = any("gradients" in rule.reads for rule in self.rules)
        if no_forward is None:
            self.forward(analysed)
        for rule in self.rules:
            self.judge(rule, analysed, blocked, no_forward)
        if analysed.forward_failure is not None:  # a rule's own forward, after the first ran
            self.incomplete.append(f"the real forward a rule read raised "
                                   f"{analysed.forward_failure}: what it would have measured "
                                   "was not judged")
        self.notes.extend(analysed.rule_notes)
        self.kept.restore()
        if self.kept.written:
            self.notes.append(f"the forward writes to {unjudged.listed(self.kept.written)}: "
                              "biaslint judged the values the build made and put them back "
                              "after every forward it ran")
        left = {(layer, reason) for scope in self.scopes for layer, reason in scope.unjudged}
        self.incomplete[:0] = unjudged.causes(analysed, left)
        self.timings["rules"] = time.perf_counter() - start
        self.timings.update(analysed.timings)  # the part of "rules" the measurements took
        return self.result(captured, signal)

    def capture(self) -> Capture:
        """The graph, captured on fake tensors; a forward that fails there is the target's
        error."""
        from biaslint.capture.trace import capture
        from biaslint.load.guard import preserved_state, user_code

        self.stage("capture")
        start = time.perf_counter()
        with preserved_state(seed=None), user_code(self.config.target, "the forward"):
            captured = capture(self.loaded, fallback=False,
                               values=any(rule.reads & _REAL_FORWARD for rule in self.rules))
        self.timings["capture"] = time.perf_counter() - start
        self.kept.restore()
        if captured.forward_error is not None:
            # A gate must not pass a model it could not run: inputs the forward rejects are the
            # user's to fix, like a build that raises.
            raise TargetError(
                f"{self.config.target}: the forward failed on the example inputs: "
                f"{captured.forward_error}; {_inputs_hint(str(captured.forward_error))}")
        return captured

    def analyse(self, captured: Capture) -> tuple[AnalysedModel, Signal | None, list[str]]:
        """The shared facts, and the signal curves when a report plots them."""
        from biaslint.analysis.model import AnalysedModel
        from biaslint.load.guard import preserved_state, user_code

        self.stage("analysis")
        start = time.perf_counter()
        analysed = AnalysedModel(captured)
        _ = analysed.layers  # the shared facts; rules add their own lazily
        self.timings["analysis"] = time.perf_counter() - start
        signal: Signal | None = None
        notes: list[str] = []
        if getattr(self.settings, "signal", False):  # for the reports, not for the rules
            start = time.perf_counter()
            with preserved_state(seed=None), user_code(self.config.target, "the forward"):
                signal = _signal(analysed, notes)
            self.kept.restore()
            self.timings["signal"] = time.perf_counter() - start
        return analysed, signal, notes

    def forward(self, analysed: AnalysedModel) -> None:
        """The real forward every rule reads from, then the census of layers a training-mode
        forward skips at random; a real forward that fails is the target's error."""
        from biaslint.load.guard import user_code

        _prefetch(analysed, self.rules, self.config, self.settings)
        self.kept.restore()
        with user_code(self.config.target, "the forward"):
            skipped = analysed.skipped_at_random()
        self.kept.restore()
        if analysed.census_failure is not None:
            self.notes.append("could not tell whether the layers the forward did not call are "
                              "skipped at random in training (LayerDrop): a forward under "
                              f"another seed raised {analysed.census_failure}; they are "
                              "counted as not called")
        if skipped:
            self.incomplete.append(unjudged.skipped_at_random(skipped))
        if analysed.forward_failure is not None:
            raise TargetError(
                f"{self.config.target}: the forward failed on the example inputs (run on real "
                f"tensors; the capture on fake tensors let it pass): {analysed.forward_failure};"
                f" {_inputs_hint(str(analysed.forward_failure))}")

    def judge(self, rule: Rule, analysed: AnalysedModel, blocked: dict[str, dict[str, str]],
              no_forward: str | None) -> None:
        """Run one rule; count what it judged. A rule that crashes is said, and the others
        still run."""
        if "forward" in rule.reads and no_forward is not None and not (
                "laws" in rule.reads and analysed.on_meta() and analysed.inputs_known):
            # It applies to nothing here, like BL005 without priors: said, not failed.
            self.notes.append(f"{rule.code} ({rule.name}) not run: it measures a real forward "
                              f"({no_forward})")
            self.scopes.append(RuleScope(rule.code, 0, ()))
            self.ran.append(rule.code)  # it ran on what it applies to: nothing
            return
        context = _context(rule, self.config, self.settings)
        crashed = self.check(rule, analysed, context)
        if rule.reads:
            scope = unjudged.judged(rule, analysed, context, blocked, crashed)
            self.scopes.append(scope)
            self.notes.extend(unjudged.declined_notes(rule, scope))

    def check(self, rule: Rule, analysed: AnalysedModel, context: RuleContext) -> str | None:
        """The rule's findings; how it crashed, or None."""
        from biaslint.load.guard import user_code
        from biaslint.rules import is_builtin, origin

        try:
            # Some rules run the forward again for real values (a head's logits).
            with user_code(self.config.target, "the forward"):
                self.findings.extend(rule.check(analysed, context))
            self.kept.restore()
            self.ran.append(rule.code)
            return None
        except BiaslintError:
            raise
        except Exception as exc:  # one crashing rule must not hide the others
            if out_of_memory(exc):
                raise memory_error(self.config.target, f"rule {rule.code}", exc) from exc
            detail = (traceback.format_exc() if self.settings.debug
                      else f"{type(exc).__name__}: {exc}")
            self.notes.append(f"rule {rule.code} crashed and was skipped: {detail}")
            crashed = f"{type(exc).__name__}: {exc}"
            whose = "an internal error, please report it" if is_builtin(type(rule)) else \
                f"a bug of the plugin rule {origin(type(rule))}: report it to its authors"
            self.incomplete.append(f"rule {rule.code} crashed ({whose}): {crashed}")
            return crashed

    def result(self, captured: Capture, signal: Signal | None) -> TargetResult:
        findings, frozen = unfrozen(self.findings, self.loaded.model)
        if frozen:
            self.notes.append(f"{len(frozen)} finding(s) on frozen parameters "
                              "(requires_grad=False) not reported: a layer nobody trains has "
                              f"no training to lose ({unjudged.listed(frozen)})")
        return TargetResult(
            target=self.config.target,
            findings=tuple(post_process(findings, self.settings, self.loaded, self.ran)),
            coverage=captured.coverage,
            notes=tuple(self.notes),
            incomplete=tuple(self.incomplete),
            rules=tuple(self.scopes),
            timings=self.timings,
            signal=signal,
        )


def _signal(analysed: AnalysedModel, notes: list[str]) -> Signal | None:
    """The signal-propagation curves, or None with a note saying why not."""
    from biaslint.analysis.signal import measure_signal, residual_boundaries

    missing = analysed.no_forward()
    if missing is not None:
        notes.append(f"signal propagation not measured: there is {missing}")
        return None
    # no_forward() is None: the inputs are known
    inputs = cast("ExampleInputs", analysed.loaded.inputs)
    not_called = set(analysed.capture.coverage.not_called)
    layers = [name for name in analysed.layers if name not in not_called]
    try:
        return measure_signal(analysed.model, inputs.args, inputs.kwargs, layers,
                              residual_boundaries(analysed))
    except Exception as exc:  # a plot we cannot draw is said, never a finding
        notes.append(f"signal propagation not measured: the forward and backward raised "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def _context(rule: Rule, config: TargetConfig, settings: Settings) -> RuleContext:
    from biaslint.rules import RuleContext

    return RuleContext(options=settings.rule_options.get(rule.code, {}),
                       inputs={name: config.inputs.get(name) for name in rule.inputs})


def _prefetch(analysed: AnalysedModel, rules: list[Rule], config: TargetConfig,
              settings: Settings) -> None:
    """One real forward for every rule that reads one, instead of one per rule: each rule says
    which layers' outputs it will read (and whether it reads the attention measure)."""
    names: list[str] = []
    attention = False
    for rule in rules:
        if not rule.reads & _REAL_FORWARD:
            continue
        try:
            layers, wants_attention = rule.forward_needs(analysed, _context(rule, config, settings))
        except Exception:  # the rule's own run reports its failure
            continue
        names.extend(layers)
        attention = attention or wants_attention
    from biaslint.load.guard import user_code

    # Always at least one real forward: the capture runs on fake tensors, which accept what
    # the real kernels refuse (a Long x Float matmul), and a forward that fails on the example
    # inputs is an error of the target, whatever the rules selected read.
    with user_code(config.target, "the forward"):
        analysed.prefetch(names, attention=attention, returned=True)
