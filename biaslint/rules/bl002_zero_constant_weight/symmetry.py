"""Graph walks behind BL002: where a layer's output goes, and who can still break its symmetry.

Kept apart from the rule so the verdict logic in ``rules/bl002_zero_constant_weight.py`` reads
on its own. Nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from biaslint.analysis import AnalysedModel, Layer, Use


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


def weighs_inputs_equally(model: "AnalysedModel", module: "nn.Module | None") -> bool:
    """Every input channel of the layer gets the same weights (``W[:, i]`` the same for all
    ``i``; a constant weight is the common case): the gradient it passes back is the same for
    every input unit, however its output rows differ. False when that cannot be read."""
    import torch.nn as nn

    weight = getattr(module, "weight", None)
    if weight is None or not hasattr(weight, "dim") or weight.dim() < 2:
        return False
    value = model.value_of(module, "weight")
    if value is None or not value.known:
        return False
    axis = 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1
    return value.equal_along(axis) is True


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
        parent = model.submodule(parent_name)
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

    from biaslint.analysis.ops import binary_kind

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

    from biaslint.analysis import SCALE_NORM_MODULES

    if isinstance(module, SCALE_NORM_MODULES):
        return True
    builtin = type(module).__module__.startswith("torch.nn.modules")
    return builtin and not any(True for _ in module.parameters())


def feeds_only_relu(model: "AnalysedModel", out: "Use") -> bool:
    from biaslint.analysis.ops import DEAD_BELOW_ZERO, activation_kind

    consumers = model.consumers_of(out)
    return bool(consumers) and all(activation_kind(c) in DEAD_BELOW_ZERO for c in consumers)


def norms_into_relu(model: "AnalysedModel", out: "Use", producer: "nn.Module | None" = None
                    ) -> list[tuple[str, "torch.Tensor"]] | None:
    """When every consumer of ``out`` is a normalization whose output feeds only ReLU-family
    activations: per norm, its name and which of its channels are dead for good if its input is
    exactly zero (a boolean mask). Else None.

    An all-zero input has mean 0 and variance 0, so any of these norms outputs exactly its bias
    (beta, or 0 without one); where beta <= 0 the ReLU outputs 0 and passes back 0, so beta,
    gamma (its gradient is g * x_hat = 0) and everything before get no gradient, for good.
    BatchNorm and InstanceNorm treat each channel on its own, so each channel with beta <= 0 is
    dead. LayerNorm and GroupNorm share a mean over a group: one live unit in the group passes
    gradient back to all of them, so only a group that is dead as a whole counts.
    """
    import torch
    import torch.nn as nn

    from biaslint.analysis import PER_CHANNEL_NORM_MODULES as per_channel
    found: list[tuple[str, torch.Tensor]] = []
    for use in model.consumers_of(out):
        module = model.module_of(use)
        if not isinstance(module, per_channel + (nn.LayerNorm, nn.GroupNorm)) or \
                not feeds_only_relu(model, use):
            return None
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training and \
                not model.zero_buffer(module, "running_mean"):
            return None  # eval mode with a non-zero (or unknown) running mean: not exactly beta
        beta = getattr(module, "bias", None)
        beta_value = model.value_of(module, "bias") if beta is not None else None
        if beta is not None and (beta_value is None or not beta_value.known):
            return None
        name = model.module_name(use)
        if isinstance(module, nn.LayerNorm):
            if beta_value is not None and beta_value.count_at_most(0.0) < beta_value.numel:
                return None
            found.append((name, torch.ones(0, dtype=torch.bool)))  # empty: every unit
            continue
        channels = module.num_channels if isinstance(module, nn.GroupNorm) else \
            module.num_features
        exact = beta_value.exact() if beta_value is not None else None
        if beta_value is not None and exact is None:
            return None  # drawn betas on the meta device: which channels die is not known
        below = torch.ones(channels, dtype=torch.bool) if exact is None else \
            (exact <= 0).reshape(-1)
        if isinstance(module, nn.GroupNorm):
            groups = below.reshape(module.num_groups, -1)
            below = groups.all(dim=1, keepdim=True).expand_as(groups).reshape(-1)
        if not bool(below.all()) and not channels_are_units(use, out, producer):
            return None  # which units a channel's beta kills depends on the layout: unknown
        found.append((name, below))
    return found or None


def channels_are_units(norm: "Use", out: "Use", producer: "nn.Module | None") -> bool:
    """The norm reads the layer's output directly, on the axis that holds the layer's units (axis
    1): a conv's channels, or a Linear's features when its output is (N, features). A Linear on
    (N, L, F) puts its units last, where BatchNorm1d sees tokens."""
    import torch.nn as nn

    from biaslint.analysis import shape_of

    if not norm.node.args or norm.node.args[0] is not out.node:
        return False
    if isinstance(producer, nn.modules.conv._ConvNd):
        return True
    shape = shape_of(out.node)
    return shape is not None and len(shape) == 2


def first_activation(model: "AnalysedModel", outputs: list["Use"]) -> str | None:
    from biaslint.analysis.ops import activation_kind

    for out in outputs:
        for consumer in model.consumers_of(out):
            kind = activation_kind(consumer)
            if kind:
                return kind
    return None


def blocks_every_input(layer: "Layer", pname: str) -> bool:
    """Whether this zero weight alone cuts every gradient route from the layer's output back to
    its inputs. Plain layers: yes. An RNN's first-layer input weights: only when every direction's
    are zero (the reverse direction reads the same input); deeper layers' weights only starve
    the RNN's own layers below. MultiheadAttention: the packed in-projection or the output
    projection do; one of separate q/k/v projections does not (the other two still pass
    gradient, to the same input in self-attention)."""
    import torch.nn as nn

    def all_zero(name: str) -> bool:
        stats = layer.stats(name)
        return stats is not None and stats.all_zero

    module = layer.module
    if isinstance(module, nn.RNNBase):
        return pname.startswith("weight_ih_l0") and all(
            all_zero(n) for n, _ in module.named_parameters() if n.startswith("weight_ih_l0"))
    separate = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
    if isinstance(module, nn.MultiheadAttention) and pname in separate:
        return all(all_zero(n) for n in separate)
    return True


def symmetric_consumer(model: "AnalysedModel", out: "Use",
                       producer: "nn.Module") -> list[str] | None:
    """Names of the layers that consume ``out`` if each weighs *all* of its units alike (every
    input channel with the same weights: a constant, ungrouped Linear or conv), reached only
    through elementwise
    activations (and a flatten that folds conv channels into the features). Else None.

    Anything that routes units differently (a split, a reshape into heads, a grouped conv,
    dropout's random masks) gives them different gradients, so symmetry would break.
    """
    import torch.nn as nn

    from biaslint.analysis.ops import activation_kind

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
        if _joins_along_units(use, conv_out):
            # Concatenated with other features along the units' axis: each unit keeps its own
            # column of a consumer that weighs every column alike.
            stack.extend(model.users(use))
            continue
        if conv_out and _pools_each_channel(use, module):
            stack.extend(model.users(use))  # the same window on every channel: clones stay so
            continue
        if conv_out and _averages_out_space(use, len(getattr(producer, "kernel_size", ())) + 2):
            conv_out = False  # (N, C): the channels are now the features
            stack.extend(model.users(use))
            continue
        if module is None or not weighs_inputs_equally(model, module) or \
                getattr(module, "groups", 1) != 1:
            return None
        name = model.module_name(use)
        if model.is_shared(name) or len(model.calls_of(name)) != 1:
            return None  # a reused or tied consumer also learns from its other calls
        if isinstance(module, nn.Linear) and conv_out:
            return None  # a Linear over a conv output's last axis does not see the channels
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            return None
        names.append(f"{name} ({type(module).__name__})")
    return names or None


def _joins_along_units(use: "Use", conv_out: bool) -> bool:
    """``torch.cat`` along the axis that indexes the units: the channels of a conv output, the
    last axis of a Linear's."""
    import torch

    node = use.node
    if node.op != "call_function" or node.target not in (torch.cat, torch.concat):
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = use.shape()
    if not isinstance(dim, int) or shape is None:
        return False
    axis = dim % len(shape)
    return axis == (1 if conv_out else len(shape) - 1)


def _pools_each_channel(use: "Use", module: "nn.Module | None") -> bool:
    """Pooling that runs the same window over every channel, so identical channels give
    identical outputs and (ties broken alike) identical gradients."""
    import torch.nn.functional as F

    from biaslint.analysis import POOL_MODULES

    if module is not None:
        return isinstance(module, POOL_MODULES) and not getattr(module, "return_indices", False)
    functions = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                 F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                 F.adaptive_avg_pool3d)
    return use.node.op == "call_function" and use.node.target in functions and not \
        use.node.kwargs.get("return_indices", False)


