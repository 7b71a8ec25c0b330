"""The transfer table: how each op transforms a bias offset, one registered function per op.

A transfer function is registered right above its body, for every target it serves::

    @transfer(operator.add, torch.add, "add", "add_")       # call_function targets and
    def _add(prop, node, args, kwargs): ...                 # call_method names

    @transfer_module(nn.BatchNorm2d)                        # modules, matched by class hierarchy
    def _batch_norm_module(prop, node, module, x): ...      # (the nearest registered base wins)

``prop`` is the op context (``context.OpContext``: the graph part and the operands' states), not
the walker itself. It returns the offset of the node's output, None when the output no longer
depends on the bias (it was cancelled: call ``prop.cancel(node, why)``), or raises ``Live`` when
the bias reaches something the analysis does not follow. Registering a target twice fails at
import. The functions live by family in ``ops_arithmetic``, ``ops_layout``, ``ops_norms`` and
``ops_conv_pool``; adding an op means one decorated function in one of them.

The order in which one node is judged, written once (``step``):

1. a size query (``x.size()``, ``x.shape``, ``x.dtype``...) does not depend on values: no offset;
2. an operand already tainted (a nonlinearity upstream) taints the result;
3. an elementwise activation (``biaslint.analysis.ops.activation_kind``) is nonlinear: live;
4. the table: a module by the nearest registered class in its MRO (its data operand's offset
   is passed in), a function by its target, a method by its name;
5. anything else is unknown, and unknown is live: a wrong "redundant" verdict would tell the user
   to delete a parameter that matters.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch.fx as fx
import torch.nn as nn

from biaslint.analysis import Use, is_size_query
from biaslint.analysis.ops import activation_kind
from biaslint.rules.bl001_redundant_bias.context import OpContext, only_first
from biaslint.rules.bl001_redundant_bias.offsets import (
    Args,
    Kwargs,
    Live,
    Offset,
    State,
    Tainted,
    describe,
)
from biaslint.vocabulary import is_made_like

Transfer = Callable[[OpContext, fx.Node, Args, Kwargs], "State | None"]
ModuleTransfer = Callable[[OpContext, fx.Node, Any, Offset], "State | None"]
F = TypeVar("F", bound=Callable[..., Any])

FUNCTIONS: dict[Any, Transfer] = {}
METHODS: dict[str, Transfer] = {}
MODULES: dict[type[nn.Module], ModuleTransfer] = {}


def transfer(*targets: Any) -> Callable[[F], F]:
    """Register a function/method transfer for each target (a string names a tensor method)."""
    def register(fn: F) -> F:
        for target in targets:
            table: dict[Any, Any] = METHODS if isinstance(target, str) else FUNCTIONS
            if target in table:
                raise ValueError(f"BL001 transfer for {target!r} registered twice "
                                 f"({table[target].__name__} and {fn.__name__})")
            table[target] = fn
        return fn
    return register


def transfer_module(*classes: type[nn.Module]) -> Callable[[F], F]:
    """Register a module transfer for each class (and, through the MRO, its subclasses)."""
    def register(fn: F) -> F:
        for cls in classes:
            if cls in MODULES:
                raise ValueError(f"BL001 transfer for {cls.__name__} registered twice "
                                 f"({MODULES[cls].__name__} and {fn.__name__})")
            MODULES[cls] = fn
        return fn
    return register


def module_transfer(module: nn.Module) -> ModuleTransfer | None:
    for cls in type(module).__mro__:
        found = MODULES.get(cls)
        if found is not None:
            return found
    return None


def step(prop: OpContext, node: fx.Node, operands: list[State]) -> State | None:
    """The offset of ``node``'s output, given the states of its bias-dependent operands."""
    if is_size_query(node):
        return None
    if is_made_like(node) and not any(prop.of(a) is not None
                                      for a in list(node.args[1:]) + list(node.kwargs.values())):
        return None  # x.new_empty(shape), zeros_like(x): only x's shape and dtype matter
    tainted = [state for state in operands if isinstance(state, Tainted)]
    if tainted:
        return tainted[0]
    use = Use(prop.part, node)
    if activation_kind(use):
        raise Live(f"nonlinearity {describe(prop.part, node)}")
    args, kwargs = list(node.args), dict(node.kwargs)
    if node.op == "call_module":
        module = prop.part.gm.get_submodule(str(node.target))
        x = only_first(prop, node, args, kwargs)
        module_fn = module_transfer(module)
        if module_fn is None:
            raise Live(f"{describe(prop.part, node)} is not a known linear op")
        return module_fn(prop, node, module, x)
    fn: Transfer | None = None
    if node.op == "call_function":
        fn = FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        fn = METHODS.get(str(node.target))
    if fn is None:
        raise Live(f"unknown op {describe(prop.part, node)}")
    return fn(prop, node, args, kwargs)
