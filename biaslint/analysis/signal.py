"""Signal propagation at init: the activation RMS at each layer's output on the example inputs,
and the RMS of the gradient that reaches it, in execution order.

One real forward (with grad) and one backward of a unit-variance loss: ``L = sum(g * y)`` over
the model's floating outputs ``y`` with ``g ~ N(0, 1)`` drawn once, so ``dL/dy`` has unit
variance and the gradient RMS at a layer is how much of a unit-scale signal from the output
reaches it. Nothing the forward does is kept: the model's state (BatchNorm statistics, cached
attributes), the parameters' ``.grad`` and the user's RNG are as before.

This is a fact about the model for the reporters (the HTML report's plot, ``signal`` in the
JSON), not a rule: a forward that fails leaves a note, never a finding.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class SignalPoint:
    """One layer (a module with parameters of its own), at its first call."""

    layer: str  # qualified module name ("" for the root)
    module_type: str
    activation_rms: float  # RMS of the layer's output (over every call of the layer)
    gradient_rms: float | None  # RMS of dL/d(output); None when no gradient reaches it
    weight_gradient_rms: float | None  # RMS of dL/d(weight), for the layer's ``weight``
    norm: bool  # a normalization layer
    residual_after: bool  # a residual sum (x + f(x)) follows this layer: a block boundary

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "module_type": self.module_type,
                "activation_rms": _rounded(self.activation_rms),
                "gradient_rms": _rounded(self.gradient_rms),
                "weight_gradient_rms": _rounded(self.weight_gradient_rms),
                "norm": self.norm, "residual_after": self.residual_after}


@dataclass(frozen=True)
class Signal:
    points: tuple[SignalPoint, ...]
    # What the backward was: the loss, or why there is no gradient curve.
    loss: str
    # Layers the forward ran without calling them as modules (their parent used their
    # parameters directly) and whose output is no other module's: no point of their own.
    unmeasured: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "points": [p.as_dict() for p in self.points],
                "unmeasured": list(self.unmeasured)}


def _rounded(value: float | None) -> float | None:
    """Six significant digits; None for a value JSON cannot hold (NaN, Inf: an activation that
    overflowed), which the HTML report draws at the plot's edge from the point itself."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def is_norm(module: nn.Module) -> bool:
    """A normalization layer: torch's, or a library's (``LlamaRMSNorm``, timm's
    ``LayerNorm2d``) by its class name."""
    from biaslint.vocabulary import SCALE_NORM_MODULES

    return isinstance(module, SCALE_NORM_MODULES) or "norm" in type(module).__name__.lower()


def _first_float(value: Any) -> torch.Tensor | None:
    for tensor in _tensors(value):
        if tensor.is_floating_point() or tensor.is_complex():
            return tensor
    return None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "to_tuple"):  # transformers' ModelOutput
        yield from _tensors(value.to_tuple())


class _Accumulator:
    __slots__ = ("sum_sq", "count", "order")

    def __init__(self, order: int) -> None:
        self.sum_sq = 0.0
        self.count = 0
        self.order = order

    def add(self, tensor: torch.Tensor) -> None:
        data = tensor.detach()
        if data.is_complex():
            data = data.abs()
        self.sum_sq += float(data.double().pow(2).sum())
        self.count += data.numel()

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum_sq / self.count) if self.count else float("nan")


