"""BL010: trainable parameters that reach no output of the forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Fix, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Rule, RuleContext

if TYPE_CHECKING:
    import torch.fx as fx

    from biaslint.analysis import AnalysedModel, GraphPart, Layer


class UnusedParameters(Rule):
    code = "BL010"
    name = "unused-parameters"
    severity = Severity.WARNING
    summary = "Trainable parameters that cannot reach any output, so they never get a gradient"
    what_it_does = """\
Follows the captured forward backwards from its outputs: every graph node whose value some output
depends on is live, and so is every parameter a live node reads (a layer called by a live node
uses all of its parameters). A trainable parameter (`requires_grad=True`) that no output depends
on is reported, grouped by the highest module whose trainable parameters are all unused, with
their count and why: the module is never called by the forward on the example inputs, it is
called but its output is never used, or the forward never reads that parameter. A module that is
not called on these inputs may be called on others (a branch the example did not take): the
message says so, and you judge. On the meta device that verdict is not given: the branches a
forward on meta tensors takes are decided by values it does not have.
"""
    why_bad = """\
A parameter that reaches no output gets no gradient: it never trains, the optimizer state and the
memory it takes are spent for nothing, and weight decay alone moves it. Under
`DistributedDataParallel` it is an error: the reducer waits for its gradient and the next
iteration fails with "Expected to have finished reduction in the prior iteration before starting a
new one", unless `find_unused_parameters=True`, which costs an extra graph traversal on every step.
"""
    fix_text = """\
