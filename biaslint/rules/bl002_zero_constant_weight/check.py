"""BL002's check: find the weights whose units start alike, then judge each from the graph
around it, one verdict per function (dead units, clones, near-clones, a stall), and word the
findings and the fan-in-scaled init that mends them."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from biaslint.analysis import AnalysedModel, Layer, ParamStats, Use
from biaslint.analysis.values import UNKNOWN, ParamValue
from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import init_call_subject, python_path, set_by, user_call
from biaslint.rules.base import RuleContext
from biaslint.rules.bl002_zero_constant_weight.routing import tied_routers
from biaslint.rules.bl002_zero_constant_weight.rows import dead_rows
from biaslint.rules.bl002_zero_constant_weight.symmetry import (
    Endpoint,
    blocks_every_input,
    calls_and_outputs,
    feeds_only_relu,
    first_activation,
    norms_into_relu,
    starved_upstream,
    symmetric_consumer,
    walk,
    weights_to_check,
)

if TYPE_CHECKING:
    from biaslint.analysis.experts import ExpertWeight
    from biaslint.analysis.matrices import MatrixWeight
    from biaslint.rules.bl002_zero_constant_weight import ZeroConstantWeight


def check(rule: "ZeroConstantWeight", model: AnalysedModel, context: RuleContext
          ) -> Iterable[Finding]:
    for layer in model.layers.values():
        for pname, units_dim in weights_to_check(layer.module):
            value = layer.value(pname)
            if value is None or not value.known:
                continue  # NaN, Inf or an unknown init law: the engine reports it unjudged
            if layer.is_constant(pname):  # one min/max pass
                rows: str | None = "constant"
            else:  # units with the same (or parallel) weight rows: a cheap test first
                rows = value.rows(units_dim)
            if rows is None or rows == UNKNOWN:
                continue
            if model.is_shared(layer.name):
                continue  # a tied weight also learns through the other module's calls
            finding = judge(rule, model, layer, pname, units_dim, rows)
            if finding is not None:
                yield finding
    yield from routers(rule, model)
    yield from dead_rows_findings(rule, model)
    yield from (v for v in expert_verdicts(rule, model).values() if isinstance(v, Finding))
    yield from (v for v in matrix_verdicts(rule, model).values() if isinstance(v, Finding))


def dead_rows_findings(rule: "ZeroConstantWeight", model: AnalysedModel) -> Iterable[Finding]:
    """4. Zero rows inside a drawn weight that are dead for good (``rows``)."""
    for verdict in dead_rows(model):
        if not verdict.dead or verdict.unjudged:
            continue
        layer, pname, dead = verdict.layer, verdict.pname, verdict.dead
        shown = ", ".join(map(str, dead[:8])) + (f" and {len(dead) - 8} more"
                                                  if len(dead) > 8 else "")
        path = (f"each is exactly 0 into {', '.join(verdict.through)}, which outputs its "
                "shift beta <= 0 there, into a ReLU" if verdict.through else
                "each has " + ("no bias" if getattr(layer.module, "bias", None) is None
                               else "a bias <= 0") + " in front of a ReLU")
        recover = len(verdict.zero) - len(dead)
        subject = _subject(layer, pname)
        yield rule.finding(
            layer,
            f"{len(dead)} of {verdict.units} units of {pname} (index {shown}) have an all-zero "
            f"weight row{_init_phrase(layer, pname)} inside a weight that is otherwise drawn, "
            f"and {path}: they output 0 and pass back 0, dead for good"
            + (f"; the other {recover} zero rows get a gradient and recover" if recover else ""),
            parameter=pname, severity=Severity.WARNING,
            fix=Fix(title="Draw every row (do not zero filters at init)",
                    code=f"nn.init.kaiming_normal_({subject}, nonlinearity='relu')", safe=False,
                    kind=FixKind.MANUAL),
            data={"verdict": "dead-rows", "dead_units": dead, "zero_units": verdict.zero,
                  "units": verdict.units, "through": verdict.through},
        )


def routers(rule: "ZeroConstantWeight", model: AnalysedModel) -> Iterable[Finding]:
    """A zero mixture-of-experts router: every token routed to the same experts."""
    for router in tied_routers(model):
        layer, pname = router.layer, router.pname
        subject = _subject(layer, pname)
        yield rule.finding(
            layer,
            f"{pname} is all zero{_init_phrase(layer, pname)} and routes to experts through "
            f"top-k: every token gets the same score for all {router.experts} experts, so "
            "top-k picks the same experts for every token (ties break by index); the "
            "experts not picked get no tokens and no gradient at the start, and the "
            "router learns to spread the load only from that collapse",
            parameter=pname, severity=Severity.WARNING, location=layer.site_of(pname),
            fix=Fix(title="Initialize the router with small random weights",
                    code=f"nn.init.normal_({subject}, std=0.02)", safe=False,
                    kind=FixKind.REPLACE_INIT),
            data={"verdict": "routed-alike", "experts": router.experts},
        )


# -- the verdicts ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Weight:
    """A weight whose units start alike, and what every verdict reads about it."""

    layer: Layer
    pname: str
    rows: str  # "constant" (every entry the same), "identical" (every unit the same weight row)
    # or "parallel" (rows differ only in scale)
    stats: ParamStats
    calls: list[Use]  # the call nodes that run the layer
    outputs: list[Use]  # the nodes that carry its output
    units: int
    plain: bool  # output unit j is w_j . x + b_j (``_is_plain_layer``)
    bias: torch.Tensor | None  # a plain layer's bias
    bias_value: ParamValue | None

    @property
    def value(self) -> str:
        """What the weight holds, for the message."""
        if self.rows == "constant":
            return "all zero" if self.stats.all_zero else f"all {self.stats.max:g}"
        return "the same row for every unit" if self.rows == "identical" else \
            "one row scaled differently per unit"

    @property
    def where(self) -> str:
        return _init_phrase(self.layer, self.pname)


def judge(rule: "ZeroConstantWeight", model: AnalysedModel, layer: Layer, pname: str,
          units_dim: int, rows: str = "constant") -> Finding | None:
    """The verdict on one weight whose units start alike (``rows``: see ``_Weight``), or None
    when training recovers (or the graph cannot tell)."""
    weight = _weight(model, layer, pname, units_dim, rows)
    if weight is None:
        return None
    found = _dead_into_relu(rule, model, weight) or _dead_through_norm(rule, model, weight)
    if found is not None:
        return found
    endpoints = [e for out in weight.outputs for e in walk(model, out)]
    partners = _zero_partners(model, weight, endpoints)
    if partners:
        return _dead_pair(rule, weight, partners)
    feeder = _zero_feeder(model, weight)
    if feeder is not None:
        return _dead_chain(rule, weight, feeder)
    if not endpoints or any(e.kind in ("output", "combine") for e in endpoints):
        return None  # summed, gating or the model output: the deliberate zero-init patterns
    activation = first_activation(model, weight.outputs)
    return _clones(rule, model, weight, endpoints, activation) or \
        _stall(rule, model, weight, endpoints, activation)


def _weight(model: AnalysedModel, layer: Layer, pname: str, units_dim: int, rows: str
            ) -> _Weight | None:
    """What the verdicts read about the weight; None when it is outside any traced graph (what
    consumes it cannot be seen) or its layer's bias, which decides the verdict, is unreadable."""
    stats = layer.stats(pname)
    assert stats is not None
    calls, outputs = calls_and_outputs(model, layer)
    if not outputs:
        return None  # not inside any traced graph: we cannot see what consumes it
    tensor = layer.param(pname)
    assert tensor is not None
    units = int(tensor.shape[units_dim]) if tensor.dim() > units_dim else 1
    plain = _is_plain_layer(layer.module)
    bias = _bias_of(layer.module) if plain else None
    bias_value = layer.value("bias") if bias is not None else None
    if bias is not None and (bias_value is None or not bias_value.known):
        return None  # the bias decides the verdict, and it cannot be read
    return _Weight(layer, pname, rows, stats, calls, outputs, units, plain, bias, bias_value)


