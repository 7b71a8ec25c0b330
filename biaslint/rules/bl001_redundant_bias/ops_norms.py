"""Offset rules for modules and for the ops that cancel an offset: normalizations, softmax and
attention; and convs, pooling and padding, which keep it (see ``offsets``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from biaslint.rules.bl001_redundant_bias.propagation import (
    Live,
    Offset,
    Propagation,
    State,
    all_axes,
    describe,
    shape_of,
)
from biaslint.rules.bl001_redundant_bias.ops_layout import (
    Args,
    Kwargs,
    Rule,
    _arg,
    _axis,
    _flatten,
    _only_first,
    _reshape_meta,
)


# -- normalizations and softmax: where an offset is cancelled -------------------------------------

def _cancel_over(prop: Propagation, node: fx.Node, x: Offset, reduced: set[int], what: str) -> None:
    if x.varying & reduced:
        raise Live(f"{describe(prop.part, node)} removes only the mean of the bias ({what})")
    prop.cancel(node, what)
    return None


# A fill value at or below this is a "minus infinity" mask: exp(fill - max) is exactly 0 in
# float16/32/64 for any finite scores smaller than 1e8 in size, so masked entries weigh nothing
# before and after the bias moves the others. (-1e4, seen in old code, is not far enough: kept
# quiet.)
_MASK_FILL_LIMIT = -1e9


def _softmax(prop: Propagation, node: fx.Node, x: Offset, dim: Any) -> None:
    if dim is None:  # torch's legacy implicit dim (_get_softmax_dim)
        dim = 0 if x.ndim in (0, 1, 3) else 1
    axis = _axis(dim, x.ndim)
    if axis in x.varying and _masked_constant(prop, node, x.ndim, axis):
        return _cancel_over(prop, node, Offset(x.ndim, x.varying - {axis}), {axis},
                            f"(softmax over axis {axis}; masked entries are -inf)")
    return _cancel_over(prop, node, x, {axis}, f"(softmax over axis {axis})")


def _masked_constant(prop: Propagation, node: fx.Node, ndim: int, axis: int) -> bool:
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
    value = _arg(args, kwargs, 2, "value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not value <= _MASK_FILL_LIMIT:
        return False
    if prop.of(_arg(args, kwargs, 1, "mask")) is not None:
        return False
    before = prop.of(args[0] if args else kwargs.get("input"))
    return isinstance(before, Offset) and before.ndim == ndim and axis not in before.varying


def _batch_norm(prop: Propagation, node: fx.Node, x: Offset) -> None:
    if x.ndim < 2:
        raise Live("batch norm of a 1-d tensor")
    reduced = set(range(x.ndim)) - {1}
    return _cancel_over(prop, node, x, reduced, "(it subtracts the per-channel batch mean)")


def _group_norm(prop: Propagation, node: fx.Node, x: Offset, groups: Any,
                channels: int | None) -> None:
    if x.ndim < 2 or not isinstance(groups, int):
        raise Live("group norm of unknown layout")
    if channels is not None and groups == channels:
        return _cancel_over(prop, node, x, set(range(2, x.ndim)),
                            "(one channel per group: it subtracts each channel's mean)")
    return _cancel_over(prop, node, x, set(range(1, x.ndim)),
                        "(it subtracts the mean over each group of channels)")


def _layer_norm(prop: Propagation, node: fx.Node, x: Offset, normalized: Any) -> None:
    if isinstance(normalized, int):
        count = 1
    elif isinstance(normalized, (tuple, list, torch.Size)):
        count = len(normalized)
    else:
        raise Live("layer norm over an unknown shape")
    reduced = set(range(x.ndim - count, x.ndim))
    axes = "last axis" if count == 1 else f"last {count} axes"
    return _cancel_over(prop, node, x, reduced, f"(it subtracts the mean over the {axes})")


def _instance_norm(prop: Propagation, node: fx.Node, x: Offset, spatial: int) -> None:
    reduced = set(range(x.ndim - spatial, x.ndim))
    return _cancel_over(prop, node, x, reduced, "(it subtracts each channel's spatial mean)")


# -- modules ----------------------------------------------------------------

def _spatial_count(module: nn.Module) -> int:
    """1, 2 or 3 from the class name (MaxPool2d, ZeroPad3d, InstanceNorm1d...)."""
    for cls in type(module).__mro__:
        for n in (1, 2, 3):
            if cls.__name__.endswith(f"{n}d"):
                return n
    raise Live(f"unknown dimensionality of {type(module).__name__}")


def _unsliced(x: Offset) -> Offset:
    """Pooling, interpolation, padding and convs mix or shift positions along their axes, so a
    slice of a fused bias (``support``) no longer marks where the offset is: forget it (the
    offset may then be anywhere along that axis, which is only more conservative)."""
    return x if x.support is None else Offset(x.ndim, x.varying)


def _module(prop: Propagation, node: fx.Node, module: nn.Module, args: Args,
            kwargs: Kwargs) -> State | None:
    result = _module_offset(prop, node, module, args, kwargs)
    mixing = (nn.modules.pooling.__name__, nn.modules.padding.__name__,
              nn.modules.upsampling.__name__, nn.modules.conv.__name__)
    if isinstance(result, Offset) and type(module).__module__ in mixing:
        return _unsliced(result)
    return result


def _module_offset(prop: Propagation, node: fx.Node, module: nn.Module, args: Args,
                   kwargs: Kwargs) -> State | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        x = _only_first(prop, node, args, kwargs)
        padding = module.padding
        return _conv(x, len(module.kernel_size), module.kernel_size, module.stride, padding,
                     module.dilation, module.padding_mode, module.transposed,
                     getattr(module, "output_padding", 0))
    x = _only_first(prop, node, args, kwargs)
    if isinstance(module, nn.Linear):
        return x.with_axes({x.ndim - 1})
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _batch_norm(prop, node, x)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return _instance_norm(prop, node, x, _spatial_count(module))
    if isinstance(module, nn.GroupNorm):
        return _group_norm(prop, node, x, module.num_groups, module.num_channels)
    if isinstance(module, nn.LayerNorm):
        return _layer_norm(prop, node, x, module.normalized_shape)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return _softmax(prop, node, x, module.dim)
    if isinstance(module, nn.Identity):
        return x
    if isinstance(module, nn.Flatten):
        return _flatten(x, module.start_dim, module.end_dim)
    if isinstance(module, nn.Unflatten):
        return _reshape_meta(args[0], node, x)
    if isinstance(module, nn.modules.dropout._DropoutNd):
        # Train mode: a mask that differs per element and per step.
        if module.p == 0:
            return x
        raise Live(f"dropout with p={module.p} at {describe(prop.part, node)}")
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        if module.return_indices:
            raise Live("max pool returning indices")
        return _max_over(x, _spatial_count(module))
    if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        if module.return_indices:
            raise Live("max pool returning indices")
        return _max_over(x, _spatial_count(module))
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return _avg_pool(x, _spatial_count(module), module.padding,
                         module.count_include_pad, getattr(module, "divisor_override", None))
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                           nn.Upsample)):
        return x  # weighted averages whose weights sum to one: a constant stays that constant
    if isinstance(module, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
                           nn.ConstantPad2d, nn.ConstantPad3d)):
        return _pad(x, module.padding, "constant")
    if isinstance(module, (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
                           nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
                           nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)):
        return x
    raise Live(f"{describe(prop.part, node)} is not a known linear op")


def _conv(x: Offset, n: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
          padding_mode: str, transposed: bool, output_padding: Any) -> Offset:
    """A conv maps a per-channel constant to a per-channel constant, except at a zero-padded
    border (the padding carries no offset) or where a transposed conv's taps overlap unevenly."""
    x = _unsliced(x)
    spatial = set(range(x.ndim - n, x.ndim))
    channel = x.ndim - n - 1
    kernel = _tuple(kernel, n)
    if transposed:
        keeps = all(k == 1 for k in kernel) and all(s == 1 for s in _tuple(stride, n)) \
            and all(p == 0 for p in _tuple(padding, n)) \
            and all(p == 0 for p in _tuple(output_padding, n))
    else:
        if padding == "valid":
            pads: tuple[int, ...] = (0,) * n
        elif padding == "same":
            pads = tuple(d * (k - 1) for k, d in zip(kernel, _tuple(dilation, n)))
        else:
            pads = _tuple(padding, n)
        keeps = padding_mode != "zeros" or all(p == 0 for p in pads)
    if channel < 0:
        raise Live("conv input of too low rank")
    if keeps and not x.varying & spatial:
        return x.with_axes({channel})
    return x.with_axes({channel} | spatial)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return tuple(value) if len(value) == n else (tuple(value) * n)[:n]
    raise Live("conv or pool argument not a constant")


