"""BL003: weights drawn at a scale that ignores fan-in, so activations explode or vanish."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import init_call_subject, python_path, set_by, user_call
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer
    from biaslint.rules.bl003_fan_in_blind_init.chains import (
        Chain,
        ChainMeasure,
        LayerCall,
        ScaleModel,
    )


class FanInBlindInit(Rule):
    code = "BL003"
    name = "fan-in-blind-init"
    severity = Severity.WARNING
    summary = "Weights drawn at a scale that ignores fan-in, so activations explode or vanish"
    what_it_does = """\
For every weight with a fan-in (`Linear`, `ConvNd`, `ConvTransposeNd`, RNN weights, `Bilinear`
on its own) it computes the layer's gain `g = rms(W) * sqrt(fan_in)`: the factor by which the
layer multiplies the scale (root mean square) of an input with uncorrelated entries. It
compares `g` with the gain that keeps the scale through whatever consumes the output
(`nn.init.calculate_gain`): sqrt(2) before ReLU (He et al., 2015), 5/3 before tanh, 1 before
sigmoid, SELU (LeCun init, Klambauer et al., 2017) and identity; GELU, SiLU, ELU and Mish are
treated like ReLU.

* **Chains** (error): along a chain of layers joined only by activations, dropout, reshapes and
  scalar scaling, with no normalization, residual sum, pooling or concatenation in between, the
  rule predicts the scale (root mean square over all entries) of the activations layer by layer,
  starting from unit-scale input into the chain's first layer: what the forward does before that
  layer (`x / 255`, `(x - mean) / std` with fixed statistics) sets the input's scale, not the
  init's growth. Each layer multiplies the second moment by `g^2` and adds its bias's mean
  square; each activation's exact effect on a Gaussian input is computed by
  quadrature (1/2 of the second moment for ReLU, He et al., 2015). A chain whose output grows
  above `max_growth` (100x), or whose activations entering its last layer shrink below
  `min_growth` (1/100), is an **error**. The last layer's own output is left out of the vanishing
  test: a small read-out is often deliberate (a classifier head, the last layer of a residual
  branch, GPT-2's 1/sqrt(2 n_layer) scaling). A chain whose output is normalized right away
  (BatchNorm, LayerNorm, GroupNorm...) only changes how fast its layers learn: **info**, and only
  when it explodes. For explosion only, a chain also continues through max pooling of
  non-negative activations (after ReLU): the max of non-negative values is at least their root
  mean square, so the growth predicted through the pooling is a lower bound. A chain that the
  forward's own constants between its layers (`h / 1000`) push out of the band even at the gains
  the fix writes is not blamed on the init, unless the init's share (the growth over that
  growth) leaves the band by itself.
* **Measured** (when the target has example inputs and real weights, i.e. not `--device meta`):
  each chain claim is checked on the example inputs with forward hooks in the one real forward
  the rules share (no gradients, the model left as it was): the rms of the last layer's output
  (of its input, for vanishing) over the rms of the first layer's input, at the chain's own call
  of each layer, and the same ratio layer by layer. The measurement decides: a claim whose
  measured scale does not leave the band the same way is not reported, and is counted as a
  disagreement between analysis and measurement (`rules.BL003.disagreements` in the json). The
  message gives the measured growth and the prediction; without a forward it says the claim was
  predicted, not measured, and why.
* **Single layers** (warning): a layer whose gain is more than `max_gain_ratio` (10) times the
  target multiplies the scale of uncorrelated unit-scale inputs by that much on its own
  (saturating a tanh, blowing up logits). This is a fact about the weight alone (for such
  inputs the expected mean square of `Wx` is exactly `g^2`, whatever `W`), so it is not
  measured.
  A single layer that is too *small* is not flagged alone: a rescaling by one layer is absorbed
  by the next bias, norm or optimizer step; it is the product over a chain that vanishes.
* Embedding tables are never flagged: a lookup sums nothing, so N(0, 1) is standard.