def _dead_into_relu(rule: "ZeroConstantWeight", model: AnalysedModel, w: _Weight
                    ) -> Finding | None:
    """1. A zero weight straight into a ReLU: the output is the bias; where it is <= 0 the ReLU
    outputs 0 and passes back 0, so neither weight nor bias ever moves."""
    if not (w.plain and w.stats.all_zero and
            all(feeds_only_relu(model, out) for out in w.outputs)):
        return None
    dead = w.units if w.bias_value is None else int(round(w.bias_value.count_at_most(0.0)))
    if not dead:
        return None
    severity = Severity.ERROR if dead == w.units else Severity.WARNING
    bias_text = "has no bias" if w.bias is None else (
        "has a bias <= 0 everywhere" if dead == w.units
        else f"has {dead} of {w.units} bias entries <= 0")
    return rule.finding(
        w.layer,
        f"{w.pname} is all zero{w.where} and the layer {bias_text} in front of a ReLU: "
        f"{dead} of {w.units} units output 0 with zero gradient, dead for good",
        parameter=w.pname, severity=severity, fix=_fix(w.layer, w.pname, "relu"),
        data={"verdict": "dead", "dead_units": dead, "units": w.units},
    )


def _dead_through_norm(rule: "ZeroConstantWeight", model: AnalysedModel, w: _Weight
                       ) -> Finding | None:
    """1b. A zero layer with no (or a zero) bias outputs exactly 0; a normalization of 0
    outputs exactly its beta, and a ReLU after a beta <= 0 outputs and passes back 0."""
    if not (w.plain and w.stats.all_zero and
            (w.bias_value is None or w.bias_value.constant() == 0)):
        return None
    found = [norms_into_relu(model, out, w.layer.module) for out in w.outputs]
    if not found or any(group is None for group in found):
        return None
    norms = [norm for group in found if group is not None for norm in group]
    dead = _dead_everywhere([mask for _, mask in norms], w.units)
    names = ", ".join(sorted({name for name, _ in norms}))
    if not dead:
        return None
    return rule.finding(
        w.layer,
        f"{w.pname} is all zero{w.where} and the layer has "
        f"{'no bias' if w.bias is None else 'a zero bias'}: it outputs exactly 0, "
        f"so the normalization {names} outputs exactly its bias, which is <= 0 "
        f"in front of a ReLU for {dead} of {w.units} units: they output 0 with "
        "zero gradient, dead for good",
        parameter=w.pname,
        severity=Severity.ERROR if dead == w.units else Severity.WARNING,
        fix=_fix(w.layer, w.pname, "relu"),
        data={"verdict": "dead", "dead_units": dead, "units": w.units, "through": names},
    )


