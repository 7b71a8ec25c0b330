"""The pipeline: load -> capture -> analyse -> rules, one target at a time.

This is the Python API: ``lint(TargetConfig("pkg.mod:build"))`` returns a ``TargetResult``.
"""

from __future__ import annotations

import fnmatch
import time
import traceback
from typing import TYPE_CHECKING, Callable, Iterable, cast

from biaslint.errors import BiaslintError, TargetError, memory_error, out_of_memory
from biaslint.findings import Finding, RuleScope, TargetResult
from biaslint.settings import Settings, TargetConfig

if TYPE_CHECKING:  # the pipeline's own types; importing them here would load torch
    import torch.nn as nn

    from biaslint.analysis.model import AnalysedModel
    from biaslint.analysis.signal import Signal
    from biaslint.findings import Coverage
    from biaslint.load.build import ExampleInputs, LoadedTarget
    from biaslint.load.kept import KeptModel
    from biaslint.rules.base import Rule, RuleContext

# Called with the stage about to run ("build", "capture", "analysis", "rules"); the CLI's
# progress display listens. Optional, so ``lint(config, settings)`` stays the whole API.
StageCallback = Callable[[str], None]


def lint(config: TargetConfig, settings: Settings = Settings(),
         on_stage: StageCallback | None = None) -> TargetResult:
    """Lint one target. User errors (bad target, failing build) raise ``BiaslintError``."""
    if not settings.record_sources:
        return _lint(config, settings, on_stage)
    from dataclasses import replace

    from biaslint.load.files import combined, recording_sources

    # The import and build run under a call tracer; the capture and the rules' forwards (a
    # few million Python calls for a large model, where a tracer would cost seconds) record
    # only the project modules they import and the files they open: the code they run is the
    # code the build defined or imported.
    build = recording_sources(config.target)
    rest = recording_sources(config.target, trace=False)
    seen: list = []
    result = _lint(config, settings, on_stage, (build, rest), seen)
    recording = combined(seen)
    return replace(result, sources=recording if recording.files is not None else None)


def _lint(config: TargetConfig, settings: Settings,
          on_stage: StageCallback | None, scopes: tuple = (), seen: list | None = None
          ) -> TargetResult:
    from biaslint.load.guard import target_scope

    with target_scope():
        try:
            return _lint_scoped(config, settings, on_stage, scopes, seen)
        except BiaslintError:
            raise
        except Exception as exc:
            if out_of_memory(exc):  # the capture or an analysis: the same advice as the build
                raise memory_error(config.target, "the lint", exc) from exc
            raise


def _lint_scoped(config: TargetConfig, settings: Settings,
                 on_stage: StageCallback | None, scopes: tuple = (), seen: list | None = None
                 ) -> TargetResult:
    from contextlib import nullcontext

    from biaslint.load.build import load_target
    from biaslint.load.guard import old_objects_frozen, preserved_state

    build_scope, rest_scope = scopes or (nullcontext(), nullcontext())
    timings: dict[str, float] = {}
    if on_stage is not None:
        on_stage("build")
    # the build runs under a fixed seed; nothing it changes leaks
    with old_objects_frozen() as built, preserved_state():
        start = time.perf_counter()
        with build_scope as recorded:
            loaded = load_target(config.target, config.input_shapes,
                                 device=getattr(config, "device", None))
        if seen is not None:
            seen.append(recorded)
        timings["build"] = time.perf_counter() - start
        built()  # what the build imported and made lives as long as the lint
        with rest_scope as recorded:
            result = lint_loaded(loaded, config, settings, timings, on_stage=on_stage)
        if seen is not None:
            seen.append(recorded)
        return result


def lint_loaded(loaded: LoadedTarget, config: TargetConfig, settings: Settings,
                timings: dict[str, float] | None = None,
                on_stage: StageCallback | None = None) -> TargetResult:
    """Capture, analyse and run the rules on an already built ``LoadedTarget``."""
    from biaslint.load.guard import old_objects_frozen
    from biaslint.load.kept import KeptModel

    # The user's model comes back as it was, and every rule judges the values the build made,
    # even when the forward writes to its own parameters (see ``KeptModel``).
    kept = KeptModel(loaded.model)
    with old_objects_frozen():
        try:
            return _lint_loaded(loaded, config, settings, timings, on_stage, kept)
        finally:
            kept.restore()


