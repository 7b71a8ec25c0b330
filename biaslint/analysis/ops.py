"""What a graph node does, in the terms rules care about: activations, arithmetic, splits.

Shared by the rules so each classifies ``F.relu``, ``torch.relu``, ``x.relu()`` and ``nn.ReLU``
the same way.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis.model import Use
from biaslint.vocabulary import argument

# Elementwise activations by kind. Kinds match the gains in ``nn.init.calculate_gain``.
_ACT_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
    nn.CELU: "elu", nn.SELU: "selu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "silu",
    nn.Hardswish: "silu", nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "sigmoid", nn.Softplus: "softplus", nn.Softsign: "tanh",
    nn.Tanhshrink: "linear", nn.LogSigmoid: "logsigmoid",
}
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu", F.relu_: "relu", torch.relu_: "relu",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.celu: "elu", F.selu: "selu",
    torch.selu: "selu", F.gelu: "gelu", F.silu: "silu", F.mish: "silu", F.hardswish: "silu",
    torch.tanh: "tanh", F.tanh: "tanh", F.hardtanh: "tanh", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.hardsigmoid: "sigmoid", F.softplus: "softplus",
    F.logsigmoid: "logsigmoid",
}
_ACT_METHODS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
}
# Activations whose output and gradient are both exactly zero for every input <= 0.
DEAD_BELOW_ZERO = frozenset({"relu"})

_SOFTMAX_FUNCTIONS = {F.softmax: "softmax", torch.softmax: "softmax",
                      F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax"}
_SOFTMAX_METHODS = {"softmax": "softmax", "log_softmax": "log_softmax"}

_BINARY = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub",
    operator.isub: "sub", torch.sub: "sub", operator.mul: "mul", operator.imul: "mul",
    torch.mul: "mul", operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
}
_BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul",
                   "mul_": "mul", "div": "div", "div_": "div"}


def activation_kind(use: Use) -> str | None:
    """``"relu"``, ``"tanh"``... for an elementwise activation node, else None."""
    node = use.node
    if node.op == "call_module":
        module = use.part.gm.get_submodule(node.target)
        for cls, kind in _ACT_MODULES.items():
            if type(module) is cls:
                if cls is nn.Hardtanh and getattr(module, "min_val", -1.0) >= 0:
                    return "relu"
                return kind
        return None
    if node.op == "call_function":
        kind = _ACT_FUNCTIONS.get(node.target)
        if kind is None and node.target in (torch.clamp, torch.clamp_min) and _clamps_at_zero(node):
            return "relu"
        return kind
    if node.op == "call_method":
        if node.target in ("clamp", "clamp_", "clamp_min", "clamp_min_") and _clamps_at_zero(node):
            return "relu"
        return _ACT_METHODS.get(str(node.target))
    return None


def _clamps_at_zero(node: fx.Node) -> bool:
    low = argument(node, 1, "min")
    high = argument(node, 2, "max")
    return isinstance(low, (int, float)) and low == 0 and high is None


def softmax_kind(use: Use) -> str | None:
    node = use.node
    if node.op == "call_function":
        return _SOFTMAX_FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _SOFTMAX_METHODS.get(str(node.target))
    if node.op == "call_module":
        module = use.part.gm.get_submodule(node.target)
        if isinstance(module, nn.Softmax):
            return "softmax"
        if isinstance(module, nn.LogSoftmax):
            return "log_softmax"
    return None


def binary_kind(use: Use) -> tuple[str, bool] | None:
    """For add/sub/mul/div: the op and whether both operands are tensors (graph nodes)."""
    node = use.node
    kind = None
    if node.op == "call_function":
        kind = _BINARY.get(node.target)
    elif node.op == "call_method":
        kind = _BINARY_METHODS.get(str(node.target))
    if kind is None:
        return None
    operands = list(node.args[:2]) + [v for k, v in node.kwargs.items() if k in ("other", "input")]
    tensors = sum(isinstance(a, fx.Node) for a in operands)
    return kind, tensors >= 2
