"""Per-op rules for ``offsets.Propagation``: how one node transforms a bias perturbation.

Each rule gets the offsets of the node's operands and returns the offset of its output, None when
the output no longer depends on the bias (cancelled), or raises ``Live``. Unknown ops are live.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .analysis import Use
from .offsets import (
    Items, Live, Offset, Propagation, State, all_axes, broadcast, describe, join, reshape_offset,
    shape_of, varying_axes_of,
)
from .ops import activation_kind, softmax_kind

Args = list[Any]
Kwargs = dict[str, Any]
Rule = Callable[[Propagation, fx.Node, Args, Kwargs], "State | None"]


def _arg(args: Args, kwargs: Kwargs, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _axis(dim: Any, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise Live("axis not a constant")
    axis = dim + ndim if dim < 0 else dim
    if not 0 <= axis < max(ndim, 1):
        raise Live("axis out of range")
    return axis


def _only_first(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """The offset of the first operand; any other bias-dependent operand is not followed."""
    first = prop.tensor(args[0] if args else None, node)
    others = [a for a in list(args[1:]) + list(kwargs.values()) if prop.of(a) is not None]
    if first is None or others:
        raise Live(f"bias reaches a non-data argument of {describe(prop.part, node)}")
    return first


def is_size_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel")
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 \
        and node.args[1] in ("shape", "dtype", "device", "ndim")


def transfer(prop: Propagation, node: fx.Node) -> State | None:
    use = Use(prop.part, node)
    if activation_kind(use):
        raise Live(f"nonlinearity {describe(prop.part, node)}")
    args, kwargs = list(node.args), dict(node.kwargs)
    if softmax_kind(use) and node.op != "call_module":
        dim = _arg(args, kwargs, 1, "dim")
        return _softmax(prop, node, _only_first(prop, node, args[:1], {}), dim)
    if node.op == "call_module":
        return _module(prop, node, prop.part.gm.get_submodule(str(node.target)), args, kwargs)
    rule: Rule | None = None
    if node.op == "call_function":
        rule = FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        rule = METHODS.get(str(node.target))
    if rule is None:
        raise Live(f"unknown op {describe(prop.part, node)}")
    return rule(prop, node, args, kwargs)


# -- normalizations and softmax: where an offset is cancelled -------------------------------------

def _cancel_over(prop: Propagation, node: fx.Node, x: Offset, reduced: set[int], what: str) -> None:
    if x.varying & reduced:
        raise Live(f"{describe(prop.part, node)} removes only the mean of the bias ({what})")
    prop.cancel(node, what)
    return None


def _softmax(prop: Propagation, node: fx.Node, x: Offset, dim: Any) -> None:
    if dim is None:  # torch's legacy implicit dim (_get_softmax_dim)
        dim = 0 if x.ndim in (0, 1, 3) else 1
    axis = _axis(dim, x.ndim)
    return _cancel_over(prop, node, x, {axis}, f"(softmax over axis {axis})")


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


# -- modules ----------------------------------------------------------------------------------------

def _spatial_count(module: nn.Module) -> int:
    """1, 2 or 3 from the class name (MaxPool2d, ZeroPad3d, InstanceNorm1d...)."""
    for cls in type(module).__mro__:
        for n in (1, 2, 3):
            if cls.__name__.endswith(f"{n}d"):
                return n
    raise Live(f"unknown dimensionality of {type(module).__name__}")


def _module(prop: Propagation, node: fx.Node, module: nn.Module, args: Args,
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


# -- shape ops ----------------------------------------------------------------------------------------

def _flatten(x: Offset, start: int = 0, end: int = -1) -> Offset:
    if x.ndim == 0:
        return Offset(1, frozenset())
    s, e = _axis(start, x.ndim), _axis(end, x.ndim)
    varying = {a for a in x.varying if a < s} | {a - (e - s) for a in x.varying if a > e}
    if x.varying & set(range(s, e + 1)):
        varying.add(s)
    mapping = {a: a for a in range(s)} | {a: a - (e - s) for a in range(e + 1, x.ndim)}
    if s == e:
        mapping[s] = s
    return x.moved(x.ndim - (e - s), varying, mapping)


def _reshape_meta(source: Any, node: fx.Node, x: Offset) -> Offset:
    a, b = shape_of(source), shape_of(node)
    if a is None or b is None:
        raise Live("reshape without recorded shapes")
    return reshape_offset(x, a, b)


def _permute_axes(x: Offset, dims: list[Any]) -> Offset:
    order = [_axis(d, x.ndim) for d in dims]
    if sorted(order) != list(range(x.ndim)):
        raise Live("permutation of unknown axes")
    return x.moved(x.ndim, (k for k, src in enumerate(order) if src in x.varying),
                   {src: k for k, src in enumerate(order)})


def _swap(x: Offset, a: Any, b: Any) -> Offset:
    order = list(range(x.ndim))
    i, j = _axis(a, x.ndim), _axis(b, x.ndim)
    order[i], order[j] = order[j], order[i]
    return _permute_axes(x, order)


def _dims(args: Args, kwargs: Kwargs, name: str = "dims") -> list[Any]:
    if name in kwargs:
        value = kwargs[name]
    elif len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)):
        value = args[1]
    else:
        value = args[1:]
    return list(value)


def _view(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    return _reshape_meta(args[0], node, x)


def _permute(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return _permute_axes(_only_first(prop, node, args[:1], {}), _dims(args, kwargs))


def _transpose(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    return _swap(x, _arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1"))


def _t(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    return x if x.ndim < 2 else _swap(x, 0, 1)


def _movedim(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    src, dst = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [_axis(s, x.ndim) for s in src], [_axis(d, x.ndim) for d in dst]
    rest = iter(a for a in range(x.ndim) if a not in src)
    placed = dict(zip(dst, src))
    order = [placed[k] if k in placed else next(rest) for k in range(x.ndim)]
    return _permute_axes(x, order)


def _flatten_call(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    return _flatten(x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))


def _unsqueeze(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    d = _axis(_arg(args, kwargs, 1, "dim"), x.ndim + 1)
    mapping = {a: a + 1 if a >= d else a for a in range(x.ndim)}
    return x.moved(x.ndim + 1, (mapping[a] for a in x.varying), mapping)


def _squeeze(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    shape = shape_of(args[0])
    dim = _arg(args, kwargs, 1, "dim")
    if shape is None:
        raise Live("squeeze without a recorded shape")
    dims = [dim] if isinstance(dim, int) else list(dim) if dim is not None else list(range(x.ndim))
    gone = {a for a in (_axis(d, x.ndim) for d in dims) if shape[a] == 1}
    keep = [a for a in range(x.ndim) if a not in gone]
    return x.moved(len(keep), (k for k, a in enumerate(keep) if a in x.varying),
                   {a: k for k, a in enumerate(keep)})


def _expand(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """expand/repeat/expand_as: copies; new leading axes and copied axes are constant."""
    x = _only_first(prop, node, args[:1], {})
    shape = shape_of(node)
    if shape is None:
        raise Live("expand without a recorded shape")
    shift = len(shape) - x.ndim
    return Offset(len(shape), frozenset(a + shift for a in x.varying))


def _same(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return _only_first(prop, node, args[:1], {})


def _dropout(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = _only_first(prop, node, args[:1], {})
    p = _arg(args, kwargs, 1, "p", 0.5)
    training = _arg(args, kwargs, 2, "training", True)
    if p == 0 or training is False:
        return x
    raise Live(f"dropout with p={p} at {describe(prop.part, node)}")


def _size(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    return None  # sizes and ranks do not depend on values


def _getattr(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> State | None:
    name = args[1] if len(args) > 1 else None
    if name in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    x = _only_first(prop, node, args[:1], {})
    if name in ("data",):
        return x
    if name in ("T", "mT", "mH", "H"):
        return x if x.ndim < 2 else _swap(x, -2, -1) if name in ("mT", "mH") else _permute_axes(
            x, list(range(x.ndim))[::-1])
    raise Live(f"attribute {name!r} of a bias-dependent value")


def _getitem(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> State | None:
    state, index = prop.of(args[0]), args[1]
    if isinstance(state, Items):
        if not isinstance(index, int):
            raise Live("tuple indexed by a non-constant")
        return state.get(index)
    assert isinstance(state, Offset)
    if prop.of(index) is not None:
        raise Live("index depends on the bias")
    return _index(state, index if isinstance(index, tuple) else (index,), shape_of(args[0]))


def _index(x: Offset, index: tuple[Any, ...], shape: tuple[int, ...] | None) -> Offset | None:
    """Basic indexing: slices keep an axis, ints drop it, None adds one. Returns None when the
    index selects only positions outside the offset's support."""
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    axis, out, varying, mapping = 0, 0, set(), {}
    support = x.support
    for item in index:
        if item is Ellipsis:
            for _ in range(x.ndim - consumed):
                if axis in x.varying:
                    varying.add(out)
                mapping[axis] = out
                axis, out = axis + 1, out + 1
        elif item is None:
            out += 1
        elif isinstance(item, slice):
            if axis in x.varying:
                varying.add(out)
            if support is not None and support[0] == axis:
                clipped = _slice_support(support, item, shape[axis] if shape else None)
                if clipped == "empty":
                    return None
                support = None if clipped is None else (axis, *clipped)
            mapping[axis] = out
            axis, out = axis + 1, out + 1
        elif isinstance(item, int) and not isinstance(item, bool):
            if support is not None and support[0] == axis:
                size = shape[axis] if shape else None
                position = item + size if item < 0 and size is not None else item
                if position < 0:
                    support = None
                elif not support[1] <= position < support[2]:
                    return None  # a position the perturbation never touches
                else:
                    support = None
            axis += 1
        else:
            raise Live("advanced indexing")
    while axis < x.ndim:
        if axis in x.varying:
            varying.add(out)
        mapping[axis] = out
        axis, out = axis + 1, out + 1
    if axis > x.ndim:
        raise Live("too many indices")
    moved = Offset(x.ndim, x.varying, support).moved(out, varying, mapping)
    return moved


