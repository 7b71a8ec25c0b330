"""Expert weights stored as 3-d parameters: a mixture of experts' ``(experts, out, in)`` or
``(experts, in, out)`` tensor used by the forward with ``F.linear`` per expert, ``torch.bmm``,
``torch.matmul``, ``torch._grouped_mm`` or an einsum, not by an ``nn.Linear``.

Which axis is the fan-in is not in the shape: transformers stores Mixtral's ``gate_up_proj`` as
``(experts, 2 * intermediate, hidden)`` and applies ``F.linear`` (or a grouped matmul of its
transpose), GPT-OSS stores ``(experts, hidden, 2 * expert_dim)`` and applies ``torch.bmm``. It is
read from the graph: the parameter's axes are followed through transposes, permutes and an
expert index (``w[e]``) to the product, whose contracted axis is the fan-in and whose kept
non-expert axis indexes the units. A parameter whose every use does not say the same is not
read (``ExpertWeight.why``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis.model import AnalysedModel, Layer, Use
from biaslint.capture.shapes import shape_of
from biaslint.vocabulary import is_size_query

# Modules whose 3-d weights the rules read as they are (conv kernels, RNN stacks).
_KNOWN = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase, nn.Bilinear,
          nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention)
_PRODUCTS = {torch.bmm: "bmm", torch.matmul: "matmul", operator.matmul: "matmul",
             torch.baddbmm: "baddbmm", F.linear: "linear", torch.einsum: "einsum"}
if hasattr(torch, "_grouped_mm"):
    _PRODUCTS[torch._grouped_mm] = "matmul"
_KERNEL_USES = frozenset({F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d,
                          F.conv_transpose2d, F.conv_transpose3d})
_SAME = frozenset({"to", "contiguous", "float", "half", "bfloat16", "type_as", "clone"})


@dataclass(frozen=True)
class ExpertWeight:
    """A 3-d parameter of experts: the axis of the experts, of the units (outputs) and of the
    fan-in (inputs), read from the forward's products; ``why`` when they could not be read."""

    layer: Layer
    pname: str
    shape: tuple[int, ...]
    experts_dim: int = -1
    units_dim: int = -1
    fan_in_dim: int = -1
    products: tuple[Use, ...] = ()
    why: str = ""

    @property
    def read(self) -> bool:
        return not self.why

    @property
    def fan_in(self) -> int:
        return self.shape[self.fan_in_dim]

    @property
    def experts(self) -> int:
        return self.shape[self.experts_dim]

    @property
    def units(self) -> int:
        return self.shape[self.units_dim]


def expert_weights(model: AnalysedModel) -> list[ExpertWeight]:
    """Every 3-d parameter of a module that is not a layer whose weights the rules already read
    (``nn.Linear``, convolutions, RNNs...), with its axes as the forward uses them."""
    found = model.__dict__.get("_expert_weights")
    if found is not None:
        return list(found)
    found = []
    for layer in model.layers.values():
        if isinstance(layer.module, _KNOWN):
            continue
        for pname, tensor in layer.parameters().items():
            shape = tuple(int(s) for s in tensor.shape)
            if len(shape) != 3 or min(shape) < 2:
                continue  # a (1, tokens, dim) position table or class token is no expert's
            weight = _read(model, layer, pname, shape)
            if weight is not None:
                found.append(weight)
    model.__dict__["_expert_weights"] = found
    return list(found)


def _read(model: AnalysedModel, layer: Layer, pname: str, shape: tuple[int, ...]
          ) -> ExpertWeight | None:
    """The weight's axes as its products use them; None when the graph reads it and no
    product contracts it (an additive table, not a weight)."""
    qualified = f"{layer.name}.{pname}" if layer.name else pname
    reads = model.reads_of(qualified)
    if not reads:
        return ExpertWeight(layer, pname, shape, why="the captured graph does not read it "
                                                     "directly, so how the forward contracts it "
                                                     "is not known")
    found = [(read, use, axes) for read in reads for use, axes in _uses(model, read, [0, 1, 2])]
    if not any(axes for _, _, axes in found):
        return None
    seen: set[tuple[int, int, int]] = set()
    products: list[Use] = []
    for read, use, axes in found:
        roles = _roles(use, read.node, axes)
        if isinstance(roles, str):
            return ExpertWeight(layer, pname, shape, why=roles)
        seen.add(roles)
        products.append(use)
    if len(seen) > 1:
        return ExpertWeight(layer, pname, shape, why="the forward contracts it over different "
                                                     "axes in different places")
    experts, units, fan_in = seen.pop()
    return ExpertWeight(layer, pname, shape, experts, units, fan_in, tuple(products))


