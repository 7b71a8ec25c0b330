"""Predict how the activation scale evolves through norm-free chains of layers (BL003).

A *chain* is a run of weight layers (Linear, ConvNd, ConvTransposeNd) joined only by ops whose
effect on the scale we know exactly for a zero-mean Gaussian input: elementwise activations,
dropout, reshapes and scaling by a constant. Anything else ends the chain: normalization,
residual sums, pooling (its effect depends on the spatial correlation of the input), attention,
concatenation, the model output.

The quantity tracked is the second moment m = E[x^2] of the activations, starting from m = 1
at the input of the chain's first layer: whatever the forward does before that layer (``x /
255``, ``(x - mean) / std`` with fixed statistics, an activation) describes the chain's input,
not its init, so it is not part of the growth. Between layers every op counts. A weight layer
maps m to ``g^2 m + mean(b^2)`` with ``g = rms(W) * sqrt(fan_in)`` (a sum of fan_in independent
products; exact in expectation for zero-mean weights independent of the input); an activation
maps m to ``E[phi(sqrt(m) Z)^2]``, Z ~ N(0, 1), computed by Gauss-Hermite quadrature on the
very op the graph runs (1/2 for ReLU). Could move to ``analysis.py`` if other rules need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from biaslint.analysis import (
    SCALE_NORM_FUNCTIONS,
    SCALE_NORM_MODULES,
    AnalysedModel,
    Layer,
    Use,
    argument,
    is_shape_only,
)
from biaslint.analysis.ops import activation_kind, binary_kind

# Variance-preserving gains by activation kind: nn.init.calculate_gain, except SELU where the
# self-normalizing analysis (Klambauer et al., 2017) wants LeCun init (gain 1), and the smooth
# ReLU-likes (GELU, SiLU, ELU, Mish, softplus) which behave like ReLU for large inputs.
_TARGET_GAIN = {"relu": math.sqrt(2.0), "gelu": math.sqrt(2.0), "silu": math.sqrt(2.0),
                "elu": math.sqrt(2.0), "softplus": math.sqrt(2.0), "tanh": 5.0 / 3.0,
                "sigmoid": 1.0, "selu": 1.0, "logsigmoid": 1.0, "linear": 1.0}


_FALLBACK_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "leaky_relu": F.leaky_relu, "elu": F.elu, "selu": F.selu, "gelu": F.gelu,
    "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
    "logsigmoid": F.logsigmoid, "linear": lambda x: x,
}


def variance_gain_target(kind: str | None, slope: float = 0.01) -> float:
    """The gain that keeps the activation scale through ``kind`` (1 for identity)."""
    if kind == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + slope * slope))
    return _TARGET_GAIN.get(kind or "linear", 1.0)


@lru_cache(maxsize=1)
def _quadrature(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite nodes and weights for the weight exp(-x^2 / 2), normalized to sum 1
    (Golub-Welsch: the eigenvalues of the probabilists' Hermite recurrence's Jacobi matrix, and
    the squared first components of its eigenvectors). numpy's ``hermegauss`` gives the same to
    1e-14, but importing ``numpy.polynomial`` costs more than the rule."""
    off = torch.arange(1, n, dtype=torch.float64).sqrt()
    points, vectors = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    weights = vectors[0] ** 2
    return points, weights / weights.sum()


def second_moment_after(fn: Callable[[torch.Tensor], torch.Tensor], m: float) -> float:
    """E[fn(sqrt(m) Z)^2] for Z ~ N(0, 1)."""
    points, weights = _quadrature()
    with torch.no_grad():
        values = fn(points * math.sqrt(max(m, 0.0)))
    return float((weights * values.double() ** 2).sum())


