"""Forward propagation of a bias perturbation through an fx graph (the analysis behind BL001).

Perturb a layer's bias by ``d`` and follow the change it makes to every node downstream as an
``Offset`` (see ``offsets``), one node at a time, in graph order, with the per-op transfer
functions of ``table``.

* Kept: sums with other tensors, scaling by a tensor that does not depend on the bias (which adds
  the axes along which that tensor varies), linear layers and convs (which add their channel axis,
  and the spatial axes when zero padding makes the border differ), pooling, interpolation, views.
* Cancelled: a normalization that subtracts a mean over axes along none of which ``delta``
  varies removes it exactly (``x + c - mean(x + c) = x - mean(x)``); so does a softmax over such
  an axis (``softmax(s + c) = softmax(s)``). The node's output then does not depend on the bias.
* Live: a nonlinearity, a product of two bias-dependent tensors, an op we do not know, or a graph
  output. Anything unknown is live: a wrong "redundant" verdict would tell the user to delete a
  parameter that matters.

The bias is redundant when no live end is reached. Axes are positive and every offset knows its
tensor's rank; shapes recorded by capture (``biaslint.analysis.shape_of``) are used when known.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from biaslint.analysis import (
    SHAPE_FUNCTIONS,
    SHAPE_METHODS,
    AnalysedModel,
    GraphPart,
    TensorInfo,
    Use,
    recorded_info,
    shape_of,
)

# The transfer functions register themselves in ``table`` when their modules are imported.
from biaslint.rules.bl001_redundant_bias import (  # noqa: F401 - imported to register them
    ops_arithmetic,
    ops_conv_pool,
    ops_layout,
    ops_norms,
)
from biaslint.rules.bl001_redundant_bias.offsets import (
    Items,
    Live,
    Offset,
    State,
    Tainted,
    describe,
    join,
)
from biaslint.rules.bl001_redundant_bias.table import step


@dataclass
class Verdict:
    redundant: bool
    cancelled_by: list[str] = field(default_factory=list)
    reason: str = ""  # why it is live (debugging, and the partial note)
    crossed: bool = False  # the bias met itself in a product: following slices may help


_MEMO_KEY = "_bl001_narrow_points"  # kept in the AnalysedModel's __dict__: one model's graphs
_TAINTED = object()  # a memo key's state (and a verdict's reason) standing for any Tainted


class Propagation:
    """One forward pass over one graph part from the given source nodes."""

    def __init__(self, model: AnalysedModel, part: GraphPart,
                 sources: dict[fx.Node, State]) -> None:
        self.model = model
        self.part = part
        self.sources = sources
        self.state: dict[fx.Node, State] = {}
        self.cancelled: list[str] = []
        self.crossed = False

    def run(self) -> Verdict:
        order, nodes = self.model.node_order(self.part)
        # Only nodes after a source can change, and once every value that carries the offset
        # has had all its users visited nothing further can: visit just that window.
        horizon = max((order[n] for n in self.sources), default=-1)
        first = min((order[n] for n in self.sources), default=0)
        last_source = horizon
        # Where the perturbation narrows to one value (a residual stream after its add), what
        # follows depends only on that value's state (and its operands', which a transfer may
        # look back at): its outcome is kept per model, so the biases of a deep network do not
        # each walk the same stream to the output.
        memo: dict[Any, Any] = self.model.__dict__.setdefault(_MEMO_KEY, {})
        graph = id(self.part.gm.graph)
        open_users: dict[fx.Node, int] = {}  # valued nodes -> position of their last user
        points: list[tuple[Any, int]] = []  # narrow points passed: (key, cancellations so far)
        try:
            for node in nodes[first:]:
                at = order[node]
                if at > horizon:
                    break
                self._visit(node)
                if node in self.state:
                    last = max((order[u] for u in node.users), default=at)
                    horizon = max(horizon, last, at)
                    if last > at:
                        open_users[node] = last
                for done in [n for n, last in open_users.items() if last <= at]:
                    del open_users[done]
                if at >= last_source and not self.crossed and len(open_users) == 1 \
                        and node in open_users:
                    # A tainted value carries its own reason (where the bias was lost) down
                    # the graph unchanged: what follows is the same for every such value.
                    state = self.state[node]
                    taint = state if isinstance(state, Tainted) else None
                    # A transfer reads its operands' states and at most one step behind them
                    # (a softmax reads what a masked_fill was given): the key holds both.
                    behind = tuple((n, self.state[n]) for n in node.all_input_nodes
                                   if n in self.state)
                    if taint is not None or any(isinstance(v, Tainted) for _, v in behind):
                        if any(isinstance(v, Tainted) and v is not taint for _, v in behind):
                            continue  # another taint's reason could still surface: no key
                        behind = tuple((n, _TAINTED if v is taint else v) for n, v in behind)
                    key = (graph, node, _TAINTED if taint is not None else state, behind)
                    known = memo.get(key)
                    if known is not None:
                        return self._known(known, taint)
                    points.append((key, len(self.cancelled), taint))
        except Live as live:
            crossed = self.crossed or live.crossed
            for key, before, taint in points:
                # the taint of that point reached an output: its reason is the verdict's
                reason = _TAINTED if taint is not None and live.taint is taint else str(live)
                memo[key] = (False, reason, tuple(self.cancelled[before:]), crossed)
            return Verdict(False, self.cancelled, str(live), crossed)
        for key, before, _ in points:
            memo[key] = (True, "", tuple(self.cancelled[before:]), False)
        return Verdict(True, sorted(set(self.cancelled), key=self.cancelled.index))

    def _known(self, known: tuple[bool, Any, tuple[str, ...], bool],
               taint: Tainted | None) -> Verdict:
        redundant, reason, cancelled, crossed = known
        self.cancelled.extend(cancelled)
        if not redundant:
            if reason is _TAINTED:
                assert taint is not None
                reason = taint.reason
            return Verdict(False, self.cancelled, reason, crossed)
        return Verdict(True, sorted(set(self.cancelled), key=self.cancelled.index))

    def _visit(self, node: fx.Node) -> None:
        inputs = [n for n in node.all_input_nodes if n in self.state]
        result: State | None = None
        if inputs and node.op in ("call_function", "call_method") and self._in_eval_mode(node):
            # Code traced inside a module handed over in eval mode: `self.training` arguments
            # (F.dropout(x, p, self.training)) took their eval values, which is not how the
            # model trains. Do not follow. (Built-in layers such as BatchNorm are judged as
            # they train, whatever their flag.)
            result = Tainted(f"{describe(self.part, node)} was traced in eval mode")
            inputs = []
        if inputs:
            states = [self.state[n] for n in inputs]
            tainted = [state for state in states if isinstance(state, Tainted)]
            if node.op == "output":
                reason = tainted[0].reason if tainted else "reaches a graph output"
                live = Live(reason)
                live.taint = tainted[0] if tainted else None
                raise live
            for n in inputs:
                self._check_mutation(n, node)
            try:
                result = step(self, node, states)  # the order of the checks: see ``table``
            except Live as live:
                # Not followed further; observable only if it reaches an output (a value
                # nobody uses is not), so mark it and keep going.
                self.crossed = self.crossed or live.crossed
                result = Tainted(str(live))
        source = self.sources.get(node)
        if source is not None:
            result = source if result is None else join(result, source)
        if result is not None:
            shape = shape_of(node)
            if isinstance(result, Offset) and shape is not None and len(shape) != result.ndim:
                result = Tainted(f"rank mismatch at {describe(self.part, node)}")
            self.state[node] = result

    def _in_eval_mode(self, node: fx.Node) -> bool:
        if self.model.all_training:  # the usual answer, computed once per model
            return False
        root = self.part.module
        if not root.training:
            return True
        for path in (node.meta.get("nn_module_stack") or {}):
            try:
                if not root.get_submodule(str(path)).training:
                    return True
            except AttributeError:
                continue
        return False

    def _check_mutation(self, value: fx.Node, user: fx.Node) -> None:
        """An in-place op changes what the value's other users see; follow it only when it is the
        value's sole user and the value is not a view of something else. A bias-dependent value
        written into another tensor (``z.add_(y)``, ``torch.add(a, y, out=buf)``) reaches that
        tensor's other users, which the graph does not link: live."""
        if user.kwargs.get("out") is not None:  # torch.fx records out=None too
            raise Live(f"{describe(self.part, user)} writes into an out= tensor")
        if not _is_inplace(self.part, user):
            return
        if not user.args or user.args[0] is not value:
            raise Live(f"in-place {describe(self.part, user)} writes the bias into another tensor")
        if len(value.users) > 1 or _is_view(value) or user.target not in _SAFE_INPLACE:
            raise Live(f"in-place {describe(self.part, user)} on a bias-dependent value")

    # -- helpers the op rules use ------------------------------------------------------------------
    def of(self, arg: Any) -> State | None:
        return self.state.get(arg) if isinstance(arg, fx.Node) else None

    def tensor(self, arg: Any, node: fx.Node) -> Offset | None:
        state = self.of(arg)
        if isinstance(state, Tainted):
            raise Live(state.reason)
        if isinstance(state, Items):
            raise Live(f"tuple used as a tensor at {describe(self.part, node)}")
        return state

    def cancel(self, node: fx.Node, why: str = "") -> None:
        self.cancelled.append(describe(self.part, node) + (f" {why}" if why else ""))

    def other_shape(self, arg: Any) -> tuple[int, ...] | None:
        """Shape of a bias-independent operand: recorded shape, or the parameter's own."""
        if isinstance(arg, fx.Node):
            if arg.op == "get_attr":
                value = _get_attr(self.part.gm, str(arg.target))
                return tuple(value.shape) if isinstance(value, torch.Tensor) else None
            shape = shape_of(arg)
            if shape is not None:
                return shape
            if _is_scalar_expr(arg) or (self.part.shapes_known and arg.op != "placeholder"
                                        and recorded_info(arg) is None):
                return ()  # computed from sizes, or recorded as not a tensor: a Python number
            return None
        if isinstance(arg, torch.Tensor):
            return tuple(arg.shape)
        return ()  # a Python number broadcasts as a 0-d tensor


