"""The offset algebra behind BL001: what a bias perturbation looks like at one tensor, and the
axis bookkeeping every transfer function shares.

Perturb a layer's bias by ``d`` and follow the change ``delta`` it makes downstream. While only
linear, data-independent ops apply, ``delta`` is a fixed tensor that does not depend on the
input, and all that matters about it is *along which axes it may vary* (``Offset.varying``): a
per-channel bias on a conv output (N, C, H, W) starts as ``{1}``. See ``propagation`` for the
walk and ``table`` for how each op transforms an offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch.fx as fx
import torch.nn as nn

from biaslint.analysis import GraphPart, shape_of


@dataclass(frozen=True)
class Offset:
    """The change a bias perturbation makes to one tensor: rank and the axes it may vary along."""

    ndim: int
    varying: frozenset[int]
    # (axis, start, stop): the offset is zero outside [start, stop) along axis. Set when one slice
    # of a fused bias (the key part of a q/k/v projection) is followed; ops that mix positions
    # along the axis drop it, which only makes the analysis more conservative.
    support: tuple[int, int, int] | None = None

    def with_axes(self, axes: Iterable[int]) -> "Offset":
        return Offset(self.ndim, self.varying | frozenset(axes))

    def moved(self, ndim: int, varying: Iterable[int], axis_map: dict[int, int]) -> "Offset":
        """A new offset whose support axis (if any) went where ``axis_map`` says."""
        support = None
        if self.support is not None and self.support[0] in axis_map:
            support = (axis_map[self.support[0]], *self.support[1:])
        return Offset(ndim, frozenset(varying), support)


@dataclass(frozen=True)
class Items:
    """A tuple value (split, chunk, max with indices): the offset of each item, None = unchanged.

    ``default`` serves items whose count is unknown at analysis time."""

    items: tuple[Offset | None, ...] = ()
    default: Offset | None = None

    def get(self, index: int) -> Offset | None:
        if 0 <= index < len(self.items) or -len(self.items) <= index < 0:
            return self.items[index]
        return self.default


@dataclass(frozen=True)
class Tainted:
    """Depends on the bias in a way the analysis does not follow (a nonlinearity, an unknown
    op, a normalization that removes only the bias's mean)."""

    reason: str


State = Offset | Items | Tainted
Args = list[Any]
Kwargs = dict[str, Any]


class Live(Exception):
    """The perturbation reaches something observable, or something we cannot follow.

    ``crossed``: two bias-dependent values met in a product (q @ k^T of one fused projection)."""

    def __init__(self, reason: str, crossed: bool = False) -> None:
        super().__init__(reason)
        self.crossed = crossed
        self.taint: "Tainted | None" = None  # the tainted value that reached an output, if any


def all_axes(ndim: int) -> frozenset[int]:
    return frozenset(range(ndim))


def describe(part: GraphPart, node: fx.Node) -> str:
    if node.op == "call_module":
        module = part.gm.get_submodule(str(node.target))
        return f"{type(module).__name__} '{part.full_name(str(node.target))}'"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")
    stack = node.meta.get("nn_module_stack")  # recorded by fx: the module whose forward ran it
    inner = str(list(stack.keys())[-1]) if stack else ""
    owner = part.full_name(inner) if inner else part.qualname
    return f"{name}() in '{owner}'" if owner else f"{name}()"


def join(a: State, b: State) -> State:
    """The offset of a sum of two perturbations."""
    if isinstance(a, Tainted):
        return a
    if isinstance(b, Tainted):
        return b
    if isinstance(a, Offset) and isinstance(b, Offset):
        if a.ndim != b.ndim:
            raise Live("rank mismatch joining offsets")
        return Offset(a.ndim, a.varying | b.varying)
    raise Live("tuple offsets joined")


def broadcast(offsets: Sequence[tuple[Offset | None, tuple[int, ...] | None]], ndim: int) -> Offset:
    """Offsets of broadcast operands, aligned right into a result of rank ``ndim``; operands with
    no offset but a shape contribute nothing (a sum) — callers add their varying axes (products).
    """
    varying: set[int] = set()
    carrying = [o for o, _ in offsets if o is not None]
    for offset in carrying:
        shift = ndim - offset.ndim
        if shift < 0:
            raise Live("operand of higher rank than the result")
        varying |= {a + shift for a in offset.varying}
    if len(carrying) == 1:
        shift = ndim - carrying[0].ndim
        return carrying[0].moved(ndim, varying, {a: a + shift for a in range(carrying[0].ndim)})
    return Offset(ndim, frozenset(varying))


def varying_axes_of(shape: tuple[int, ...] | None, ndim: int) -> frozenset[int]:
    """Axes of a rank-``ndim`` result along which a bias-independent operand may vary: every axis
    where it has more than one element (all of them if its shape is unknown)."""
    if shape is None:
        return all_axes(ndim)
    shift = ndim - len(shape)
    return frozenset(i + shift for i, s in enumerate(shape) if s != 1 and i + shift >= 0)


def reshape_groups(a: tuple[int, ...], b: tuple[int, ...]
                   ) -> list[tuple[list[int], list[int]]] | None:
    """Pair the axes of ``a`` and ``b`` (same element count) into minimal blocks of equal size."""
    if math.prod(a) != math.prod(b) or 0 in a or 0 in b:
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        gi, gj = [i], [j]
        pa, pb = a[i], b[j]
        i += 1
        j += 1
        while pa != pb:
            if pa < pb:
                gi.append(i)
                pa *= a[i]
                i += 1
            else:
                gj.append(j)
                pb *= b[j]
                j += 1
        groups.append((gi, gj))
    rest_a, rest_b = list(range(i, len(a))), list(range(j, len(b)))  # trailing size-1 axes
    if groups:
        groups[-1][0].extend(rest_a)
        groups[-1][1].extend(rest_b)
    elif rest_a or rest_b:
        groups.append((rest_a, rest_b))
    return groups


def reshape_offset(offset: Offset, a: tuple[int, ...], b: tuple[int, ...]) -> Offset:
    groups = reshape_groups(a, b)
    if groups is None:
        raise Live("reshape with unknown grouping")
    varying: set[int] = set()
    support = None
    for gi, gj in groups:
        if any(ax in offset.varying and a[ax] != 1 for ax in gi):
            varying.update(gj)
        if offset.support is not None and offset.support[0] in gi:
            support = _reshaped_support(offset.support, [ax for ax in gi if a[ax] != 1],
                                        [ax for ax in gj if b[ax] != 1], b)
    return Offset(len(b), frozenset(varying), support)


def _reshaped_support(support: tuple[int, int, int], gi: list[int], gj: list[int],
                      b: tuple[int, ...]) -> tuple[int, int, int] | None:
    """A slice [start, stop) of one axis split into (k, rest...): still a slice of the first new
    axis when it covers whole blocks of ``rest``."""
    axis, start, stop = support
    if gi != [axis] or not gj:
        return None
    inner = math.prod(b[ax] for ax in gj[1:])
    if start % inner or stop % inner:
        return None
    return (gj[0], start // inner, stop // inner)


# -- axis bookkeeping shared by the transfer functions ---------------------------------------

def axis_index(dim: Any, ndim: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise Live("axis not a constant")
    axis = dim + ndim if dim < 0 else dim
    if not 0 <= axis < max(ndim, 1):
        raise Live("axis out of range")
    return axis


def flatten_offset(x: Offset, start: int = 0, end: int = -1) -> Offset:
    if x.ndim == 0:
        return Offset(1, frozenset())
    s, e = axis_index(start, x.ndim), axis_index(end, x.ndim)
    varying = {a for a in x.varying if a < s} | {a - (e - s) for a in x.varying if a > e}
    if x.varying & set(range(s, e + 1)):
        varying.add(s)
    mapping = {a: a for a in range(s)} | {a: a - (e - s) for a in range(e + 1, x.ndim)}
    if s == e:
        mapping[s] = s
    return x.moved(x.ndim - (e - s), varying, mapping)


def reshape_meta(source: Any, node: fx.Node, x: Offset) -> Offset:
    a, b = shape_of(source), shape_of(node)
    if a is None or b is None:
        raise Live("reshape without recorded shapes")
    return reshape_offset(x, a, b)


def spatial_count(module: nn.Module) -> int:
    """1, 2 or 3 from the class name (MaxPool2d, ZeroPad3d, InstanceNorm1d...)."""
    for cls in type(module).__mro__:
        for n in (1, 2, 3):
            if cls.__name__.endswith(f"{n}d"):
                return n
    raise Live(f"unknown dimensionality of {type(module).__name__}")