@dataclass
class LayerCall:
    """One call of a weight layer and the predicted scale around it."""

    layer: Layer
    use: Use
    rms: float
    fan_in: int
    activation: str | None  # kind of the activation applied to the output, if any
    slope: float = 0.01
    bias_sq: float = 0.0
    end_kind: str = "other"  # what consumes the output: layer, norm, output, residual, other
    feeds_chain: bool = False
    pred: "LayerCall | None" = None
    m_in: float = 1.0
    m_out: float = 1.0
    # The same prediction continued through max pooling of non-negative activations, which can
    # only raise the scale: a lower bound on growth, used for explosion only.
    pred_up: "LayerCall | None" = None
    m_in_up: float = 1.0
    m_out_up: float = 1.0
    feeds_up: bool = False
    # The transparent ops between ``pred`` (``pred_up``) and this layer's input, in forward
    # order: what the chain does to the scale besides the weights (re-predicted at other gains).
    transfers: list[Callable[[float], float]] = field(default_factory=list)
    transfers_up: list[Callable[[float], float]] = field(default_factory=list)
    # The same continued through average pooling (a mean over windows or axes), which can only
    # lower the scale (the mean's square is at most the mean square): an upper bound on the
    # scale, used for vanishing only.
    pred_down: "LayerCall | None" = None
    m_in_down: float = 1.0
    m_out_down: float = 1.0
    feeds_down: bool = False
    transfers_down: list[Callable[[float], float]] = field(default_factory=list)

    @property
    def gain(self) -> float:
        return self.rms * math.sqrt(self.fan_in)

    @property
    def target(self) -> float:
        return variance_gain_target(self.activation, self.slope)

    @property
    def ratio(self) -> float:
        return self.gain / self.target


@dataclass
class Chain:
    calls: list[LayerCall] = field(default_factory=list)
    through_pooling: bool = False  # continued through max pooling: growth is a lower bound
    # continued through average pooling: the hidden scale is an upper bound (vanishing only)
    through_averaging: bool = False

    @property
    def end(self) -> LayerCall:
        return self.calls[-1]

    @property
    def end_kind(self) -> str:
        return self.end.end_kind

    @property
    def growth(self) -> float:
        """Predicted scale (rms) of the chain's output relative to its unit-scale input."""
        return math.sqrt(self.end.m_out_up if self.through_pooling else self.end.m_out)

    @property
    def hidden_growth(self) -> float:
        """Predicted scale of the activations entering the chain's last layer."""
        if self.through_averaging:
            return math.sqrt(self.end.m_in_down)
        return math.sqrt(self.end.m_in_up if self.through_pooling else self.end.m_in)

    def at_target_gains(self) -> tuple[float, float]:
        """(growth, hidden growth) the same chain would have with every layer at the gain that
        keeps the scale through its activation (what BL003's fix writes), its biases and the
        ops between its layers unchanged: the part of the growth that is not the init's."""
        m_in = m_out = 1.0
        for i, call in enumerate(self.calls):
            m_in = 1.0 if i == 0 else m_out
            if i:
                transfers = call.transfers_down if self.through_averaging else (
                    call.transfers_up if self.through_pooling else call.transfers)
                for transfer in transfers:
                    m_in = _finite(transfer(m_in))
            m_out = _finite(call.target ** 2 * m_in + call.bias_sq)
        return math.sqrt(m_out), math.sqrt(m_in)


@dataclass(frozen=True)
class ChainMeasure:
    """A chain's scale measured on the example inputs: the root mean square over all entries
    of each layer's input and output, at the chain's own call of it, in one real ``no_grad``
    forward."""

    growth: float  # rms(last layer's output) / rms(first layer's input)
    hidden_growth: float  # rms(last layer's input) / rms(first layer's input)
    per_layer: tuple[float, ...]  # rms(output) / rms(input), layer by layer (bias included)


def chain_layers_measurable(model: AnalysedModel, chain: Chain) -> str | None:
    """Why forward hooks cannot tell this chain's calls apart, or None when they can. A hook
    sees every call of its module in the order they run; the graph records them in that order
    too, so the k-th call node of a layer is its k-th call, provided all of them are in one
    graph (the recorded forward)."""
    for call in chain.calls:
        calls = model.calls_of(call.layer.name)
        if any(use.part is not call.use.part for use in calls):
            return f"{call.layer.name or 'the model'} is called from more than one graph"
    return None