def _is_scalar_expr(node: fx.Node, depth: int = 0) -> bool:
    """``x.size(-1) ** 0.5`` and the like: numbers computed from sizes, never from values."""
    if depth > 8:
        return False
    if node.op == "call_method" and node.target in ("size", "dim", "numel"):
        return True
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim")
    if node.op == "call_function" and node.target in _SCALAR_OPS:
        return all(_is_scalar_expr(a, depth + 1) for a in node.all_input_nodes)
    return False


_SCALAR_OPS = frozenset({operator.getitem, operator.add, operator.sub, operator.mul,
                         operator.truediv, operator.floordiv, operator.pow, operator.neg,
                         math.sqrt, int, float})


_SAFE_INPLACE = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv,
                           "add_", "sub_", "mul_", "div_"})


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _is_inplace(part: GraphPart, node: fx.Node) -> bool:
    if node.op == "call_function":
        if node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
            return True
        return bool(node.kwargs.get("inplace", False)) or str(
            getattr(node.target, "__name__", "")).endswith("_")
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("__")
    if node.op == "call_module":
        # Asked for every user of every bias-dependent value: looked up once per node.
        known = node.meta.get(_INPLACE_KEY)
        if known is None:
            module = part.gm.get_submodule(str(node.target))
            known = node.meta[_INPLACE_KEY] = bool(getattr(module, "inplace", False))
        return known
    return False


