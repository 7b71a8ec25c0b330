"""A zero router: a mixture-of-experts gate whose weight is all zero gives every expert the
same score for every token, so ``topk`` picks the same experts for every token.

Exact, not approximate: with ``W = 0`` the scores are exactly ``b`` (or 0) for every token, the
elementwise maps a router applies (``sigmoid``, ``softmax`` over the experts, a dtype cast, a
constant correction bias) keep them exactly equal, and ``topk`` on equal rows returns the same
indices for every row. The experts not picked get no token, hence no gradient, from step 0.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer, Use

_PASS_METHODS = frozenset({"type", "to", "float", "double", "half", "bfloat16", "view",
                           "reshape", "contiguous", "sigmoid", "softmax", "log_softmax",
                           "unsqueeze", "squeeze", "flatten"})
_TOPK = "topk"


@dataclass(frozen=True)
class TiedRouter:
    layer: "Layer"
    pname: str
    experts: int
    topk: "Use"


def tied_routers(model: "AnalysedModel") -> Iterator[TiedRouter]:
    """Every all-zero 2-d weight (with a constant bias or none) whose scores reach a ``topk``."""
    import torch.nn as nn

    for layer in model.layers.values():
        for pname, tensor in layer.parameters().items():
            if tensor.dim() != 2 or tensor.shape[0] < 2:
                continue
            value = layer.value(pname)
            if value is None or not value.known or value.constant() != 0:
                continue
            qualified = f"{layer.name}.{pname}" if layer.name else pname
            starts = [(use, "weight") for use in model.reads_of(qualified)]
            if isinstance(layer.module, nn.Linear) and pname == "weight":
                bias = layer.value("bias")
                if bias is None or (bias.known and bias.constant() is not None):
                    starts += [(use, "scores") for use in model.calls_of(layer.name)]
            for start, state in starts:
                topk = _reaches_topk(model, start, state)
                if topk is not None:
                    yield TiedRouter(layer, pname, int(tensor.shape[0]), topk)
                    break
            else:
                continue
            break


def _constant_operand(model: "AnalysedModel", use: "Use", arg: object) -> bool:
    """A Python number, or a buffer/parameter read whose every entry holds one value."""
    import torch.fx as fx

    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return True
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return False
    name = use.part.full_name(str(arg.target))
    owner, _, attr = name.rpartition(".")
    module = model.submodule(owner) if owner else model.root
    if attr in dict(module.named_parameters(recurse=False)):
        value = model.value_of(module, attr)
        return value is not None and value.known and value.constant() is not None
    return model.constant_buffer(module, attr)


def _reaches_topk(model: "AnalysedModel", start: "Use", state: str) -> "Use | None":
    """Walk from the zero weight (``state`` "weight") or its scores ("scores": every entry of a
    token's row equal) to a ``topk``, only through ops that keep a token's scores equal."""
    import torch
    import torch.nn.functional as F

    stack = [(start, state)]
    seen = set()
    while stack:
        use, state = stack.pop()
        for user in model.users(use):
            node = user.node
            if node in seen:
                continue
            seen.add(node)
            target = node.target
            if state == "weight":
                if node.op == "call_method" and target in ("type", "to", "float", "double",
                                                           "half", "bfloat16", "contiguous"):
                    stack.append((user, "weight"))
                elif node.op == "call_function" and target is F.linear and len(node.args) >= 2 \
                        and node.args[1] is use.node:
                    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
                    if bias is None or _constant_operand(model, user, bias):
                        stack.append((user, "scores"))
                continue
            # state == "scores": every token's row holds one value
            if (node.op == "call_method" and target == _TOPK) or (
                    node.op == "call_function" and target is torch.topk):
                return user
            if node.op == "call_method" and target in _PASS_METHODS:
                stack.append((user, "scores"))
            elif node.op == "call_function" and target in (torch.sigmoid, F.softmax,
                                                           torch.softmax, F.log_softmax):
                stack.append((user, "scores"))
            elif node.op == "call_function" and target in (operator.add, operator.sub,
                                                           operator.mul, operator.truediv,
                                                           torch.add, torch.sub, torch.mul):
                others = [a for a in node.args if a is not use.node]
                if len(others) == 1 and _constant_operand(model, user, others[0]):
                    stack.append((user, "scores"))
    return None
