"""BL007: a bias that puts units outside their activation's working range at init."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    import torch

    from biaslint.analysis import AnalysedModel, Layer, Use
    from biaslint.analysis.values import ParamValue


# A unit is judged only over at least this many rows (examples x positions): on two rows (a
# squeeze-excitation's pooled input at batch 2) "negative on every input" says little.
MIN_ROWS = 8


class BiasKillsUnits(Rule):
    code = "BL007"
    name = "bias-kills-units"
    severity = Severity.WARNING
    summary = "A bias that makes ReLU units dead or tanh/sigmoid units saturated at init"
    what_it_does = """\
For each `nn.Linear` / conv whose output goes straight into one elementwise activation, runs the
model once on the example inputs and reads the layer's pre-activations, unit by unit, over every
row (and position):

* ReLU family: a unit is *dead* when its pre-activation is <= 0 on every input (output 0,
  gradient 0) and *the bias is what did it*: without its bias the same unit is positive on some
  input, and the bias is negative by at least twice the spread of `w.x` over the inputs (so it
  kills the unit on other inputs too, not only on these few);
* tanh / sigmoid: a unit is *saturated* when |pre-activation| > `saturation` (3: the slope is
  below 0.01 for tanh, 0.045 for sigmoid) on at least 95% of the inputs, not on most of them
  without its bias, and the bias alone is beyond `saturation` and twice that spread.

A layer is judged over at least 8 rows (examples times positions): a squeeze-excitation's
pooled input at batch 2 is two rows, too few to call a unit dead. It flags the layer when at
least `min_fraction` of its units are killed this way, with the
fraction, the bias values that did it and the pre-activations' range. Gates are left alone: an
activation whose output multiplies another path (GLU, highway, LSTM-style gates) is meant to
start closed or open (Srivastava et al., 2015 start highway gates at a negative bias). A
positive ReLU bias never kills a unit.