_INPLACE_KEY = "biaslint_inplace_module"


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in SHAPE_FUNCTIONS or node.target is operator.getitem
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    return False


# -- the public entry point ----------------------------------------------------------------

def propagate(model: AnalysedModel, part: GraphPart, sources: dict[fx.Node, State]) -> Verdict:
    return Propagation(model, part, sources).run()


def layer_sources(model: AnalysedModel, name: str, channel_varies: bool = True,
                  span: tuple[int, int] | None = None
                  ) -> dict[int, tuple[GraphPart, dict[fx.Node, State]]] | None:
    """Where a layer's bias enters each graph, and its offset there. None when the layer is not
    in any traced graph or its output axes cannot be worked out.

    ``channel_varies=False`` starts from the same constant on every channel (the part of the
    bias a partial normalization removes); ``span`` perturbs only the channels [start, stop).
    """
    module = model.layers[name].module if name in model.layers else None
    if module is None:
        return None
    per_part: dict[int, tuple[GraphPart, dict[fx.Node, State]]] = {}

    def add(use: Use, offset: Offset) -> None:
        entry = per_part.setdefault(id(use.part), (use.part, {}))
        entry[1][use.node] = offset

    calls = model.calls_of(name)
    if not calls:
        for use in _attention_output_sources(model, name, module, channel_varies):
            entry = per_part.setdefault(id(use[0].part), (use[0].part, {}))
            entry[1][use[0].node] = use[1]
    for use in calls:
        offset = _layer_output_offset(module, use, channel_varies)
        if offset is None:
            return None
        add(use, _restricted(offset, span))
    # A bias read directly (F.linear(x, self.weight, self.bias), torch.addmm(self.bias, ...)).
    bias_name = f"{name}.bias" if name else "bias"
    for read in model.reads_of(bias_name):
        bias = getattr(module, "bias", None)
        if not isinstance(bias, torch.Tensor) or bias.dim() != 1:
            return None
        add(read, _restricted(
            Offset(1, frozenset({0}) if channel_varies else frozenset()), span, axis=0))
    if not per_part:
        return None
    return per_part


