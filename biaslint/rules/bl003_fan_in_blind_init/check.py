"""BL003's check: the chains the scale model claims grow or shrink out of the band (checked on
the real forward where there is one), then single layers, recurrent and bilinear weights whose
gain is too large alone; each verdict a function, and the fan-in-scaled init that mends it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import torch
import torch.nn as nn

from biaslint.analysis import AnalysedModel, Layer
from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import init_call_subject, python_path, set_by, user_call
from biaslint.rules.base import RuleContext
from biaslint.rules.bl003_fan_in_blind_init.chains import (
    Chain,
    ChainMeasure,
    LayerCall,
    ScaleModel,
    chain_layers_measurable,
    measure_chain,
)

if TYPE_CHECKING:
    from biaslint.rules.bl003_fan_in_blind_init import FanInBlindInit

# The scale model of one analysed model, kept in its ``__dict__`` (as BL001 keeps its memo):
# ``forward_needs`` and ``check`` read the same one.
_SCALES_KEY = "_bl003_scales"


def check(rule: "FanInBlindInit", model: AnalysedModel, context: RuleContext
          ) -> Iterable[Finding]:
    ratio_limit = float(context.option(rule, "max_gain_ratio"))
    scales = scales_of(model)
    worst: dict[str, Finding] = {}  # one chain finding per culprit layer: the most severe
    for chain, direction in claims(rule, model, context):
        measured = measure_chain(model, chain)
        finding = _chain_finding(rule, model, chain, direction, measured, context)
        if finding is not None and (finding.module not in worst
                                    or finding.severity > worst[finding.module].severity):
            worst[finding.module] = finding
    findings: list[Finding] = list(worst.values())
    reported: set[str] = set(worst)
    for call in scales.layer_calls():
        if call.layer.name in reported:
            continue
        finding = _judge_layer(rule, call, ratio_limit)
        if finding is not None:
            reported.add(call.layer.name)
            findings.append(finding)
    for layer, pname, gain in scales.recurrent_gains():
        if layer.name in reported or gain <= ratio_limit:
            continue
        reported.add(layer.name)
        findings.append(_recurrent(rule, layer, pname, gain, ratio_limit))
    for layer, gain, target, activation in scales.bilinear_gains():
        if layer.name not in reported and gain > ratio_limit * target:
            reported.add(layer.name)
            findings.append(_bilinear(rule, layer, gain, target, activation))
    findings.extend(expert_findings(rule, model, ratio_limit))
    findings.extend(matrix_findings(rule, model, ratio_limit, reported))
    yield from findings


def forward_needs(rule: "FanInBlindInit", model: AnalysedModel, context: RuleContext
                  ) -> list[str]:
    """Only the layers of the chains the analysis would claim: a model with no such chain
    (every healthy one) records nothing in the shared forward."""
    names: list[str] = []
    for chain, _ in claims(rule, model, context):
        if chain_layers_measurable(model, chain) is None:
            names.extend(c.layer.name for c in chain.calls)
    return list(dict.fromkeys(names))


def scales_of(model: AnalysedModel) -> ScaleModel:
    """The analysed model's scale model, made once."""
    found = model.__dict__.get(_SCALES_KEY)
    if found is None:
        found = model.__dict__[_SCALES_KEY] = ScaleModel(model)
    return found