def _clones(rule: "ZeroConstantWeight", model: AnalysedModel, w: _Weight,
            endpoints: list[Endpoint], activation: str | None) -> Finding | None:
    """2. Identical units whose every consumer weighs them equally get identical gradients, and
    the consumer's columns get identical updates: symmetric for good. (A grouped conv's units
    read different input channels: they differ from the start.)

    2b. Units that differ only by their biases, or only in the scale of one shared weight row,
    compute functions of one weighted sum of the inputs. With a consumer that weighs them alike,
    their gradients differ only through the activation's slope at those offsets: the rows stay
    nearly parallel and the layer trains as if it had one unit (measured by training in
    tests/test_bl002_training.py)."""
    groups = int(getattr(w.layer.module, "groups", 1))
    # A grouped conv's groups read different input channels; the units within a group read the
    # same ones, so with one weight they are clones group by group (not a depthwise conv's
    # lone units).
    per_group = w.units // groups if groups > 1 and w.units % groups == 0 else w.units
    symmetric = w.plain and per_group > 1 and all(e.kind == "layer" for e in endpoints) and \
        len(w.calls) == 1 and (groups == 1 or w.rows == "constant")
    if not symmetric:
        return None
    consumers = [symmetric_consumer(model, out, w.layer.module) for out in w.outputs]
    if not all(c is not None for c in consumers):
        return None
    names = sorted({c for group in consumers if group for c in group})
    if not names:
        return None
    same_bias = w.bias_value is None or w.bias_value.constant() is not None
    if groups > 1 and not same_bias:
        return None  # biases differ within a group: not followed for grouped convs
    if w.rows != "parallel" and same_bias:
        alike = f"all {w.units} units compute the same value" if groups == 1 else (
            f"the {per_group} units of each of its {groups} groups compute the same value "
            f"({groups} distinct units of {w.units})")
        return rule.finding(
            w.layer,
            f"{w.pname} is {w.value}{w.where}: {alike}, "
            f"and the next layer {', '.join(names)} weighs them equally, so they get "
            "the same gradient and stay identical for good",
            parameter=w.pname, severity=Severity.ERROR,
            fix=_fix(w.layer, w.pname, activation),
            data={"verdict": "clones", "units": w.units, "consumers": names,
                  **({"groups": groups} if groups > 1 else {})},
        )
    differ = " and ".join(part for part, present in (
        ("in scale", w.rows == "parallel"), ("by their biases", not same_bias)) if present)
    reads = "ignore the inputs" if w.stats.all_zero else \
        "read the same weighted sum of the inputs"
    return rule.finding(
        w.layer,
        f"{w.pname} is {w.value}{w.where}: all {w.units} units {reads} and differ only "
        f"{differ}, and the next layer "
        f"{', '.join(names)} weighs them equally, so their gradients differ only "
        "through the activation's slope: the weight rows stay nearly parallel "
        "and the units stay near-clones in training (a different init per unit "
        "is what breaks the symmetry)",
        parameter=w.pname, severity=Severity.ERROR,
        fix=_fix(w.layer, w.pname, activation),
        data={"verdict": "near-clones", "units": w.units, "consumers": names,
              "differ": differ},
    )