def _lint_loaded(loaded: LoadedTarget, config: TargetConfig, settings: Settings,
                 timings: dict[str, float] | None,
                 on_stage: StageCallback | None, kept: KeptModel) -> TargetResult:
    from biaslint.analysis.model import AnalysedModel
    from biaslint.capture.trace import capture
    from biaslint.load.guard import preserved_state, user_code
    from biaslint.rules import selected

    stage = on_stage or (lambda name: None)
    timings = dict(timings or {})
    rules = [rule_cls() for rule_cls in selected(settings.select, settings.ignore)]
    stage("capture")
    start = time.perf_counter()
    with preserved_state(seed=None), user_code(config.target, "the forward"):
        captured = capture(loaded, fallback=False,
                           values=any(rule.reads & _REAL_FORWARD for rule in rules))
    timings["capture"] = time.perf_counter() - start
    kept.restore()
    if captured.forward_error is not None:
        # A gate must not pass a model it could not run: inputs the forward rejects are the
        # user's to fix, like a build that raises.
        raise TargetError(
            f"{config.target}: the forward failed on the example inputs: "
            f"{captured.forward_error}; give inputs it accepts (--input-shape, one per "
            "positional input, or return (model, example_inputs) from the build)")

    stage("analysis")
    start = time.perf_counter()
    analysed = AnalysedModel(captured)
    _ = analysed.layers  # the shared facts; rules add their own lazily
    timings["analysis"] = time.perf_counter() - start
    signal: Signal | None = None
    signal_notes: list[str] = []
    if getattr(settings, "signal", False):  # for the reports that plot it, not for the rules
        start = time.perf_counter()
        with preserved_state(seed=None), user_code(config.target, "the forward"):
            signal = _signal(analysed, signal_notes)
        kept.restore()
        timings["signal"] = time.perf_counter() - start

    stage("rules")
    start = time.perf_counter()
    notes = list(loaded.notes) + list(captured.notes)
    notes.extend(signal_notes)
    blocked = _blocked(analysed, captured.coverage)
    incomplete: list[str] = []
    findings: list[Finding] = []
    ran: list[str] = []
    scopes: list[RuleScope] = []
    no_forward = _no_forward(analysed)
    if no_forward is None:
        _prefetch(analysed, rules, config, settings)
        kept.restore()
        with user_code(config.target, "the forward"):
            skipped = analysed.skipped_at_random()
        kept.restore()
        if analysed.census_failure is not None:
            notes.append("could not tell whether the layers the forward did not call are "
                         "skipped at random in training (LayerDrop): a forward under another "
                         f"seed raised {analysed.census_failure}; they are counted as not "
                         "called")
        if skipped:
            # trained, yet outside every graph: a pass would claim what nobody looked at
            incomplete.append(
                f"{len(skipped)} layer(s) the training-mode forward skipped at random on the "
                "example inputs (LayerDrop or stochastic depth: other seeds run them), so no "
                "rule judged them: turn the layer drop off for the lint (e.g. layerdrop=0.0 "
                f"in the model's config) ({_listed(skipped)})")
        if analysed.forward_failure is not None:
            raise TargetError(
                f"{config.target}: the forward failed on the example inputs (run on real "
                f"tensors; the capture on fake tensors let it pass): {analysed.forward_failure};"
                " give inputs it accepts (--input-shape, one per positional input, :int for "
                "ids, or return (model, example_inputs) from the build)")
    for rule in rules:
        if "forward" in rule.reads and no_forward is not None:
            # It applies to nothing here, like BL005 without priors: said, not failed.
            notes.append(f"{rule.code} ({rule.name}) not run: it measures a real forward "
                         f"({no_forward})")
            scopes.append(RuleScope(rule.code, 0, ()))
            ran.append(rule.code)  # it ran on what it applies to: nothing
            continue
        context = _context(rule, config, settings)
        crashed = None
        try:
            # Some rules run the forward again for real values (a head's logits).
            with user_code(config.target, "the forward"):
                findings.extend(rule.check(analysed, context))
            kept.restore()
            ran.append(rule.code)
        except BiaslintError:
            raise
        except Exception as exc:  # one crashing rule must not hide the others
            if out_of_memory(exc):
                raise memory_error(config.target, f"rule {rule.code}", exc) from exc
            detail = traceback.format_exc() if settings.debug else f"{type(exc).__name__}: {exc}"
            notes.append(f"rule {rule.code} crashed and was skipped: {detail}")
            crashed = f"{type(exc).__name__}: {exc}"
            incomplete.append(f"rule {rule.code} crashed (an internal error, please report it): "
                              f"{crashed}")
        if rule.reads:
            scope = _judged(rule, analysed, context, blocked, crashed)
            scopes.append(scope)
            notes.extend(_declined_notes(rule, scope))
    if analysed.forward_failure is not None:  # a rule's own forward, after the first one ran
        incomplete.append(f"the real forward a rule read raised {analysed.forward_failure}: "
                          "what it would have measured was not judged")
    notes.extend(analysed.rule_notes)
    kept.restore()
    if kept.written:
        notes.append(f"the forward writes to {_listed(kept.written)}: biaslint judged the values "
                     "the build made and put them back after every forward it ran")
    unjudged = {(layer, reason) for scope in scopes for layer, reason in scope.unjudged}
    incomplete[:0] = _causes(analysed, unjudged)
    timings["rules"] = time.perf_counter() - start
    timings.update(analysed.timings)  # the part of "rules" the measurements took
    findings, frozen = _unfrozen(findings, loaded.model)
    if frozen:
        notes.append(f"{len(frozen)} finding(s) on frozen parameters (requires_grad=False) not "
                     f"reported: a layer nobody trains has no training to lose "
                     f"({_listed(frozen)})")
    return TargetResult(
        target=config.target,
        findings=tuple(_post_process(findings, settings, loaded, ran)),
        coverage=captured.coverage,
        notes=tuple(notes),
        incomplete=tuple(incomplete),
        rules=tuple(scopes),
        timings=timings,
        signal=signal,
    )