def _uses(model: AnalysedModel, use: Use, axes: list[int | None]
          ) -> list[tuple[Use, list[int | None]]]:
    """The products ``use``'s value reaches through axis moves, with which original axis each
    of the value's axes is (None: an axis the parameter did not have)."""
    found: list[tuple[Use, list[int | None]]] = []
    for user in model.users(use):
        node = user.node
        target = node.target
        if is_size_query(node):
            continue  # ``w.shape``: no values read
        if node.op == "call_function" and target in _PRODUCTS:
            found.append((user, axes))
            continue
        if node.op == "call_function" and target in _KERNEL_USES:
            continue  # a conv1d kernel, not experts (``analysis.matrices``)
        moved = _moved(node, axes)
        if moved is None:
            found.append((user, []))  # an op that is neither: said by ``_roles``
            continue
        found.extend(_uses(model, user, moved))
    return found


def _moved(node: fx.Node, axes: list[int | None]) -> list[int | None] | None:
    """The axes after ``node`` (a transpose, permute, ``.t()``, ``w[e]``, a cast), or None."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    args = list(node.args[1:])
    if name in _SAME:
        return list(axes)
    pair = [a for a in args if isinstance(a, int)]
    if name in ("transpose", "swapaxes") and len(args) == 2 and len(pair) == 2:
        out = list(axes)
        a, b = (x % len(axes) for x in pair)
        out[a], out[b] = out[b], out[a]
        return out
    if name in ("t", "mT") and len(axes) >= 2:
        return axes[:-2] + [axes[-1], axes[-2]]
    if name == "permute":
        given = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        dims = [d for d in given if isinstance(d, int)]
        return [axes[d] for d in dims] if len(dims) == len(axes) == len(given) else None
    if node.op == "call_function" and node.target is operator.getitem and args:
        index, shape = args[0], shape_of(node)
        if isinstance(index, (int, fx.Node)) and not isinstance(index, bool) and \
                shape is not None and len(shape) == len(axes) - 1:
            return axes[1:]  # one expert's slice: the first axis goes
    return None


def _roles(use: Use, weight: fx.Node, axes: list[int | None]) -> tuple[int, int, int] | str:
    """(experts axis, units axis, fan-in axis) of the original parameter at this product."""
    node = use.node
    if not axes:
        return f"the forward uses it through {getattr(node.target, '__name__', node.target)}"
    kind = _PRODUCTS.get(node.target, "") if callable(node.target) else ""
    if kind == "einsum":
        return _einsum_roles(node, weight, axes)
    operands = [a for a in node.args if isinstance(a, fx.Node)]
    if kind == "baddbmm":
        operands = operands[1:]
    position = next((i for i, a in enumerate(operands) if _reaches(a, weight)), None)
    if position is None or len(axes) < 2:
        return "its product with the input could not be read"
    if kind == "linear":
        contracted, kept = axes[-1], axes[-2]  # F.linear(x, w): w is (out, in)
    elif position == 0:
        contracted, kept = axes[-1], axes[-2]  # w @ x: rows are the units
    else:
        contracted, kept = axes[-2], axes[-1]  # x @ w
    rest = [a for a in (0, 1, 2) if a not in (contracted, kept)]
    if contracted is None or kept is None or len(rest) != 1:
        return "its product with the input could not be read"
    return rest[0], kept, contracted


def _reaches(node: Any, weight: fx.Node) -> bool:
    seen = 0
    while isinstance(node, fx.Node) and seen < 16:
        if node is weight:
            return True
        node = node.args[0] if node.args else None
        seen += 1
    return False


def _einsum_roles(node: fx.Node, weight: fx.Node, axes: list[int | None]
                  ) -> tuple[int, int, int] | str:
    equation = node.args[0] if node.args else None
    operands = [a for a in node.args[1:] if isinstance(a, fx.Node)]
    if len(operands) == 1 and isinstance(node.args[1], (list, tuple)):
        operands = [a for a in node.args[1] if isinstance(a, fx.Node)]
    if not isinstance(equation, str) or "->" not in equation or "." in equation or \
            len(operands) != 2:
        return "an einsum it could not read"
    inputs, output = equation.replace(" ", "").split("->")
    terms = inputs.split(",")
    mine = next((i for i, a in enumerate(operands) if _reaches(a, weight)), None)
    if mine is None:
        return "an einsum it could not read"
    letters = terms[mine]
    other = terms[1 - mine]
    if len(letters) != len(axes):
        return "an einsum it could not read"
    contracted = [axes[i] for i, c in enumerate(letters) if c not in output and c in other]
    kept = [axes[i] for i, c in enumerate(letters) if c in output and c not in other]
    shared = [axes[i] for i, c in enumerate(letters) if c in output and c in other]
    if len(shared) == 0 and len(kept) == 2 and len(contracted) == 1:
        # ``bd,edh->beh``: the input is broadcast over the experts, so both kept axes are the
        # weight's own; the leading one holds the experts, as in every (experts, ...) layout.
        shared, kept = [min(kept, key=lambda a: -1 if a is None else a)], \
            [max(kept, key=lambda a: -1 if a is None else a)]
    if len(contracted) != 1 or len(kept) != 1 or len(shared) != 1 or None in (
            contracted + kept + shared):
        return "an einsum that does not contract it over one axis per expert"
    return int(shared[0]), int(kept[0]), int(contracted[0])  # type: ignore[arg-type]
