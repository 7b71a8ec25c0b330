"""BL002: weights initialized to zero or to one constant value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from ..findings import Finding, Fix, Severity
from .base import Rule, RuleContext

if TYPE_CHECKING:
    import torch.nn as nn

    from ..analysis import AnalysedModel, Layer, Use


@dataclass(frozen=True)
class _Endpoint:
    """Where a walk from the layer's output stopped."""

    kind: str  # "output", "combine", "layer", "unknown"
    use: "Use"
    module: "nn.Module | None" = None


class ZeroConstantWeight(Rule):
    code = "BL002"
    name = "zero-constant-weight"
    severity = Severity.ERROR
    summary = "Weights initialized to zero or one constant, so units stay clones or stay dead"
    what_it_does = """\
Finds weight matrices of `Linear`, `ConvNd`, `ConvTransposeNd`, `Bilinear`, `Embedding`, RNN
input weights and `MultiheadAttention` output projections whose every entry holds the same value
(most often zero), and decides from the graph whether training can recover:

* **error** when it cannot: every unit computes the same value and the layer that consumes them
  is constant too, so the units also receive the same gradient and stay clones for good; or the
  weight is zero and every unit's bias is <= 0 in front of a ReLU, so the output and its gradient
  are zero for good (dead units). When only some units have a bias <= 0, those units are dead and
  the finding is a warning.
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

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        for layer in model.layers.values():
            for pname, units_dim in _weights_to_check(layer.module):
                stats = layer.stats(pname)
                if stats is None or not stats.all_equal:
                    continue
                finding = self._judge(model, layer, pname, units_dim)
                if finding is not None:
                    yield finding

    # -- the verdict -----------------------------------------------------------------------------
    def _judge(self, model: "AnalysedModel", layer: "Layer", pname: str,
               units_dim: int) -> Finding | None:
        import torch

        stats = layer.stats(pname)
        assert stats is not None
        outputs = _output_uses(model, layer)
        if not outputs:
            return None  # not inside any traced graph: we cannot see what consumes it
        weight = layer.param(pname)
        assert weight is not None
        units = int(weight.shape[units_dim]) if weight.dim() > units_dim else 1
        bias = _bias_of(layer.module, pname)
        value = "all zero" if stats.all_zero else f"all {stats.max:g}"
        where = _init_phrase(layer, pname)

        # 1. Zero weight straight into a ReLU: units with bias <= 0 output 0 and pass back 0.
        if stats.all_zero and all(_feeds_only_relu(model, out) for out in outputs):
            dead = units if bias is None else int((bias.detach() <= 0).sum())
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
                    location=layer.site,
                    data={"verdict": "dead", "dead_units": dead, "units": units},
                )

        endpoints = [e for out in outputs for e in _walk(model, out)]
        if not endpoints or any(e.kind != "layer" for e in endpoints):
            return None  # summed, gating, model output or something we do not know: deliberate
        activation = _first_activation(model, outputs)

        # 2. Identical units whose consumers weigh them equally: identical gradients forever.
        identical = units > 1 and (bias is None or _constant(bias))
        if identical and all(_constant_weight(e.module) for e in endpoints):
            consumer = ", ".join(sorted({f"{model.module_name(e.use)} ({type(e.module).__name__})"
                                         for e in endpoints}))
            return self.finding(
                layer,
                f"{pname} is {value}{where}: all {units} units compute the same value, and "
                f"the next layer {consumer} is constant too, so they get the same gradient and stay identical "
                "for good",
                parameter=pname, severity=Severity.ERROR, fix=_fix(layer, pname, activation),
                location=layer.site,
                data={"verdict": "clones", "units": units, "consumers": consumer},
            )

        # 3. A zero hidden layer blocks the gradient of everything that feeds only it.
        if stats.all_zero and _is_input_weight(pname):
            starved = sorted({name for out in outputs for name in _starved_upstream(model, out)})
            if starved:
                shown = ", ".join(starved[:3]) + (f" and {len(starved) - 3} more"
                                                  if len(starved) > 3 else "")
                return self.finding(
                    layer,
                    f"{pname} is all zero{where}: the layers before it ({shown}) get no gradient "
                    "until it has moved, so training stalls",
                    parameter=pname, severity=Severity.WARNING,
                    fix=_fix(layer, pname, activation), location=layer.site,
                    data={"verdict": "stall", "starved": starved},
                )
        return None


# -- which weights, and the graph around them ------------------------------------------------------

def _weights_to_check(module: "nn.Module") -> Iterator[tuple[str, int]]:
    """(parameter name, dimension that indexes the output units) for each weight to check."""
    import torch.nn as nn

    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        yield "weight", 1
    elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)):
        yield "weight", 0
    elif isinstance(module, nn.Embedding):
        yield "weight", 1
    elif isinstance(module, nn.RNNBase):
        for pname, _ in module.named_parameters(recurse=False):
            if pname.startswith("weight_ih_l0"):
                yield pname, 0
    elif isinstance(module, nn.MultiheadAttention):
        for pname in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, pname, None) is not None:
                yield pname, 0


def _is_input_weight(pname: str) -> bool:
    return pname == "weight" or pname.startswith("weight_ih") or pname.endswith("proj_weight")


def _bias_of(module: "nn.Module", pname: str):  # type: ignore[no-untyped-def]
    import torch.nn as nn

    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        return None if pname != "weight" else getattr(module, "bias", None)
    bias = getattr(module, "bias", None)
    return bias if bias is not None and hasattr(bias, "shape") else None


def _constant(tensor) -> bool:  # type: ignore[no-untyped-def]
    data = tensor.detach()
    return bool(data.numel() == 0 or data.min() == data.max())


def _constant_weight(module: "nn.Module | None") -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and hasattr(weight, "detach") and _constant(weight)


def _output_uses(model: "AnalysedModel", layer: "Layer") -> list["Use"]:
    """The nodes that carry the layer's output. A MultiheadAttention output projection's output
    is item 0 of its parent's call."""
    import operator

    import torch.nn as nn

    calls = model.calls_of(layer.name)
    if calls:
        if isinstance(layer.module, (nn.MultiheadAttention, nn.RNNBase)):
            return [u for call in calls for u in model.users(call)
                    if u.node.target is operator.getitem and u.node.args[1] == 0]
        return calls
    return []