# A product of an output with the output of another zero layer: f(0) is 0 for these.
_ZERO_AT_ZERO = frozenset({"relu", "gelu", "silu", "tanh", "leaky_relu", "elu", "selu"})


def _zero_partners(model: AnalysedModel, w: _Weight, endpoints: list[Endpoint]) -> list[str]:
    """When every endpoint of a zero weight with a zero (or no) bias is a product with the
    output of another such layer (SwiGLU's gate and up projections, attention's queries and
    keys, both zero): those layers. Each factor is exactly 0, so each passes the other a
    gradient of 0, for good. Else []."""
    if not (w.stats.all_zero and w.plain and _bias_is_zero(w)) or not endpoints:
        return []
    partners: list[str] = []
    for endpoint in endpoints:
        node = endpoint.use.node
        product = node.target in _PRODUCT_TARGETS
        if endpoint.kind != "combine" or not product:
            return []
        others = [n for n in node.all_input_nodes
                  if not _comes_from(n, {o.node for o in w.outputs})]
        names = [_zero_source(model, Use(endpoint.use.part, n)) for n in others]
        if not names or None in names:
            return []
        partners.extend(n for n in names if n is not None)
    return sorted(set(partners) - {w.layer.name})


_PRODUCT_TARGETS = frozenset({torch.mul, torch.matmul, torch.bmm, torch.einsum, "mul", "matmul",
                              "bmm", "__mul__", "__matmul__", operator.mul, operator.matmul})


def _bias_is_zero(w: _Weight) -> bool:
    if w.bias is None:
        return True
    return w.bias_value is not None and w.bias_value.known and w.bias_value.constant() == 0