def measure_chain(model: AnalysedModel, chain: Chain) -> ChainMeasure | str:
    """The chain's growth measured on the example inputs (``AnalysedModel.real_scales``: the
    one shared forward, the model left as it was), or why it could not be measured."""
    why = model.no_forward() or chain_layers_measurable(model, chain)
    if why is not None:
        return why
    names = [c.layer.name for c in chain.calls]
    scales = model.real_scales(names)
    if model.forward_failure is not None:
        return f"the real forward raised {model.forward_failure}"
    pairs: list[tuple[float, float]] = []
    for call in chain.calls:
        name = call.layer.name
        calls = model.calls_of(name)
        runs = scales.get(name, [])
        if len(runs) != len(calls):
            # A call the graph does not record (inside a module traced as one op) would shift
            # every later call: no way to tell which run is the chain's.
            return (f"{name or 'the model'} ran {len(runs)} time(s) in the forward while the "
                    f"graph records {len(calls)} call(s)")
        pairs.append(runs[calls.index(call.use)])
    base = pairs[0][0]
    if not (base > 0 and math.isfinite(base)):
        return "the chain's input is zero (or not a finite float tensor) on the example inputs"
    if not all(math.isfinite(x) for pair in pairs for x in pair):
        return "a layer of the chain saw a non-finite scale on the example inputs"
    per_layer = tuple(out / inp if inp > 0 else math.inf for inp, out in pairs)
    return ChainMeasure(growth=pairs[-1][1] / base, hidden_growth=pairs[-1][0] / base,
                        per_layer=per_layer)