Remove the module (or stop registering the parameter), or use its output. If the module is used
only on some inputs (a branch), keep it and pass `find_unused_parameters=True` to DDP, or freeze it
with `requires_grad_(False)` where it is not meant to train.
"""
    references = (
        "PyTorch, DistributedDataParallel, find_unused_parameters, "
        "https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html",
    )
    bad_example = '''\
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(16, 32)
        self.aux_head = nn.Linear(32, 4)  # registered, never called
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def build():
    return Model(), torch.randn(8, 16)
'''
    good_example = '''\
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(16, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def build():
    return Model(), torch.randn(8, 16)
'''

    reads = frozenset({"graph"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return [layer for layer in model.layers.values()
                if any(p.requires_grad for p in layer.parameters().values())]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        if model.capture.forward_error is not None or not model.graphs:
            return  # no run to follow: the engine reports what it could not see
        usage = parameter_usage(model)
        meta = any(p.device.type == "meta" for p in model.model.parameters())
        for group in unused_groups(model, usage):
            if meta and group.why == "not called":
                # Which branch a meta forward takes is decided by values it does not have (a
                # LayerDrop's torch.rand): "never called" would be a guess there.
                continue
            layer = model.layers.get(group.module) or _any_layer_under(model, group.module)
            if layer is None:
                continue
            yield self._finding(model, layer, group)

    def _finding(self, model: "AnalysedModel", layer: "Layer", group: "UnusedGroup") -> Finding:
        module = model.submodule(group.module)
        label = python_path(group.module) if group.module else "the model"
        shown = ", ".join(group.names[:4]) + (f" and {len(group.names) - 4} more"
                                              if len(group.names) > 4 else "")
        if group.why == "not called":
            why = ("is never called by the forward on the example inputs (if other inputs take a "
                   "branch that calls it, this is expected: judge it)")
        elif group.why == "output unused":
            why = "is called, but no output depends on what it returns"
        elif group.why == "detached":
            why = "reaches the outputs only through .detach(), which stops the gradient"
        else:
            why = "is never read by the forward"
        subject = f"{type(module).__name__} {label}" if group.why != "not read" else \
            f"parameter {python_path(group.names[0])}"
        reach = "get no gradient from any output" if group.why == "detached" else \
            "reach no output, so they get no gradient"
        message = (f"{subject} {why}: {group.count} trainable parameter(s) ({group.values:,} "
                   f"values: {shown}) {reach} and never train; DistributedDataParallel fails on "
                   "them unless find_unused_parameters=True")
        fix = Fix(title="Remove what is never used, or use its output",
                  code=f"# delete {label}, or use it in forward(); for an input-dependent "
                       "branch: DistributedDataParallel(model, find_unused_parameters=True)",
                  safe=False)
        finding = self.finding(layer, message, parameter=group.names[0].rsplit(".", 1)[-1]
                               if group.why == "not read" else "", fix=fix,
                               data={"verdict": group.why, "parameters": list(group.names),
                                     "values": group.values})
        if group.module != layer.name:
            from dataclasses import replace

            site = model.loaded.module_sites.get(group.module)
            finding = replace(finding, module=group.module, module_type=type(module).__name__,
                              location=site or finding.location)
        return finding


@dataclass(frozen=True)
class UnusedGroup:
    module: str  # qualified name of the highest module whose trainable parameters are unused
    names: tuple[str, ...]  # the unused parameters' qualified names
    count: int
    values: int
    why: str  # "not called", "output unused", "not read", "detached"


@dataclass
class Usage:
    used: set[int]  # ids of parameters some output's gradient reaches
    called: set[str]  # modules called at least once (by a live or dead node)
    detached: set[int]  # ids of parameters that reach an output only through a detach


_DETACH_METHODS = frozenset({"detach", "detach_"})


def _is_detach(node: fx.Node) -> bool:
    import torch

    return (node.op == "call_method" and node.target in _DETACH_METHODS) or (
        node.op == "call_function" and node.target is torch.detach)


def _live(graph: fx.Graph, cut_detach: bool) -> set[fx.Node]:
    """The nodes some output depends on (through no ``detach`` with ``cut_detach``)."""
    live: set[fx.Node] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        if cut_detach and _is_detach(node):
            continue
        stack.extend(node.all_input_nodes)
    return live


def parameter_usage(model: "AnalysedModel") -> Usage:
    """Which parameters the gradient of some output of the forward reaches."""
    used: set[int] = set()
    values: set[int] = set()
    called: set[str] = set()
    parts = {part.qualname: part for part in model.graphs}
    root = parts.get("") or next(iter(parts.values()))
    _walk_part(model, root, parts, used, called, cut_detach=True)
    _walk_part(model, root, parts, values, set(), cut_detach=False)
    return Usage(used, called, values - used)


def _walk_part(model: "AnalysedModel", part: GraphPart, parts: dict[str, GraphPart],
               used: set[int],
               called: set[str], cut_detach: bool) -> None:
    graph = part.gm.graph
    live = _live(graph, cut_detach)
    for node in graph.nodes:
        if node.op == "call_module":
            name = part.full_name(str(node.target))
            called.add(name)
            if node not in live:
                continue
            module = model.submodule(name)
            if name in parts and name != part.qualname:
                _walk_part(model, parts[name], parts, used, called, cut_detach)
            else:
                used.update(id(p) for p in module.parameters())
                called.update(f"{name}.{sub}" if sub else name
                              for sub, _ in module.named_modules())
        elif node.op == "get_attr" and node in live:
            name = part.full_name(str(node.target))
            owner, _, attr = name.rpartition(".")
            try:
                value = getattr(model.submodule(owner) if owner else model.model, attr)
            except AttributeError:
                continue
            if hasattr(value, "parameters") and callable(value.parameters):
                used.update(id(p) for p in value.parameters())
            else:
                used.add(id(value))


def unused_groups(model: "AnalysedModel", usage: Usage) -> list[UnusedGroup]:
    """The unused trainable parameters, grouped by the highest module whose trainable
    parameters are all unused (its parent uses some)."""
    named = list(model.model.named_parameters())  # each tensor once (ties collapsed)
    unused = {name for name, p in named if p.requires_grad and id(p) not in usage.used}
    if not unused:
        return []
    trainable = [name for name, p in named if p.requires_grad]

    def all_unused(prefix: str) -> bool:
        inside = [n for n in trainable if prefix == "" or n.startswith(prefix + ".")]
        return bool(inside) and all(n in unused for n in inside)

    not_called = set(model.capture.coverage.not_called)
    groups: dict[str, list[str]] = {}
    for name in sorted(unused):
        owner = name.rpartition(".")[0]
        top = owner
        parts = owner.split(".") if owner else []
        for depth in range(len(parts) - 1, -1, -1):
            candidate = ".".join(parts[:depth])
            if candidate and all_unused(candidate):
                top = candidate
            else:
                break
        if top == owner and not all_unused(owner):
            top = name  # a module using some of its own parameters: this one is never read
        groups.setdefault(top, []).append(name)
    result = []
    sizes = dict(named)
    for top, names in groups.items():
        is_param = top in sizes
        module = top.rpartition(".")[0] if is_param else top
        if all(id(sizes[n]) in usage.detached for n in names):
            why = "detached"
        elif is_param:
            why = "not read"
        elif top in not_called or (top not in usage.called
                                   and not any(c.startswith(top + ".") for c in usage.called)):
            why = "not called"
        else:
            why = "output unused"
        result.append(UnusedGroup(module=module, names=tuple(names), count=len(names),
                                  values=sum(sizes[n].numel() for n in names), why=why))
    return result


def _any_layer_under(model: "AnalysedModel", prefix: str) -> "Layer | None":
    for name, layer in model.layers.items():
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            return layer
    return None