def claims(rule: "FanInBlindInit", model: AnalysedModel, context: RuleContext
           ) -> list[tuple[Chain, str]]:
    """The chains the analysis says grow ("grows") or shrink ("shrinks") beyond the band,
    from unit-scale input into their first layer."""
    high = float(context.option(rule, "max_growth"))
    low = float(context.option(rule, "min_growth"))
    scales = scales_of(model)
    found: list[tuple[Chain, str]] = []
    for chain in list(scales.chains()) + list(scales.pooled_chains()) + \
            list(scales.averaged_chains()):
        explodes = chain.growth > high and not chain.through_averaging
        # Vanishing is judged on the activations entering the chain's last layer: that
        # layer's own output scale is a read-out scale (a small classifier head, the last
        # layer of a residual branch, GPT-2's 1/sqrt(2 n_layer)) often small on purpose.
        # Through pooling the prediction is only a lower bound: for explosion claims only.
        # Through max pooling the prediction is no bound for vanishing: claimed only where the
        # example inputs measure it (``_chain_finding``).
        vanishes = chain.hidden_growth < low and len(chain.calls) > 1
        if not explodes and (not vanishes or chain.end_kind == "norm"):
            continue
        if _scaled_by_the_forward(chain, explodes, high, low):
            continue
        found.append((chain, "grows" if explodes else "shrinks"))
    return found


def _scaled_by_the_forward(chain: Chain, explodes: bool, high: float, low: float) -> bool:
    """BL003 judges what the init does. A chain that would leave the band at the gains its fix
    writes too is scaled out of it by the forward's own constants (a division between two
    layers); unless the init's own share (the growth over that growth) leaves the band as well,
    a new init would not mend it and it is not the init's."""
    neutral_growth, neutral_hidden = chain.at_target_gains()
    if explodes:
        forward_scaled = neutral_growth > high
        init_share = chain.growth / max(neutral_growth, 1e-300)
        init_leaves = init_share > high
    else:
        forward_scaled = neutral_hidden < low
        init_share = chain.hidden_growth / max(neutral_hidden, 1e-300)
        init_leaves = init_share < low
    return forward_scaled and not init_leaves


# -- the verdicts ----------------------------------------------------------------------------------

def _chain_finding(rule: "FanInBlindInit", model: AnalysedModel, chain: Chain, direction: str,
                   measured: ChainMeasure | str, context: RuleContext) -> Finding | None:
    """The finding for a claimed chain; None, with the disagreement recorded, when the
    measurement on the example inputs does not show it."""
    high = float(context.option(rule, "max_growth"))
    low = float(context.option(rule, "min_growth"))
    explodes = direction == "grows"
    severity = Severity.INFO if chain.end_kind == "norm" else Severity.ERROR
    culprit = _culprit(chain, explodes)
    predicted = chain.growth if explodes else chain.hidden_growth
    names = " -> ".join(python_path(c.layer.name) for c in chain.calls)
    first = python_path(chain.calls[0].layer.name)
    where = ({"norm": "before the normalization that follows it",
              "output": "at the model output", "residual": "before the residual sum",
              }.get(chain.end_kind, "at its end") if explodes
             else f"entering its last layer {python_path(chain.end.layer.name)}")
    derived = f"predicted from unit-scale input into {first}"
    data: dict[str, Any] = {"chain": [c.layer.name for c in chain.calls],
                            "gains": [c.gain for c in chain.calls], "end": chain.end_kind,
                            "predicted_growth": predicted}
    if chain.through_pooling and not explodes and isinstance(measured, str):
        return None  # vanishing through max pooling: only a measurement can say
    if isinstance(measured, str):
        growth = predicted
        basis = f"{derived}; not measured: {measured}"
        data.update(measured=False, not_measured=measured)
    else:
        growth = measured.growth if explodes else measured.hidden_growth
        per_layer = ", ".join(_times(g, short=True) for g in measured.per_layer)
        basis = (f"measured on the example inputs as the rms there over the rms entering "
                 f"{first} (layer by layer: {per_layer}); predicted ~{_times(predicted)} from "
                 f"unit-scale input into {first}")
        data.update(measured=True, measured_growth=growth,
                    measured_per_layer=list(measured.per_layer))
        # The measurement decides: the claim stands only if the measured scale leaves the
        # band the same way (the band is the rule's definition of an error, so a measured
        # scale inside it is not one, whatever the prediction said).
        if not (growth > high if explodes else growth < low):
            if chain.through_pooling and not explodes:
                return None  # no bound was claimed: nothing for the analysis to disagree with
            model.disagree(
                rule.code, culprit.layer.name,
                f"activation scale {direction} ~{_times(predicted)} {where} over {names} "
                f"({derived})",
                f"measured ~{_times(growth)} on the example inputs (layer by layer "
                f"{per_layer}), inside [{low:g}, {high:g}]" if low <= growth <= high else
                f"measured ~{_times(growth)} on the example inputs (layer by layer "
                f"{per_layer})")
            return None
    data["growth"] = growth
    gains = ", ".join(f"{c.gain:.3g}" for c in chain.calls)
    message = (
        f"activation scale {direction} ~{_times(growth)} {where} over {len(chain.calls)} "
        f"layer(s) with no normalization between ({names}; {basis}): "
        f"gains rms(W)*sqrt(fan_in) = {gains}, while "
        f"{culprit.target:.3g} ({culprit.activation or 'identity'}) keeps the scale"
        f"{_init_phrase(culprit.layer)}.{_chain_tail(chain, explodes)}")
    return rule.finding(culprit.layer, message, parameter="weight", severity=severity,
                        fix=_fix(culprit), data=data)