class ScaleModel:
    def __init__(self, model: AnalysedModel) -> None:
        self.model = model
        self._calls: list[LayerCall] | None = None
        self._summaries: dict[str, tuple[float, int] | None] = {}

    def _summary(self, layer: Layer) -> tuple[float, int] | None:
        if layer.name not in self._summaries:
            self._summaries[layer.name] = _weight_summary(layer)
        return self._summaries[layer.name]

    # -- public ---------------------------------------------------------------------------------
    def layer_calls(self) -> list[LayerCall]:
        if self._calls is None:
            self._calls = self._compute()
        return self._calls

    def chains(self) -> Iterator[Chain]:
        yield from self._routed("")

    def pooled_chains(self) -> Iterator[Chain]:
        """Chains continued through max pooling of non-negative activations (explosion only);
        only those that cross at least one pooling."""
        yield from self._routed("_up")

    def averaged_chains(self) -> Iterator[Chain]:
        """Chains continued through average pooling (vanishing only); only those that cross at
        least one."""
        yield from self._routed("_down")

    def _routed(self, route: str) -> Iterator[Chain]:
        """The chains linked by ``pred{route}`` (see ``_ROUTES``), each from its last layer
        back; continued ones only where they cross what the plain chains stop at."""
        feeds = _ROUTES[route][0]
        for call in self.layer_calls():
            if getattr(call, feeds):
                continue
            calls: list[LayerCall] = []
            current: LayerCall | None = call
            crossed = not route
            while current is not None and len(calls) < 10_000:
                calls.append(current)
                linked = getattr(current, "pred" + route)
                crossed = crossed or (linked is not None and current.pred is None)
                current = linked
            if crossed:
                yield Chain(list(reversed(calls)), through_pooling=route == "_up",
                            through_averaging=route == "_down")

    def recurrent_gains(self) -> Iterator[tuple[Layer, str, float]]:
        for layer in self.model.layers_of_type(nn.RNNBase, nn.RNNCellBase):
            for pname in layer.parameters():
                if not pname.startswith("weight_hh"):
                    continue
                stats = layer.stats(pname)
                if stats is None or stats.all_equal:
                    continue
                rms = math.sqrt(stats.std ** 2 + stats.mean ** 2)
                yield layer, pname, rms * math.sqrt(stats.fan_in)

    def bilinear_gains(self) -> Iterator[tuple[Layer, float, float, str | None]]:
        """(layer, gain, target gain, activation) per ``nn.Bilinear``: y_k = x1^T W_k x2 sums
        in1 * in2 products, so unit-scale inputs come out at rms(W) * sqrt(in1 * in2). Only
        judged on its own: its output scale is a product of two input scales, not a chain link.
        """
        for layer in self.model.layers_of_type(nn.Bilinear):
            stats = layer.stats("weight")
            calls = self.model.calls_of(layer.name)
            init = layer.init_of("weight")
            # PyTorch's own Bilinear init scales by in1 only; the defaults stay quiet, as for
            # every other rule: only a weight the user's code drew is judged.
            if stats is None or stats.all_equal or not calls or init is None or not init.by_user:
                continue
            activation, slope, _, _ = self._look_forward(calls[0])
            rms = math.sqrt(stats.std ** 2 + stats.mean ** 2)
            fan_in = int(layer.module.in1_features) * int(layer.module.in2_features)
            yield layer, rms * math.sqrt(fan_in), variance_gain_target(activation, slope), \
                activation

    # -- the forward prediction ------------------------------------------------------------------
    def _compute(self) -> list[LayerCall]:
        result: list[LayerCall] = []
        for part in self.model.graphs:
            by_node: dict[fx.Node, LayerCall] = {}
            for node in part.gm.graph.nodes:  # topological order
                if node.op != "call_module":
                    continue
                use = Use(part, node)
                call = self._layer_call(use)
                if call is None:
                    continue
                # A chain starts at unit scale at its first layer's input: the ops before it
                # (x / 255, a fixed normalization) set the input's scale, not the init's growth.
                for route, (_, walk) in _ROUTES.items():
                    self._link(call, use, by_node, route, walk)
                by_node[node] = call
                result.append(call)
            for call in by_node.values():
                for route, (feeds, _) in _ROUTES.items():
                    linked = getattr(call, "pred" + route)
                    if linked is not None:
                        setattr(linked, feeds, True)
        return result

    def _link(self, call: LayerCall, use: Use, by_node: dict[fx.Node, LayerCall], route: str,
              walk: dict[str, bool]) -> None:
        """Link ``call`` to the layer before it along ``route`` and predict its scales there:
        ``pred{route}``, ``transfers{route}``, ``m_in{route}``, ``m_out{route}``."""
        m = 1.0
        transfers, source = self._walk_back(use, **walk)
        if source is not None and source in by_node:
            linked = by_node[source]
            setattr(call, "pred" + route, linked)
            setattr(call, "transfers" + route, list(reversed(transfers)))
            m = getattr(linked, "m_out" + route)
            for transfer in getattr(call, "transfers" + route):
                m = _finite(transfer(m))
        setattr(call, "m_in" + route, m)
        setattr(call, "m_out" + route, _finite(call.gain ** 2 * m + call.bias_sq))

    def _layer_call(self, use: Use) -> LayerCall | None:
        name = self.model.module_name(use)
        layer = self.model.layers.get(name)
        if layer is None or not is_weight_layer(layer.module):
            return None
        summary = self._summary(layer)
        if summary is None:
            return None  # constant weights are BL002's business
        rms, fan_in = summary
        bias = layer.value("bias")
        bias_sq = bias.mean_square() if bias is not None and bias.known and bias.numel else 0.0
        activation, slope, end_kind, _ = self._look_forward(use)
        return LayerCall(layer=layer, use=use, rms=rms, fan_in=fan_in, activation=activation,
                         slope=slope, bias_sq=bias_sq, end_kind=end_kind)

    def _walk_back(self, use: Use, through_max_pool: bool = False, through_average: bool = False
                   ) -> tuple[list[Callable[[float], float]], fx.Node | None]:
        """Transfers between the layer's input and the previous weight layer (in backward order)
        and that layer's node; None when the chain starts here. With ``through_max_pool``, a max
        pooling of a non-negative activation passes as factor 1: the max of non-negative values is
        at least their root mean square, so the growth predicted through it is a lower bound."""
        transfers: list[Callable[[float], float]] = []
        inputs = [n for n in use.node.all_input_nodes if n.op != "get_attr"]
        if len(inputs) != 1:
            return transfers, None
        current = Use(use.part, inputs[0])
        for _ in range(1000):
            if current.node.op == "call_module" and self._is_weight_call(current):
                return transfers, current.node
            transfer = self._transfer(current)
            data = [n for n in current.node.all_input_nodes if n.op != "get_attr"]
            if transfer is None and through_max_pool and len(data) == 1 \
                    and _is_max_pool(current) \
                    and activation_kind(Use(current.part, data[0])) in _NON_NEGATIVE:
                transfer = _identity
            if transfer is None and through_average and len(data) == 1 \
                    and is_average_pool(current):
                transfer = _identity
            if transfer is None or len(data) != 1:
                return transfers, None
            transfers.append(transfer)
            current = Use(current.part, data[0])
        return transfers, None

    def _is_weight_call(self, use: Use) -> bool:
        layer = self.model.layers.get(self.model.module_name(use))
        if layer is None or not is_weight_layer(layer.module):
            return False
        return self._summary(layer) is not None

    def _look_forward(self, use: Use) -> tuple[str | None, float, str, bool]:
        """(activation kind applied to the output, its slope, end kind, feeds another layer)."""
        activation: str | None = None
        slope = 0.01
        kinds: set[str] = set()
        stack = list(self.model.users(use))
        seen: set[fx.Node] = set()
        while stack:
            current = stack.pop()
            if current.node in seen:
                continue
            seen.add(current.node)
            if current.node.op == "output":
                kinds.add("output")
                continue
            if current.node.op == "call_module" and self._is_weight_call(current):
                kinds.add("layer")
                continue
            if self._transfer(current) is not None:
                kind = activation_kind(current)
                if kind and activation is None:
                    activation, slope = kind, _slope(current)
                stack.extend(self.model.users(current))
                continue
            if is_norm_call(current):
                kinds.add("norm")
            elif (binary := binary_kind(current)) is not None and binary[1] \
                    and binary[0] in ("add", "sub"):
                kinds.add("residual")
            else:
                kinds.add("other")
        ends = kinds - {"layer"}
        if "layer" in kinds and not ends:
            end = "layer"
        elif ends == {"norm"}:
            end = "norm"
        elif "output" in ends:
            end = "output"
        elif "residual" in ends and "other" not in ends:
            end = "residual"
        else:
            end = "other" if ends else "layer"
        return activation, slope, end, "layer" in kinds

    def _transfer(self, use: Use) -> Callable[[float], float] | None:
        """How a transparent op maps the second moment, or None if it ends a chain."""
        node = use.node
        if node.op not in ("call_module", "call_function", "call_method"):
            return None
        if is_shape_only(use):
            return lambda m: m
        kind = activation_kind(use)
        if kind is not None:
            fn = _elementwise(use, kind)
            return lambda m: second_moment_after(fn, m)
        binary = binary_kind(use)
        if binary is not None and not binary[1] and binary[0] in ("mul", "div"):
            constants = [a for a in list(node.args[:2]) + list(node.kwargs.values())
                         if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if len(constants) == 1:
                c = float(constants[0])
                if binary[0] == "div":
                    if c == 0 or node.args and not isinstance(node.args[0], fx.Node):
                        return None  # c / x is not a scaling
                    c = 1.0 / c
                return lambda m, c=c: m * c * c
        return None


_STANDARD_FORWARDS = {cls.forward for cls in (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.LazyLinear)}


_SAMPLE = 1 << 14


def _weight_summary(layer: Layer) -> tuple[float, int] | None:
    """(rms of the weight, fan-in), or None for a constant or unusable weight.

    Large weights are summarized from an evenly strided sample of 2^14 entries: the rms of
    i.i.d. draws is then within ~0.6% (its relative standard error is ~1/sqrt(2n) for Gaussian
    entries), far inside the 10x thresholds, while the full ``Layer.stats`` pass costs seconds
    on a 40M-parameter model.
    """
    from biaslint.analysis import fan_in_out

    weight = layer.param("weight")
    value = layer.value("weight")
    if weight is None or value is None or value.numel == 0 or not value.known:
        return None  # NaN, Inf or an unknown init law: no gain can be measured
    if value.constant() is not None:
        return None
    fan_in, _ = fan_in_out(layer.module, "weight", weight)
    if fan_in <= 0:
        return None
    return float(math.sqrt(value.mean_square(sample=_SAMPLE))), int(fan_in)


# The ways a chain runs back from a layer: plain (stopped by pooling), through max pooling of
# non-negative activations (explosion: a lower bound), through average pooling (vanishing: an
# upper bound). Suffix of the ``LayerCall`` fields -> (its "feeds" flag, ``_walk_back`` flags).
_ROUTES: dict[str, tuple[str, dict[str, bool]]] = {
    "": ("feeds_chain", {}),
    "_up": ("feeds_up", {"through_max_pool": True}),
    "_down": ("feeds_down", {"through_average": True}),
}

_NON_NEGATIVE = frozenset({"relu", "sigmoid", "softplus"})


def _identity(m: float) -> float:
    return m


def is_average_pool(use: Use) -> bool:
    """Average pooling, or a mean over some axes: each output is a mean of inputs, so the mean
    square comes out at most what it was (Jensen), up to how often windows overlap an entry."""
    node = use.node
    if node.op == "call_module":
        module = use.part.gm.get_submodule(node.target)
        return isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                                   nn.AdaptiveAvgPool3d))
    if node.op == "call_function":
        return node.target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                               F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.mean)
    return node.op == "call_method" and node.target == "mean"


