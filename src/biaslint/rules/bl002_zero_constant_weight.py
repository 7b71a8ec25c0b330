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
                if not layer.is_constant(pname):
                    continue  # one min/max pass; full statistics only for constant weights
                finding = self._judge(model, layer, pname, units_dim)
                if finding is not None:
                    yield finding

    # -- the verdict -----------------------------------------------------------------------------
    def _judge(self, model: "AnalysedModel", layer: "Layer", pname: str,
               units_dim: int) -> Finding | None:
        stats = layer.stats(pname)
        assert stats is not None
        calls, outputs = _calls_and_outputs(model, layer)
        if not outputs:
            return None  # not inside any traced graph: we cannot see what consumes it
        weight = layer.param(pname)
        assert weight is not None
        units = int(weight.shape[units_dim]) if weight.dim() > units_dim else 1
        plain = _is_plain_layer(layer.module)
        bias = _bias_of(layer.module) if plain else None
        value = "all zero" if stats.all_zero else f"all {stats.max:g}"
        where = _init_phrase(layer, pname)

        # 1. Zero weight straight into a ReLU: the output is the bias; where it is <= 0 the ReLU
        #    outputs 0 and passes back 0, so neither weight nor bias ever moves.
        if plain and stats.all_zero and all(_feeds_only_relu(model, out) for out in outputs):
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
                    data={"verdict": "dead", "dead_units": dead, "units": units},
                )

        endpoints = [e for out in outputs for e in _walk(model, out)]
        if not endpoints or any(e.kind in ("output", "combine") for e in endpoints):
            return None  # summed, gating or the model output: the deliberate zero-init patterns
        activation = _first_activation(model, outputs)

        # 2. Identical units whose every consumer weighs them equally get identical gradients,
        #    and the consumer's columns get identical updates: symmetric for good.
        identical = plain and units > 1 and (bias is None or _constant(bias)) and all(
            e.kind == "layer" for e in endpoints)
        if identical:
            consumers = [_symmetric_consumer(model, out, layer.module) for out in outputs]
            if all(c is not None for c in consumers):
                names = sorted({c for group in consumers if group for c in group})
                if names:
                    return self.finding(
                        layer,
                        f"{pname} is {value}{where}: all {units} units compute the same value, "
                        f"and the next layer {', '.join(names)} weighs them equally, so they get "
                        "the same gradient and stay identical for good",
                        parameter=pname, severity=Severity.ERROR,
                        fix=_fix(layer, pname, activation),
                        data={"verdict": "clones", "units": units, "consumers": names},
                    )

        # 3. A zero weight passes back no gradient: layers that reach the loss only through it
        #    do not learn until it has moved.
        if stats.all_zero and any(e.kind == "layer" for e in endpoints) and all(
                e.kind != "unknown" or e.module is None for e in endpoints):
            starved = sorted({name for call in calls for name in _starved_upstream(model, call)})
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


def _is_plain_layer(module: "nn.Module") -> bool:
    """Layers whose output unit j is w_j . x + b_j (so a zero weight outputs exactly the bias)."""
    import torch.nn as nn

    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear, nn.Embedding))


def _bias_of(module: "nn.Module"):  # type: ignore[no-untyped-def]
    bias = getattr(module, "bias", None)
    return bias if bias is not None and hasattr(bias, "shape") else None


def _constant(tensor) -> bool:  # type: ignore[no-untyped-def]
    data = tensor.detach()
    return bool(data.numel() == 0 or data.min() == data.max())


def _constant_weight(module: "nn.Module | None") -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and hasattr(weight, "detach") and _constant(weight)


def _calls_and_outputs(model: "AnalysedModel", layer: "Layer") -> tuple[list["Use"], list["Use"]]:
    """The call nodes that run the layer, and the nodes that carry its output.

    RNNs and MultiheadAttention return tuples: their output is item 0. A MultiheadAttention's
    ``out_proj`` runs inside its parent's call, so its output is the parent's item 0.
    """
    import operator

    import torch.nn as nn

    calls = model.calls_of(layer.name)
    module = layer.module
    if not calls and "." in layer.name and layer.name.endswith("out_proj"):
        parent_name = layer.name.rsplit(".", 1)[0]
        parent = model.model.get_submodule(parent_name)
        if isinstance(parent, nn.MultiheadAttention):
            calls, module = model.calls_of(parent_name), parent
    if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
        outputs = [u for call in calls for u in model.users(call)
                   if u.node.target is operator.getitem and u.node.args[1] == 0]
        return calls, outputs
    return calls, calls


