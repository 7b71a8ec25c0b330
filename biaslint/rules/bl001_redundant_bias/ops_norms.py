"""Transfer functions for the ops that cancel an offset: normalizations, softmax and
dot-product attention (registered in ``table``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis import argument, shape_of
from biaslint.rules.bl001_redundant_bias.context import OpContext, only_first
from biaslint.rules.bl001_redundant_bias.offsets import (
    Args,
    Kwargs,
    Live,
    Offset,
    axis_index,
    describe,
    spatial_count,
)
from biaslint.rules.bl001_redundant_bias.table import transfer, transfer_module


def _cancel_over(prop: OpContext, node: fx.Node, x: Offset, reduced: set[int], what: str) -> None:
    if x.varying & reduced:
        raise Live(f"{describe(prop.part, node)} removes only the mean of the bias ({what})")
    prop.cancel(node, what)
    return None


# A fill value at or below this is a "minus infinity" mask: exp(fill - max) is exactly 0 in
# float16/32/64 for any finite scores smaller than 1e8 in size, so masked entries weigh nothing
# before and after the bias moves the others. (-1e4, seen in old code, is not far enough: kept
# quiet.)
_MASK_FILL_LIMIT = -1e9


def _softmax(prop: OpContext, node: fx.Node, x: Offset, dim: Any) -> None:
    if dim is None:  # torch's legacy implicit dim (_get_softmax_dim)
        dim = 0 if x.ndim in (0, 1, 3) else 1
    axis = axis_index(dim, x.ndim)
    if axis in x.varying and _masked_constant(prop, node, x.ndim, axis):
        return _cancel_over(prop, node, Offset(x.ndim, x.varying - {axis}), {axis},
                            f"(softmax over axis {axis}; masked entries are -inf)")
    return _cancel_over(prop, node, x, {axis}, f"(softmax over axis {axis})")


def _masked_constant(prop: OpContext, node: fx.Node, ndim: int, axis: int) -> bool:
    """The softmax reads ``s.masked_fill(mask, -inf)`` (a causal or padding mask) where the offset
    of ``s`` is constant along the softmax axis. The fill replaces some entries, so the offset
    now varies along the axis, but only between "shifted by c" and "-inf", which the softmax
    maps to the same weights: exp(-inf) = 0 either way, and the rest share the shift."""
    source = node.args[0] if node.args else node.kwargs.get("input")
    if not isinstance(source, fx.Node) or not (
            (source.op == "call_method" and source.target == "masked_fill")
            or (source.op == "call_function" and source.target is torch.masked_fill)):
        return False
    args, kwargs = list(source.args), dict(source.kwargs)
    value = argument(source, 2, "value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not value <= _MASK_FILL_LIMIT:
        return False
    if prop.of(argument(source, 1, "mask")) is not None:
        return False
    before = prop.of(args[0] if args else kwargs.get("input"))
    return isinstance(before, Offset) and before.ndim == ndim and axis not in before.varying


def _batch_norm(prop: OpContext, node: fx.Node, x: Offset) -> None:
    if x.ndim < 2:
        raise Live("batch norm of a 1-d tensor")
    reduced = set(range(x.ndim)) - {1}
    return _cancel_over(prop, node, x, reduced, "(it subtracts the per-channel batch mean)")


def _group_norm(prop: OpContext, node: fx.Node, x: Offset, groups: Any,
                channels: int | None) -> None:
    if x.ndim < 2 or not isinstance(groups, int):
        raise Live("group norm of unknown layout")
    if channels is not None and groups == channels:
        return _cancel_over(prop, node, x, set(range(2, x.ndim)),
                            "(one channel per group: it subtracts each channel's mean)")
    return _cancel_over(prop, node, x, set(range(1, x.ndim)),
                        "(it subtracts the mean over each group of channels)")


def _layer_norm(prop: OpContext, node: fx.Node, x: Offset, normalized: Any) -> None:
    if isinstance(normalized, int):
        count = 1
    elif isinstance(normalized, (tuple, list, torch.Size)):
        count = len(normalized)
    else:
        raise Live("layer norm over an unknown shape")
    reduced = set(range(x.ndim - count, x.ndim))
    axes = "last axis" if count == 1 else f"last {count} axes"
    return _cancel_over(prop, node, x, reduced, f"(it subtracts the mean over the {axes})")


def _instance_norm(prop: OpContext, node: fx.Node, x: Offset, spatial: int) -> None:
    reduced = set(range(x.ndim - spatial, x.ndim))
    return _cancel_over(prop, node, x, reduced, "(it subtracts each channel's spatial mean)")


@transfer(F.scaled_dot_product_attention)
def _sdpa(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    """softmax(q k^T / s + mask) v: a key offset constant over the key positions adds the same
    q . d to every score of a query, which the softmax removes (Namazifar et al., 2023)."""
    q, k, v = (argument(node, 0, "query"), argument(node, 1, "key"),
               argument(node, 2, "value"))
    rest = [a for a in list(args[3:]) + [val for name, val in kwargs.items()
                                         if name not in ("query", "key", "value")]]
    if any(prop.of(a) is not None for a in [q, v, *rest]):
        carrying = sum(prop.of(a) is not None for a in (q, k, v))
        raise Live("query, value or mask depend on the bias", crossed=carrying >= 2)
    key = prop.tensor(k, node)
    assert key is not None
    if key.ndim < 2:
        raise Live("attention on 1-d keys")
    return _cancel_over(prop, node, key, {key.ndim - 2},
                        "(softmax over the keys removes a bias shared by every key)")


def _norm_arguments_free(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {}) if all(
        prop.of(a) is None for a in list(args[1:]) + list(kwargs.values())) else None
    if x is None:
        raise Live("normalization parameters depend on the bias")
    return x


@transfer(F.layer_norm)
def _layer_norm_function(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    x = _norm_arguments_free(prop, node, args, kwargs)
    return _layer_norm(prop, node, x, argument(node, 1, "normalized_shape"))


@transfer(F.group_norm)
def _group_norm_function(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    x = _norm_arguments_free(prop, node, args, kwargs)
    shape = shape_of(args[0])
    return _group_norm(prop, node, x, argument(node, 1, "num_groups"),
                       shape[1] if shape is not None and len(shape) > 1 else None)


@transfer(F.instance_norm)
def _instance_norm_function(prop: OpContext, node: fx.Node, args: Args,
                            kwargs: Kwargs) -> Offset | None:
    x = _norm_arguments_free(prop, node, args, kwargs)
    if argument(node, 5, "use_input_stats", True) is False:
        return x  # a per-channel affine map
    return _instance_norm(prop, node, x, x.ndim - 2)


@transfer(F.batch_norm)
def _batch_norm_function(prop: OpContext, node: fx.Node, args: Args,
                         kwargs: Kwargs) -> Offset | None:
    x = _norm_arguments_free(prop, node, args, kwargs)
    training = argument(node, 5, "training", False)
    if training is False and prop.part.module.training:
        # Written as eval-mode batch norm in a model that trains: a per-channel affine map.
        return x
    return _batch_norm(prop, node, x)


@transfer(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, "softmax", "log_softmax",
          F.softmin)
def _softmax_function(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    return _softmax(prop, node, only_first(prop, node, args[:1], {}), argument(node, 1, "dim"))


# -- normalization and softmax modules --------------------------------------------------------

@transfer_module(nn.modules.batchnorm._BatchNorm)
def _batch_norm_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> None:
    return _batch_norm(prop, node, x)


@transfer_module(nn.modules.instancenorm._InstanceNorm)
def _instance_norm_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> None:
    return _instance_norm(prop, node, x, spatial_count(module))


@transfer_module(nn.GroupNorm)
def _group_norm_module(prop: OpContext, node: fx.Node, module: nn.GroupNorm, x: Offset) -> None:
    return _group_norm(prop, node, x, module.num_groups, module.num_channels)


@transfer_module(nn.LayerNorm)
def _layer_norm_module(prop: OpContext, node: fx.Node, module: nn.LayerNorm, x: Offset) -> None:
    return _layer_norm(prop, node, x, module.normalized_shape)


@transfer_module(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def _softmax_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> None:
    return _softmax(prop, node, x, module.dim)
