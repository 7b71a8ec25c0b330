"""The scale of a layer's input where the init laws settle it: straight out of a normalization.

On the meta device there is no forward with values; what the rules that measure one (BL007,
BL009) can still say comes from the laws. A layer's pre-activation ``w . x`` is set by its
weight's law and by its input's scale, and the one input whose scale the laws give is a norm's
output: a ``LayerNorm`` (or ``RMSNorm``, or the RMS normalization a library writes out,
``weight * x * rsqrt(mean(x**2) + eps)``) with a constant gain ``c`` (and a constant shift ``b``)
gives every row the mean square ``c**2 * v / (v + eps) + b**2``, where ``v`` is the row's
variance (mean square for RMSNorm) before it. So every row's rms is at most
``sqrt(c**2 + b**2)``, exactly, and at least ``sqrt(c**2 / 2 + b**2)`` when ``v >= eps`` (the norm
normalizes at all; one whose input is smaller than its eps is BL013's concern).

``normed_input`` walks back from a layer's input through ops that keep each row (views, casts,
inactive dropout, a slice of rows) to such a norm, or says why the laws do not give the scale.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis.model import AnalysedModel, Use, is_shape_only
from biaslint.capture.shapes import shape_of
from biaslint.vocabulary import dropout_active


@dataclass(frozen=True)
class NormedInput:
    """A layer input that is a norm's output, row by row."""

    norm: str  # the norm module's name (the module whose forward wrote the normalization)
    width: int  # entries per normalized row
    high: float  # every row's rms is at most this (exact)
    low: float  # and at least this when the norm's input variance is at least its eps
    eps: float
    gain: float  # the norm's constant weight (1 without one)
    shift: float  # its constant bias (0 without one)

    def describe(self) -> str:
        parts = [f"weight {self.gain:g}"] + ([f"bias {self.shift:g}"] if self.shift else [])
        return f"{self.norm or '<root>'} ({', '.join(parts)}, eps {self.eps:g})"


def normed_input(model: AnalysedModel, use: Use, operand: int = 0) -> NormedInput | str:
    """What feeds argument ``operand`` of ``use`` when it is a norm's output (through ops that
    keep every row whole); else why the laws do not give its scale."""
    args = [a for a in use.node.args if isinstance(a, fx.Node)]
    if operand >= len(args):
        return "its input is not a tensor of the graph"
    node = args[operand]
    for _ in range(64):
        current = Use(use.part, node)
        if node.op == "call_module":
            module = model.module_of(current)
            if module is not None and isinstance(module, (nn.LayerNorm, *_RMS_NORMS)):
                return _module_norm(model, current, module)
        if node.op == "call_function" and node.target is operator.mul:
            found = _written_rms_norm(model, current)
            if found is not None:
                return found
        if node.op == "call_function" and node.target in _NORM_FUNCTIONS:
            return _function_norm(model, current)
        following = _row_keeping(model, current)
        if following is None:
            return (f"its input comes from {_what(model, current)}, not straight from a "
                    "normalization: its scale is not known from the init laws")
        node = following
    return "its input is too far from a normalization"


_MOVES_AXES = frozenset({"permute", "transpose", "movedim", "swapaxes", "t", "mT", "moveaxis"})
_RMS_NORMS: tuple[type[nn.Module], ...] = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
_NORM_FUNCTIONS = frozenset({F.layer_norm} | ({F.rms_norm} if hasattr(F, "rms_norm") else set()))
_PLAIN_FORWARDS = frozenset({nn.LayerNorm.forward, *(n.forward for n in _RMS_NORMS)})


def _what(model: AnalysedModel, use: Use) -> str:
    node = use.node
    if node.op == "call_module":
        return f"{type(model.module_of(use)).__name__} {model.module_name(use)}"
    if node.op == "placeholder":
        return "the model's input"
    return f"{getattr(node.target, '__name__', node.target)}"