def _walk(model: "AnalysedModel", start: "Use") -> list[_Endpoint]:
    """Follow the output to what finally consumes it: another weight layer, a sum or product with
    another tensor (residual, LoRA, gate), or the model output.

    Parameter-free ops, normalizations and pooling are walked through, so a residual branch whose
    zero conv is followed by BatchNorm and then the skip sum is still seen as summed.
    """
    import torch
    import torch.nn as nn

    from ..ops import binary_kind

    endpoints: list[_Endpoint] = []
    stack = model.consumers_of(start)
    seen = set()
    while stack:
        use = stack.pop()
        if use.node in seen:
            continue
        seen.add(use.node)
        node = use.node
        if node.op == "output":
            endpoints.append(_Endpoint("output", use))
            continue
        binary = binary_kind(use)
        if binary is not None:
            if binary[1]:
                endpoints.append(_Endpoint("combine", use))
            else:
                stack.extend(model.consumers_of(use))
            continue
        module = model.module_of(use)
        if module is not None:
            if model.module_name(use) in model.layers and any(
                    True for _ in _weights_to_check(module)):
                endpoints.append(_Endpoint("layer", use, module))
            elif _passes_through(module):
                stack.extend(model.consumers_of(use))
            else:
                endpoints.append(_Endpoint("unknown", use, module))
            continue
        tensor_args = [a for a in node.all_input_nodes if a.op != "get_attr"]
        joins = node.target in (torch.cat, torch.stack, torch.concat)
        if len(tensor_args) > 1 and not joins:
            endpoints.append(_Endpoint("combine", use))  # matmul, einsum, where, ... with another
            continue
        stack.extend(model.consumers_of(use))
    return endpoints


def _passes_through(module: "nn.Module") -> bool:
    """Built-in modules that transform values without weights of their own to check: norms,
    pooling, activations, padding, upsampling."""
    import torch.nn as nn

    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
             getattr(nn, "RMSNorm", nn.LayerNorm), nn.LocalResponseNorm)
    if isinstance(module, norms):
        return True
    builtin = type(module).__module__.startswith("torch.nn.modules")
    return builtin and not any(True for _ in module.parameters())


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


def _symmetric_consumer(model: "AnalysedModel", out: "Use",
                        producer: "nn.Module") -> list[str] | None:
    """Names of the layers that consume ``out`` if each sums over *all* of its units with one
    shared weight (a fully constant, ungrouped Linear or conv), reached only through elementwise
    activations (and a flatten that folds conv channels into the features). Else None.

    Anything that routes units differently (a split, a reshape into heads, a grouped conv,
    dropout's random masks) gives them different gradients, so symmetry would break.
    """
    import torch.nn as nn

    from ..ops import activation_kind

    names: list[str] = []
    conv_out = isinstance(producer, nn.modules.conv._ConvNd)
    stack = list(model.users(out))
    while stack:
        use = stack.pop()
        module = model.module_of(use)
        if activation_kind(use) or isinstance(module, nn.Identity) or (
                isinstance(module, nn.modules.dropout._DropoutNd) and module.p == 0):
            stack.extend(model.users(use))
            continue
        if conv_out and _flattens_from_channels(use, module):
            conv_out = False
            stack.extend(model.users(use))
            continue
        if module is None or not _constant_weight(module) or getattr(module, "groups", 1) != 1:
            return None
        if isinstance(module, nn.Linear) and conv_out:
            return None  # a Linear over a conv output's last axis does not see the channels
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            return None
        names.append(f"{model.module_name(use)} ({type(module).__name__})")
    return names or None


def _flattens_from_channels(use: "Use", module: "nn.Module | None") -> bool:
    import torch
    import torch.nn as nn

    node = use.node
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten or (
            node.op == "call_method" and node.target == "flatten"):
        start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
        end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
        return start == 1 and end == -1
    return False


def _starved_upstream(model: "AnalysedModel", call: "Use") -> Iterator[str]:
    """Parametrized layers whose only route to the loss runs through this call.

    Walk back from the call's inputs while every value on the way has exactly one user; a value
    used elsewhere too (a residual skip, a second head) still gets gradient, so we stop there.
    """
    stack = [p for p in model.producers(call) if p.node.op != "get_attr"]
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