def measure_signal(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                   layers: Iterable[str], residual_after: Iterable[str] = ()) -> Signal:
    """The activation and gradient RMS at each of ``layers`` (qualified module names) that the
    forward calls, in the order of their first call. Raises what the user's forward raises."""
    from biaslint.capture.preserve import preserved

    names = list(layers)
    residual = set(residual_after)
    forward: dict[str, _Accumulator] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    hooks = [model.get_submodule(name).register_forward_hook(_output_hook(name, forward, outputs))
             for name in names]
    weights = {name: w for name in names
               if isinstance(w := getattr(model.get_submodule(name), "weight", None),
                             nn.Parameter) and w.requires_grad}
    with preserved(model), torch.random.fork_rng(devices=[]), torch.enable_grad():
        try:
            result = model(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        loss, gradients, weight_grads = _backward(result, outputs, weights)
    points, unmeasured = _points(model, names, forward, gradients, weight_grads, residual)
    return Signal(points, loss, unmeasured)


def _output_hook(name: str, forward: dict[str, _Accumulator],
                 outputs: dict[str, list[torch.Tensor]]) -> Callable[[nn.Module, Any, Any], Any]:
    """A forward hook for layer ``name``: adds its first floating output to the layer's RMS
    (``forward``, in the order of first calls) and keeps it for the backward (``outputs``)."""
    def hook(_m: nn.Module, _args: Any, out: Any) -> Any:
        tensor = _first_float(out)
        if tensor is None:
            return None
        acc = forward.get(name)
        if acc is None:
            acc = forward[name] = _Accumulator(len(forward))
        acc.add(tensor)
        if not tensor.requires_grad:
            return None
        outputs.setdefault(name, []).append(tensor)
        if isinstance(out, torch.Tensor):
            # The model goes on with a copy, so an in-place op after the layer (a
            # ReLU(inplace=True)) cannot rewrite the tensor whose gradient is asked for.
            return out.clone()
        return None

    return hook


def _backward(result: Any, outputs: dict[str, list[torch.Tensor]],
              weights: dict[str, nn.Parameter]
              ) -> tuple[str, dict[str, float | None], dict[str, float | None]]:
    """The backward of the unit-variance loss over the forward's ``result``: what the loss was,
    the gradient RMS at each layer's outputs, and at each layer's weight."""
    gradients: dict[str, float | None] = {}
    weight_grads: dict[str, float | None] = {}
    ends = [t for t in _tensors(result)
            if (t.is_floating_point() or t.is_complex()) and t.requires_grad]
    if not ends:
        none = "none: the forward gave no floating output that needs a gradient"
        return none, gradients, weight_grads
    generator = torch.Generator(device="cpu").manual_seed(0)
    total = sum((torch.randn(t.shape, generator=generator, dtype=t.real.dtype)
                 .to(t.device) * (t.real if t.is_complex() else t)).sum() for t in ends)
    wanted = [(n, t) for n, ts in outputs.items() for t in ts]
    wanted_w = list(weights.items())
    tensors = [t for _, t in wanted] + [w for _, w in wanted_w]
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    loss = ("sum(g * y) over the model's floating outputs y, g ~ N(0, 1): "
            "dL/dy has unit variance")
    per_layer: dict[str, _Accumulator] = {}
    for (name, _), grad in zip(wanted, grads[:len(wanted)]):
        if grad is not None:
            per_layer.setdefault(name, _Accumulator(0)).add(grad)
    gradients = {n: acc.rms for n, acc in per_layer.items()}
    for (name, _), grad in zip(wanted_w, grads[len(wanted):]):
        if grad is not None:
            acc = _Accumulator(0)
            acc.add(grad)
            weight_grads[name] = acc.rms
    return loss, gradients, weight_grads


def _points(model: nn.Module, names: list[str], forward: dict[str, _Accumulator],
            gradients: dict[str, float | None], weight_grads: dict[str, float | None],
            residual: set[str]) -> tuple[tuple[SignalPoint, ...], tuple[str, ...]]:
    """The layers' points in the order of their first call (a never-called layer whose output
    is another's right after it), and the layers with no point."""
    placed: list[tuple[float, str, str]] = [(acc.order, name, name) for name, acc in
                                             forward.items()]
    unmeasured = []
    for name in names:
        if name in forward:
            continue
        source = _output_of(model, name)
        if source is not None and source in forward:
            placed.append((forward[source].order + 0.5, name, source))
        else:
            unmeasured.append(name)
    points = []
    for _, name, source in sorted(placed):
        module = model.get_submodule(name)
        points.append(SignalPoint(
            layer=name, module_type=type(module).__name__,
            activation_rms=forward[source].rms, gradient_rms=gradients.get(source),
            weight_gradient_rms=weight_grads.get(name), norm=is_norm(module),
            residual_after=name in residual or (source != name and source in residual)))
    return tuple(points), tuple(unmeasured)


def _output_of(model: nn.Module, name: str) -> str | None:
    """The module whose output is exactly this never-called layer's output: the output
    projection of ``nn.MultiheadAttention``, which applies it with ``F.linear`` (its first
    output is the projection's)."""
    if "." not in name:
        return None
    parent, attr = name.rsplit(".", 1)
    module = model.get_submodule(parent)
    if isinstance(module, nn.MultiheadAttention) and attr == "out_proj":
        return parent
    return None


def residual_boundaries(analysed: Any) -> set[str]:
    """The layers after which a residual sum follows: in each captured graph, an ``add`` of two
    computed tensors of one shape, placed after the last layer call before it."""
    from biaslint.capture.shapes import shape_of

    marks: set[str] = set()
    layers = analysed.layers
    for part in analysed.graphs:
        last: str | None = None
        for node in part.gm.graph.nodes:
            if node.op == "call_module":
                name = part.full_name(str(node.target))
                if name in layers:
                    last = name
                continue
            is_add = (node.op == "call_function" and node.target in _ADDS) or \
                (node.op == "call_method" and node.target in ("add", "add_"))
            if not is_add or last is None or len(node.args) < 2:
                continue
            left, right = node.args[0], node.args[1]
            if not all(isinstance(a, torch.fx.Node) and a.op not in ("get_attr", "placeholder")
                       for a in (left, right)):
                continue
            shape = shape_of(left)
            if shape is not None and shape == shape_of(right):
                marks.add(last)
    return marks