def _row_keeping(model: AnalysedModel, use: Use) -> fx.Node | None:
    """The node before ``use`` when ``use`` keeps each row of it whole (a view, a cast, an
    inactive dropout, a slice of rows with the row width kept), else None."""
    node = use.node
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op in ("call_method", "call_function") and \
            getattr(node.target, "__name__", node.target) in _MOVES_AXES:
        return None  # a transpose can put another axis last: the rows are not the norm's
    if is_shape_only(use) and not dropout_active(node, model.module_of(use)):
        before, after = shape_of(first), shape_of(node)
        # a view that keeps the last axis keeps every row (a flatten of (B, T, D) to (B*T, D))
        if before and after and before[-1] == after[-1]:
            return first
        return None
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) > 1:
        before, after = shape_of(first), shape_of(node)
        if before and after and before[-1] == after[-1] and _keeps_last_axis(node.args[1],
                                                                              len(before)):
            return first  # rows selected (``h[:, -1:, :]``, ``h[:, 0]``), each whole
    return None


def _keeps_last_axis(index: Any, dims: int) -> bool:
    """An index of ints, slices and None that leaves the last of ``dims`` axes whole."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or isinstance(i, (int, slice)) for i in items):
        return False
    addressed = [i for i in items if i is not None]
    if len(addressed) < dims:
        return True  # the trailing axes are not indexed
    last = addressed[-1]
    return isinstance(last, slice) and last == slice(None)


def _module_norm(model: AnalysedModel, use: Use, module: nn.Module) -> NormedInput | str:
    name = model.module_name(use)
    if type(module).forward not in _PLAIN_FORWARDS:
        # a subclass with a forward of its own (timm's and torchvision's channels-first
        # LayerNorm2d) need not normalize the last axis
        return f"the norm {name} ({type(module).__name__}) has a forward of its own"
    shape = tuple(getattr(module, "normalized_shape", ()) or ())
    if len(shape) != 1:
        return f"the norm {name} normalizes over {len(shape)} axes, not over each row"
    eps = getattr(module, "eps", None)
    if eps is None:  # nn.RMSNorm's default: the dtype's machine epsilon
        eps = torch.finfo(torch.get_default_dtype()).eps
    layer = model.layers.get(name)
    gain = _constant(layer, "weight") if getattr(module, "weight", None) is not None else 1.0
    shift = _constant(layer, "bias") if getattr(module, "bias", None) is not None else 0.0
    if gain is None or shift is None:
        return (f"the norm {name}'s weight or bias is not one constant at init: its output's "
                "scale differs per entry")
    return _normed(name, int(shape[0]), float(eps), gain, shift)


def _function_norm(model: AnalysedModel, use: Use) -> NormedInput | str:
    """``F.layer_norm(x, shape, weight, bias, eps)`` / ``F.rms_norm(x, shape, weight, eps)``
    (timm's ``LayerNorm`` calls it), its weight and bias read as parameters."""
    node = use.node
    rms = node.target is not F.layer_norm
    names = ("input", "normalized_shape", "weight", "eps") if rms else \
        ("input", "normalized_shape", "weight", "bias", "eps")
    given = dict(zip(names, node.args)) | dict(node.kwargs)
    shape = given.get("normalized_shape")
    shape = tuple(shape) if isinstance(shape, (list, tuple)) else (shape,)
    if len(shape) != 1 or not isinstance(shape[0], int):
        return "its norm normalizes over more than the last axis"
    eps = given.get("eps", None if rms else 1e-5)
    if eps is None:
        eps = torch.finfo(torch.get_default_dtype()).eps
    factors, name = [], _norm_owner(node)
    for key, default in (("weight", 1.0), ("bias", 0.0)):
        arg = given.get(key)
        if arg is None:
            factors.append(default)
            continue
        if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            return f"its norm's {key} is computed in the forward"
        owner, _, pname = use.part.full_name(str(arg.target)).rpartition(".")
        constant = _constant(model.layers.get(owner), pname)
        if constant is None:
            return f"its norm's {key} ({owner}.{pname}) is not one constant at init"
        factors.append(constant)
        name = owner
    if not isinstance(eps, (int, float)):
        return "its norm's eps is computed in the forward"
    return _normed(name, shape[0], float(eps), factors[0], factors[1])


def _constant(layer: Any, pname: str) -> float | None:
    value = layer.value(pname) if layer is not None else None
    if value is None or not value.known:
        return None
    return value.constant()


def _normed(name: str, width: int, eps: float, gain: float, shift: float) -> NormedInput:
    high = math.sqrt(gain * gain + shift * shift)
    low = math.sqrt(gain * gain / 2 + shift * shift)
    return NormedInput(name, width, high, low, eps, gain, shift)


def _written_rms_norm(model: AnalysedModel, use: Use) -> NormedInput | None:
    """``weight * x * rsqrt(mean(x**2, -1) + eps)`` (casts between), as transformers writes its
    RMS norms (``LlamaRMSNorm``): the norm, or None when ``use`` is not one."""
    node = use.node
    weight, rest = None, list(node.args)
    for arg in node.args:
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            weight, rest = arg, [a for a in node.args if a is not arg]
    inner = node
    if weight is not None:
        if len(rest) != 1 or not isinstance(rest[0], fx.Node):
            return None
        inner = _uncast(rest[0])
    found = _rms_scaled(inner)
    if found is None:
        return None
    width, eps = found
    name, gain = _norm_owner(node), 1.0
    if weight is not None:
        qualified = use.part.full_name(str(weight.target))
        owner, _, pname = qualified.rpartition(".")
        layer = model.layers.get(owner)
        tensor = layer.param(pname) if layer is not None else None
        constant = _constant(layer, pname)
        if tensor is None or tuple(tensor.shape) != (width,) or constant is None:
            return None
        gain, name = constant, owner
    return _normed(name, width, eps, gain, 0.0)


def _uncast(node: fx.Node) -> fx.Node:
    while node.op == "call_method" and node.target in ("to", "float", "type_as") and \
            node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _rms_scaled(node: fx.Node) -> tuple[int, float] | None:
    """(row width, eps) when ``node`` is ``x * rsqrt(mean(x**2, -1, keepdim) + eps)``."""
    if node.op != "call_function" or node.target is not operator.mul or len(node.args) != 2:
        return None
    for x, scale in (node.args, node.args[::-1]):
        if not (isinstance(x, fx.Node) and isinstance(scale, fx.Node)):
            continue
        if scale.op != "call_function" or scale.target is not torch.rsqrt:
            continue
        added = scale.args[0] if scale.args else None
        if not (isinstance(added, fx.Node) and added.target is operator.add
                and len(added.args) == 2):
            continue
        mean, eps = added.args
        if not isinstance(eps, (int, float)) or not isinstance(mean, fx.Node):
            continue
        if not (mean.op == "call_method" and mean.target == "mean" and _last_axis(mean)):
            continue
        squared = mean.args[0]
        base = squared.args[0] if isinstance(squared, fx.Node) and squared.args else None
        if isinstance(squared, fx.Node) and squared.target in (operator.pow, torch.pow) and \
                squared.args[1:2] == (2,) and isinstance(base, fx.Node) and \
                _uncast(base) is _uncast(x):
            shape = shape_of(x)
            if shape:
                return int(shape[-1]), float(eps)
    return None


def _last_axis(mean: fx.Node) -> bool:
    dim = mean.args[1] if len(mean.args) > 1 else mean.kwargs.get("dim")
    keep = mean.kwargs.get("keepdim", mean.args[2] if len(mean.args) > 2 else False)
    return dim in (-1, [-1], (-1,)) and bool(keep)


def _norm_owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return str(path)
