"""Transfer functions for convolutions, pooling, resampling and padding, which keep a
per-channel offset per channel except where borders or overlaps make positions differ
(registered in ``table``).
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis import argument
from biaslint.rules.bl001_redundant_bias.context import OpContext, only_first, result_rank
from biaslint.rules.bl001_redundant_bias.offsets import (
    Args,
    Kwargs,
    Live,
    Offset,
    State,
    all_axes,
    join,
    spatial_count,
)
from biaslint.rules.bl001_redundant_bias.table import transfer, transfer_module


def _unsliced(x: Offset) -> Offset:
    """Pooling, interpolation, padding and convs mix or shift positions along their axes, so a
    slice of a fused bias (``support``) no longer marks where the offset is: forget it (the
    offset may then be anywhere along that axis, which is only more conservative)."""
    return x if x.support is None else Offset(x.ndim, x.varying)


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


# (spatial axes, transposed) of each functional convolution.
_CONV_FUNCTIONS = {
    F.conv1d: (1, False), F.conv2d: (2, False), F.conv3d: (3, False),
    F.conv_transpose1d: (1, True), F.conv_transpose2d: (2, True), F.conv_transpose3d: (3, True),
}


@transfer(*_CONV_FUNCTIONS)
def _conv_function(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    n, transposed = _CONV_FUNCTIONS[node.target]
    x_arg, w_arg, b_arg = (argument(node, 0, "input"), argument(node, 1, "weight"),
                           argument(node, 2, "bias"))
    if prop.of(w_arg) is not None:
        raise Live("weight depends on the bias")
    ndim = result_rank(prop, node, [x_arg])
    result: Offset | None = None
    x = prop.tensor(x_arg, node)
    if x is not None:
        weight = prop.other_shape(w_arg)
        if weight is None:
            raise Live("conv weight of unknown shape")
        stride = argument(node, 3, "stride", 1)
        padding = argument(node, 4, "padding", 0)
        if transposed:
            out_pad = argument(node, 5, "output_padding", 0)
            dilation = argument(node, 7, "dilation", 1)
        else:
            out_pad, dilation = 0, argument(node, 5, "dilation", 1)
        result = _conv(x, n, tuple(weight[2:]), stride, padding, dilation, "zeros",
                       transposed, out_pad)
    b = prop.tensor(b_arg, node)
    if b is not None:
        added = Offset(ndim, frozenset({ndim - n - 1}) if b.varying else frozenset())
        result = added if result is None else join(result, added)
    assert result is not None
    return result


# (spatial axes, kind) of each functional pooling or resampling op.
_POOL_FUNCTIONS = {
    F.max_pool1d: (1, "max"), F.max_pool2d: (2, "max"), F.max_pool3d: (3, "max"),
    F.avg_pool1d: (1, "avg"), F.avg_pool2d: (2, "avg"), F.avg_pool3d: (3, "avg"),
    F.adaptive_avg_pool1d: (1, "adaptive"), F.adaptive_avg_pool2d: (2, "adaptive"),
    F.adaptive_avg_pool3d: (3, "adaptive"),
    F.adaptive_max_pool1d: (1, "adaptive_max"), F.adaptive_max_pool2d: (2, "adaptive_max"),
    F.adaptive_max_pool3d: (3, "adaptive_max"),
    F.interpolate: (0, "interpolate"), F.upsample: (0, "interpolate"),
}


@transfer(*_POOL_FUNCTIONS)
def _pool_function(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
    n, kind = _POOL_FUNCTIONS[node.target]
    x = _unsliced(only_first(prop, node, args[:1], {}))
    if kind == "max":
        if argument(node, 6, "return_indices", False):
            raise Live("max pool returning indices")
        return _max_over(x, n)
    if kind == "adaptive_max":
        if argument(node, 2, "return_indices", False):
            raise Live("max pool returning indices")
        return _max_over(x, n)
    if kind == "avg":
        return _avg_pool(x, n, argument(node, 3, "padding", 0),
                         bool(argument(node, 5, "count_include_pad", True)),
                         argument(node, 6, "divisor_override"))
    return x  # adaptive average, interpolation


# -- modules: each mixes or shifts positions, so a followed slice of a fused bias is forgotten --

@transfer_module(nn.modules.conv._ConvNd)
def _conv_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    return _conv(x, len(module.kernel_size), module.kernel_size, module.stride,
                 module.padding, module.dilation, module.padding_mode,
                 module.transposed, getattr(module, "output_padding", 0))


@transfer_module(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
def _max_pool_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    if module.return_indices:
        raise Live("max pool returning indices")
    return _unsliced(_max_over(x, spatial_count(module)))


@transfer_module(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avg_pool_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    return _unsliced(_avg_pool(x, spatial_count(module), module.padding,
                               module.count_include_pad,
                               getattr(module, "divisor_override", None)))


@transfer_module(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Upsample)
def _average_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    return _unsliced(x)  # weighted averages whose weights sum to one: a constant stays constant


@transfer_module(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                 nn.ConstantPad3d)
def _constant_pad_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    return _unsliced(_pad(x, module.padding, "constant"))


@transfer_module(nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
                 nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
                 nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
def _copy_pad_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    return _unsliced(x)


@transfer(F.pad)
def _pad_function(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _unsliced(only_first(prop, node, args[:1], {}))
    return _pad(x, argument(node, 1, "pad"), argument(node, 2, "mode", "constant"))
