"""What the selected rules could not judge, and why: the engine's bookkeeping beside the rules.

A pass must be true: every layer a rule applies to is judged, or said. Per rule, ``judged``
counts the layers of its scope it could read and lists the others with their reason (outside
any graph, values it cannot read, the rule crashed, the rule declined); ``causes`` turns those
reasons into the lines ``not judged`` prints. A rule's own reasons for declining a layer are
notes, not an incomplete analysis, unless the reason is a measurement that failed
(``findings.NOT_MEASURED``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from biaslint.findings import NOT_MEASURED, RuleScope

if TYPE_CHECKING:  # the pipeline's own types; importing them here would load torch
    from biaslint.analysis.model import AnalysedModel
    from biaslint.findings import Coverage
    from biaslint.rules.base import Rule, RuleContext

# Why a layer's graph or values could not be read, by what the rules read.
OUTSIDE_GRAPH = "outside any graph (graph rules cannot see it)"
NON_FINITE = "holds NaN or Inf (value rules cannot read it)"
UNWRITTEN = ("holds entries no call of the build wrote, whose values are whatever the memory "
             "held (value rules cannot read them; select BL012 to have them reported)")
ON_META = ("on the meta device, with an init law biaslint could not record "
           "(value rules cannot read it)")
# Marks a reason the rule gave (``Rule.declined``): said in a note, not an incomplete analysis.
DECLINED = "declined: "


def listed(names: list[str], limit: int = 5) -> str:
    """A few names for a message, the root shown as ``<root>``."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(n or "<root>" for n in names[:limit]) + more


def blocked(analysed: AnalysedModel, coverage: Coverage, unwritten_explained: bool = False
            ) -> dict[str, dict[str, str]]:
    """Per layer, what a rule cannot read there and why: {"graph": reason, "values": reason}.
    ``unwritten_explained``: a selected rule reports the entries no call of the build wrote
    (BL012), so what a parameter holds there (NaN, Inf, 1e28, zeros) is said, and blocks
    nothing; without such a rule, the layer's values are not read."""
    found: dict[str, dict[str, str]] = {}
    for name in coverage.untraced:
        found.setdefault(name, {})["graph"] = OUTSIDE_GRAPH
    for name, layer in analysed.layers.items():
        unwritten = {p for p in layer.parameters() if analysed.never_written(name, p) is not None}
        garbage = unwritten if unwritten_explained else set()
        unreadable = {p: why for p, why in layer.unreadable().items() if p not in garbage}
        if unwritten and not unwritten_explained:
            found.setdefault(name, {})["values"] = UNWRITTEN
        elif any(p in unreadable for p in layer.non_finite()):
            found.setdefault(name, {})["values"] = NON_FINITE
        elif unreadable:
            found.setdefault(name, {})["values"] = ON_META
    return found


def judged(rule: Rule, analysed: AnalysedModel, context: RuleContext,
           blocked: dict[str, dict[str, str]], crashed: str | None) -> RuleScope:
    """What ``rule`` judged: every layer of its scope whose graph and values it could read.
    Layers the forward never called are outside every graph rule's scope (the coverage lists
    them): this target does not run them, so no finding about its training applies."""
    try:
        layers = rule.scope(analysed, context)
        declined = rule.declined(analysed, context) if crashed is None else {}
    except Exception as exc:  # a scope that fails counts the rule as crashed
        return RuleScope(rule.code, 0, (("<all>", f"the rule's scope failed: "
                                          f"{type(exc).__name__}: {exc}"),))
    not_called = set(analysed.capture.coverage.not_called) if "graph" in rule.reads else set()
    count = 0
    unjudged: list[tuple[str, str]] = []
    for layer in layers:
        if layer.name in not_called:
            continue
        reason = _reason(rule, layer.name, crashed, declined, blocked)
        if reason is None:
            count += 1
        else:
            unjudged.append((layer.name, reason))
    return RuleScope(rule.code, count, tuple(unjudged),
                     tuple(analysed.disagreements.get(rule.code, ())))


def _reason(rule: Rule, layer: str, crashed: str | None, declined: dict[str, str],
            blocked: dict[str, dict[str, str]]) -> str | None:
    """Why ``rule`` did not judge ``layer``, or None when it did."""
    if crashed is not None:
        return f"the rule crashed ({crashed})"
    if layer in declined:  # the rule says why it did not judge this one
        why = declined[layer]
        if why.startswith(NOT_MEASURED):  # a measurement that failed: not a choice
            return f"{rule.code}: {why}"
        return f"{DECLINED}{why}"
    reasons = [reason for need, reason in blocked.get(layer, {}).items() if need in rule.reads]
    return reasons[0] if reasons else None


def declined_notes(rule: Rule, scope: RuleScope) -> list[str]:
    """The layers a rule declined to judge, one note per rule: the text report shows the
    reasons there (the json has them in the rule's record)."""
    declined = [(layer, why[len(DECLINED):]) for layer, why in scope.unjudged
                if why.startswith(DECLINED)]
    if not declined:
        return []
    shown = "; ".join(f"{layer or '<root>'}: {why}" for layer, why in declined[:5])
    more = f"; and {len(declined) - 5} more" if len(declined) > 5 else ""
    return [f"{rule.code} ({rule.name}) did not judge {len(declined)} layer(s): {shown}{more}"]


def skipped_at_random(skipped: list[str]) -> str:
    """The incomplete line for layers a training-mode forward skipped at random."""
    # trained, yet outside every graph: a pass would claim what nobody looked at
    return (f"{len(skipped)} layer(s) the training-mode forward skipped at random on the "
            "example inputs (LayerDrop or stochastic depth: other seeds run them), so no "
            "rule judged them: turn the layer drop off for the lint (e.g. layerdrop=0.0 "
            f"in the model's config) ({listed(skipped)})")


def causes(analysed: AnalysedModel, unjudged: set[tuple[str, str]]) -> list[str]:
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
                     f"{listed(non_finite)}")
    unwritten = [f"{name}.{p}" if name else p for name in layers(UNWRITTEN)
                 for p in analysed.layers[name].parameters()
                 if analysed.never_written(name, p) is not None]
    if unwritten:
        lines.append(f"parameters with entries no call of the build wrote (value rules cannot "
                     f"read them; select BL012 to have them reported): {listed(unwritten)}")
    on_meta = [f"{name}.{p} ({why})" if name else f"{p} ({why})" for name in layers(ON_META)
               for p, why in analysed.layers[name].unreadable().items()]
    if on_meta:
        lines.append(f"{len(on_meta)} parameter(s) on the meta device whose init biaslint could "
                     f"not follow (value rules cannot read them; build on the CPU to judge "
                     f"them): {listed(on_meta)}")
    outside = layers(OUTSIDE_GRAPH)
    if outside and not analysed.inputs_known:
        # the cause to fix first: with inputs, the capture runs the forward instead of tracing
        lines.append(f"{len(outside)} called layer(s) outside any graph, because without "
                     "example inputs only symbolic tracing could try and it could not follow "
                     "the forward: give --input-shape (once per positional input; 2,16:int for "
                     "token ids) or return (model, example_inputs) from the build "
                     f"({listed(outside)})")
    elif outside:
        lines.append(f"{len(outside)} called layer(s) outside any graph (graph rules cannot see "
                     f"them): {listed(outside)}")
    failed = sorted({why for _, why in unjudged if f": {NOT_MEASURED}" in why})
    for why in failed:
        code, _, text = why.partition(": ")
        lines.append(f"{code} could not judge {len(layers(why))} layer(s), {text}: "
                     f"{listed(layers(why))}")
    return lines
