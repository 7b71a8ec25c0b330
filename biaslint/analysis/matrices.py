"""Weight matrices and kernels the forward contracts itself: a 2-d ``nn.Parameter`` used with
``F.linear``, ``x @ w``, ``torch.matmul``/``mm`` or an einsum, an ``nn.Linear``'s weight read
directly (``F.linear(x, self.fc.weight)``, MAML-style code), a raw conv kernel given to
``F.conv1d``/``conv2d``/``conv3d``. Layers called as modules are read from the module; these
are read from the graph: the parameter is followed through transposes, casts and scaling by a
constant (``w * c``, equalized learning rate) to its products with the input, whose contracted
axis is the fan-in and whose kept axis indexes the units.

A parameter none of whose products is with the input (an additive table, a learned query that
goes through a norm first) is not a weight here. One that reaches a product with the input
through an op this reading does not follow (``w * s`` with a tensor ``s``, a standardization)
is listed with the reason (``MatrixWeight.why``): its gain is not its values'.
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

from biaslint.analysis.model import AnalysedModel, Layer, Use
from biaslint.capture.trace import GraphPart
from biaslint.vocabulary import is_size_query

# Modules whose weights the rules read from the module call, or never judge by fan-in.
_NOT_HERE = (nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase,
             nn.Bilinear, nn.modules.conv._ConvTransposeNd)
_MATRIX_PRODUCTS = {F.linear: "linear", torch.matmul: "matmul", operator.matmul: "matmul",
                    torch.mm: "matmul", torch.einsum: "einsum", "matmul": "matmul",
                    "mm": "matmul", "__matmul__": "matmul"}
_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_SAME = frozenset({"to", "contiguous", "float", "half", "bfloat16", "double", "type_as",
                   "clone", "detach"})


@dataclass(frozen=True)
class MatrixWeight:
    """A parameter the forward contracts with its input: the fan-in of each unit, the constant
    it is scaled by on the way (1 when none), the products; ``why`` when they could not be
    read."""

    layer: Layer
    pname: str
    shape: tuple[int, ...]
    fan_in: int = 0
    scale: float = 1.0
    products: tuple[Use, ...] = ()
    why: str = ""
    # The rms of the operand the products contract, computed from the parameter values when the
    # forward transforms the weight with ops the reading does not follow (a standardization,
    # ``w * s``); None when the weight's own values, times ``scale``, are that operand.
    rms: float | None = None

    @property
    def read(self) -> bool:
        return not self.why


def matrix_weights(model: AnalysedModel) -> list[MatrixWeight]:
    """Every 2-d parameter (and raw conv kernel) the graph reads directly and contracts with
    the input, once per model."""
    found = model.__dict__.get("_matrix_weights")
    if found is not None:
        return list(found)
    found = []
    for layer in model.layers.values():
        if isinstance(layer.module, _NOT_HERE):
            continue
        for pname, tensor in layer.parameters().items():
            shape = tuple(int(s) for s in tensor.shape)
            if len(shape) < 2 or len(shape) > 5 or min(shape) < 2:
                continue
            weight = _read(model, layer, pname, shape)
            if weight is not None:
                found.append(weight)
    model.__dict__["_matrix_weights"] = found
    return list(found)


def _read(model: AnalysedModel, layer: Layer, pname: str, shape: tuple[int, ...]
          ) -> MatrixWeight | None:
    qualified = f"{layer.name}.{pname}" if layer.name else pname
    reached: list[tuple[Use, list[int | None] | None, float | None]] = []
    for read in model.reads_of(qualified):
        reached.extend(_follow(model, read, list(range(len(shape))), 1.0, 0))
    products = [(use, axes, scale) for use, axes, scale in reached
                if _weight_position(model, use) is not None]
    if not products:
        return None
    if len(shape) > 2 and any(_product_kind(use.node) != "conv" for use, _, _ in products):
        return None  # a 3-d expert weight (``analysis.experts``), or not a kernel
    uses = tuple(use for use, _, _ in products)
    if any(axes is None or scale is None for _, axes, scale in products):
        return _evaluated(model, layer, pname, shape, uses)
    fans: set[int] = set()
    scales: set[float] = set()
    for use, axes, scale in products:
        fan_in = _fan_in(model, use, axes, shape)
        if isinstance(fan_in, str):
            return MatrixWeight(layer, pname, shape, why=fan_in)
        fans.add(fan_in)
        scales.add(round(float(scale or 0.0), 12))
    if len(fans) > 1 or len(scales) > 1:
        return MatrixWeight(layer, pname, shape, why="the forward contracts it differently "
                                                     "in different places")
    return MatrixWeight(layer, pname, shape, fans.pop(), scales.pop(), uses)


def _evaluated(model: AnalysedModel, layer: Layer, pname: str, shape: tuple[int, ...],
               uses: tuple[Use, ...]) -> MatrixWeight:
    """The weight as its products contract it, computed from the parameter values (the ops
    between them read no input): its fan-in and rms. Not on the meta device, where there are
    no values."""
    found: set[tuple[int, float]] = set()
    for use in uses:
        position = _weight_position(model, use)
        operand = _operands(use.node)[position] if position is not None else None
        if not isinstance(operand, fx.Node):
            return MatrixWeight(layer, pname, shape, why="its product could not be read")
        try:
            with torch.no_grad():
                value = _evaluate(model, use.part, operand, {}, 0)
        except Exception as exc:  # noqa: BLE001  # user code: any error means "not read"
            return MatrixWeight(layer, pname, shape, why=(
                f"the forward transforms it with {_name(operand)} before {_name(use.node)}, "
                f"and that could not be computed ({type(exc).__name__})"))
        effective = tuple(int(s) for s in value.shape)
        fan_in = _fan_in(model, use, list(range(len(effective))), effective)
        if isinstance(fan_in, str):
            return MatrixWeight(layer, pname, shape, why=fan_in)
        found.add((fan_in, round(float(value.double().pow(2).mean().sqrt()), 9)))
    if len(found) != 1:
        return MatrixWeight(layer, pname, shape, why="the forward contracts it differently "
                                                     "in different places")
    fan_in, rms = found.pop()
    return MatrixWeight(layer, pname, shape, fan_in, 1.0, uses, rms=rms)


class _NoValue(Exception):
    """A value the weight's computation needs is not there (the meta device, an input)."""