def _attention_output_sources(model: AnalysedModel, name: str, module: nn.Module,
                              channel_varies: bool) -> list[tuple[Use, Any]]:
    """``nn.MultiheadAttention`` is a leaf: its ``out_proj`` runs inside it, and its bias lands
    on item 0 of the attention call's output (item 1, the weights, does not see it)."""
    if "." not in name:
        return []
    parent_name = name.rsplit(".", 1)[0]
    parent = model.submodule(parent_name)
    if not isinstance(parent, nn.MultiheadAttention) or parent.out_proj is not module:
        return []
    result: list[tuple[Use, Any]] = []
    for use in model.calls_of(parent_name):
        info = recorded_info(use.node)
        first = info[0] if isinstance(info, (tuple, list)) and info else None
        if not isinstance(first, TensorInfo):
            return []
        ndim = len(first.shape)
        offset = Offset(ndim, frozenset({ndim - 1}) if channel_varies else frozenset())
        result.append((use, Items(items=(offset, None))))
    return result


def analyse_bias(model: AnalysedModel, name: str, channel_varies: bool = True,
                 span: tuple[int, int] | None = None) -> Verdict | None:
    """Is the bias of layer ``name`` (or its channels ``span``) cancelled on every path, in every
    graph it is used in? None when the layer's uses or output axes cannot be worked out."""
    sources = layer_sources(model, name, channel_varies, span)
    if sources is None:
        return None
    cancelled: list[str] = []
    for part, part_sources in sources.values():
        verdict = propagate(model, part, part_sources)
        if not verdict.redundant:
            return verdict
        cancelled.extend(c for c in verdict.cancelled_by if c not in cancelled)
    return Verdict(True, cancelled)


def _restricted(offset: Offset, span: tuple[int, int] | None, axis: int | None = None) -> Offset:
    if span is None:
        return offset
    if axis is None:
        axis = min(offset.varying) if offset.varying else offset.ndim - 1  # the channel axis
    return Offset(offset.ndim, offset.varying, (axis, span[0], span[1]))


def _layer_output_offset(module: nn.Module, use: Use, channel_varies: bool) -> Offset | None:
    shape = use.shape()
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        if shape is None:
            return None  # rank unknown: a Linear takes any number of leading axes
        ndim = len(shape)
        axis = ndim - 1
    elif isinstance(module, nn.modules.conv._ConvNd):
        spatial = len(module.kernel_size)
        if shape is not None:
            ndim = len(shape)
        elif spatial >= 2:
            # Batched input assumed: BatchNorm2d/3d after it only accept the batched rank anyway.
            ndim = spatial + 2
        else:
            return None
        axis = ndim - spatial - 1
    else:
        return None
    return Offset(ndim, frozenset({axis}) if channel_varies else frozenset())