def _comes_from(node: fx.Node, sources: set[fx.Node], depth: int = 8) -> bool:
    """Whether ``node`` is one of ``sources`` through single-input ops."""
    while depth > 0:
        if node in sources:
            return True
        inputs = node.all_input_nodes
        if len(inputs) != 1:
            return False
        node, depth = inputs[0], depth - 1
    return False


def _zero_source(model: AnalysedModel, use: Use) -> str | None:
    """The layer whose output ``use`` is, through shape-only ops and activations with f(0) = 0,
    when that layer's weight and bias are all zero; else None."""
    from biaslint.analysis import is_shape_only
    from biaslint.analysis.ops import activation_kind

    for _ in range(16):
        node = use.node
        layer = model.layers.get(model.module_name(use)) if node.op == "call_module" else None
        if layer is not None and any(True for _ in weights_to_check(layer.module)):
            name = layer.name
            if not _is_plain_layer(layer.module):
                return None
            weight, bias = layer.value("weight"), layer.value("bias")
            zero = weight is not None and weight.known and weight.constant() == 0 and (
                getattr(layer.module, "bias", None) is None or (
                    bias is not None and bias.known and bias.constant() == 0))
            return name if zero and len(model.calls_of(name)) == 1 else None
        if not (is_shape_only(use) or activation_kind(use) in _ZERO_AT_ZERO):
            return None
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if len(inputs) != 1:
            return None
        use = Use(use.part, inputs[0])
    return None


def _dead_pair(rule: "ZeroConstantWeight", w: _Weight, partners: list[str]) -> Finding:
    shown = ", ".join(partners)
    return rule.finding(
        w.layer,
        f"{w.pname} is all zero{w.where} and its output is only multiplied by the output of "
        f"{shown}, which is all zero too: each factor passes the other a gradient of 0, so "
        "neither ever moves (dead for good). Draw at least one of them",
        parameter=w.pname, severity=Severity.ERROR, fix=_fix(w.layer, w.pname, None),
        data={"verdict": "dead", "partners": partners, "units": w.units,
              "dead_units": w.units})


def _zero_feeder(model: AnalysedModel, w: _Weight) -> str | None:
    """A zero weight whose every input is the output of another zero layer (zero or no bias),
    through activations with f(0) = 0, and that layer's output goes nowhere else: the input is
    exactly 0, so this weight's gradient (the input times the output's) is 0; the other
    layer's gradient passes through this zero weight only, so it is 0 too. Neither moves (the
    rule page's own example, read as a stall before). That layer's name, else None."""
    if not (w.stats.all_zero and w.plain) or not w.calls:
        return None
    feeders: set[str] = set()
    for call in w.calls:
        inputs = [n for n in call.node.all_input_nodes if n.op != "get_attr"]
        if len(inputs) != 1:
            return None
        name = _zero_source(model, Use(call.part, inputs[0]))
        if name is None or name == w.layer.name:
            return None
        feeders.add(name)
    if len(feeders) != 1:
        return None
    name = feeders.pop()
    source = model.layers.get(name)
    if source is None or model.is_shared(name):
        return None
    _, outputs = calls_and_outputs(model, source)
    ends = [e for out in outputs for e in walk(model, out)]
    only_here = bool(ends) and all(e.kind == "layer" and e.use.node in {c.node for c in w.calls}
                                   for e in ends)
    return name if only_here else None


def _dead_chain(rule: "ZeroConstantWeight", w: _Weight, feeder: str) -> Finding:
    return rule.finding(
        w.layer,
        f"{w.pname} is all zero{w.where} and its input is the output of {feeder}, whose weight "
        "(and bias) are all zero too and which feeds only this layer: the input is exactly 0, "
        f"so {w.pname} gets a gradient of 0, and {feeder} gets its gradient through this zero "
        "weight only, so it gets 0 too. Neither ever moves (dead for good); draw at least one "
        "of them",
        parameter=w.pname, severity=Severity.ERROR, fix=_fix(w.layer, w.pname, None),
        data={"verdict": "dead", "feeder": feeder, "units": w.units, "dead_units": w.units})


