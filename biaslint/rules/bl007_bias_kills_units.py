"""BL007: a bias that puts units outside their activation's working range at init."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    import torch

    from biaslint.analysis import AnalysedModel, Layer, Use


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

    reads = frozenset({"graph", "values", "forward"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return [layer for layer, _, _ in _candidates(model)]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        minimum = float(context.option(self, "min_fraction"))
        saturation = float(context.option(self, "saturation"))
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
        code = (f"nn.init.zeros_({python_path(layer.name)}.bias)" if kind != "relu"
                else f"nn.init.constant_({python_path(layer.name)}.bias, 0.01)")
        data: dict[str, Any] = {"verdict": "dead" if kind == "relu" else "saturated",
                                "killed": count, "units": units, "fraction": count / units,
                                "activation": kind}
        return self.finding(layer, message, parameter="bias", data=data,
                            fix=Fix(title="Start the bias at (or just above) zero", code=code,
                                    safe=False, kind=FixKind.REPLACE_INIT),
                            location=layer.site_of("bias"))


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