def _evaluate(model: AnalysedModel, part: GraphPart, node: fx.Node,
              memo: dict[fx.Node, object], depth: int) -> torch.Tensor:
    """``node``'s value from the parameters and buffers alone, on copies of them (an in-place
    op in the forward must not write the model)."""
    result = _evaluate_any(model, part, node, memo, depth)
    if not isinstance(result, torch.Tensor) or result.is_meta or not result.is_floating_point():
        raise _NoValue("not a tensor of values")
    return result


def _value(model: AnalysedModel, part: GraphPart, node: fx.Node, memo: dict[fx.Node, object],
           depth: int) -> object:
    def value_of(n: fx.Node) -> Any:
        return _evaluate_any(model, part, n, memo, depth + 1)

    args, kwargs = fx.node.map_arg((node.args, node.kwargs), value_of)
    if node.op == "get_attr":
        owner, _, name = part.full_name(str(node.target)).rpartition(".")
        try:
            tensor = getattr(model.submodule(owner), name)
        except AttributeError:  # a constant the capture keeps in its own graph module
            tensor = part.gm
            for atom in str(node.target).split("."):
                tensor = getattr(tensor, atom)
        if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.is_meta:
            raise _NoValue("no values")
        return tensor.detach().clone()
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "call_module":
        return model.submodule(part.full_name(str(node.target)))(*args, **kwargs)
    raise _NoValue(node.op)


def _evaluate_any(model: AnalysedModel, part: GraphPart, node: fx.Node,
                  memo: dict[fx.Node, object], depth: int) -> object:
    if depth > 64:
        raise _NoValue("too deep")
    if node not in memo:
        memo[node] = _value(model, part, node, memo, depth)
    return memo[node]


def _follow(model: AnalysedModel, use: Use, axes: list[int | None] | None, scale: float | None,
            depth: int) -> list[tuple[Use, list[int | None] | None, float | None]]:
    """The products ``use``'s value reaches before it meets the input, with which original
    axis each of the value's axes is and the constant it was scaled by; both None where an op
    the reading does not follow (a standardization, ``w * s`` with a tensor ``s``) changed it
    on the way."""
    found: list[tuple[Use, list[int | None] | None, float | None]] = []
    data = input_dependent(model, use.part)
    for user in model.users(use):
        node = user.node
        if is_size_query(node):
            continue
        if _product_kind(node) and node in data:
            found.append((user, axes, scale))
            continue
        if depth >= 12 or node in data or node.op == "call_module":
            continue  # combined with the input, or the input of a layer: not a weight here
        moved = _moved(node, use.node, axes, scale) if axes is not None and scale is not None \
            else None
        if moved is not None:
            found.extend(_follow(model, user, moved[0], moved[1], depth + 1))
        else:
            found.extend(_follow(model, user, None, None, depth + 1))
    return found


def input_dependent(model: AnalysedModel, part: GraphPart) -> frozenset[fx.Node]:
    """The nodes of ``part``'s graph computed from its inputs (placeholders), made once."""
    memo = model.__dict__.setdefault("_input_dependent", {})
    found = memo.get(id(part))
    if found is None:
        nodes: set[fx.Node] = set()
        for node in part.gm.graph.nodes:  # topological order
            if node.op == "placeholder" or any(n in nodes for n in node.all_input_nodes):
                nodes.add(node)
        found = memo[id(part)] = frozenset(nodes)
    return found


def _product_kind(node: fx.Node) -> str:
    if node.op == "call_function" and node.target in _CONVS:
        return "conv"
    if node.op in ("call_function", "call_method"):
        return _MATRIX_PRODUCTS.get(node.target, "")
    return ""


def _name(node: fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target))