def _culprit(chain: Chain, explodes: bool) -> LayerCall:
    """The earliest layer within 2x of the worst gain ratio: with one init applied to the whole
    chain that is where the user's code goes wrong first."""
    members = chain.calls if explodes else chain.calls[:-1]
    if explodes:
        worst = max(c.ratio for c in members)
        return next(c for c in members if c.ratio >= worst / 2)
    worst = min(c.ratio for c in members)
    return next(c for c in members if c.ratio <= worst * 2)


def _chain_tail(chain: Chain, explodes: bool) -> str:
    """What the message adds after the gains: a normalized output, a bound through pooling."""
    tail = (" The output is normalized right away, so this only slows learning of these "
            "layers." if chain.end_kind == "norm" else "")
    if chain.through_pooling and explodes:
        tail += (" The chain crosses max pooling of non-negative activations, which can only "
                 "raise the scale: the predicted growth is a lower bound.")
    elif chain.through_pooling:
        tail += (" The chain crosses max pooling, which raises the scale by an amount only a "
                 "measurement gives: it is claimed as measured.")
    if chain.through_averaging:
        tail += (" The chain crosses average pooling, which can only lower the scale: the "
                 "predicted scale is an upper bound.")
    return tail


def _judge_layer(rule: "FanInBlindInit", call: LayerCall, limit: float) -> Finding | None:
    if call.ratio > limit:
        severity = Severity.INFO if call.end_kind == "norm" else Severity.WARNING
    else:
        return None
    tail = (" Its output is normalized right away, so this only slows its learning."
            if call.end_kind == "norm" else "")
    message = (
        f"weight gain rms(W)*sqrt(fan_in) = {call.gain:.3g} (rms {call.rms:.3g}, fan_in "
        f"{call.fan_in}) is {call.ratio:.3g}x the {call.target:.3g} that keeps the scale "
        f"through {call.activation or 'identity'}: on inputs with uncorrelated unit-scale "
        f"entries the layer alone multiplies the activation scale by "
        f"~{_times(call.gain)}{_init_phrase(call.layer)}.{tail}")
    return rule.finding(call.layer, message, parameter="weight", severity=severity,
                        fix=_fix(call), data={"gain": call.gain, "ratio": call.ratio})