On the meta device (`--device meta`: no values, the init laws instead) it judges what the laws
settle. A unit can be killed only by a negative bias (ReLU) or one of size `saturation`
(tanh/sigmoid): when too few units have one (counted exactly for set values, bounded for drawn
ones: PyTorch's default bias `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` never reaches 3) the layer
passes whatever the inputs. A `Linear` whose input comes straight from a `LayerNorm` or
`RMSNorm` with a constant weight and bias, and whose weight is drawn symmetric about 0, has
`|w.x| <= ||w_u|| * ||x||` on every row, both bounded by the laws (`||w_u||` by its support,
or for a normal by its chi-square tail): a unit whose bias lies beyond twice that is killed on
every input, and a ReLU one is alive without its bias on some row with chance at least 1/2;
enough such units are flagged, with the count the laws guarantee ("at least"). Between the two,
whether a unit dies depends on how its pre-activations vary over the inputs, which no law
gives: the layer is listed as not judged, with that reason.
"""
    why_bad = """\
A dead ReLU passes back exactly zero gradient to its weights and bias, so it never recovers: the
layer trains with fewer units than it has. A saturated tanh or sigmoid passes back almost none.
Either way the capacity you paid for is idle from the first step, and no optimizer setting brings
it back.
"""
    fix_text = """\
Initialize the bias at zero (or a small positive value for ReLU: 0.01), or scale the inputs so
the bias is small against them.
"""
    references = (
        "Lu, Shin, Su and Karniadakis, 2019, Dying ReLU and Initialization: Theory and Numerical "
        "Examples, https://arxiv.org/abs/1903.06733",
        "Srivastava, Greff and Schmidhuber, 2015, Highway Networks, https://arxiv.org/abs/1505.00387",
    )
    options = (
        Option("min_fraction", 0.1,
               "Flag a layer when at least this share of its units is killed."),
        Option("saturation", 3.0, "|pre-activation| beyond which tanh/sigmoid count as saturated."),
    )
    bad_example = '''\
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    nn.init.constant_(model[0].bias, -3.0)  # below every pre-activation: all 64 units dead
    return model, torch.randn(64, 32)
'''
    good_example = '''\
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    nn.init.zeros_(model[0].bias)
    return model, torch.randn(64, 32)
'''

    reads = frozenset({"graph", "values", "forward", "laws"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return [layer for layer, _, _ in _candidates(model)]

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        if not model.on_meta():
            return {}
        return {name: f"on the meta device, {why}"
                for name, why in law_verdicts(self, model, context).items()
                if isinstance(why, str)}

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        minimum = float(context.option(self, "min_fraction"))
        saturation = float(context.option(self, "saturation"))
        if model.on_meta():
            yield from (v for v in law_verdicts(self, model, context).values()
                        if isinstance(v, Finding))
            return
        candidates = _candidates(model)
        outputs = model.real_outputs([layer.name for layer, _, _ in candidates])
        for layer, kind, _ in candidates:
            out = outputs.get(layer.name)
            bias = layer.value("bias")
            if out is None or bias is None or not bias.known or not out.is_floating_point():
                continue
            values = bias.exact()
            if values is None:
                continue
            finding = self._judge(layer, kind, out, values.reshape(-1), minimum, saturation)
            if finding is not None:
                yield finding

    def _judge(self, layer: "Layer", kind: str, out: "torch.Tensor", bias: "torch.Tensor",
               minimum: float, saturation: float) -> Finding | None:
        import torch.nn as nn

        conv = isinstance(layer.module, nn.modules.conv._ConvNd)
        z = (out.movedim(1, -1) if conv and out.dim() > 2 else out).double()
        z = z.reshape(-1, z.shape[-1])
        if z.shape[-1] != bias.numel() or z.shape[0] < MIN_ROWS:
            return None  # too few rows to say a unit is dead on every input
        without = z - bias
        units = z.shape[1]
        # The bias must do it on any input, not just on these few: it lies beyond the inputs'
        # own spread of w.x by more than two standard deviations (a tiny default bias on a unit
        # that happens to be negative on two images is not a dead unit).
        spread = without.std(dim=0) if z.shape[0] > 1 else without.abs().amax(dim=0)
        if kind == "relu":
            killed = (z <= 0).all(dim=0) & (without > 0).any(dim=0) & (bias < 0) & \
                (-bias >= 2 * spread)
            what = "dead (pre-activation <= 0 on every input: output 0, gradient 0)"
        else:
            beyond = (z.abs() > saturation).double().mean(dim=0)
            before = (without.abs() > saturation).double().mean(dim=0)
            killed = (beyond >= 0.95) & (before < 0.5) & (bias.abs() >= saturation) & \
                (bias.abs() >= 2 * spread)
            what = f"saturated (|pre-activation| > {saturation:g} on >= 95% of the inputs)"
        count = int(killed.sum())
        if count == 0 or count / units < minimum:
            return None
        shown = bias[killed]
        low, high = float(z[:, killed].min()), float(z[:, killed].max())
        values = (f"{float(shown[0]):.3g}" if bool((shown == shown[0]).all())
                  else f"{float(shown.min()):.3g} to {float(shown.max()):.3g}")
        set_by = layer.init_of("bias")
        where = f" (set by {set_by.describe()})" if set_by is not None and set_by.by_user else ""
        after = ("they start with no output and no gradient, and stay so until the layers "
                 "before them move their inputs" if kind == "relu"
                 else "they start with almost no gradient")
        message = (f"{count} of {units} units are {what} on the example inputs because of the "
                   f"bias{where}: bias {values} on those units, pre-activations {low:.3g} to "
                   f"{high:.3g} there, while without the bias they reach the working range; "
                   f"{after}")
        return bias_finding(self, layer, kind, count, units, message)


def _candidates(model: "AnalysedModel") -> list[tuple["Layer", str, "Use"]]:
    """(layer, "relu" | "tanh" | "sigmoid", activation use) for each biased Linear/conv whose
    every consumer is one such activation that gates nothing."""
    import torch.nn as nn

    from biaslint.analysis.ops import activation_kind

    found = []
    for layer in model.layers_of_type(nn.Linear, nn.modules.conv._ConvNd):
        if getattr(layer.module, "bias", None) is None or model.is_shared(layer.name):
            continue
        calls = model.calls_of(layer.name)
        if len(calls) != 1:
            continue
        consumers = model.consumers_of(calls[0])
        kinds = {activation_kind(c) for c in consumers}
        if len(consumers) != 1 or len(kinds) != 1:
            continue
        kind = kinds.pop()
        if kind not in ("relu", "tanh", "sigmoid") or isinstance(
                model.module_of(consumers[0]), nn.Softsign):
            continue  # softsign's slope at 3 is still 0.06: not saturated in this sense
        if _gates(model, consumers[0]):
            continue
        found.append((layer, kind, consumers[0]))
    return found


def _gates(model: "AnalysedModel", activation: "Use") -> bool:
    """The activation's output multiplies another path (or is subtracted from 1 for it)."""
    from biaslint.analysis.ops import binary_kind

    stack, seen = [activation], set()
    while stack:
        use = stack.pop()
        for user in model.users(use):
            if user.node in seen:
                continue
            seen.add(user.node)
            kind = binary_kind(user)
            if kind is not None and kind[0] == "mul" and kind[1]:
                return True
            if kind is not None and kind[0] in ("sub", "rsub") and not kind[1]:
                stack.append(user)  # 1 - t: the carry gate of a highway layer
    return False


# -- on the meta device: what the init laws settle ------------------------------------------------

_LAWS_KEY = "_bl007_laws"


def law_verdicts(rule: BiasKillsUnits, model: "AnalysedModel", context: RuleContext
                 ) -> dict[str, Finding | str | None]:
    """Per candidate layer on the meta device: its finding, None when the laws show it is not
    flagged, or why they do not settle it. Layers whose laws are unknown are left to the
    engine (not judged: values it cannot read)."""
    found = model.__dict__.get(_LAWS_KEY)
    if found is None:
        minimum = float(context.option(rule, "min_fraction"))
        saturation = float(context.option(rule, "saturation"))
        found = {}
        for layer, kind, _ in _candidates(model):
            bias, weight = layer.value("bias"), layer.value("weight")
            if bias is None or not bias.known or weight is None or not weight.known:
                continue
            found[layer.name] = _from_laws(rule, model, layer, kind, minimum, saturation)
        model.__dict__[_LAWS_KEY] = found
    return found


def _rows(model: "AnalysedModel", layer: "Layer", units: int) -> int | None:
    """Rows (examples x positions) of the layer's pre-activations in the captured forward."""
    calls = model.calls_of(layer.name)
    shape = calls[0].shape() if calls else None
    if not shape or not units:
        return None
    return math.prod(shape) // units


def _counts(bias: "ParamValue", kind: str, beyond: float) -> tuple[float, int]:
    """How many units' biases are past ``beyond`` (0 for "possible"): below ``-beyond`` for
    ReLU (strictly below 0 when ``beyond`` is 0), at least ``beyond`` in size for tanh/sigmoid;
    and how many entries that count is uncertain over (drawn ones that may or may not be past
    it). A set value counts exactly; a drawn one at its chance."""
    low = math.nextafter(-beyond, -math.inf) if beyond == 0 else -beyond
    high = math.nextafter(beyond, -math.inf)
    count, uncertain = 0.0, 0
    for piece in getattr(bias, "pieces", None) or []:
        law = piece.law
        if law.kind == "exact":
            values = piece.exact_values()
            past = (values <= low) if kind == "relu" else (values <= low) | (values > high)
            count += float(past.sum())
            continue
        chance = law.probability_at_most(low)
        if kind != "relu":
            chance += 1 - law.probability_at_most(high)
        count += piece.size * chance
        uncertain += piece.size if 0 < chance < 1 else 0
    return count, uncertain


def _slack(uncertain: int) -> float:
    """How far a count over ``uncertain`` independent draws may stray from its expectation
    (Hoeffding, chance e**-TAIL)."""
    from biaslint.rules.from_laws import TAIL

    return math.sqrt(uncertain * TAIL / 2) if uncertain else 0.0


def _from_laws(rule: BiasKillsUnits, model: "AnalysedModel", layer: "Layer", kind: str,
               minimum: float, saturation: float) -> Finding | str | None:
    """The verdict from the laws. A unit can be killed only by a negative bias (ReLU) or one
    of size ``saturation`` (tanh/sigmoid): too few such units and the layer passes, whatever
    the inputs. A unit is surely killed when its bias lies beyond twice the largest ``w . x``
    can reach on any row (``||w_u|| * ||x||``, with ``x`` a norm's output); a ReLU unit also
    needs ``w . x > 0`` on some row, which a weight drawn symmetric about 0 gives each unit
    with chance at least 1/2, independently."""
    import torch.nn as nn

    from biaslint.rules.from_laws import binomial_low, drawn_weight, normed, row_norm_bound

    bias = layer.value("bias")
    assert bias is not None
    units = bias.numel
    rows = _rows(model, layer, units)
    if rows is None:
        return "the shape of its output is not known"
    if rows < MIN_ROWS:
        return None  # too few rows to call a unit dead, as on real tensors
    need = max(1.0, minimum * units)
    possible, uncertain = _counts(bias, kind, 0.0 if kind == "relu" else saturation)
    if possible + _slack(uncertain) < need:
        return None
    what = "negative" if kind == "relu" else f"of size {saturation:g} or more"
    lead = f"{possible:.0f} of its {units} units have a bias {what}, and "
    if not isinstance(layer.module, nn.Linear):
        return lead + "the scale of a convolution's input patches is not known from the laws"
    width = int(layer.module.in_features)
    source = normed(model, model.calls_of(layer.name)[0], width)
    drawn = drawn_weight(layer.value("weight"), width)
    if isinstance(source, str):
        return lead + source
    if isinstance(drawn, str):
        return lead + drawn
    bound = row_norm_bound(drawn, width, units)
    if bound is None or drawn.mean != 0 or drawn.law.support[0] != -drawn.law.support[1]:
        return lead + f"its weight {drawn.law.describe()} is not drawn symmetric about 0"
    reach = bound * math.sqrt(width) * source.high  # |w_u . x| on any row
    # the spread the real check compares with (a std over the rows, unbiased) is at most this
    spread = reach * math.sqrt(rows / (rows - 1))
    if kind == "relu":
        sure, uncertain = _counts(bias, kind, 2 * spread)
        # each of them is alive without its bias on some row with chance at least 1/2
        low = binomial_low(max(sure - _slack(uncertain), 0.0), 0.5)
    else:
        sure, uncertain = _counts(bias, kind, max(saturation + reach, 2 * spread)) \
            if reach <= saturation else (0.0, 0)
        low = sure - _slack(uncertain)
    if low < need:
        return (lead + f"{sure:.0f} lie beyond what w.x can reach on any row "
                f"(|w.x| <= {reach:.3g}): whether the others are killed depends on how much "
                "their pre-activations vary over the inputs, which the laws do not give")
    return _law_finding(rule, layer, kind, int(low), units, reach, source, saturation)


def _law_finding(rule: BiasKillsUnits, layer: "Layer", kind: str, killed: int, units: int,
                 reach: float, source: Any, saturation: float) -> Finding:
    from biaslint.rules.from_laws import LAWS_NOTE

    what = ("dead (pre-activation < 0 on every input: output 0, gradient 0)" if kind == "relu"
            else f"saturated (|pre-activation| > {saturation:g} on every input)")
    set_by = layer.init_of("bias")
    where = f" (set by {set_by.describe()})" if set_by is not None and set_by.by_user else ""
    message = (f"at least {killed} of {units} units are {what} because of the bias{where}: "
               f"{LAWS_NOTE} {source.describe()}, |w.x| is at most {reach:.3g} on every row, "
               f"and those units' biases lie beyond twice that"
               + (" (each is positive without its bias on some row with chance at least 1/2)"
                  if kind == "relu" else ""))
    return bias_finding(rule, layer, kind, killed, units, message)


def bias_finding(rule: BiasKillsUnits, layer: "Layer", kind: str, killed: int, units: int,
                 message: str) -> Finding:
    """The finding, measured or derived alike: its data and the fix that starts the bias at
    (or just above) zero."""
    code = (f"nn.init.zeros_({python_path(layer.name)}.bias)" if kind != "relu"
            else f"nn.init.constant_({python_path(layer.name)}.bias, 0.01)")
    data: dict[str, Any] = {"verdict": "dead" if kind == "relu" else "saturated",
                            "killed": killed, "units": units, "fraction": killed / units,
                            "activation": kind}
    return rule.finding(layer, message, parameter="bias", data=data,
                        fix=Fix(title="Start the bias at (or just above) zero", code=code,
                                safe=False, kind=FixKind.REPLACE_INIT),
                        location=layer.site_of("bias"))