def _averages_out_space(use: "Use", conv_rank: int) -> bool:
    """``x.mean((2, 3))`` / ``torch.mean(x, dim=[-2, -1])`` on an (N, C, *spatial) conv output:
    every axis after the channels reduced, without keepdim."""
    import torch

    from biaslint.analysis import argument, shape_of

    node = use.node
    if not ((node.op == "call_method" and node.target in ("mean", "amax", "sum"))
            or (node.op == "call_function" and node.target in (torch.mean, torch.amax,
                                                               torch.sum))):
        return False
    shape = shape_of(node.args[0]) if node.args else None
    rank = len(shape) if shape is not None else conv_rank  # batched (N, C, *spatial)
    dim = argument(node, 1, "dim")
    keepdim = argument(node, 2, "keepdim", False)
    if rank < 3 or keepdim or dim is None:
        return False
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (list, tuple)) else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return False
    return sorted(d % rank for d in dims) == list(range(2, rank))


def _flattens_from_channels(use: "Use", module: "nn.Module | None") -> bool:
    import torch
    import torch.nn as nn

    from biaslint.analysis import argument

    node = use.node
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten or (
            node.op == "call_method" and node.target == "flatten"):
        start = argument(node, 1, "start_dim", 0)
        end = argument(node, 2, "end_dim", -1)
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