def _is_max_pool(use: Use) -> bool:
    node = use.node
    if node.op == "call_module":
        module = use.part.gm.get_submodule(node.target)
        return isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                                   nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                                   nn.AdaptiveMaxPool3d))
    if node.op == "call_function":
        return node.target in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                               F.adaptive_max_pool2d, F.adaptive_max_pool3d)
    return False


def _finite(m: float) -> float:
    """Keep predictions in float range: 1e300 is as exploded as infinity, and stays comparable."""
    if m != m:  # NaN
        return 1e300
    return min(max(m, 0.0), 1e300)


def is_weight_layer(module: nn.Module) -> bool:
    """Linear / conv layers that use their weight as stored. Subclasses with their own forward
    (weight standardization in timm's StdConv2d / NFNets, quantized or LoRA wrappers) transform
    the weight first, so its stored scale says nothing about the signal."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) \
        and type(module).forward in _STANDARD_FORWARDS \
        and isinstance(getattr(module, "weight", None), torch.Tensor)


def is_norm_call(use: Use) -> bool:
    node = use.node
    if node.op == "call_function":
        return node.target in SCALE_NORM_FUNCTIONS
    if node.op == "call_module":
        module = use.part.gm.get_submodule(node.target)
        # Libraries define their own norms (timm LayerNorm2d, HF T5LayerNorm, LlamaRMSNorm...).
        return isinstance(module, SCALE_NORM_MODULES) or "Norm" in type(module).__name__
    return False


def _slope(use: Use) -> float:
    node = use.node
    if node.op == "call_module":
        return float(getattr(use.part.gm.get_submodule(node.target), "negative_slope", 0.01))
    value = argument(node, 1, "negative_slope", 0.01)
    return float(value) if isinstance(value, (int, float)) else 0.01


def _elementwise(use: Use, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The op itself, applied to quadrature points; the kind's standard function if the op
    cannot be called on its own."""
    node = use.node
    fallback = _FALLBACK_FUNCTIONS.get(kind, lambda x: x)
    if kind == "leaky_relu":
        slope = _slope(use)
        fallback = lambda x: F.leaky_relu(x, slope)  # noqa: E731 - rebinds the lambda above

    def call(x: torch.Tensor) -> torch.Tensor:
        try:
            if node.op == "call_module":
                out = use.part.gm.get_submodule(node.target)(x.clone())
            elif node.op == "call_function":
                out = node.target(x.clone(), *_constants(node.args[1:]), **_kw(node.kwargs))
            else:
                out = getattr(x.clone(), str(node.target))(*_constants(node.args[1:]),
                                                            **_kw(node.kwargs))
            if isinstance(out, torch.Tensor) and out.shape == x.shape:
                return out
        except Exception:  # unusual signature: use the standard function
            pass
        return fallback(x)

    return call


def _constants(args: Any) -> list[Any]:
    return [a for a in args if not isinstance(a, fx.Node)]


def _kw(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if not isinstance(v, fx.Node) and k != "inplace"}