The message quotes the init call (e.g. `Tensor.normal_(...)` with std 1) and its line when your
code set the weight.
"""
    why_bad = """\
A layer sums `fan_in` products, so weights of a fixed std (say `normal_(w)` with std 1, or 0.01
everywhere) multiply the activation scale by `std * sqrt(fan_in)`: 22x for std 1 at width 512,
0.08x for std 0.01 at width 64. Stacked without normalization these factors multiply: four such
layers change the scale by 10^5 or 10^-5, so the output saturates, the loss starts at a huge
value or the gradients vanish, and a learning rate tuned for one layer is wrong for the next.
He and Xavier init pick the std from the fan-in precisely to keep the factor at 1 after the
activation.

Threshold sources. The chain band [1e-2, 1e2] (two orders of magnitude of activation scale)
is the one the issue set for errors; PyTorch's default init (std 1/sqrt(3 fan_in), gain 0.58,
0.41x the ReLU target per layer) shrinks a bias-free ReLU MLP below 1e-2 only after 6 layers,
and with its default bias (std 1/sqrt(3 fan_in)) the scale settles on a floor of about
sqrt(0.4 / width) instead: above 1e-2 at any depth up to width 2048. Measured margins over every
torchvision classification model at `weights=None`: the smallest predicted hidden scale is 0.019
(Swin V2's relative-position MLP, a 2-input Linear at std 0.02), then 0.08 (MaxViT) and 0.10
(ConvNeXt, std 0.02 at width 96); the largest chain growth is 4.5x (Inception v3's classifier at
std 0.1). The per-layer limit 10x over the target leaves a 1.6x margin above the largest
torchvision gain ratio (6.4, an Inception v3 conv at std 0.1 followed by BatchNorm) and 2x
above the largest one not followed by a norm (4.9, an EfficientNet squeeze-excitation conv).
GPT/BERT's N(0, 0.02) at width 256 has gain 0.32: it is never too large, and a chain of them
stays well above 1e-2.
"""
    fix_text = """\
Initialize the weight for the activation that follows it:
`nn.init.kaiming_normal_(w, nonlinearity='relu')` (std sqrt(2 / fan_in)) before ReLU-family
activations, `nonlinearity='tanh'` (std 5/3 / sqrt(fan_in)) before tanh, `'linear'` before
identity, sigmoid or SELU; `nn.init.xavier_normal_` is a fine alternative for tanh and sigmoid.
The message gives the target std; or keep PyTorch's default init.
"""
    references = (
        "He et al., 2015, Delving Deep into Rectifiers, https://arxiv.org/abs/1502.01852",
        "Glorot and Bengio, 2010, Understanding the difficulty of training deep feedforward "
        "neural networks, https://proceedings.mlr.press/v9/glorot10a.html",
        "Klambauer et al., 2017, Self-Normalizing Neural Networks, https://arxiv.org/abs/1706.02515",
        "torch.nn.init.calculate_gain, https://pytorch.org/docs/stable/nn.init.html",
        "Radford et al., 2019, GPT-2 (residual projections scaled by 1/sqrt(N))",
    )
    options = (
        Option("max_growth", 100.0, "Error when a chain's activation scale (measured on the "
                                    "example inputs, else predicted) grows above this factor."),
        Option("min_growth", 0.01, "Error when a chain's activation scale (measured on the "
                                   "example inputs, else predicted) shrinks below this factor."),
        Option("max_gain_ratio", 10.0, "Warn when one layer's gain is this many times above "
                                       "the variance-preserving gain."),
    )
    bad_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
    for layer in (model[0], model[2], model[4]):
        layer.weight.data.normal_()  # std 1, whatever the fan-in: 16x per layer at width 256
    return model
'''
    good_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
    for layer in (model[0], model[2]):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return model
'''

    # Growth claims are derived from the weights alone (so they stand on the meta device and
    # without inputs) and checked on the real forward when there is one.
    reads = frozenset({"graph", "values", "measure"})
    _cached_scales: "tuple[AnalysedModel, ScaleModel] | None" = None

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        # Every layer with a weight matrix or kernel: the scale chains run through them.
        return [layer for layer in model.layers.values()
                if any(p.dim() >= 2 for p in layer.parameters().values())]

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        # Only the layers of the chains the analysis would claim: a model with no such chain
        # (every healthy one) records nothing in the shared forward.
        from biaslint.rules.bl003_fan_in_blind_init.chains import chain_layers_measurable

        names: list[str] = []
        for chain, _ in self._claims(model, context):
            if chain_layers_measurable(model, chain) is None:
                names.extend(c.layer.name for c in chain.calls)
        return list(dict.fromkeys(names)), False

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        ratio_limit = float(context.option(self, "max_gain_ratio"))
        from biaslint.rules.bl003_fan_in_blind_init.chains import measure_chain

        scales = self._scales(model)
        worst: dict[str, Finding] = {}  # one chain finding per culprit layer: the most severe
        for chain, direction in self._claims(model, context):
            measured = measure_chain(model, chain)
            finding = self._chain_finding(model, chain, direction, measured, context)
            if finding is not None and (finding.module not in worst
                                        or finding.severity > worst[finding.module].severity):
                worst[finding.module] = finding
        findings: list[Finding] = list(worst.values())
        reported: set[str] = set(worst)
        for call in scales.layer_calls():
            if call.layer.name in reported:
                continue
            finding = self._judge_layer(call, ratio_limit)
            if finding is not None:
                reported.add(call.layer.name)
                findings.append(finding)
        for layer, pname, gain in scales.recurrent_gains():
            if layer.name in reported or gain <= ratio_limit:
                continue
            reported.add(layer.name)
            findings.append(self._recurrent(layer, pname, gain, ratio_limit))
        for layer, gain, target, activation in scales.bilinear_gains():
            if layer.name not in reported and gain > ratio_limit * target:
                reported.add(layer.name)
                findings.append(self._bilinear(layer, gain, target, activation))
        yield from findings

    # -- verdicts ------------------------------------------------------------------------------
    def _scales(self, model: "AnalysedModel") -> "ScaleModel":
        """One scale model per analysed model: ``forward_needs`` and ``check`` read the same."""
        from biaslint.rules.bl003_fan_in_blind_init.chains import ScaleModel

        cached = self._cached_scales
        if cached is None or cached[0] is not model:
            cached = (model, ScaleModel(model))
            self._cached_scales = cached
        return cached[1]

    def _claims(self, model: "AnalysedModel", context: RuleContext
                ) -> list[tuple["Chain", str]]:
        """The chains the analysis says grow ("grows") or shrink ("shrinks") beyond the band,
        from unit-scale input into their first layer."""
        high = float(context.option(self, "max_growth"))
        low = float(context.option(self, "min_growth"))
        scales = self._scales(model)
        claims: list[tuple[Chain, str]] = []
        for chain in list(scales.chains()) + list(scales.pooled_chains()):
            explodes = chain.growth > high
            # Vanishing is judged on the activations entering the chain's last layer: that
            # layer's own output scale is a read-out scale (a small classifier head, the last
            # layer of a residual branch, GPT-2's 1/sqrt(2 n_layer)) often small on purpose.
            # Through pooling the prediction is only a lower bound: for explosion claims only.
            vanishes = chain.hidden_growth < low and len(chain.calls) > 1 \
                and not chain.through_pooling
            if not explodes and (not vanishes or chain.end_kind == "norm"):
                continue
            # BL003 judges what the init does. A chain that would leave the band at the gains
            # its fix writes too is scaled out of it by the forward's own constants (a division
            # between two layers); unless the init's own share (the growth over that growth)
            # leaves the band as well, a new init would not mend it and it is not the init's.
            neutral_growth, neutral_hidden = chain.at_target_gains()
            if explodes:
                forward_scaled = neutral_growth > high
                init_share = chain.growth / max(neutral_growth, 1e-300)
                init_leaves = init_share > high
            else:
                forward_scaled = neutral_hidden < low
                init_share = chain.hidden_growth / max(neutral_hidden, 1e-300)
                init_leaves = init_share < low
            if forward_scaled and not init_leaves:
                continue
            claims.append((chain, "grows" if explodes else "shrinks"))
        return claims

    def _chain_finding(self, model: "AnalysedModel", chain: "Chain", direction: str,
                       measured: "ChainMeasure | str", context: RuleContext) -> Finding | None:
        """The finding for a claimed chain; None, with the disagreement recorded, when the
        measurement on the example inputs does not show it."""
        high = float(context.option(self, "max_growth"))
        low = float(context.option(self, "min_growth"))
        explodes = direction == "grows"
        severity = Severity.INFO if chain.end_kind == "norm" else Severity.ERROR
        members = chain.calls if explodes else chain.calls[:-1]
        # Point at the earliest layer within 2x of the worst gain ratio: with one init applied
        # to the whole chain that is where the user's code goes wrong first.
        if explodes:
            worst = max(c.ratio for c in members)
            culprit = next(c for c in members if c.ratio >= worst / 2)
        else:
            worst = min(c.ratio for c in members)
            culprit = next(c for c in members if c.ratio <= worst * 2)
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
                model.disagree(
                    self.code, culprit.layer.name,
                    f"activation scale {direction} ~{_times(predicted)} {where} over {names} "
                    f"({derived})",
                    f"measured ~{_times(growth)} on the example inputs (layer by layer "
                    f"{per_layer}), inside [{low:g}, {high:g}]" if low <= growth <= high else
                    f"measured ~{_times(growth)} on the example inputs (layer by layer "
                    f"{per_layer})")
                return None
        data["growth"] = growth
        gains = ", ".join(f"{c.gain:.3g}" for c in chain.calls)
        tail = (" The output is normalized right away, so this only slows learning of these "
                "layers." if chain.end_kind == "norm" else "")
        if chain.through_pooling:
            tail += (" The chain crosses max pooling of non-negative activations, which can only "
                     "raise the scale: the predicted growth is a lower bound.")
        message = (
            f"activation scale {direction} ~{_times(growth)} {where} over {len(chain.calls)} "
            f"layer(s) with no normalization between ({names}; {basis}): "
            f"gains rms(W)*sqrt(fan_in) = {gains}, while "
            f"{culprit.target:.3g} ({culprit.activation or 'identity'}) keeps the scale"
            f"{_init_phrase(culprit.layer)}.{tail}")
        return self.finding(culprit.layer, message, parameter="weight", severity=severity,
                            fix=_fix(culprit), data=data)

    def _judge_layer(self, call: "LayerCall", limit: float) -> Finding | None:
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
        return self.finding(call.layer, message, parameter="weight", severity=severity,
                            fix=_fix(call), data={"gain": call.gain, "ratio": call.ratio})

    def _recurrent(self, layer: "Layer", pname: str, gain: float, limit: float) -> Finding:
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
        return self.finding(layer, message, parameter=pname, fix=fix, data={"gain": gain})

    def _bilinear(self, layer: "Layer", gain: float, target: float,
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
        return self.finding(layer, message, parameter="weight",
                            data={"gain": gain, "ratio": gain / target}, fix=fix)


def _times(value: float, short: bool = False) -> str:
    if value >= 1 or short:
        return f"{value:.3g}x"
    return f"{value:.3g}x (1/{1 / value:.3g})" if value > 0 else "0x"


def _init_phrase(layer: "Layer", pname: str = "weight") -> str:
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


def _fix(call: "LayerCall") -> Fix:
    import torch.nn as nn

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
        title = (f"Replace the init at {call_site.location.file}:{call_site.location.line} "
                 "with a fan-in-scaled one")
    else:
        title = "Initialize the weight with a fan-in-scaled init"
    return Fix(title=title, code=code, safe=False, kind=FixKind.REPLACE_INIT)