def _slice_support(support: tuple[int, int, int], item: slice, size: int | None
                   ) -> tuple[int, int] | str | None:
    """The support [start, stop) seen through ``item``; "empty" when they do not overlap; None
    when it cannot be worked out (then the whole axis counts)."""
    start, stop, step = item.start, item.stop, item.step
    if step not in (None, 1) or not all(v is None or isinstance(v, int) for v in (start, stop)):
        return None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        if size is None:
            return None
        start = start + size if start is not None and start < 0 else start
        stop = stop + size if stop is not None and stop < 0 else stop
    lo = max(support[1], start or 0)
    hi = support[2] if stop is None else min(support[2], stop)
    if lo >= hi:
        return "empty"
    offset = start or 0
    return (lo - offset, hi - offset)


# -- arithmetic ---------------------------------------------------------------------------------------

def _rank(prop: Propagation, node: fx.Node, operands: list[Any]) -> int:
    shape = shape_of(node)
    if shape is not None:
        return len(shape)
    ranks = []
    for a in operands:
        state = prop.of(a)
        if isinstance(state, Offset):
            ranks.append(state.ndim)
        else:
            other = prop.other_shape(a)
            if other is None:
                raise Live(f"rank unknown at {describe(prop.part, node)}")
            ranks.append(len(other))
    return max(ranks)


