"""Per-op rules for ``offsets.Propagation``: how one node transforms a bias perturbation.

Each rule gets the offsets of the node's operands and returns the offset of its output, None when
the output no longer depends on the bias (cancelled), or raises ``Live``. Unknown ops are live.
This module dispatches and holds the arithmetic; ``offset_layout`` and ``offset_norms`` hold the
data-movement and the module/normalization rules.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from biaslint.analysis import Use
from biaslint.rules.bl001_redundant_bias.propagation import (
    Items,
    Live,
    Offset,
    Propagation,
    State,
    broadcast,
    describe,
    join,
    shape_of,
    varying_axes_of,
)
from biaslint.rules.bl001_redundant_bias.ops_layout import (
    Args,
    Kwargs,
    Rule,
    _arg,
    _axis,
    _cat,
    _dropout,
    _expand,
    _flatten_call,
    _getattr,
    _getitem,
    _movedim,
    _only_first,
    _permute,
    _same,
    _size,
    _split,
    _squeeze,
    _stack,
    _t,
    _transpose,
    _unbind,
    _unsqueeze,
    _view,
)
from biaslint.rules.bl001_redundant_bias.ops_norms import (
    _conv,
    _fn_norm,
    _module,
    _pad_function,
    _pool_function,
    _sdpa,
    _softmax,
)
from biaslint.analysis.ops import activation_kind, softmax_kind


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


# -- arithmetic ----------------------------------------------------------------

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


_SUBTRACTIONS = {operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_"}


def _add(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset | None:
    operands = [args[0] if args else kwargs.get("input"), _arg(args, kwargs, 1, "other")]
    if prop.of(kwargs.get("alpha")) is not None:
        raise Live("alpha depends on the bias")
    if node.target in _SUBTRACTIONS and kwargs.get("alpha", 1) == 1:
        centred = _own_mean_removed(prop, node, operands[0], operands[1])
        if centred is not None:
            prop.cancel(node, centred)
            return None
    ndim = _rank(prop, node, operands)
    offsets = [prop.tensor(a, node) for a in operands]
    return broadcast([(o, None) for o in offsets], ndim)


def _own_mean_removed(prop: Propagation, node: fx.Node, x_arg: Any, m_arg: Any) -> str | None:
    """``x - x.mean(dims, keepdim=True)`` (a hand-written norm's centring): an offset constant
    along ``dims`` is in the mean too, so the difference does not move. Returns why, or None."""
    if not isinstance(x_arg, fx.Node) or not isinstance(m_arg, fx.Node):
        return None
    is_mean = (m_arg.op == "call_method" and m_arg.target == "mean") or (
        m_arg.op == "call_function" and m_arg.target is torch.mean)
    if not is_mean or not m_arg.args or m_arg.args[0] is not x_arg:
        return None
    if m_arg.kwargs.get("dtype") is not None:
        return None
    x = prop.of(x_arg)
    if not isinstance(x, Offset):
        return None
    m_args, m_kwargs = list(m_arg.args), dict(m_arg.kwargs)
    dim = _arg(m_args, m_kwargs, 1, "dim")
    keepdim = bool(_arg(m_args, m_kwargs, 2, "keepdim", False))
    reduced = _reduced_axes(dim, x.ndim)
    # Without keepdim a partial mean broadcasts back from the right: right only when the
    # reduced axes are the leading ones (y - y.mean(0) on (N, C)).
    if reduced is None or (not keepdim and reduced != set(range(len(reduced)))):
        return None
    if x.varying & reduced:
        return None
    return f"(it subtracts the mean over axes {sorted(reduced)})"


def _reduced_axes(dim: Any, ndim: int) -> set[int] | None:
    """The axes a reduction's ``dim`` argument names: every axis for None and for ``()`` (as
    torch does), None when it is not made of plain ints."""
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        return set(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) else []
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return None
    return {_axis(d, ndim) for d in dims}


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



def _reduce(keep_max: bool) -> Rule:
    """mean/sum (linear) and amax/max (exact only over axes where the offset is constant)."""
    def rule(prop: Propagation, node: fx.Node, args: Args, kwargs: Kwargs) -> State:
        dim = _arg(args, kwargs, 1, "dim")
        if isinstance(dim, fx.Node) or "other" in kwargs:
            raise Live("elementwise max/min of two tensors")  # torch.max(a, b): not a reduction
        x = _only_first(prop, node, args[:1], {})
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        reduced = _reduced_axes(dim, x.ndim)
        if reduced is None:
            raise Live("reduction over axes not known at analysis time")
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
