"""Graph walks behind BL002: where a layer's output goes, and who can still break its symmetry.

Kept apart from the rule so the verdict logic in ``rules/bl002_zero_constant_weight.py`` reads
on its own. Nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch.nn as nn

    from .analysis import AnalysedModel, Layer, Use


@dataclass(frozen=True)
class Endpoint:
    """Where a walk from the layer's output stopped."""

    kind: str  # "output", "combine", "layer", "unknown"
    use: "Use"
    module: "nn.Module | None" = None



def weights_to_check(module: "nn.Module") -> Iterator[tuple[str, int]]:
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


def constant(tensor) -> bool:  # type: ignore[no-untyped-def]
    data = tensor.detach()
    return bool(data.numel() == 0 or data.min() == data.max())


def constant_weight(module: "nn.Module | None") -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and hasattr(weight, "detach") and constant(weight)


def calls_and_outputs(model: "AnalysedModel", layer: "Layer") -> tuple[list["Use"], list["Use"]]:
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


def walk(model: "AnalysedModel", start: "Use") -> list[Endpoint]:
    """Follow the output to what finally consumes it: another weight layer, a sum or product with
    another tensor (residual, LoRA, gate), or the model output.

    Parameter-free ops, normalizations and pooling are walked through, so a residual branch whose
    zero conv is followed by BatchNorm and then the skip sum is still seen as summed.
    """
    import torch

    from .ops import binary_kind

    endpoints: list[Endpoint] = []
    stack = model.consumers_of(start)
    seen = set()
    while stack:
        use = stack.pop()
        if use.node in seen:
            continue
        seen.add(use.node)
        node = use.node
        if node.op == "output":
            endpoints.append(Endpoint("output", use))
            continue
        binary = binary_kind(use)
        if binary is not None:
            if binary[1]:
                endpoints.append(Endpoint("combine", use))
            else:
                stack.extend(model.consumers_of(use))
            continue
        module = model.module_of(use)
        if module is not None:
            if model.module_name(use) in model.layers and any(
                    True for _ in weights_to_check(module)):
                endpoints.append(Endpoint("layer", use, module))
            elif _passes_through(module):
                stack.extend(model.consumers_of(use))
            else:
                endpoints.append(Endpoint("unknown", use, module))
            continue
        tensor_args = [a for a in node.all_input_nodes if a.op != "get_attr"]
        joins = node.target in (torch.cat, torch.stack, torch.concat)
        if len(tensor_args) > 1 and not joins:
            endpoints.append(Endpoint("combine", use))  # matmul, einsum, where, ... with another
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


def feeds_only_relu(model: "AnalysedModel", out: "Use") -> bool:
    from .ops import DEAD_BELOW_ZERO, activation_kind

    consumers = model.consumers_of(out)
    return bool(consumers) and all(activation_kind(c) in DEAD_BELOW_ZERO for c in consumers)


def first_activation(model: "AnalysedModel", outputs: list["Use"]) -> str | None:
    from .ops import activation_kind

    for out in outputs:
        for consumer in model.consumers_of(out):
            kind = activation_kind(consumer)
            if kind:
                return kind
    return None


def symmetric_consumer(model: "AnalysedModel", out: "Use",
                        producer: "nn.Module") -> list[str] | None:
    """Names of the layers that consume ``out`` if each sums over *all* of its units with one
    shared weight (a fully constant, ungrouped Linear or conv), reached only through elementwise
    activations (and a flatten that folds conv channels into the features). Else None.

    Anything that routes units differently (a split, a reshape into heads, a grouped conv,
    dropout's random masks) gives them different gradients, so symmetry would break.
    """
    import torch.nn as nn

    from .ops import activation_kind

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
        if module is None or not constant_weight(module) or getattr(module, "groups", 1) != 1:
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


def starved_upstream(model: "AnalysedModel", call: "Use") -> Iterator[str]:
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
