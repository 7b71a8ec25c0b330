"""The shapes capture records on graph nodes, and the one way to read them.

Capture stores what it learns about each node's value under ``node.meta[SHAPE_KEY]``: a
``TensorInfo`` for a tensor, a tuple of them (and Nones) for a tuple of values, None for anything
else. Only ``record`` writes that key; everything else reads it with ``recorded_info`` or
``shape_of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

SHAPE_KEY = "biaslint_shape"
# What ``recorded_info`` returns for a node capture recorded nothing on (shapes unknown there).
NOT_RECORDED: Any = object()


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype



def info_of(value: Any) -> Any:
    """What capture records for a value: its TensorInfo, a tuple of infos, or None."""
    if isinstance(value, torch.Tensor):
        return TensorInfo(tuple(int(s) for s in value.shape), value.dtype)
    if isinstance(value, (tuple, list)):  # namedtuples included: keep only the structure
        return tuple(info_of(v) for v in value)
    return None


def record(node: fx.Node, value: Any) -> None:
    node.meta[SHAPE_KEY] = info_of(value)


def recorded_info(node: fx.Node) -> Any:
    """The recorded info of ``node``'s value, or ``NOT_RECORDED``."""
    return node.meta.get(SHAPE_KEY, NOT_RECORDED)


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The recorded shape of a tensor-valued node; None when unknown or not a tensor."""
    if not isinstance(node, fx.Node):
        return None
    info = node.meta.get(SHAPE_KEY)
    return info.shape if isinstance(info, TensorInfo) else None


class ShapeInterpreter(fx.Interpreter):
    """Runs a graph (on fake or real tensors) and records every node's value info."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        record(n, result)
        return result
