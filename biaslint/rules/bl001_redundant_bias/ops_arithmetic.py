"""Transfer functions for arithmetic: sums, products, matrix products, linear layers,
reductions and masking (registered in ``table``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis import argument
from biaslint.rules.bl001_redundant_bias.context import OpContext, only_first, result_rank
from biaslint.rules.bl001_redundant_bias.offsets import (
    Args,
    Items,
    Kwargs,
    Live,
    Offset,
    State,
    axis_index,
    broadcast,
    describe,
    join,
    varying_axes_of,
)
from biaslint.rules.bl001_redundant_bias.table import transfer, transfer_module

_SUBTRACTIONS = {operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_"}


@transfer(
    operator.add,
    operator.iadd,
    torch.add,
    operator.sub,
    operator.isub,
    torch.sub,
    torch.subtract,
    "add",
    "add_",
    "sub",
    "sub_",
)
def _add(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset | None:
    operands = [args[0] if args else kwargs.get("input"), argument(node, 1, "other")]
    if prop.of(kwargs.get("alpha")) is not None:
        raise Live("alpha depends on the bias")
    if node.target in _SUBTRACTIONS and kwargs.get("alpha", 1) == 1:
        centred = _own_mean_removed(prop, node, operands[0], operands[1])
        if centred is not None:
            prop.cancel(node, centred)
            return None
    ndim = result_rank(prop, node, operands)
    offsets = [prop.tensor(a, node) for a in operands]
    return broadcast([(o, None) for o in offsets], ndim)


def _own_mean_removed(prop: OpContext, node: fx.Node, x_arg: Any, m_arg: Any) -> str | None:
    """``x - x.mean(dims, keepdim=True)`` (a hand-written norm's centring), or ``x`` less its
    max, min or logsumexp over ``dims`` (a softmax written out: ``exp(x - x.amax(-1, True))``):
    each of these moves with a shift constant along ``dims``, so the difference does not.
    Returns why, or None."""
    if not isinstance(x_arg, fx.Node) or not isinstance(m_arg, fx.Node):
        return None
    found = _shift_equivariant(m_arg)
    if found is None:
        return None
    source, what, dim, keepdim = found
    if not source.args or source.args[0] is not x_arg or source.kwargs.get("dtype") is not None:
        return None
    x = prop.of(x_arg)
    if not isinstance(x, Offset):
        return None
    reduced = _reduced_axes(None if isinstance(dim, bool) else dim, x.ndim)
    # Without keepdim a partial reduction broadcasts back from the right: right only when the
    # reduced axes are the leading ones (y - y.mean(0) on (N, C)).
    if reduced is None or (not keepdim and reduced != set(range(len(reduced)))):
        return None
    if x.varying & reduced:
        return None
    return f"(it subtracts the {what} over axes {sorted(reduced)})"


# The reductions that move by c when their input moves by c along the reduced axes.
_EQUIVARIANT = {"mean": "mean", "amax": "max", "amin": "min", "logsumexp": "logsumexp"}
_EQUIVARIANT_FUNCTIONS = {torch.mean: "mean", torch.amax: "max", torch.amin: "min",
                          torch.logsumexp: "logsumexp"}


def _shift_equivariant(node: fx.Node) -> tuple[fx.Node, str, Any, bool] | None:
    """(the reduction's node, what it takes, its dim, its keepdim) when ``node`` is a mean, an
    amax/amin, a logsumexp, the values of max/min over a dim, or the mean of var_mean/std_mean;
    else None."""
    if node.target in ("quantile", "nanquantile", torch.quantile, torch.nanquantile):
        dim, keepdim, _ = _order_dim(node)
        level = argument(node, 1, "q")
        return (node, f"{level:g} quantile", dim, keepdim) \
            if isinstance(level, (int, float)) and dim is not None else None
    if node.op == "call_method" and node.target in _EQUIVARIANT:
        what = _EQUIVARIANT[str(node.target)]
    elif node.op == "call_function" and node.target in _EQUIVARIANT_FUNCTIONS:
        what = _EQUIVARIANT_FUNCTIONS[node.target]
    else:
        return _item_of_reduction(node)
    return node, what, argument(node, 1, "dim"), bool(argument(node, 2, "keepdim", False))


def _item_of_reduction(node: fx.Node) -> tuple[fx.Node, str, Any, bool] | None:
    """``x.max(dim, keepdim)[0]`` (the values; min alike) and ``torch.var_mean(x, ...)[1]``
    (the mean; std_mean alike)."""
    if node.op != "call_function" or node.target not in (operator.getitem, getattr) or \
            len(node.args) != 2 or not isinstance(node.args[0], fx.Node):
        return None
    source, index = node.args[0], node.args[1]
    if node.target is getattr:  # x.max(dim).values
        index = {"values": 0}.get(str(index), -1)
    if source.op not in ("call_function", "call_method"):
        return None
    if index == 1 and source.target in (torch.var_mean, torch.std_mean):
        return source, "mean", argument(source, 1, "dim"), _var_mean_keepdim(source)
    if index == 0 and source.target in _ORDERED and _ORDERED[source.target][2] is not None:
        dim, keepdim, _ = _order_dim(source)  # median, nanmedian, kthvalue values
        if dim is None or isinstance(dim, fx.Node):
            return None
        return source, str(getattr(source.target, "__name__", source.target)), dim, keepdim
    if index == 0 and source.target in (torch.max, torch.min, "max", "min"):
        dim = argument(source, 1, "dim")
        if dim is None or isinstance(dim, fx.Node):
            return None  # torch.max(x) has no items; torch.max(a, b) is elementwise
        what = "max" if source.target in (torch.max, "max") else "min"
        return source, what, dim, bool(argument(source, 2, "keepdim", False))
    return None


def _var_mean_keepdim(node: fx.Node) -> bool:
    """var_mean/std_mean's keepdim: a keyword, or the fourth positional argument (after dim and
    unbiased)."""
    return bool(node.kwargs.get("keepdim", node.args[3] if len(node.args) > 3 else False))


def _reduced_offset(x: Offset, reduced: set[int], keepdim: bool) -> Offset:
    """The offset of a mean (or max, over axes where ``x`` is constant) of ``x`` over
    ``reduced``."""
    if keepdim:
        return Offset(x.ndim, x.varying - reduced)
    kept = [a for a in range(x.ndim) if a not in reduced]
    return Offset(len(kept), frozenset(k for k, a in enumerate(kept) if a in x.varying))


def _reduced_axes(dim: Any, ndim: int) -> set[int] | None:
    """The axes a reduction's ``dim`` argument names: every axis for None and for ``()`` (as
    torch does), None when it is not made of plain ints."""
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        return set(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) else []
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return None
    return {axis_index(d, ndim) for d in dims}


@transfer(operator.neg, torch.neg, operator.pos, "neg")
def _neg(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return only_first(prop, node, args[:1], {})


@transfer(
    operator.mul,
    operator.imul,
    torch.mul,
    torch.multiply,
    operator.truediv,
    operator.itruediv,
    torch.div,
    torch.true_divide,
    "mul",
    "mul_",
    "div",
    "div_",
    "true_divide",
)
def _mul(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """x * t with t independent of the bias: the offset becomes t * offset, which varies wherever
    t varies (a gate, attention weights, a rotary table). Two bias-dependent factors: nonlinear."""
    operands = [args[0] if args else kwargs.get("input"), argument(node, 1, "other")]
    divide = node.target in (operator.truediv, operator.itruediv, torch.div, torch.true_divide) \
        or str(node.target) in ("div", "div_", "true_divide")
    carrying = [i for i, a in enumerate(operands) if prop.of(a) is not None]
    if len(carrying) != 1 or (divide and carrying != [0]):
        raise Live(f"product of bias-dependent values at {describe(prop.part, node)}",
                   crossed=True)
    if divide and kwargs.get("rounding_mode") is not None:
        raise Live("rounded division")
    ndim = result_rank(prop, node, operands)
    offset = prop.tensor(operands[carrying[0]], node)
    other = operands[1 - carrying[0]]
    result = broadcast([(offset, None)], ndim)
    return result.with_axes(varying_axes_of(prop.other_shape(other), ndim))


def _matmul_rule(prop: OpContext, node: fx.Node, a: Any, b: Any) -> Offset:
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


@transfer(operator.matmul, torch.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm")
def _matmul(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    return _matmul_rule(prop, node, argument(node, 0, "input"), argument(node, 1, "other"))


@transfer(torch.addmm, "addmm", torch.baddbmm, "baddbmm")
def _addmm(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """beta * input + alpha * (m1 @ m2): linear in each of the three (batched for baddbmm, as
    BLOOM adds ALiBi to its attention scores)."""
    batched = node.target in (torch.baddbmm, "baddbmm")
    base, m1, m2 = (argument(node, 0, "input"),
                    argument(node, 1, "batch1" if batched else "mat1"),
                    argument(node, 2, "batch2" if batched else "mat2"))
    parts: list[Offset] = []
    if prop.of(m1) is not None or prop.of(m2) is not None:
        parts.append(_matmul_rule(prop, node, m1, m2))
    offset = prop.tensor(base, node)
    if offset is not None:
        parts.append(broadcast([(offset, None)], 3 if batched else 2))
    result = parts[0]
    for p in parts[1:]:
        result = join(result, p)  # type: ignore[assignment]  # join keeps an Offset an Offset
    return result


@transfer(F.linear)
def _linear(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x_arg, w_arg, b_arg = (argument(node, 0, "input"), argument(node, 1, "weight"),
                           argument(node, 2, "bias"))
    if prop.of(w_arg) is not None:
        raise Live("weight depends on the bias")
    ndim = result_rank(prop, node, [x_arg])
    result: Offset | None = None
    x = prop.tensor(x_arg, node)
    if x is not None:
        result = x.with_axes({ndim - 1})
    b = prop.tensor(b_arg, node)
    if b is not None:
        added = broadcast([(b, None)], ndim)
        result = (added if result is None
                  else join(result, added))  # type: ignore[assignment]  # an Offset stays one
    assert result is not None
    return result


@transfer_module(nn.Linear)
def _linear_module(prop: OpContext, node: fx.Node, module: nn.Linear, x: Offset) -> Offset:
    return x.with_axes({x.ndim - 1})


def _reduction(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs,
               keep_max: bool) -> State:
    """mean/sum (linear) and amax/max/logsumexp (exact only over axes where the offset is
    constant: each moves by the shift there)."""
    dim = argument(node, 1, "dim")
    if isinstance(dim, fx.Node) or "other" in kwargs:
        raise Live("elementwise max/min of two tensors")  # torch.max(a, b): not a reduction
    x = only_first(prop, node, args[:1], {})
    keepdim = bool(argument(node, 2, "keepdim", False))
    reduced = _reduced_axes(dim, x.ndim)
    if reduced is None:
        raise Live("reduction over axes not known at analysis time")
    if keep_max and x.varying & reduced:
        raise Live("max over axes along which the bias varies")
    result = _reduced_offset(x, reduced, keepdim)
    if keep_max and node.target in (torch.max, torch.min, "max", "min") and dim is not None:
        return Items(items=(result, None))  # (values, indices): indices do not move
    return result


@transfer(torch.var, torch.std, "var", "std", torch.var_mean, torch.std_mean)
def _spread(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State | None:
    """var/std over axes along which the offset is constant: a shift moves every value and
    the mean alike, so no deviation from the mean changes and the result does not depend on the
    bias (a hand-written norm's ``(x - x.mean(d)) / x.std(d)``). var_mean/std_mean also give
    the mean, which carries the offset as ``mean`` does."""
    x = only_first(prop, node, args[:1], {})
    dim = argument(node, 1, "dim")
    if isinstance(dim, bool):  # var(x, unbiased): every axis
        dim = None
    reduced = _reduced_axes(dim, x.ndim)
    if reduced is None:
        raise Live("variance over axes not known at analysis time")
    if x.varying & reduced:
        raise Live("variance over axes along which the bias varies")
    prop.cancel(node, "(which a shift does not change)")
    if node.target not in (torch.var_mean, torch.std_mean):
        return None
    return Items(items=(None, _reduced_offset(x, reduced, _var_mean_keepdim(node))))


@transfer(torch.mean, torch.sum, "mean", "sum")
def _mean(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
    return _reduction(prop, node, args, kwargs, keep_max=False)


@transfer(torch.amax, torch.amin, torch.max, torch.min, "amax", "amin", "max", "min",
          torch.logsumexp, "logsumexp")
def _max(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
    return _reduction(prop, node, args, kwargs, keep_max=True)


# -- order statistics: sorted values, medians, quantiles, running max ---------------------------
#
# Each takes or orders values along one axis. A shift constant along that axis moves every
# value alike, so the same entries are picked and each moves by the shift: the values carry
# the offset as it was (reduced where the op reduces), the indices do not move. Along an axis
# where the shift varies, which entry is picked depends on it: not followed.

# name -> (position of dim, its default, position of keepdim or None, returns (values, indices))
_ORDERED: dict[Any, tuple[int, Any, int | None, bool]] = {}
for _names, _spec in (
        ((torch.sort, "sort"), (1, -1, None, True)),
        ((torch.msort, "msort"), (-1, 0, None, False)),
        ((torch.topk, "topk"), (2, -1, None, True)),
        ((torch.cummax, "cummax", torch.cummin, "cummin"), (1, None, None, True)),
        ((torch.kthvalue, "kthvalue"), (2, -1, 3, True)),
        ((torch.median, "median", torch.nanmedian, "nanmedian"), (1, None, 2, True)),
        ((torch.quantile, "quantile", torch.nanquantile, "nanquantile"), (2, None, 3, False))):
    for _name in _names:
        _ORDERED[_name] = _spec


def _order_dim(node: fx.Node) -> tuple[Any, bool, bool]:
    """An order statistic's (dim, keepdim, reduces)."""
    at, default, keep_at, _ = _ORDERED[node.target]
    dim = default if at < 0 else argument(node, at, "dim", default)
    keepdim = bool(argument(node, keep_at, "keepdim", False)) if keep_at is not None else False
    return dim, keepdim, keep_at is not None


@transfer(*_ORDERED)
def _order_statistic(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
    x = only_first(prop, node, args[:1], {})
    if node.target in (torch.quantile, "quantile", torch.nanquantile, "nanquantile") and \
            not isinstance(argument(node, 1, "q"), (int, float)):
        raise Live("quantiles at a tensor of levels")
    dim, keepdim, reduces = _order_dim(node)
    if isinstance(dim, fx.Node):
        raise Live("order statistic over an axis not known at analysis time")
    axes = set(range(x.ndim)) if dim is None else {axis_index(dim, x.ndim)}
    if x.varying & axes:
        raise Live("order statistic along an axis along which the bias varies")
    values = _reduced_offset(x, axes, keepdim) if reduces else Offset(x.ndim, x.varying)
    if _ORDERED[node.target][3] and not (dim is None and reduces):
        return Items(items=(values, None))  # (values, indices)
    return values


@transfer(torch.diff, "diff")
def _diff(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> State | None:
    """Differences of neighbours along ``dim`` remove a shift constant along it; with a
    ``prepend`` or ``append`` that does not move with the bias, the first (or last) difference
    keeps it."""
    edges = [argument(node, 3, "prepend"), argument(node, 4, "append")]
    x = only_first(prop, node, args[:1], {})
    if any(prop.of(e) is not None for e in edges):
        raise Live("diff with a bias-dependent prepend or append")
    dim, order = argument(node, 2, "dim", -1), argument(node, 1, "n", 1)
    if not isinstance(dim, int) or not isinstance(order, int):
        raise Live("diff along an axis not known at analysis time")
    axis = axis_index(dim, x.ndim)
    if axis in x.varying or order < 1:
        return Offset(x.ndim, x.varying)
    if any(e is not None for e in edges):
        return Offset(x.ndim, x.varying | {axis})
    prop.cancel(node, f"(differences along axis {axis} remove a shift constant along it)")
    return None


@transfer(torch.masked_fill, "masked_fill")
def _masked_fill(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    x = prop.tensor(args[0], node)
    mask, value = argument(node, 1, "mask"), argument(node, 2, "value")
    if x is None or prop.of(mask) is not None or prop.of(value) is not None:
        raise Live("mask or fill value depends on the bias")
    return x.with_axes(varying_axes_of(prop.other_shape(mask), x.ndim))


# -- einsum: any subscripts ------------------------------------------------------------------------

def einsum_subscripts(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """Each operand's labels and the output's, one character per axis, ``...`` expanded into
    broadcast labels aligned right (as einsum broadcasts them); None when it does not parse."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    parts = inputs.split(",")
    if len(parts) != len(ranks):
        return None
    ellipsis_rank = 0
    for part, rank in zip(parts, ranks):
        named = len(part.replace("...", ""))
        if "..." in part:
            ellipsis_rank = max(ellipsis_rank, rank - named)
        elif named != rank:
            return None
    broadcast_labels = [chr(0x2460 + i) for i in range(ellipsis_rank)]  # never a letter
    labels = []
    for part, rank in zip(parts, ranks):
        if "..." in part:
            count = rank - len(part.replace("...", ""))
            part = part.replace("...", "".join(broadcast_labels[ellipsis_rank - count:]))
        labels.append(part)
    if arrow:
        result = output.replace("...", "".join(broadcast_labels))
    else:  # implicit form: broadcast axes, then the labels that appear once, sorted
        letters = "".join(labels)
        result = "".join(broadcast_labels) + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1 and c not in broadcast_labels))
    if any(not c.isalpha() and c not in broadcast_labels for c in "".join(labels) + result):
        return None
    return labels, result


@transfer(torch.einsum, "einsum")
def _einsum(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """einsum is linear in each operand. With one bias-dependent operand D, the result is
    einsum(..., D, ...): it varies along an output label where D varies along it, or where any
    other operand has more than one element along it; labels summed over drop out. Two
    bias-dependent operands (q and k of one fused projection) are a product, as for matmul."""
    equation = args[0] if args else kwargs.get("equation")
    operands = list(args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if not isinstance(equation, str):
        raise Live("einsum without a constant equation")
    carriers = [i for i, a in enumerate(operands) if prop.of(a) is not None]
    if len(carriers) != 1:
        raise Live(f"product of bias-dependent values at {describe(prop.part, node)}",
                   crossed=len(carriers) > 1)
    carrier = prop.tensor(operands[carriers[0]], node)
    assert carrier is not None
    shapes: list[tuple[int, ...] | None] = []
    for i, a in enumerate(operands):
        shapes.append(None if i == carriers[0] else prop.other_shape(a))
    ranks = [carrier.ndim if i == carriers[0] else (len(s) if s is not None else -1)
             for i, s in enumerate(shapes)]
    if -1 in ranks:
        raise Live("einsum operand of unknown shape")
    parsed = einsum_subscripts(equation, ranks)
    if parsed is None:
        raise Live(f"einsum equation {equation!r} not understood")
    labels, output = parsed
    varying: set[str] = {labels[carriers[0]][ax] for ax in carrier.varying}
    for i, shape in enumerate(shapes):
        if shape is not None:
            varying |= {label for label, size in zip(labels[i], shape) if size != 1}
    return Offset(len(output), frozenset(ax for ax, label in enumerate(output) if label in varying))
