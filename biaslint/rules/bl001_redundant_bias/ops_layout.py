"""Transfer functions for ops that move data without mixing it: views, permutes, indexing,
splits, concatenation (registered in ``table``). They track where each axis goes, and which
slice of an axis a perturbation lives in when one slice of a fused bias is followed.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis import argument, shape_of
from biaslint.rules.bl001_redundant_bias.context import OpContext, only_first
from biaslint.rules.bl001_redundant_bias.offsets import (
    Args,
    Items,
    Kwargs,
    Live,
    Offset,
    State,
    all_axes,
    axis_index,
    broadcast,
    describe,
    flatten_offset,
    reshape_meta,
)
from biaslint.rules.bl001_redundant_bias.table import transfer, transfer_module


def _permute_axes(x: Offset, dims: list[Any]) -> Offset:
    order = [axis_index(d, x.ndim) for d in dims]
    if sorted(order) != list(range(x.ndim)):
        raise Live("permutation of unknown axes")
    return x.moved(x.ndim, (k for k, src in enumerate(order) if src in x.varying),
                   {src: k for k, src in enumerate(order)})


def _swap(x: Offset, a: Any, b: Any) -> Offset:
    order = list(range(x.ndim))
    i, j = axis_index(a, x.ndim), axis_index(b, x.ndim)
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


@transfer("view", "reshape", "view_as", "reshape_as", torch.reshape)
def _view(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    return reshape_meta(args[0], node, x)


@transfer(torch.permute, "permute")
def _permute(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return _permute_axes(only_first(prop, node, args[:1], {}), _dims(args, kwargs))


@transfer(torch.transpose, torch.swapaxes, "transpose", "swapaxes")
def _transpose(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    return _swap(x, argument(node, 1, "dim0"), argument(node, 2, "dim1"))


@transfer(torch.t, "t")
def _t(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    return x if x.ndim < 2 else _swap(x, 0, 1)


@transfer(torch.movedim, "movedim")
def _movedim(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    src, dst = argument(node, 1, "source"), argument(node, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [axis_index(s, x.ndim) for s in src], [axis_index(d, x.ndim) for d in dst]
    rest = iter(a for a in range(x.ndim) if a not in src)
    placed = dict(zip(dst, src))
    order = [placed[k] if k in placed else next(rest) for k in range(x.ndim)]
    return _permute_axes(x, order)


@transfer(torch.flatten, "flatten")
def _flatten_call(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    return flatten_offset(x, argument(node, 1, "start_dim", 0), argument(node, 2, "end_dim", -1))


@transfer(torch.unsqueeze, "unsqueeze")
def _unsqueeze(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    d = axis_index(argument(node, 1, "dim"), x.ndim + 1)
    mapping = {a: a + 1 if a >= d else a for a in range(x.ndim)}
    return x.moved(x.ndim + 1, (mapping[a] for a in x.varying), mapping)


@transfer(torch.squeeze, "squeeze")
def _squeeze(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    shape = shape_of(args[0])
    dim = argument(node, 1, "dim")
    if shape is None:
        raise Live("squeeze without a recorded shape")
    dims = [dim] if isinstance(dim, int) else list(dim) if dim is not None else list(range(x.ndim))
    gone = {a for a in (axis_index(d, x.ndim) for d in dims) if shape[a] == 1}
    keep = [a for a in range(x.ndim) if a not in gone]
    return x.moved(len(keep), (k for k, a in enumerate(keep) if a in x.varying),
                   {a: k for k, a in enumerate(keep)})


@transfer("expand", "expand_as", "repeat", torch.tile, "tile")
def _expand(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """expand/repeat/expand_as: copies; new leading axes and copied axes are constant."""
    x = only_first(prop, node, args[:1], {})
    shape = shape_of(node)
    if shape is None:
        raise Live("expand without a recorded shape")
    shift = len(shape) - x.ndim
    return Offset(len(shape), frozenset(a + shift for a in x.varying))


@transfer(
    torch.clone,
    torch.detach,
    "contiguous",
    "clone",
    "to",
    "float",
    "double",
    "half",
    "bfloat16",
    "type_as",
    "detach",
    "type",
)
def _same(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return only_first(prop, node, args[:1], {})


@transfer(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
def _dropout(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    p = argument(node, 1, "p", 0.5)
    training = argument(node, 2, "training", True)
    if p == 0 or training is False:
        return x
    raise Live(f"dropout with p={p} at {describe(prop.part, node)}")


@transfer(getattr)
def _getattr(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State | None:
    name = args[1] if len(args) > 1 else None
    if name in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    state = prop.of(args[0])
    if isinstance(state, Items) and name in ("values", "indices"):
        return state.get(0 if name == "values" else 1)  # sort/max/median's named tuple
    x = only_first(prop, node, args[:1], {})
    if name in ("data",):
        return x
    if name in ("T", "mT", "mH", "H"):
        return x if x.ndim < 2 else _swap(x, -2, -1) if name in ("mT", "mH") else _permute_axes(
            x, list(range(x.ndim))[::-1])
    raise Live(f"attribute {name!r} of a bias-dependent value")


@transfer(operator.getitem)
def _getitem(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State | None:
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


@transfer(torch.roll, "roll")
def _roll(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """roll(x, shifts, dims) moves entries along ``dims`` and wraps them around: an offset that
    is constant along an axis stays constant there. Without ``dims`` the tensor is rolled as
    if flat, which mixes every axis. Either way a followed slice no longer marks where the
    offset is (``Offset`` without support)."""
    x = only_first(prop, node, args[:1], {})
    if argument(node, 2, "dims") is None and x.varying:
        return Offset(x.ndim, all_axes(x.ndim))
    return Offset(x.ndim, x.varying)


@transfer(torch.narrow, "narrow")
def _narrow(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset | None:
    """narrow(x, dim, start, length) is the slice ``start:start + length`` of ``dim``."""
    x = only_first(prop, node, args[:1], {})
    dim, start, length = (argument(node, i, n) for i, n in
                          ((1, "dim"), (2, "start"), (3, "length")))
    if not all(isinstance(v, int) for v in (dim, start, length)):
        raise Live("narrow by values not known at analysis time")
    axis = axis_index(dim, x.ndim)
    index = (slice(None),) * axis + (slice(start, start + length),)
    return _index(x, index, shape_of(args[0]))


@transfer(torch.index_select, "index_select", torch.repeat_interleave, "repeat_interleave",
          *{F.channel_shuffle, torch.channel_shuffle})
def _picked(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """index_select, repeat_interleave along a dim and channel_shuffle pick or repeat whole
    slices of one axis: an offset constant along an axis stays constant there. A flattening
    repeat_interleave (no dim) mixes every axis."""
    x = only_first(prop, node, args[:1], {})
    if node.target in (torch.repeat_interleave, "repeat_interleave") and \
            argument(node, 2, "dim") is None:
        shape = shape_of(node)
        return Offset(len(shape) if shape is not None else 1,
                      frozenset({0}) if x.varying else frozenset())
    return Offset(x.ndim, x.varying)


@transfer_module(nn.ChannelShuffle)
def _channel_shuffle_module(prop: OpContext, node: fx.Node, module: nn.Module,
                            x: Offset) -> Offset:
    return Offset(x.ndim, x.varying)


@transfer(torch.gather, "gather", torch.take_along_dim, "take_along_dim")
def _gather(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """gather(x, dim, index): each entry is picked along ``dim`` at its own position on the
    other axes. An offset constant along ``dim`` is what it was at that position; one that
    varies along it depends on the index, which may vary along every axis."""
    x = prop.tensor(args[0], node)
    if x is None or prop.of(argument(node, 2, "index") if node.target in (torch.gather, "gather")
                            else argument(node, 1, "indices")) is not None:
        raise Live("index depends on the bias")
    dim = argument(node, 1 if node.target in (torch.gather, "gather") else 2, "dim")
    if not isinstance(dim, int):
        raise Live("gather along an axis not known at analysis time")
    if axis_index(dim, x.ndim) in x.varying:
        return Offset(x.ndim, all_axes(x.ndim))
    return Offset(x.ndim, x.varying)


def _unfolded(x: Offset, padded: bool) -> Offset:
    """unfold (im2col): (N, C, H, W) -> (N, C * kh * kw, L). Channel ``c * k + i`` reads channel
    ``c`` at offset ``i`` of each window, so a per-channel offset varies over the new channel
    axis only; one that varies over space, or zero padding (the border reads no offset), varies
    over the windows too."""
    if x.ndim not in (3, 4):
        raise Live("unfold of other than (N, C, H, W)")
    batch = x.ndim - 3
    channel, spatial = batch, {batch + 1, batch + 2}
    varying = {0} if batch and 0 in x.varying else set()
    if x.varying & ({channel} | spatial):
        varying.add(channel)
    if padded or x.varying & spatial:
        varying |= {channel, channel + 1}
    return Offset(x.ndim - 1, frozenset(varying))


@transfer(F.unfold)
def _unfold(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    padding = argument(node, 3, "padding", 0)
    return _unfolded(x, padding not in (0, (0, 0), [0, 0]))


@transfer_module(nn.Unfold)
def _unfold_module(prop: OpContext, node: fx.Node, module: nn.Unfold, x: Offset) -> Offset:
    return _unfolded(x, module.padding not in (0, (0, 0), [0, 0]))


@transfer(torch.flip, "flip", torch.fliplr, "fliplr", torch.flipud, "flipud")
def _flip(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """flip reverses the entries along its dims: an offset constant along an axis stays
    constant there; a followed slice no longer marks where the offset is."""
    x = only_first(prop, node, args[:1], {})
    return Offset(x.ndim, x.varying)


@transfer(torch.rot90, "rot90")
def _rot90(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """rot90 turns the plane of two axes: an offset constant along both stays so; one that
    varies along either may vary along both after an odd number of turns."""
    x = only_first(prop, node, args[:1], {})
    plane = {axis_index(d, x.ndim) for d in argument(node, 2, "dims", (0, 1))}
    turns = argument(node, 1, "k", 1)
    if not isinstance(turns, int) or (turns % 2 and x.varying & plane):
        return Offset(x.ndim, x.varying | plane)
    return Offset(x.ndim, x.varying)


def _shuffled(x: Offset, up: bool) -> Offset:
    """pixel_shuffle (``up``) moves channel blocks into space, pixel_unshuffle space into
    channel blocks, over the last three axes (C, H, W): a per-channel offset spreads over
    space when shuffled up; a spatially varying one spreads over channels when shuffled down."""
    if x.ndim < 3:
        raise Live("pixel shuffle of fewer than three axes")
    c, h, w = x.ndim - 3, x.ndim - 2, x.ndim - 1
    varying = set(x.varying)
    if up and c in varying:
        varying |= {h, w}
    if not up and varying & {h, w}:
        varying.add(c)
    return Offset(x.ndim, frozenset(varying))


@transfer(*{F.pixel_shuffle, torch.pixel_shuffle, F.pixel_unshuffle, torch.pixel_unshuffle})
def _pixel_shuffle(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = only_first(prop, node, args[:1], {})
    return _shuffled(x, node.target in (F.pixel_shuffle, torch.pixel_shuffle))


@transfer_module(nn.PixelShuffle, nn.PixelUnshuffle)
def _pixel_shuffle_module(prop: OpContext, node: fx.Node, module: nn.Module,
                          x: Offset) -> Offset:
    return _shuffled(x, isinstance(module, nn.PixelShuffle))


@transfer(torch.cat, torch.concat, torch.concatenate)
def _cat(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    tensors = argument(node, 0, "tensors")
    if not isinstance(tensors, (tuple, list)):
        raise Live("cat of an unknown sequence")
    offsets = [prop.tensor(t, node) for t in tensors]
    carrying = [o for o in offsets if o is not None]
    ndim = carrying[0].ndim
    axis = axis_index(argument(node, 1, "dim", 0), ndim)
    # Operands with nothing along the axis (an empty cache) add nothing.
    present = [t for t, o in zip(tensors, offsets)
               if o is not None or not _empty_along(prop.other_shape(t), axis, ndim)]
    result = broadcast([(o, None) for o in carrying], ndim)
    # The offset sits in some slices of the cat axis and not in others.
    return result if len(present) == 1 else result.with_axes({axis})


def _empty_along(shape: tuple[int, ...] | None, axis: int, ndim: int) -> bool:
    """Nothing along the cat axis (cat also skips legacy empty 1-d tensors)."""
    return shape is not None and (0 in shape) and (len(shape) != ndim or shape[axis] == 0)


@transfer(torch.stack)
def _stack(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    tensors = argument(node, 0, "tensors")
    if not isinstance(tensors, (tuple, list)):
        raise Live("stack of an unknown sequence")
    carrying = [o for o in (prop.tensor(t, node) for t in tensors) if o is not None]
    ndim = carrying[0].ndim + 1
    axis = axis_index(argument(node, 1, "dim", 0), ndim)
    varying = {a + 1 if a >= axis else a for o in carrying for a in o.varying}
    if len(tensors) > 1:
        varying.add(axis)
    return Offset(ndim, frozenset(varying))


@transfer(torch.chunk, torch.split, torch.tensor_split, "chunk", "split", "tensor_split")
def _split(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Items:
    x = only_first(prop, node, args[:1], {})
    axis = axis_index(argument(node, 2, "dim", 0), x.ndim)
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
    how = argument(node, 1, "chunks" if name == "chunk" else "split_size_or_sections")
    if name == "split" and how is None:
        how = kwargs.get("split_size")
    if name == "chunk" and isinstance(how, int) and how > 0:
        step = -(-size // how)
        sizes = [step] * (size // step) + ([size % step] if size % step else [])
    elif name == "split" and isinstance(how, int) and how > 0:
        sizes = [how] * (size // how) + ([size % how] if size % how else [])
    elif name == "split" and isinstance(how, (list, tuple)) \
            and all(isinstance(v, int) for v in how):
        sizes = list(how)
    else:
        return None
    bounds, start = [], 0
    for piece in sizes:
        bounds.append((start, start + piece))
        start += piece
    return bounds


@transfer(torch.unbind, "unbind")
def _unbind(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Items:
    x = only_first(prop, node, args[:1], {})
    axis = axis_index(argument(node, 1, "dim", 0), x.ndim)
    varying = {a - 1 if a > axis else a for a in x.varying if a != axis}
    mapping = {a: a - 1 if a > axis else a for a in range(x.ndim) if a != axis}
    item = x.moved(x.ndim - 1, varying, mapping)
    if x.support is None or x.support[0] != axis:
        return Items(default=item)
    plain = Offset(x.ndim - 1, frozenset(varying))
    return Items(items=tuple(plain if x.support[1] <= i < x.support[2] else None
                             for i in range(x.support[2])), default=None)


@transfer_module(nn.Identity)
def _identity_module(prop: OpContext, node: fx.Node, module: nn.Identity, x: Offset) -> Offset:
    return x


@transfer_module(nn.Flatten)
def _flatten_module(prop: OpContext, node: fx.Node, module: nn.Flatten, x: Offset) -> Offset:
    return flatten_offset(x, module.start_dim, module.end_dim)


@transfer_module(nn.Unflatten)
def _unflatten_module(prop: OpContext, node: fx.Node, module: nn.Unflatten,
                      x: Offset) -> Offset:
    return reshape_meta(node.args[0], node, x)


@transfer_module(nn.modules.dropout._DropoutNd)
def _dropout_module(prop: OpContext, node: fx.Node, module: nn.Module, x: Offset) -> Offset:
    # Train mode: a mask that differs per element and per step.
    if module.p == 0:
        return x
    raise Live(f"dropout with p={module.p} at {describe(prop.part, node)}")
