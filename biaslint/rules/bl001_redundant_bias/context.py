"""The op context: what a BL001 transfer function may ask of the walk it runs in.

A transfer function (``ops_*``, registered in ``table``) reads the graph part being walked and
the states of a node's operands, and records a cancellation; it never drives the walk. This
protocol names exactly those reads, so the transfer functions are written against it and not
against the walker: ``propagation.Propagation`` is one op context, and a test can hand a
transfer function a small fake one. The two helpers below read operands through any context.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch.fx as fx

from biaslint.analysis import GraphPart, shape_of
from biaslint.rules.bl001_redundant_bias.offsets import (
    Args,
    Kwargs,
    Live,
    Offset,
    State,
    describe,
)


class OpContext(Protocol):
    """The walk as a transfer function sees it."""

    part: GraphPart  # the traced graph (and its module) the node belongs to

    def of(self, arg: Any) -> State | None:
        """The state of an operand: None when it does not depend on the bias."""
        ...

    def tensor(self, arg: Any, node: fx.Node) -> Offset | None:
        """The offset of an operand used as a tensor by ``node`` (raises ``Live`` for a tainted
        value or a tuple); None when it does not depend on the bias."""
        ...

    def cancel(self, node: fx.Node, why: str = "") -> None:
        """Record that ``node`` removes the bias from what follows."""
        ...

    def other_shape(self, arg: Any) -> tuple[int, ...] | None:
        """The shape of a bias-independent operand, when known."""
        ...


def only_first(prop: OpContext, node: fx.Node, args: Args, kwargs: Kwargs) -> Offset:
    """The offset of the first operand; any other bias-dependent operand is not followed."""
    first = prop.tensor(args[0] if args else None, node)
    others = [a for a in list(args[1:]) + list(kwargs.values()) if prop.of(a) is not None]
    if first is None or others:
        raise Live(f"bias reaches a non-data argument of {describe(prop.part, node)}")
    return first


def result_rank(prop: OpContext, node: fx.Node, operands: list[Any]) -> int:
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
