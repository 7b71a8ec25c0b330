"""BL001's transfer functions on their own: each is written against the op context
(``bl001_redundant_bias.context.OpContext``), not the walker, so a small fake context and a
hand-made fx graph are enough to run one and read its result."""

from __future__ import annotations

import operator
from types import ModuleType
from typing import Any

import pytest
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis import GraphPart
from biaslint.rules.bl001_redundant_bias import ops_arithmetic, ops_norms
from biaslint.rules.bl001_redundant_bias.context import OpContext
from biaslint.rules.bl001_redundant_bias.offsets import Items, Live, Offset, State, Tainted
from biaslint.rules.bl001_redundant_bias.table import FUNCTIONS


class FakeContext:
    """An op context with given operand states and shapes, which notes the cancellations."""

    def __init__(self, part: GraphPart, states: dict[fx.Node, State],
                 shapes: dict[fx.Node, tuple[int, ...]] | None = None) -> None:
        self.part = part
        self.states = states
        self.shapes = shapes or {}
        self.cancelled: list[tuple[str, str]] = []

    def of(self, arg: Any) -> State | None:
        return self.states.get(arg) if isinstance(arg, fx.Node) else None

    def tensor(self, arg: Any, node: fx.Node) -> Offset | None:
        state = self.of(arg)
        if isinstance(state, (Tainted, Items)):
            raise Live("not a plain offset")
        return state

    def cancel(self, node: fx.Node, why: str = "") -> None:
        self.cancelled.append((node.name, why))

    def other_shape(self, arg: Any) -> tuple[int, ...] | None:
        return self.shapes.get(arg) if isinstance(arg, fx.Node) else ()


def _graph(op: Any, *extra: Any) -> tuple[GraphPart, fx.Node, fx.Node, fx.Node]:
    """``op(x, y, *extra)`` over two placeholders, as a graph part: (part, x, y, the call)."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    y = graph.placeholder("y")
    call = graph.call_function(op, (x, y, *extra) if op is operator.add else (x, *extra))
    graph.output(call)
    gm = fx.GraphModule(nn.Module(), graph)
    return GraphPart("", gm, gm), x, y, call


# Importing a family of transfer functions registers them in the table.
_FAMILY: dict[Any, ModuleType] = {F.layer_norm: ops_norms, operator.add: ops_arithmetic}


def _run(context: OpContext, node: fx.Node) -> State | None:
    """The node's transfer function, looked up in the table as the walker does, run alone."""
    transfer = FUNCTIONS[node.target]
    assert transfer.__module__ == _FAMILY[node.target].__name__
    return transfer(context, node, list(node.args), dict(node.kwargs))


def test_layer_norm_cancels_an_offset_constant_over_the_normalized_axis() -> None:
    part, x, _, norm = _graph(F.layer_norm, (8,))
    context = FakeContext(part, {x: Offset(3, frozenset({1}))})
    assert _run(context, norm) is None
    assert context.cancelled == [(norm.name, "(it subtracts the mean over the last axis)")]


def test_layer_norm_keeps_an_offset_that_varies_over_the_normalized_axis() -> None:
    part, x, _, norm = _graph(F.layer_norm, (8,))
    context = FakeContext(part, {x: Offset(3, frozenset({2}))})
    with pytest.raises(Live, match="removes only the mean of the bias"):
        _run(context, norm)
    assert context.cancelled == []


def test_a_sum_with_a_bias_free_operand_broadcasts_the_offset() -> None:
    part, x, y, total = _graph(operator.add)
    # x (rank 2, varying along its last axis) + y of shape (4, 1, 1): the result has rank 3.
    context = FakeContext(part, {x: Offset(2, frozenset({1}))}, {y: (4, 1, 1)})
    assert _run(context, total) == Offset(3, frozenset({2}))
    assert context.cancelled == []