def _stall(rule: "ZeroConstantWeight", model: AnalysedModel, w: _Weight,
           endpoints: list[Endpoint], activation: str | None) -> Finding | None:
    """3. A zero weight passes back no gradient: layers that reach the loss only through it do
    not learn until it has moved."""
    if not (w.stats.all_zero and any(e.kind == "layer" for e in endpoints) and all(
            e.kind != "unknown" or e.module is None for e in endpoints)
            and blocks_every_input(w.layer, w.pname)):
        return None
    starved = sorted({name for call in w.calls for name in starved_upstream(model, call)
                      if name != w.layer.name and not model.is_shared(name)
                      and len(model.calls_of(name)) == 1})
    if not starved:
        return None
    shown = ", ".join(starved[:3]) + (f" and {len(starved) - 3} more"
                                      if len(starved) > 3 else "")
    return rule.finding(
        w.layer,
        f"{w.pname} is all zero{w.where}: the layers before it ({shown}) get no gradient "
        "until it has moved, so training stalls",
        parameter=w.pname, severity=Severity.WARNING,
        fix=_fix(w.layer, w.pname, activation),
        data={"verdict": "stall", "starved": starved},
    )


# -- which weights, and the words --------------------------------------------------------------

def _dead_everywhere(masks: list, units: int) -> int:
    """Units dead on every path (an empty mask: all units; a mask of another length than the
    layer's units: we cannot tell which, so none)."""
    dead = torch.ones(units, dtype=torch.bool)
    for mask in masks:
        if mask.numel() == 0:
            continue
        if mask.numel() != units:
            return 0
        dead &= mask
    return int(dead.sum())


def _is_plain_layer(module: nn.Module) -> bool:
    """Layers whose output unit j is w_j . x + b_j (so a zero weight outputs exactly the bias)."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding))


def _bias_of(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if bias is not None and hasattr(bias, "shape") else None


def _init_phrase(layer: Layer, pname: str) -> str:
    call = user_call(layer.init_of(pname))
    return "" if call is None else f" (set by {set_by(call)})"


def _subject(layer: Layer, pname: str) -> str:
    """How the fix names the weight: as the user's init call did, else by its path."""
    return init_call_subject(layer.init_of(pname)) or f"{python_path(layer.name)}.{pname}"


def _fix(layer: Layer, pname: str, activation: str | None) -> Fix:
    call = layer.init_of(pname)
    subject = _subject(layer, pname)
    if activation in ("tanh", "sigmoid"):
        code = f"nn.init.xavier_normal_({subject}, gain=nn.init.calculate_gain('{activation}'))"
    elif activation in ("relu", "gelu", "silu", "elu", "leaky_relu"):
        code = f"nn.init.kaiming_normal_({subject}, nonlinearity='relu')"
    else:
        code = f"nn.init.xavier_normal_({subject})"
    if call is not None and call.by_user and call.location is not None:
        title = f"Replace the constant init at {call.location.shown} with"
    else:
        title = "Initialize it with a random fan-in-scaled init instead"
    return Fix(title=title, code=code, safe=False, kind=FixKind.REPLACE_INIT)


# -- expert weights stored as 3-d parameters -------------------------------------------------------

def expert_verdicts(rule: "ZeroConstantWeight", model: AnalysedModel
                    ) -> dict[tuple[str, str], Finding | str | None]:
    """Per 3-d expert weight (layer, parameter): its finding, None when each expert's units
    start different, or why it is not judged. An all-zero expert weight whose every product goes
    straight into a ReLU is dead for good (``x @ 0`` is 0; ReLU passes back 0 there); another
    constant one, or units alike within an expert, depends on the routed path around it, which
    is not followed: not judged, with that reason."""
    from biaslint.analysis.experts import expert_weights

    found: dict[tuple[str, str], Finding | str | None] = {}
    for weight in expert_weights(model):
        key = (weight.layer.name, weight.pname)
        value = weight.layer.value(weight.pname)
        if not weight.read:
            found[key] = f"its 3-d expert weight {weight.pname}: {weight.why}"
        elif value is None or not value.known:
            continue  # the engine reports it unjudged
        else:
            found[key] = _expert_verdict(rule, model, weight, value)
    return found