def _moved(node: fx.Node, source: fx.Node, axes: list[int | None], scale: float
           ) -> tuple[list[int | None], float] | None:
    """The axes and scale after ``node`` (a transpose, ``.t()``, a cast, a product with a
    Python number), or None."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    args = list(node.args[1:])
    if name in _SAME:
        return list(axes), scale
    if node.op == "call_function" and node.target is getattr and args and \
            args[0] in ("T", "mT") and len(axes) == 2:
        return [axes[1], axes[0]], scale
    pair = [a for a in args if isinstance(a, int)]
    if name in ("transpose", "swapaxes") and len(args) == 2 and len(pair) == 2:
        out = list(axes)
        a, b = (x % len(axes) for x in pair)
        out[a], out[b] = out[b], out[a]
        return out, scale
    if name in ("t", "mT") and len(axes) == 2:
        return [axes[1], axes[0]], scale
    if name == "permute":
        given = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        dims = [d for d in given if isinstance(d, int)]
        return ([axes[d] for d in dims], scale) if len(dims) == len(axes) == len(given) \
            else None
    constants = [a for a in node.args if a is not source]
    if len(node.args) == 2 and len(constants) == 1 and not isinstance(constants[0], bool) \
            and isinstance(constants[0], (int, float)) and constants[0] != 0:
        value = float(constants[0])
        if node.target in (operator.mul, torch.mul, "mul"):
            return list(axes), scale * abs(value)
        if node.target in (operator.truediv, torch.div, "div") and node.args[0] is source:
            return list(axes), scale / abs(value)
    return None


def _weight_position(model: AnalysedModel, use: Use) -> int | None:
    """The operand of the product that is the weight (computed from no input), when the
    others include one computed from the input; else None."""
    data = input_dependent(model, use.part)
    operands = _operands(use.node)
    weights = [i for i, a in enumerate(operands) if isinstance(a, fx.Node) and a not in data]
    inputs = [a for a in operands if isinstance(a, fx.Node) and a in data]
    if len(weights) != 1 or not inputs:
        return None
    return weights[0]


def _operands(node: fx.Node) -> list[object]:
    if _product_kind(node) == "einsum":
        rest: list[object] = list(node.args[1:])
        if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
            rest = list(rest[0])
        return rest
    return list(node.args[:2])


def _fan_in(model: AnalysedModel, use: Use, axes: list[int | None] | None,
            shape: tuple[int, ...]) -> int | str:
    """The number of the weight's entries each output sums (its units' fan-in), or why it
    could not be read."""
    node = use.node
    kind = _product_kind(node)
    if axes is None:
        return f"the forward transforms it with ops it does not read before {_name(node)}"
    position = _weight_position(model, use)
    if kind == "conv":
        if position != 1 or axes != list(range(len(shape))) or \
                len(shape) != _CONVS[node.target] + 2:  # type: ignore[index]
            return "a convolution of it that is not a plain kernel"
        return math.prod(shape[1:])
    if len(axes) != 2 or None in axes:
        return f"a {_name(node)} of it with other than two axes"
    if kind == "einsum":
        return _einsum_fan_in(node, position, axes, shape)
    if kind == "linear":
        if position != 1:
            return "an F.linear with it as the input"
        contracted = axes[1]
    elif position == 0:
        contracted = axes[1]  # w @ x: the rows are the units
    else:
        contracted = axes[0]  # x @ w
    return shape[contracted]  # type: ignore[index]


def _einsum_fan_in(node: fx.Node, position: int | None, axes: list[int | None],
                   shape: tuple[int, ...]) -> int | str:
    equation = node.args[0] if node.args else None
    operands = _operands(node)
    if not isinstance(equation, str) or "->" not in equation or "." in equation or \
            len(operands) != 2 or position is None:
        return "an einsum it could not read"
    inputs, output = equation.replace(" ", "").split("->")
    terms = inputs.split(",")
    letters, other = terms[position], terms[1 - position]
    if len(letters) != len(axes):
        return "an einsum it could not read"
    contracted = [axes[i] for i, c in enumerate(letters) if c not in output and c in other]
    kept = [i for i, c in enumerate(letters) if c in output and c not in other]
    if len(contracted) != 1 or len(kept) != 1 or contracted[0] is None:
        return "an einsum that does not contract it over one axis"
    return shape[contracted[0]]


def output_scale(model: AnalysedModel, product: Use) -> float:
    """The constant the product's output is multiplied by before anything else reads it
    (``q @ k.T * d ** -0.5``); 1 when none."""
    users = model.users(product)
    if len(users) != 1:
        return 1.0
    node = users[0].node
    constants = [a for a in node.args if a is not product.node]
    if len(node.args) != 2 or len(constants) != 1 or isinstance(constants[0], bool) or \
            not isinstance(constants[0], (int, float)) or constants[0] == 0:
        return 1.0
    value = abs(float(constants[0]))
    if node.target in (operator.mul, torch.mul, "mul"):
        return value
    if node.target in (operator.truediv, torch.div, "div") and node.args[0] is product.node:
        return 1.0 / value
    return 1.0