def _recurrent(rule: "FanInBlindInit", layer: Layer, pname: str, gain: float,
               limit: float) -> Finding:
    stats = layer.stats(pname)
    assert stats is not None
    message = (
        f"{pname} has gain rms(W)*sqrt(fan_in) = {gain:.3g} (fan_in {stats.fan_in}), over "
        f"{limit:g}x the ~1 that keeps the hidden state's scale from step to step; the "
        f"recurrence multiplies it by about that much per step until the gates saturate"
        f"{_init_phrase(layer, pname)}.")
    std = 1 / math.sqrt(stats.fan_in)
    fix = Fix(title="Use a fan-in-scaled init for the recurrent weights",
              code=f"nn.init.kaiming_normal_({python_path(layer.name)}.{pname}, "
                   f"nonlinearity='linear')  # std {std:.3g}", kind=FixKind.REPLACE_INIT)
    return rule.finding(layer, message, parameter=pname, fix=fix, data={"gain": gain})


def _bilinear(rule: "FanInBlindInit", layer: Layer, gain: float, target: float,
              activation: str | None) -> Finding:
    module = layer.module
    fan_in = int(module.in1_features) * int(module.in2_features)
    message = (
        f"weight gain rms(W)*sqrt(in1*in2) = {gain:.3g} (fan_in {module.in1_features} x "
        f"{module.in2_features}) is {gain / target:.3g}x the {target:.3g} that keeps the "
        f"scale through {activation or 'identity'}: from uncorrelated unit-scale inputs the "
        f"layer alone outputs ~{_times(gain)} the scale{_init_phrase(layer)}.")
    std = target / math.sqrt(fan_in)
    fix = Fix(title="Scale the bilinear weight by its fan-in (in1 * in2)",
              code=f"nn.init.normal_({python_path(layer.name)}.weight, 0.0, {std:.3g})",
              kind=FixKind.REPLACE_INIT)
    return rule.finding(layer, message, parameter="weight",
                        data={"gain": gain, "ratio": gain / target}, fix=fix)


# -- the words and the fix -------------------------------------------------------------------------

def _times(value: float, short: bool = False) -> str:
    if value >= 1 or short:
        return f"{value:.3g}x"
    return f"{value:.3g}x (1/{1 / value:.3g})" if value > 0 else "0x"


def _init_phrase(layer: Layer, pname: str = "weight") -> str:
    call = user_call(layer.init_of(pname))
    if call is None:
        return ""
    positional = [a for a in call.args.split(",") if a.strip() and "=" not in a]
    default_std = (call.name.endswith("normal_") and call.name != "Tensor.log_normal_"
                   and "std" not in call.args and len(positional) < 2)
    std = " with std 1 (its default)" if default_std else ""
    return f"; {pname} was set by {set_by(call, std)}"


_NONLINEARITY = {"relu": "relu", "gelu": "relu", "silu": "relu", "elu": "relu", "softplus": "relu",
                 "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "linear",
                 "selu": "linear", "logsigmoid": "linear"}


def _fix(call: LayerCall) -> Fix:
    layer = call.layer
    subject = init_call_subject(layer.init_of("weight")) or f"{python_path(layer.name)}.weight"
    target_std = call.target / math.sqrt(call.fan_in)
    if isinstance(layer.module, nn.modules.conv._ConvTransposeNd):
        # torch's fan-in formula reads a transposed conv's weight as if it were a conv's, so
        # kaiming_normal_ would pick the wrong std: write the target std directly.
        code = f"nn.init.normal_({subject}, std={target_std:.3g})"
    else:
        nonlinearity = _NONLINEARITY.get(call.activation or "", "linear")
        extra = (f", a={call.slope:g}" if nonlinearity == "leaky_relu" else "")
        code = (f"nn.init.kaiming_normal_({subject}{extra}, nonlinearity='{nonlinearity}')"
                f"  # std {target_std:.3g}")
    call_site = layer.init_of("weight")
    if call_site is not None and call_site.by_user and call_site.location is not None:
        title = (f"Replace the init at {call_site.location.shown} "
                 "with a fan-in-scaled one")
    else:
        title = "Initialize the weight with a fan-in-scaled init"
    return Fix(title=title, code=code, safe=False, kind=FixKind.REPLACE_INIT)


# -- expert weights stored as 3-d parameters -------------------------------------------------------