def _walk(model: "AnalysedModel", start: "Use") -> list[_Endpoint]:
    """Follow the output through activations, splits and scalar arithmetic to what consumes it."""
    from ..ops import activation_kind, binary_kind, is_split, softmax_kind

    endpoints: list[_Endpoint] = []
    stack = model.consumers_of(start)
    seen = set()
    while stack:
        use = stack.pop()
        if use.node in seen:
            continue
        seen.add(use.node)
        if use.node.op == "output":
            endpoints.append(_Endpoint("output", use))
            continue
        binary = binary_kind(use)
        if binary is not None:
            if binary[1]:
                endpoints.append(_Endpoint("combine", use))
            else:
                stack.extend(model.consumers_of(use))
            continue
        if activation_kind(use) or softmax_kind(use) or is_split(use):
            stack.extend(model.consumers_of(use))
            continue
        module = model.module_of(use)
        if module is not None and model.module_name(use) in model.layers \
                and any(True for _ in _weights_to_check(module)):
            endpoints.append(_Endpoint("layer", use, module))
            continue
        endpoints.append(_Endpoint("unknown", use))
    return endpoints


def _feeds_only_relu(model: "AnalysedModel", out: "Use") -> bool:
    from ..ops import DEAD_BELOW_ZERO, activation_kind

    consumers = model.consumers_of(out)
    return bool(consumers) and all(activation_kind(c) in DEAD_BELOW_ZERO for c in consumers)


def _first_activation(model: "AnalysedModel", outputs: list["Use"]) -> str | None:
    from ..ops import activation_kind

    for out in outputs:
        for consumer in model.consumers_of(out):
            kind = activation_kind(consumer)
            if kind:
                return kind
    return None


def _starved_upstream(model: "AnalysedModel", out: "Use") -> Iterator[str]:
    """Parametrized layers whose only route to the loss runs through this call.

    Walk back from the call's inputs while every value on the way has exactly one user; a value
    used elsewhere too (a residual skip, a second head) still gets gradient, so we stop there.
    """
    stack = [p for p in model.producers(out) if p.node.op != "get_attr"]
    seen = set()
    while stack:
        use = stack.pop()
        if use.node in seen or len(use.node.users) != 1:
            continue
        seen.add(use.node)
        if use.node.op == "call_module" and model.module_name(use) in model.layers:
            yield model.module_name(use)
            continue
        if use.node.op in ("call_function", "call_method", "call_module"):
            stack.extend(p for p in model.producers(use) if p.node.op != "get_attr")


def _init_phrase(layer: "Layer", pname: str) -> str:
    call = layer.init_of(pname)
    if call is None or not call.by_user:
        return ""
    where = f" at {call.location.file}:{call.location.line}" if call.location else ""
    return f" (set by {call.describe()}{where})"


def _fix(layer: "Layer", pname: str, activation: str | None) -> Fix:
    from ..analysis import init_call_subject, python_path

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
    return Fix(title=title, code=code, safe=False)
