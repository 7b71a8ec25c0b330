"""BL002: weights initialized to zero or to one constant value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import init_call_subject, python_path, set_by, user_call
from biaslint.rules.base import Rule, RuleContext
from biaslint.rules.bl002_zero_constant_weight.routing import tied_routers
from biaslint.rules.bl002_zero_constant_weight.symmetry import (
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
    import torch
    import torch.nn as nn

    from biaslint.analysis import AnalysedModel, Layer


class ZeroConstantWeight(Rule):
    code = "BL002"
    name = "zero-constant-weight"
    severity = Severity.ERROR
    summary = "Weights initialized to zero or one constant, so units stay clones or stay dead"
    what_it_does = """\
Finds weight matrices of `Linear`, `ConvNd`, `ConvTransposeNd`, `Bilinear`, `Embedding`, RNN
input weights and `MultiheadAttention` output projections whose every entry holds the same value
(most often zero), or whose units all have the same weight row (or one row scaled per unit), and
decides from the graph whether training can recover:

* **error** when it cannot: every unit computes the same value and the layer that consumes them
  is constant too, so the units also receive the same gradient and stay clones for good; or the
  weight is zero and every unit's bias is <= 0 in front of a ReLU, so the output and its gradient
  are zero for good (dead units). When only some units have a bias <= 0, those units are dead and
  the finding is a warning. The same holds through a normalization: a zero weight with no (or a
  zero) bias outputs exactly 0, BatchNorm, InstanceNorm, GroupNorm or LayerNorm of 0 is exactly
  their bias (beta), and a ReLU after a beta <= 0 is dead. (A GroupNorm or LayerNorm group with
  one live unit passes gradient back to all of them, so only whole dead groups count.) The
  consumer that keeps clones clones may be reached through activations, pooling, a mean over
  the spatial axes or a flatten.
* **error** too when the units differ only by their biases, or only in the scale of one shared
  weight row (every row parallel), and the next layer weighs them alike: each unit is a function
  of the same weighted sum, their gradients differ only through the activation's slope, and
  trained they stay near-clones. Random biases do not tell such units apart in practice:
  measured on tanh, ReLU and GELU MLPs trained with SGD, the row-centred weight keeps 74-100% of
  its energy in two directions and the loss stays 550-70,000x that of a default-init twin.
  With a default-init next layer the same units are told apart (37-64%, a default layer 25-33%)
  and there is no finding.
* **warning** when learning only stalls: a zero hidden layer whose input comes only from earlier
  layers: those layers get no gradient until the zero weight has moved.
* **no finding** for the deliberate zero-init patterns: the output is summed with another path
  (the last layer of a residual branch, a LoRA up-projection), multiplies or modulates another
  tensor (adaLN-Zero gates), or is the model's output (a classifier head); and for normalization
  weights of any value.
"""
    why_bad = """\
Gradient descent can only make two units different if something treats them differently. Units
with identical weights and biases compute the same value; if whatever consumes them weighs them
equally, their gradients are equal too, and every update keeps them equal. A 512-unit layer then
has the capacity of one unit. A zero weight in front of a ReLU with a non-positive bias is worse:
the ReLU outputs zero and passes back zero, so the layer never learns at all.
"""
    fix_text = """\
