"""Products with a weight table: where a model computes ``x @ table.T`` outside a layer.

A language or speech model often computes its logits from an embedding table, tied or not
(``x @ self.emb.weight.T``, ``F.linear(x, self.emb.weight)``, an einsum): there is no output
layer, only a product node in the graph whose operand reads the table. This module finds those
nodes in a captured graph, and measures them in a real forward, where a ``TorchFunctionMode``
sees every product that takes the table (or a transposed or cast view of it) as an operand.

Graph and forward meet by order: the k-th product of a table in the graph is its k-th product
in the forward (the recording writes one node per torch call, in call order). Calls inside the
built-in layers that own the table (the embedding's own lookup, a tied ``nn.Linear``) are not
nodes of the graph and are not counted in the forward either. When the two counts differ, the
caller does not pair them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from biaslint.vocabulary import PRODUCT_NAMES, TABLE_VIEW_NAMES, op_name


@dataclass(frozen=True)
class RealProduct:
    """One product with a table in a real forward: its output, and the other operand (the
    features the table is applied to; None when the op had more than one other operand)."""

    output: torch.Tensor
    operand: torch.Tensor | None


def is_product(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and op_name(node) in PRODUCT_NAMES


def table_read(node: fx.Node, limit: int = 8) -> fx.Node | None:
    """The ``get_attr`` node that ``node`` views (through transposes, views, casts and slices,
    at most ``limit`` of them), or None when ``node`` is computed from anything else."""
    current = node
    for _ in range(limit + 1):
        if current.op == "get_attr":
            return current
        if current.op not in ("call_function", "call_method") or \
                op_name(current) not in TABLE_VIEW_NAMES or not current.args or \
                not isinstance(current.args[0], fx.Node):
            return None
        current = current.args[0]
    return None


def tensor_operands(node: fx.Node) -> list[fx.Node]:
    """The product's tensor operands, in order (an einsum's equation is not one)."""
    return [a for a in node.args if isinstance(a, fx.Node)] + \
        [v for v in node.kwargs.values() if isinstance(v, fx.Node)]


class _Watch(TorchFunctionMode):
    """Records each product that takes a watched table, or a view of it, as an operand."""

    def __init__(self, tables: dict[str, torch.Tensor], owners: list[nn.Module]) -> None:
        super().__init__()
        # id -> (table name, the tensor): the tensor is kept so its id cannot be reused by
        # another tensor while the forward runs
        self.derived: dict[int, tuple[str, torch.Tensor]] = {
            id(t): (name, t) for name, t in tables.items()}
        self.found: dict[str, list[RealProduct]] = {name: [] for name in tables}
        self.inside = 0  # depth inside a built-in layer that owns a table (its own calls)
        self._hooks = []
        for module in owners:
            self._hooks.append(module.register_forward_pre_hook(self._enter))
            self._hooks.append(module.register_forward_hook(self._leave))

    def _enter(self, *_: Any) -> None:
        self.inside += 1

    def _leave(self, *_: Any) -> None:
        self.inside -= 1

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside:
            return out
        operands = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        hits = [self.derived[id(a)][0] for a in operands if self._watched(a)]
        if not hits:
            return out
        name = getattr(func, "__name__", "")
        if name in PRODUCT_NAMES and isinstance(out, torch.Tensor):
            others = [a for a in operands if not self._watched(a)]
            # F.linear(x, W, b): the bias is not a feature operand
            features = others[:1] if name == "linear" else others
            operand = features[0].detach().clone() if len(features) == 1 else None
            self.found[hits[0]].append(RealProduct(out.detach().clone(), operand))
        elif name in TABLE_VIEW_NAMES and isinstance(out, torch.Tensor) and args and \
                self._watched(args[0]):
            # a view of the table itself (``W.T``), not of what was cast to it (``x.type_as(W)``)
            self.derived[id(out)] = (self.derived[id(args[0])][0], out)
        return out

    def _watched(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self.derived and \
            self.derived[id(value)][1] is value


@contextlib.contextmanager
def watch_products(tables: dict[str, torch.Tensor], owners: Iterable[nn.Module]
                   ) -> Iterator[dict[str, list[RealProduct]]]:
    """Inside, products with ``tables`` (name -> parameter) are recorded, per name, in call
    order; ``owners`` are the built-in layers whose own calls are not counted."""
    watch = _Watch(tables, list(owners))
    try:
        with watch:
            yield watch.found
    finally:
        watch.remove()