def _expert_verdict(rule: "ZeroConstantWeight", model: AnalysedModel, weight: "ExpertWeight",
                    value: ParamValue) -> Finding | str | None:
    from biaslint.analysis.ops import activation_kind

    constant = value.constant()
    subject = _subject(weight.layer, weight.pname)
    if constant is None:
        alike = _alike_within_an_expert(value, weight)
        return None if alike is False else (
            f"its expert weight {weight.pname}: " + (
                "some expert's units start alike, and the routed path around them is not "
                "followed for 3-d expert weights" if alike else alike))
    consumers = [c for p in weight.products for c in model.consumers_of(p)]
    into_relu = constant == 0 and consumers and all(
        activation_kind(c) == "relu" for c in consumers) and all(
        getattr(p.node.target, "__name__", "") != "baddbmm" for p in weight.products)
    if not into_relu:
        return (f"its expert weight {weight.pname} is all {constant:g}: whether its units "
                "recover depends on the routed path around it, which is not followed for 3-d "
                "expert weights")
    units = weight.experts * weight.units
    return rule.finding(
        weight.layer,
        f"expert weight {weight.pname} {weight.shape} is all zero"
        f"{_init_phrase(weight.layer, weight.pname)} and each expert's product with it goes "
        f"straight into a ReLU: all {weight.units} units of each of the {weight.experts} "
        "experts output 0 and pass back 0, dead for good",
        parameter=weight.pname, severity=Severity.ERROR, location=weight.layer.site_of(
            weight.pname),
        fix=Fix(title="Draw each expert's weight", code=f"nn.init.normal_({subject}, "
                f"std={math.sqrt(2.0 / weight.fan_in):.3g})", safe=False,
                kind=FixKind.REPLACE_INIT),
        data={"verdict": "dead", "dead_units": units, "units": units,
              "experts": weight.experts})


def _alike_within_an_expert(value: ParamValue, weight: "ExpertWeight") -> bool | str:
    """Whether some expert's units (slices along the units axis) are identical or parallel:
    False for one drawn law over the whole tensor; else read expert by expert from the values,
    or why not."""
    from biaslint.analysis.values import unit_rows

    pieces = getattr(value, "pieces", None)
    if pieces is not None and len(pieces) == 1 and pieces[0].law.is_random:
        return False  # every entry drawn independently: no two units alike
    exact = value.exact()
    if exact is None:
        return "its values are not known entry by entry (several init laws)"
    units_dim = weight.units_dim - (1 if weight.units_dim > weight.experts_dim else 0)
    return any(unit_rows(exact.select(weight.experts_dim, e), units_dim) is not None
               for e in range(weight.experts))


# -- raw weights the forward contracts itself (F.linear, x @ w, einsum, F.conv2d) -----------------

def matrix_verdicts(rule: "ZeroConstantWeight", model: AnalysedModel
                    ) -> dict[tuple[str, str], Finding | str | None]:
    """Per raw weight the forward contracts with its input itself (``MatrixWeight``; an
    ``nn.Linear`` or conv's weight is judged with its module): its finding, None when its
    values differ, or why it is not judged. An all-zero one whose every product (plus a bias
    <= 0, or none) goes straight into a ReLU is dead for good; another constant one depends on
    what takes its products, which is not followed here: not judged, with that reason."""
    from biaslint.analysis.matrices import matrix_weights

    found: dict[tuple[str, str], Finding | str | None] = {}
    for weight in matrix_weights(model):
        if any(True for _ in weights_to_check(weight.layer.module)):
            continue  # judged with its module
        key = (weight.layer.name, weight.pname)
        value = weight.layer.value(weight.pname)
        if value is None or not value.known:
            continue  # the engine reports it unjudged
        if not weight.read:
            if value.constant() is not None:  # a drawn one's units differ however it is used
                found[key] = f"its weight {weight.pname}: {weight.why}"
        elif (constant := value.constant()) is None:
            continue  # drawn: its units differ
        elif weight.rms is not None:
            if _summed_or_output(model, weight):
                continue  # the deliberate patterns (LoKr's zero factor of a summed update)
            found[key] = (f"its weight {weight.pname} is all {constant:g}, and the forward "
                          "transforms it before its products: whether its units recover is not "
                          "followed there")
        else:
            found[key] = _matrix_verdict(rule, model, weight, float(constant))
    return found