Initialize the weight with a random, fan-in-scaled init: `nn.init.kaiming_normal_` (He et al.,
2015) in front of ReLU-family activations, `nn.init.xavier_normal_` (Glorot and Bengio, 2010) in
front of tanh or sigmoid, or simply keep PyTorch's default. Keep zero init only where the output
is added to another path or is the model's output.
"""
    references = (
        "He et al., 2015, Delving Deep into Rectifiers, https://arxiv.org/abs/1502.01852",
        "Goyal et al., 2017, zero-init of the last BN gamma in each residual block, "
        "https://arxiv.org/abs/1706.02677",
        "Peebles and Xie, 2023, adaLN-Zero in DiT, https://arxiv.org/abs/2212.09748",
        "Hu et al., 2021, LoRA, https://arxiv.org/abs/2106.09685",
    )
    bad_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(),
        nn.Linear(64, 64), nn.Tanh(),
        nn.Linear(64, 10),
    )
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)  # every hidden unit starts, and stays, the same
        nn.init.zeros_(hidden.bias)
    return model
'''
    good_example = '''\
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)  # last layer of a residual branch: deliberate

    def forward(self, x):
        return x + self.fc2(self.fc1(x).relu())


def build():
    head = nn.Linear(64, 10)
    nn.init.zeros_(head.weight)  # classifier head: deliberate
    return nn.Sequential(nn.Linear(16, 64), Block(64), head)
'''

    reads = frozenset({"graph", "values"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return [layer for layer in model.layers.values()
                if any(True for _ in weights_to_check(layer.module))]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.analysis.values import UNKNOWN

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
                finding = self._judge(model, layer, pname, units_dim, rows)
                if finding is not None:
                    yield finding
        yield from self._routers(model)

    def _routers(self, model: "AnalysedModel") -> Iterable[Finding]:
        """A zero mixture-of-experts router: every token routed to the same experts."""
        for router in tied_routers(model):
            layer, pname = router.layer, router.pname
            subject = init_call_subject(layer.init_of(pname)) or \
                f"{python_path(layer.name)}.{pname}"
            yield self.finding(
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

    # -- the verdict -----------------------------------------------------------------------------
    def _judge(self, model: "AnalysedModel", layer: "Layer", pname: str,
               units_dim: int, rows: str = "constant") -> Finding | None:
        """``rows``: "constant" (every entry the same), "identical" (every unit the same weight
        row) or "parallel" (rows differ only in scale)."""
        stats = layer.stats(pname)
        assert stats is not None
        calls, outputs = calls_and_outputs(model, layer)
        if not outputs:
            return None  # not inside any traced graph: we cannot see what consumes it
        weight = layer.param(pname)
        assert weight is not None
        units = int(weight.shape[units_dim]) if weight.dim() > units_dim else 1
        plain = _is_plain_layer(layer.module)
        bias = _bias_of(layer.module) if plain else None
        bias_value = layer.value("bias") if bias is not None else None
        if bias is not None and (bias_value is None or not bias_value.known):
            return None  # the bias decides the verdict, and it cannot be read
        value = ("all zero" if stats.all_zero else f"all {stats.max:g}") if rows == "constant" \
            else ("the same row for every unit" if rows == "identical"
                  else "one row scaled differently per unit")
        where = _init_phrase(layer, pname)

        # 1. Zero weight straight into a ReLU: the output is the bias; where it is <= 0 the ReLU
        #    outputs 0 and passes back 0, so neither weight nor bias ever moves.
        if plain and stats.all_zero and all(feeds_only_relu(model, out) for out in outputs):
            dead = units if bias_value is None else int(round(bias_value.count_at_most(0.0)))
            if dead:
                severity = Severity.ERROR if dead == units else Severity.WARNING
                bias_text = "has no bias" if bias is None else (
                    "has a bias <= 0 everywhere" if dead == units
                    else f"has {dead} of {units} bias entries <= 0")
                return self.finding(
                    layer,
                    f"{pname} is all zero{where} and the layer {bias_text} in front of a ReLU: "
                    f"{dead} of {units} units output 0 with zero gradient, dead for good",
                    parameter=pname, severity=severity, fix=_fix(layer, pname, "relu"),
                    data={"verdict": "dead", "dead_units": dead, "units": units},
                )

        # 1b. A zero layer with no (or a zero) bias outputs exactly 0; a normalization of 0
        #     outputs exactly its beta, and a ReLU after a beta <= 0 outputs and passes back 0.
        if plain and stats.all_zero and (bias_value is None or bias_value.constant() == 0):
            norms = [n for out in outputs
                     for n in (norms_into_relu(model, out, layer.module) or [None])]
            if norms and all(n is not None for n in norms):
                dead = _dead_everywhere([n[1] for n in norms if n is not None], units)
                names = ", ".join(sorted({n[0] for n in norms if n is not None}))
                if dead:
                    return self.finding(
                        layer,
                        f"{pname} is all zero{where} and the layer has "
                        f"{'no bias' if bias is None else 'a zero bias'}: it outputs exactly 0, "
                        f"so the normalization {names} outputs exactly its bias, which is <= 0 "
                        f"in front of a ReLU for {dead} of {units} units: they output 0 with "
                        "zero gradient, dead for good",
                        parameter=pname,
                        severity=Severity.ERROR if dead == units else Severity.WARNING,
                        fix=_fix(layer, pname, "relu"),
                        data={"verdict": "dead", "dead_units": dead, "units": units,
                              "through": names},
                    )

        endpoints = [e for out in outputs for e in walk(model, out)]
        if not endpoints or any(e.kind in ("output", "combine") for e in endpoints):
            return None  # summed, gating or the model output: the deliberate zero-init patterns
        activation = first_activation(model, outputs)

        # 2. Identical units whose every consumer weighs them equally get identical gradients,
        #    and the consumer's columns get identical updates: symmetric for good.
        # A grouped conv's units read different input channels: they differ from the start.
        # 2b. Units that differ only by their biases, or only in the scale of one shared weight
        #     row, compute functions of one weighted sum of the inputs. With a consumer that
        #     weighs them alike, their gradients differ only through the activation's slope at
        #     those offsets: the rows stay nearly parallel and the layer trains as if it had one
        #     unit (measured by training in tests/test_bl002_training.py).
        symmetric = plain and units > 1 and all(e.kind == "layer" for e in endpoints) and \
            getattr(layer.module, "groups", 1) == 1 and len(calls) == 1
        if symmetric:
            consumers = [symmetric_consumer(model, out, layer.module) for out in outputs]
            if all(c is not None for c in consumers):
                names = sorted({c for group in consumers if group for c in group})
                same_bias = bias_value is None or bias_value.constant() is not None
                if names and rows != "parallel" and same_bias:
                    return self.finding(
                        layer,
                        f"{pname} is {value}{where}: all {units} units compute the same value, "
                        f"and the next layer {', '.join(names)} weighs them equally, so they get "
                        "the same gradient and stay identical for good",
                        parameter=pname, severity=Severity.ERROR,
                        fix=_fix(layer, pname, activation),
                        data={"verdict": "clones", "units": units, "consumers": names},
                    )
                if names:
                    differ = " and ".join(part for part, present in (
                        ("in scale", rows == "parallel"), ("by their biases", not same_bias))
                        if present)
                    reads = "ignore the inputs" if stats.all_zero else \
                        "read the same weighted sum of the inputs"
                    return self.finding(
                        layer,
                        f"{pname} is {value}{where}: all {units} units {reads} and differ only "
                        f"{differ}, and the next layer "
                        f"{', '.join(names)} weighs them equally, so their gradients differ only "
                        "through the activation's slope: the weight rows stay nearly parallel "
                        "and the units stay near-clones in training (a different init per unit "
                        "is what breaks the symmetry)",
                        parameter=pname, severity=Severity.ERROR,
                        fix=_fix(layer, pname, activation),
                        data={"verdict": "near-clones", "units": units, "consumers": names,
                              "differ": differ},
                    )

        # 3. A zero weight passes back no gradient: layers that reach the loss only through it
        #    do not learn until it has moved.
        if stats.all_zero and any(e.kind == "layer" for e in endpoints) and all(
                e.kind != "unknown" or e.module is None for e in endpoints) \
                and blocks_every_input(layer, pname):
            starved = sorted({name for call in calls for name in starved_upstream(model, call)
                              if name != layer.name and not model.is_shared(name)
                              and len(model.calls_of(name)) == 1})
            if starved:
                shown = ", ".join(starved[:3]) + (f" and {len(starved) - 3} more"
                                                  if len(starved) > 3 else "")
                return self.finding(
                    layer,
                    f"{pname} is all zero{where}: the layers before it ({shown}) get no gradient "
                    "until it has moved, so training stalls",
                    parameter=pname, severity=Severity.WARNING,
                    fix=_fix(layer, pname, activation),
                    data={"verdict": "stall", "starved": starved},
                )
        return None


# -- which weights, and the graph around them ------------------------------------------------------

def _dead_everywhere(masks: list, units: int) -> int:
    """Units dead on every path (an empty mask: all units; a mask of another length than the
    layer's units: we cannot tell which, so none)."""
    import torch

    dead = torch.ones(units, dtype=torch.bool)
    for mask in masks:
        if mask.numel() == 0:
            continue
        if mask.numel() != units:
            return 0
        dead &= mask
    return int(dead.sum())


def _is_plain_layer(module: "nn.Module") -> bool:
    """Layers whose output unit j is w_j . x + b_j (so a zero weight outputs exactly the bias)."""
    import torch.nn as nn

    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding))


def _bias_of(module: "nn.Module") -> "torch.Tensor | None":
    bias = getattr(module, "bias", None)
    return bias if bias is not None and hasattr(bias, "shape") else None


def _init_phrase(layer: "Layer", pname: str) -> str:
    call = user_call(layer.init_of(pname))
    return "" if call is None else f" (set by {set_by(call)})"


def _fix(layer: "Layer", pname: str, activation: str | None) -> Fix:
    call = layer.init_of(pname)
    subject = init_call_subject(call) or f"{python_path(layer.name)}.{pname}"
    if activation in ("tanh", "sigmoid"):
        code = f"nn.init.xavier_normal_({subject}, gain=nn.init.calculate_gain('{activation}'))"
    elif activation in ("relu", "gelu", "silu", "elu", "leaky_relu"):
        code = f"nn.init.kaiming_normal_({subject}, nonlinearity='relu')"
    else:
        code = f"nn.init.xavier_normal_({subject})"
    if call is not None and call.by_user and call.location is not None:
        title = f"Replace the constant init at {call.location.file}:{call.location.line} with"
    else:
        title = "Initialize it with a random fan-in-scaled init instead"
    return Fix(title=title, code=code, safe=False, kind=FixKind.REPLACE_INIT)