# The target gain an expert weight is judged against when no one activation takes its product:
# the largest any activation needs (tanh's 5/3), so only a gain too large for every one is said.
_LENIENT_TARGET = 5.0 / 3.0


def expert_findings(rule: "FanInBlindInit", model: AnalysedModel, limit: float
                    ) -> Iterable[Finding]:
    """Single expert weights (``ExpertWeight``) whose per-expert gain
    ``rms(W) * sqrt(fan_in)`` is over ``limit`` times the target: the same test as a single
    ``nn.Linear``'s, with the fan-in each expert contracts."""
    from biaslint.analysis.experts import expert_weights
    from biaslint.analysis.ops import activation_kind
    from biaslint.rules.bl003_fan_in_blind_init.chains import variance_gain_target

    for weight in expert_weights(model):
        value = weight.layer.value(weight.pname)
        if not weight.read or value is None or not value.known or value.constant() is not None:
            continue  # not read (declined), unknown (the engine's), constant (BL002's)
        gain = math.sqrt(value.mean_square(sample=1 << 14)) * math.sqrt(weight.fan_in)
        kinds = {activation_kind(c) for p in weight.products for c in model.consumers_of(p)}
        activation = kinds.pop() if len(kinds) == 1 else None
        target = variance_gain_target(activation) if activation else _LENIENT_TARGET
        if gain <= limit * target:
            continue
        what = f"through {activation}" if activation else \
            "through any activation (none takes its product alone; tanh's 5/3 is the largest)"
        message = (
            f"expert weight {weight.pname} {tuple(weight.shape)} ({weight.experts} experts; "
            f"the forward contracts axis {weight.fan_in_dim}, so each expert's fan_in is "
            f"{weight.fan_in}) has gain rms(W)*sqrt(fan_in) = {gain:.3g}, "
            f"{gain / target:.3g}x the {target:.3g} that keeps the scale {what}: on inputs "
            f"with uncorrelated unit-scale entries each expert alone multiplies the activation "
            f"scale by ~{_times(gain)}{_init_phrase(weight.layer, weight.pname)}.")
        fix = _normal_fix("Draw each expert's weight scaled by its own fan-in", weight.layer,
                          weight.pname, target / math.sqrt(weight.fan_in))
        yield rule.finding(weight.layer, message, parameter=weight.pname, fix=fix,
                           location=weight.layer.site_of(weight.pname),
                           data={"gain": gain, "ratio": gain / target, "fan_in": weight.fan_in})


def _normal_fix(title: str, layer: Layer, pname: str, std: float) -> Fix:
    """Draw the parameter from N(0, std^2), where the user's init call drew it."""
    subject = init_call_subject(layer.init_of(pname)) or f"{python_path(layer.name)}.{pname}"
    return Fix(title=title, code=f"nn.init.normal_({subject}, std={std:.3g})", safe=False,
               kind=FixKind.REPLACE_INIT)


# -- weights the forward contracts itself (F.linear, x @ w, einsum, F.conv2d) ----------------------