def _summed_or_output(model: AnalysedModel, weight: "MatrixWeight") -> bool:
    """Whether a product of the weight reaches, through its bias and activations only, the
    model output or a sum or product with another computed tensor: the deliberate zero-init
    patterns (an output projection, the end of a residual branch, a gate)."""
    from biaslint.analysis.matrices import input_dependent
    from biaslint.analysis.ops import activation_kind, binary_kind

    for product in weight.products:
        data = input_dependent(model, product.part)
        stack, seen = model.consumers_of(product), 0
        while stack and seen < 64:
            use, seen = stack.pop(), seen + 1
            if use.node.op == "output":
                return True
            binary = binary_kind(use)
            computed = [a for a in use.node.all_input_nodes if a in data]
            if binary is not None and len(computed) >= 2:
                return True
            if binary is not None or activation_kind(use) is not None:
                stack.extend(model.consumers_of(use))  # a bias, a scaling, an activation
    return False


def _matrix_verdict(rule: "ZeroConstantWeight", model: AnalysedModel, weight: "MatrixWeight",
                    constant: float) -> Finding | str | None:
    from biaslint.analysis.ops import activation_kind

    consumers = [c for p in weight.products for c in model.consumers_of(p)]
    biases = [_product_bias(model, p) for p in weight.products]
    if constant != 0 or not consumers or not all(activation_kind(c) == "relu"
                                                 for c in consumers) \
            or any(b is None or b > 0 for b in biases):
        if _summed_or_output(model, weight):
            return None  # the deliberate patterns
        return (f"its weight {weight.pname} is all {constant:g}: whether its units recover "
                "depends on what takes its products, which is not followed for weights the "
                "forward contracts itself")
    units = math.prod(weight.shape) // max(weight.fan_in, 1)
    subject = _subject(weight.layer, weight.pname)
    return rule.finding(
        weight.layer,
        f"weight {weight.pname} {weight.shape} is all zero"
        f"{_init_phrase(weight.layer, weight.pname)} and its product with the input goes "
        f"straight into a ReLU{' with a bias <= 0' if any(b != 0 for b in biases) else ''}: "
        "every unit outputs 0 and passes back 0, dead for good",
        parameter=weight.pname, severity=Severity.ERROR,
        location=weight.layer.site_of(weight.pname),
        fix=Fix(title="Draw the weight", code=f"nn.init.normal_({subject}, "
                f"std={math.sqrt(2.0 / weight.fan_in):.3g})", safe=False,
                kind=FixKind.REPLACE_INIT),
        data={"verdict": "dead", "dead_units": units, "units": units})


def _product_bias(model: AnalysedModel, product: Any) -> float | None:
    """The largest entry of the bias ``F.linear``/``F.conv`` adds to the product (0 when none),
    or None when it is not a parameter of known value."""
    node = product.node
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if bias is None:
        return 0.0
    if not isinstance(bias, fx.Node) or bias.op != "get_attr":
        return None
    qualified = product.part.full_name(str(bias.target))
    owner, _, pname = qualified.rpartition(".")
    layer = model.layers.get(owner)
    value = None if layer is None else layer.value(pname)
    if value is None or not value.known:
        return None
    constant = value.constant()
    return None if constant is None else float(constant)