# What a rule reads from the real forward on the example inputs: "forward", what it judges
# with (the rule does not run without one); "measure", what it checks its derived claims on
# (the rule runs without one, its claims then derived only); "output", the same, on what the
# model returns. See ``Rule.reads``.
_REAL_FORWARD = frozenset({"forward", "measure", "output"})

# Why a layer's graph or values could not be read, by what the rules read.
OUTSIDE_GRAPH = "outside any graph (graph rules cannot see it)"
NON_FINITE = "holds NaN or Inf (value rules cannot read it)"
ON_META = ("on the meta device, with an init law biaslint could not record "
           "(value rules cannot read it)")


def _blocked(analysed: AnalysedModel, coverage: Coverage) -> dict[str, dict[str, str]]:
    """Per layer, what a rule cannot read there and why: {"graph": reason, "values": reason}."""
    blocked: dict[str, dict[str, str]] = {}
    for name in coverage.untraced:
        blocked.setdefault(name, {})["graph"] = OUTSIDE_GRAPH
    for name, layer in analysed.layers.items():
        unreadable = layer.unreadable()
        if layer.non_finite():
            blocked.setdefault(name, {})["values"] = NON_FINITE
        elif unreadable:
            blocked.setdefault(name, {})["values"] = ON_META
    return blocked