def _add(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    operands = [args[0] if args else kwargs.get("input"), _arg(args, kwargs, 1, "other")]
    if prop.of(kwargs.get("alpha")) is not None:
        raise Live("alpha depends on the bias")
    ndim = _rank(prop, node, operands)
    offsets = [prop.tensor(a, node) for a in operands]
    return broadcast([(o, None) for o in offsets], ndim)


def _neg(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return _only_first(prop, node, args[:1], {})


def _mul(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """x * t with t independent of the bias: the offset becomes t * offset, which varies wherever
    t varies (a gate, attention weights, a rotary table). Two bias-dependent factors: nonlinear."""
    operands = [args[0] if args else kwargs.get("input"), _arg(args, kwargs, 1, "other")]
    divide = node.target in (operator.truediv, operator.itruediv, torch.div, torch.true_divide) \
        or str(node.target) in ("div", "div_", "true_divide")
    carrying = [i for i, a in enumerate(operands) if prop.of(a) is not None]
    if len(carrying) != 1 or (divide and carrying != [0]):
        raise Live(f"product of bias-dependent values at {describe(prop.part, node)}",
                   crossed=True)
    if divide and kwargs.get("rounding_mode") is not None:
        raise Live("rounded division")
    ndim = _rank(prop, node, operands)
    offset = prop.tensor(operands[carrying[0]], node)
    other = operands[1 - carrying[0]]
    result = broadcast([(offset, None)], ndim)
    return result.with_axes(varying_axes_of(prop.other_shape(other), ndim))


def _matmul_rule(prop: Propagation, node: fx.Node, a: Any, b: Any) -> Offset:
    """(A + D) @ B = A @ B + D @ B. The product varies along the output rows where D does, along
    the output columns wherever B has more than one column, and along batch axes of either."""
    sa, sb = prop.tensor(a, node), prop.tensor(b, node)
    if (sa is None) == (sb is None):
        raise Live(f"product of bias-dependent values at {describe(prop.part, node)}",
                   crossed=True)
    carrier, other_arg = (sa, b) if sa is not None else (sb, a)
    assert carrier is not None
    other = prop.other_shape(other_arg)
    if other is None or len(other) < 2 or carrier.ndim < 2:
        raise Live("matmul with unknown or 1-d operands")
    rank = max(carrier.ndim, len(other))
    shift_c, shift_o = rank - carrier.ndim, rank - len(other)
    varying = {ax + shift_c for ax in carrier.varying if ax < carrier.ndim - 2}
    varying |= {i + shift_o for i, s in enumerate(other[:-2]) if s != 1}
    if sa is not None:  # D @ B: rows follow D, columns follow B
        if carrier.ndim - 2 in carrier.varying:
            varying.add(rank - 2)
        if other[-1] != 1:
            varying.add(rank - 1)
    else:  # A @ D: rows follow A, columns follow D
        if other[-2] != 1:
            varying.add(rank - 2)
        if carrier.ndim - 1 in carrier.varying:
            varying.add(rank - 1)
    return Offset(rank, frozenset(varying))


def _matmul(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return _matmul_rule(prop, node, _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other"))


def _addmm(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    base, m1, m2 = (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "mat1"),
                    _arg(args, kwargs, 2, "mat2"))
    parts: list[Offset] = []
    if prop.of(m1) is not None or prop.of(m2) is not None:
        parts.append(_matmul_rule(prop, node, m1, m2))
    offset = prop.tensor(base, node)
    if offset is not None:
        parts.append(broadcast([(offset, None)], 2))
    result = parts[0]
    for p in parts[1:]:
        result = join(result, p)  # type: ignore[assignment]
    return result


def _linear(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x_arg, w_arg, b_arg = (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
                           _arg(args, kwargs, 2, "bias"))
    if prop.of(w_arg) is not None:
        raise Live("weight depends on the bias")
    ndim = _rank(prop, node, [x_arg])
    result: Offset | None = None
    x = prop.tensor(x_arg, node)
    if x is not None:
        result = x.with_axes({ndim - 1})
    b = prop.tensor(b_arg, node)
    if b is not None:
        added = broadcast([(b, None)], ndim)
        result = added if result is None else join(result, added)  # type: ignore[assignment]
    assert result is not None
    return result


def _conv_function(n: int, transposed: bool) -> Rule:
    def rule(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
        x_arg, w_arg, b_arg = (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"),
                               _arg(args, kwargs, 2, "bias"))
        if prop.of(w_arg) is not None:
            raise Live("weight depends on the bias")
        ndim = _rank(prop, node, [x_arg])
        result: Offset | None = None
        x = prop.tensor(x_arg, node)
        if x is not None:
            weight = prop.other_shape(w_arg)
            if weight is None:
                raise Live("conv weight of unknown shape")
            stride = _arg(args, kwargs, 3, "stride", 1)
            padding = _arg(args, kwargs, 4, "padding", 0)
            if transposed:
                out_pad = _arg(args, kwargs, 5, "output_padding", 0)
                dilation = _arg(args, kwargs, 7, "dilation", 1)
            else:
                out_pad, dilation = 0, _arg(args, kwargs, 5, "dilation", 1)
            result = _conv(x, n, tuple(weight[2:]), stride, padding, dilation, "zeros",
                           transposed, out_pad)
        b = prop.tensor(b_arg, node)
        if b is not None:
            added = Offset(ndim, frozenset({ndim - n - 1}) if b.varying else frozenset())
            result = added if result is None else join(result, added)  # type: ignore[assignment]
        assert result is not None
        return result
    return rule


def _cat(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    tensors = _arg(args, kwargs, 0, "tensors")
    if not isinstance(tensors, (tuple, list)):
        raise Live("cat of an unknown sequence")
    offsets = [prop.tensor(t, node) for t in tensors]
    carrying = [o for o in offsets if o is not None]
    ndim = carrying[0].ndim
    axis = _axis(_arg(args, kwargs, 1, "dim", 0), ndim)
    # Operands with nothing along the axis (an empty cache) add nothing.
    present = [t for t, o in zip(tensors, offsets)
               if o is not None or not _empty_along(prop.other_shape(t), axis, ndim)]
    result = broadcast([(o, None) for o in carrying], ndim)
    # The offset sits in some slices of the cat axis and not in others.
    return result if len(present) == 1 else result.with_axes({axis})


def _empty_along(shape: tuple[int, ...] | None, axis: int, ndim: int) -> bool:
    """Nothing along the cat axis (cat also skips legacy empty 1-d tensors)."""
    return shape is not None and (0 in shape) and (len(shape) != ndim or shape[axis] == 0)


def _stack(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    tensors = _arg(args, kwargs, 0, "tensors")
    if not isinstance(tensors, (tuple, list)):
        raise Live("stack of an unknown sequence")
    carrying = [o for o in (prop.tensor(t, node) for t in tensors) if o is not None]
    ndim = carrying[0].ndim + 1
    axis = _axis(_arg(args, kwargs, 1, "dim", 0), ndim)
    varying = {a + 1 if a >= axis else a for o in carrying for a in o.varying}
    if len(tensors) > 1:
        varying.add(axis)
    return Offset(ndim, frozenset(varying))


def _split(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Items:
    x = _only_first(prop, node, args[:1], {})
    axis = _axis(_arg(args, kwargs, 2, "dim", 0), x.ndim)
    whole = Offset(x.ndim, x.varying)
    if x.support is None or x.support[0] != axis:
        return Items(default=x)  # every piece has the same axes as the whole
    bounds = _piece_bounds(node, args, kwargs, shape_of(args[0]), axis)
    if bounds is None:
        return Items(default=whole)
    items: list[Offset | None] = []
    for start, stop in bounds:
        lo, hi = max(start, x.support[1]), min(stop, x.support[2])
        if lo >= hi:
            items.append(None)  # a piece the perturbation never touches
        elif lo == start and hi == stop:
            items.append(whole)
        else:
            items.append(Offset(x.ndim, x.varying, (axis, lo - start, hi - start)))
    return Items(items=tuple(items))


def _piece_bounds(node: fx.Node, args: Args, kwargs: Kwargs, shape: tuple[int, ...] | None,
                  axis: int) -> list[tuple[int, int]] | None:
    if shape is None:
        return None
    size = shape[axis]
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    how = _arg(args, kwargs, 1, "chunks" if name == "chunk" else "split_size_or_sections")
    if name == "split" and how is None:
        how = kwargs.get("split_size")
    if name == "chunk" and isinstance(how, int) and how > 0:
        step = -(-size // how)
        sizes = [step] * (size // step) + ([size % step] if size % step else [])
    elif name == "split" and isinstance(how, int) and how > 0:
        sizes = [how] * (size // how) + ([size % how] if size % how else [])
    elif name == "split" and isinstance(how, (list, tuple)) and all(isinstance(v, int) for v in how):
        sizes = list(how)
    else:
        return None
    bounds, start = [], 0
    for piece in sizes:
        bounds.append((start, start + piece))
        start += piece
    return bounds


def _unbind(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Items:
    x = _only_first(prop, node, args[:1], {})
    axis = _axis(_arg(args, kwargs, 1, "dim", 0), x.ndim)
    varying = {a - 1 if a > axis else a for a in x.varying if a != axis}
    mapping = {a: a - 1 if a > axis else a for a in range(x.ndim) if a != axis}
    item = x.moved(x.ndim - 1, varying, mapping)
    if x.support is None or x.support[0] != axis:
        return Items(default=item)
    plain = Offset(x.ndim - 1, frozenset(varying))
    return Items(items=tuple(plain if x.support[1] <= i < x.support[2] else None
                             for i in range(x.support[2])), default=None)


def _reduce(keep_max: bool) -> Rule:
    """mean/sum (linear) and amax/max (exact only over axes where the offset is constant)."""
    def rule(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
        x = _only_first(prop, node, args[:1], {})
        dim = _arg(args, kwargs, 1, "dim")
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        dims = list(range(x.ndim)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        reduced = {_axis(d, x.ndim) for d in dims}
        if keep_max and x.varying & reduced:
            raise Live("max over axes along which the bias varies")
        if keepdim:
            result = Offset(x.ndim, x.varying - reduced)
        else:
            kept = [a for a in range(x.ndim) if a not in reduced]
            result = Offset(len(kept), frozenset(k for k, a in enumerate(kept) if a in x.varying))
        if keep_max and node.target in (torch.max, torch.min, "max", "min") and dim is not None:
            return Items(items=(result, None))  # (values, indices): indices do not move
        return result
    return rule


def _masked_fill(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = prop.tensor(args[0], node)
    mask, value = _arg(args, kwargs, 1, "mask"), _arg(args, kwargs, 2, "value")
    if x is None or prop.of(mask) is not None or prop.of(value) is not None:
        raise Live("mask or fill value depends on the bias")
    return x.with_axes(varying_axes_of(prop.other_shape(mask), x.ndim))


def _sdpa(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> None:
    """softmax(q k^T / s + mask) v: a key offset constant over the key positions adds the same
    q . d to every score of a query, which the softmax removes (Namazifar et al., 2023)."""
    q, k, v = (_arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key"),
               _arg(args, kwargs, 2, "value"))
    rest = [a for a in list(args[3:]) + [val for name, val in kwargs.items()
                                         if name not in ("query", "key", "value")]]
    if prop.of(q) is not None or prop.of(v) is not None or any(prop.of(a) is not None for a in rest):
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
        x = _only_first(prop, node, args[:1], {})
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
    x = _only_first(prop, node, args[:1], {})
    return _pad(x, _arg(args, kwargs, 1, "pad"), _arg(args, kwargs, 2, "mode", "constant"))


FUNCTIONS: dict[Any, Rule] = {
    operator.getitem: _getitem, getattr: _getattr,
    operator.add: _add, operator.iadd: _add, torch.add: _add, operator.sub: _add,
    operator.isub: _add, torch.sub: _add, torch.subtract: _add,
    operator.neg: _neg, torch.neg: _neg, operator.pos: _neg,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul, torch.multiply: _mul,
    operator.truediv: _mul, operator.itruediv: _mul, torch.div: _mul, torch.true_divide: _mul,
    operator.matmul: _matmul, torch.matmul: _matmul, torch.bmm: _matmul, torch.mm: _matmul,
    torch.addmm: _addmm, F.linear: _linear,
    F.conv1d: _conv_function(1, False), F.conv2d: _conv_function(2, False),
    F.conv3d: _conv_function(3, False), F.conv_transpose1d: _conv_function(1, True),
    F.conv_transpose2d: _conv_function(2, True), F.conv_transpose3d: _conv_function(3, True),
    F.layer_norm: _fn_norm("layer"), F.group_norm: _fn_norm("group"),
    F.batch_norm: _fn_norm("batch"), F.instance_norm: _fn_norm("instance"),
    F.scaled_dot_product_attention: _sdpa,
    torch.flatten: _flatten_call, torch.reshape: _view, torch.permute: _permute,
    torch.transpose: _transpose, torch.swapaxes: _transpose, torch.t: _t,
    torch.movedim: _movedim, torch.squeeze: _squeeze, torch.unsqueeze: _unsqueeze,
    torch.clone: _same, torch.detach: _same,
    F.dropout: _dropout, F.dropout1d: _dropout, F.dropout2d: _dropout, F.dropout3d: _dropout,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.stack: _stack,
    torch.chunk: _split, torch.split: _split, torch.tensor_split: _split, torch.unbind: _unbind,
    torch.mean: _reduce(False), torch.sum: _reduce(False), torch.amax: _reduce(True),
    torch.amin: _reduce(True), torch.max: _reduce(True), torch.min: _reduce(True),
    torch.masked_fill: _masked_fill,
    F.max_pool1d: _pool_function(1, "max"), F.max_pool2d: _pool_function(2, "max"),
    F.max_pool3d: _pool_function(3, "max"), F.avg_pool1d: _pool_function(1, "avg"),
    F.avg_pool2d: _pool_function(2, "avg"), F.avg_pool3d: _pool_function(3, "avg"),
    F.adaptive_avg_pool1d: _pool_function(1, "adaptive"),
    F.adaptive_avg_pool2d: _pool_function(2, "adaptive"),
    F.adaptive_avg_pool3d: _pool_function(3, "adaptive"),
    F.adaptive_max_pool1d: _pool_function(1, "adaptive_max"),
    F.adaptive_max_pool2d: _pool_function(2, "adaptive_max"),
    F.adaptive_max_pool3d: _pool_function(3, "adaptive_max"),
    F.interpolate: _pool_function(0, "interpolate"), F.upsample: _pool_function(0, "interpolate"),
    F.pad: _pad_function,
}
METHODS: dict[str, Rule] = {
    "view": _view, "reshape": _view, "view_as": _view, "reshape_as": _view,
    "flatten": _flatten_call, "permute": _permute, "transpose": _transpose,
    "swapaxes": _transpose, "t": _t, "movedim": _movedim, "unsqueeze": _unsqueeze,
    "squeeze": _squeeze, "expand": _expand, "expand_as": _expand, "repeat": _expand,
    "contiguous": _same, "clone": _same, "to": _same, "float": _same, "double": _same,
    "half": _same, "bfloat16": _same, "type_as": _same, "detach": _same, "type": _same,
    "add": _add, "add_": _add, "sub": _add, "sub_": _add, "neg": _neg,
    "mul": _mul, "mul_": _mul, "div": _mul, "div_": _mul, "true_divide": _mul,
    "matmul": _matmul, "bmm": _matmul, "mm": _matmul,
    "mean": _reduce(False), "sum": _reduce(False), "amax": _reduce(True),
    "amin": _reduce(True), "max": _reduce(True), "min": _reduce(True),
    "chunk": _split, "split": _split, "tensor_split": _split, "unbind": _unbind,
    "size": _size, "dim": _size, "numel": _size, "masked_fill": _masked_fill,
}