def _max_over(x: Offset, n: int) -> Offset:
    """max(x + c) = max(x) + c when c is constant over the window; otherwise nonlinear."""
    if x.varying & set(range(x.ndim - n, x.ndim)):
        raise Live("max over axes along which the bias varies")
    return x


def _avg_pool(x: Offset, n: int, padding: Any, count_include_pad: bool, divisor: Any) -> Offset:
    spatial = set(range(x.ndim - n, x.ndim))
    padded = any(p != 0 for p in _tuple(padding, n))
    if divisor is not None or (padded and count_include_pad):
        return x.with_axes(spatial)  # border windows average in zeros or divide differently
    return x


def _pad(x: Offset, pad: Any, mode: str) -> Offset:
    if mode != "constant":
        return x  # reflect/replicate/circular copy values: a constant stays that constant
    pads = list(pad) if isinstance(pad, (tuple, list)) else [pad]
    if not all(isinstance(p, int) for p in pads):
        return x.with_axes(all_axes(x.ndim))
    axes = {x.ndim - 1 - i // 2 for i, p in enumerate(pads) if p != 0}
    return x.with_axes(axes)



def _sdpa(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    """softmax(q k^T / s + mask) v: a key offset constant over the key positions adds the same
    q . d to every score of a query, which the softmax removes (Namazifar et al., 2023)."""
    q, k, v = (_arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key"),
               _arg(args, kwargs, 2, "value"))
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


def _fn_norm(kind: str) -> Rule:
    def rule(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
        x = _only_first(prop, node, args[:1], {}) if all(
            prop.of(a) is None for a in list(args[1:]) + list(kwargs.values())) else None
        if x is None:
            raise Live("normalization parameters depend on the bias")
        if kind == "layer":
            return _layer_norm(prop, node, x, _arg(args, kwargs, 1, "normalized_shape"))
        if kind == "group":
            shape = shape_of(args[0])
            return _group_norm(prop, node, x, _arg(args, kwargs, 1, "num_groups"),
                               shape[1] if shape is not None and len(shape) > 1 else None)
        if kind == "instance":
            if _arg(args, kwargs, 5, "use_input_stats", True) is False:
                return x  # type: ignore[return-value]  # a per-channel affine map
            return _instance_norm(prop, node, x, x.ndim - 2)
        training = _arg(args, kwargs, 5, "training", False)
        if training is False and prop.part.module.training:
            # Written as eval-mode batch norm in a model that trains: a per-channel affine map.
            return x  # type: ignore[return-value]
        return _batch_norm(prop, node, x)
    return rule


def _pool_function(n: int, kind: str) -> Rule:
    def rule(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
        x = _unsliced(_only_first(prop, node, args[:1], {}))
        if kind == "max":
            if _arg(args, kwargs, 6, "return_indices", False):
                raise Live("max pool returning indices")
            return _max_over(x, n)
        if kind == "adaptive_max":
            if _arg(args, kwargs, 2, "return_indices", False):
                raise Live("max pool returning indices")
            return _max_over(x, n)
        if kind == "avg":
            return _avg_pool(x, n, _arg(args, kwargs, 3, "padding", 0),
                             bool(_arg(args, kwargs, 5, "count_include_pad", True)),
                             _arg(args, kwargs, 6, "divisor_override"))
        return x  # adaptive average, interpolation
    return rule


def _pad_function(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _unsliced(_only_first(prop, node, args[:1], {}))
    return _pad(x, _arg(args, kwargs, 1, "pad"), _arg(args, kwargs, 2, "mode", "constant"))