def _signal(analysed: AnalysedModel, notes: list[str]) -> Signal | None:
    """The signal-propagation curves, or None with a note saying why not."""
    from biaslint.analysis.signal import measure_signal, residual_boundaries

    missing = _no_forward(analysed)
    if missing is not None:
        notes.append(f"signal propagation not measured: there is {missing}")
        return None
    # no_forward() is None: the inputs are known
    inputs = cast("ExampleInputs", analysed.target.inputs)
    not_called = set(analysed.capture.coverage.not_called)
    layers = [name for name in analysed.layers if name not in not_called]
    try:
        return measure_signal(analysed.model, inputs.args, inputs.kwargs, layers,
                              residual_boundaries(analysed))
    except Exception as exc:  # a plot we cannot draw is said, never a finding
        notes.append(f"signal propagation not measured: the forward and backward raised "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def _no_forward(analysed: AnalysedModel) -> str | None:
    """Why the rules that measure a real forward (``reads`` "forward") cannot, or None."""
    return analysed.no_forward()


def _causes(analysed: AnalysedModel, unjudged: set[tuple[str, str]]) -> list[str]:
    """One line per cause that left a selected rule's layer unjudged, naming the layers or
    parameters: what ``not judged`` prints."""
    order = {name: i for i, name in enumerate(analysed.layers)}

    def layers(reason: str) -> list[str]:
        return sorted({layer for layer, why in unjudged if why == reason},
                      key=lambda name: order.get(name, -1))

    lines: list[str] = []
    non_finite = [f"{name}.{p}" if name else p for name in layers(NON_FINITE)
                  for p in analysed.layers[name].non_finite()]
    if non_finite:
        lines.append(f"parameters holding NaN or Inf (value rules cannot read them): "
                     f"{_listed(non_finite)}")
    on_meta = [f"{name}.{p} ({why})" if name else f"{p} ({why})" for name in layers(ON_META)
               for p, why in analysed.layers[name].unreadable().items()]
    if on_meta:
        lines.append(f"{len(on_meta)} parameter(s) on the meta device whose init biaslint could "
                     f"not follow (value rules cannot read them; build on the CPU to judge "
                     f"them): {_listed(on_meta)}")
    outside = layers(OUTSIDE_GRAPH)
    if outside and not analysed.inputs_known:
        # the cause to fix first: with inputs, the capture runs the forward instead of tracing
        lines.append(f"{len(outside)} called layer(s) outside any graph, because without "
                     "example inputs only symbolic tracing could try and it could not follow "
                     "the forward: give --input-shape (once per positional input; 2,16:int for "
                     "token ids) or return (model, example_inputs) from the build "
                     f"({_listed(outside)})")
    elif outside:
        lines.append(f"{len(outside)} called layer(s) outside any graph (graph rules cannot see "
                     f"them): {_listed(outside)}")
    return lines


def _context(rule: Rule, config: TargetConfig, settings: Settings) -> RuleContext:
    from biaslint.rules import RuleContext

    return RuleContext(options=settings.rule_options.get(rule.code, {}),
                       class_priors=config.class_priors, head=config.head,
                       target_mean=getattr(config, "target_mean", None))


def _prefetch(analysed: AnalysedModel, rules: list[Rule], config: TargetConfig,
              settings: Settings) -> None:
    """One real forward for every rule that reads one, instead of one per rule: each rule says
    which layers' outputs it will read (and whether it reads the attention measure)."""
    names: list[str] = []
    attention = returned = False
    for rule in rules:
        if not rule.reads & _REAL_FORWARD:
            continue
        try:
            layers, wants_attention = rule.forward_needs(analysed, _context(rule, config, settings))
        except Exception:  # the rule's own run reports its failure
            continue
        names.extend(layers)
        attention = attention or wants_attention
        # a rule that checks its claims on what the model returns reads the return value
        returned = returned or bool(layers and "output" in rule.reads)
    from biaslint.load.guard import user_code

    # Always at least one real forward: the capture runs on fake tensors, which accept what
    # the real kernels refuse (a Long x Float matmul), and a forward that fails on the example
    # inputs is an error of the target, whatever the rules selected read.
    with user_code(config.target, "the forward"):
        analysed.prefetch(names, attention=attention, returned=True)


def _judged(rule: Rule, analysed: AnalysedModel, context: RuleContext,
            blocked: dict[str, dict[str, str]],
            crashed: str | None) -> RuleScope:
    """What ``rule`` judged: every layer of its scope whose graph and values it could read.
    Layers the forward never called are outside every graph rule's scope (the coverage lists
    them): this target does not run them, so no finding about its training applies."""
    try:
        layers = rule.scope(analysed, context)
    except Exception as exc:  # a scope that fails counts the rule as crashed
        return RuleScope(rule.code, 0, (("<all>", f"the rule's scope failed: "
                                          f"{type(exc).__name__}: {exc}"),))
    not_called = set(analysed.capture.coverage.not_called) if "graph" in rule.reads else set()
    declined: dict[str, str] = {}
    if crashed is None:
        try:
            declined = rule.declined(analysed, context)
        except Exception as exc:  # as a failing scope
            return RuleScope(rule.code, 0, (("<all>", f"the rule's scope failed: "
                                              f"{type(exc).__name__}: {exc}"),))
    judged = 0
    unjudged: list[tuple[str, str]] = []
    for layer in layers:
        if layer.name in not_called:
            continue
        if crashed is not None:
            unjudged.append((layer.name, f"the rule crashed ({crashed})"))
            continue
        if layer.name in declined:  # the rule says why it did not judge this one
            unjudged.append((layer.name, f"{DECLINED}{declined[layer.name]}"))
            continue
        reasons = [reason for need, reason in blocked.get(layer.name, {}).items()
                   if need in rule.reads]
        if reasons:
            unjudged.append((layer.name, reasons[0]))
        else:
            judged += 1
    return RuleScope(rule.code, judged, tuple(unjudged),
                     tuple(analysed.disagreements.get(rule.code, ())))


# Marks a reason the rule gave (``Rule.declined``): said in a note, not an incomplete analysis.
DECLINED = "declined: "


def _declined_notes(rule: Rule, scope: RuleScope) -> list[str]:
    """The layers a rule declined to judge, one note per rule: the text report shows the
    reasons there (the json has them in the rule's record)."""
    declined = [(layer, why[len(DECLINED):]) for layer, why in scope.unjudged
                if why.startswith(DECLINED)]
    if not declined:
        return []
    listed = "; ".join(f"{layer or '<root>'}: {why}" for layer, why in declined[:5])
    more = f"; and {len(declined) - 5} more" if len(declined) > 5 else ""
    return [f"{rule.code} ({rule.name}) did not judge {len(declined)} layer(s): {listed}{more}"]


def _unfrozen(findings: list[Finding], model: nn.Module) -> tuple[list[Finding], list[str]]:
    """Drop findings about a parameter nobody trains (a frozen backbone): each claims something
    about training (never trains, stays symmetric, grows) that does not apply to it."""
    import torch

    kept: list[Finding] = []
    frozen: list[str] = []
    for finding in findings:
        tensor = None
        if finding.parameter:
            try:
                tensor = getattr(model.get_submodule(finding.module), finding.parameter, None)
            except AttributeError:
                tensor = None
        if isinstance(tensor, torch.Tensor) and not tensor.requires_grad:
            frozen.append(f"{finding.code} {finding.module}.{finding.parameter}")
        else:
            kept.append(finding)
    return kept, frozen


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(n or "<root>" for n in names[:limit]) + more


def _post_process(findings: Iterable[Finding], settings: Settings, loaded: LoadedTarget,
                  ran: list[str]) -> list[Finding]:
    """Inline suppressions (and BL100), then per-module-ignores, then severity overrides.

    Suppressions come first so a comment that also matches a per-module ignore still counts as
    used: BL100 stays quiet about a comment that is merely redundant. A rule that crashed is not in
    ``ran``: its suppressions suppressed nothing because it found
    nothing, and BL100 must not call them unused.
    """
    from biaslint.engine.suppress import apply_suppressions, with_severity
    from biaslint.fix.plan import with_edits
    from biaslint.rules import REGISTRY

    init_sites = [c.location for c in loaded.param_inits.values()
                  if c.by_user and c.location is not None]
    kept = apply_suppressions(list(findings), loaded.module_sites, ran,
                              [r.code for r in REGISTRY], extra_locations=init_sites)
    kept = [f for f in kept if not _ignored_for_module(f, settings)]
    kept = with_severity(kept, settings.severity_overrides)
    kept = with_edits(kept, loaded.module_sites, loaded.param_inits,
                      getattr(loaded, "module_chains", None))
    kept.sort(key=lambda f: (f.location.file if f.location else "",
                             f.location.line if f.location else 0, f.code, f.module))
    return kept


def _ignored_for_module(finding: Finding, settings: Settings) -> bool:
    for pattern, codes in settings.per_module_ignores.items():
        if fnmatch.fnmatchcase(finding.module, pattern) and any(
                finding.code.startswith(c.upper()) for c in codes):
            return True
    return False