def matrix_findings(rule: "FanInBlindInit", model: AnalysedModel, limit: float,
                    reported: set[str]) -> Iterable[Finding]:
    """Single weights the forward contracts with the input itself (``MatrixWeight``): the
    single-layer test, with the fan-in its products contract and the constants it is scaled
    by on the way. Not part of chains."""
    from biaslint.analysis.matrices import matrix_weights, output_scale
    from biaslint.rules.bl003_fan_in_blind_init.chains import variance_gain_target

    for weight in matrix_weights(model):
        value = weight.layer.value(weight.pname)
        key = f"{weight.layer.name}.{weight.pname}"
        if not weight.read or key in reported or value is None or not value.known or (
                weight.rms is None and value.constant() is not None):
            continue  # not read (declined), unknown (the engine's), constant (BL002's)
        if _fourier_features(model, weight.products):
            continue  # the scale of random Fourier features is their frequency, chosen
        scales = {output_scale(model, p) for p in weight.products}
        scale = weight.scale * (scales.pop() if len(scales) == 1 else 1.0)
        rms = weight.rms if weight.rms is not None else \
            math.sqrt(value.mean_square(sample=1 << 14))
        gain = rms * math.sqrt(weight.fan_in) * scale
        activation, normed, mixed = _activation_after(model, weight.products)
        target = _LENIENT_TARGET if mixed else variance_gain_target(activation)
        if gain <= limit * target:
            continue
        reported.add(key)
        what = "through any activation (its products go to different ones; tanh's 5/3 is " \
            "the largest)" if mixed else f"through {activation or 'identity'}"
        tail = (" Its output is normalized right away, so this only slows its learning."
                if normed else "")
        scaled = f", scaled by {scale:.3g} in the forward" if scale != 1.0 else ""
        if weight.rms is not None:
            scaled += f"; rms {rms:.3g} as the forward computes it from the parameters"
        message = (
            f"weight {weight.pname} {tuple(weight.shape)}, which the forward contracts with "
            f"its input itself (fan_in {weight.fan_in}{scaled}), has gain "
            f"rms(W)*sqrt(fan_in) = {gain:.3g}, {gain / target:.3g}x the {target:.3g} that "
            f"keeps the scale {what}: on inputs with uncorrelated unit-scale entries it alone "
            f"multiplies the activation scale by ~{_times(gain)}"
            f"{_init_phrase(weight.layer, weight.pname)}.{tail}")
        fix = _normal_fix("Draw the weight scaled by its fan-in", weight.layer, weight.pname,
                          target / math.sqrt(weight.fan_in) / scale)
        yield rule.finding(weight.layer, message, parameter=weight.pname, fix=fix,
                           severity=Severity.INFO if normed else Severity.WARNING,
                           location=weight.layer.site_of(weight.pname),
                           data={"gain": gain, "ratio": gain / target, "fan_in": weight.fan_in})


_PERIODIC = frozenset({torch.sin, torch.cos, "sin", "cos", "sin_", "cos_"})


def _fourier_features(model: AnalysedModel, products: Iterable[Any]) -> bool:
    """Whether a product goes into ``sin``/``cos`` (random Fourier features, positional
    encodings), through constant scaling."""
    from biaslint.analysis.ops import binary_kind

    for product in products:
        stack, steps = list(model.consumers_of(product)), 0
        while stack and steps < 16:
            consumer, steps = stack.pop(), steps + 1
            if consumer.node.target in _PERIODIC:
                return True
            binary = binary_kind(consumer)
            if binary is not None and binary[0] in ("mul", "div") and not binary[1]:
                stack.extend(model.consumers_of(consumer))
    return False


def _activation_after(model: AnalysedModel, products: Iterable[Any]
                      ) -> tuple[str | None, bool, bool]:
    """(the activation that takes the products, after a bias added to them; whether a norm
    takes them; whether the consumers disagree, so that no one target applies)."""
    from biaslint.analysis.matrices import input_dependent
    from biaslint.analysis.ops import activation_kind, binary_kind
    from biaslint.rules.bl003_fan_in_blind_init.chains import is_norm_call

    consumers: list[Any] = []
    for product in products:
        for consumer in model.consumers_of(product):
            binary = binary_kind(consumer)
            data = input_dependent(model, consumer.part)
            others = [a for a in consumer.node.all_input_nodes if a is not product.node]
            if binary is not None and binary[0] == "add" and all(a not in data for a in others):
                consumers.extend(model.consumers_of(consumer))  # through a bias
            else:
                consumers.append(consumer)
    kinds = {activation_kind(c) for c in consumers}
    normed = bool(consumers) and all(is_norm_call(c) for c in consumers)
    return (kinds.pop() if len(kinds) == 1 else None), normed, len(kinds) > 1
