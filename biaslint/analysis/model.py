"""Stage 3, analyse: facts about layers and graph nodes that rules read.

Everything is computed lazily and once. Rules never trace or import user code; they ask an
``AnalysedModel`` which layers exist, what their parameters look like, where they were written,
and which graph nodes consume their outputs.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from biaslint.analysis.values import ParamValue, value_of
from biaslint.capture.record import failure_of
from biaslint.capture.shapes import shape_of
from biaslint.capture.trace import Capture, GraphPart
from biaslint.findings import ConfigScale, Disagreement, InitCall, Location, LostInit, Unwritten
from biaslint.laws import Piece
from biaslint.vocabulary import (
    RANDOM_INITS,
    SHAPE_FUNCTIONS,
    SHAPE_METHODS,
    SHAPE_MODULES,
    dropout_active,
)

if TYPE_CHECKING:
    from biaslint.analysis.gradients import GradientScreen
    from biaslint.analysis.optimizers import ParamGroup
    from biaslint.analysis.sensitivity import Gradients, Screen


@dataclass(frozen=True)
class ParamStats:
    numel: int
    mean: float
    std: float
    min: float
    max: float
    fan_in: int
    fan_out: int

    @property
    def all_equal(self) -> bool:
        return self.min == self.max

    @property
    def all_zero(self) -> bool:
        return self.min == 0.0 and self.max == 0.0


def fan_in_out(module: nn.Module, pname: str, tensor: torch.Tensor) -> tuple[int, int]:
    """Fan-in and fan-out as PyTorch's init computes them, with the module's own layout."""
    if tensor.dim() < 2:
        return (tensor.numel(), tensor.numel())
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        # weight_ih: (gates*H, input); each gate row sums over the input features.
        return (tensor.shape[1], tensor.shape[0])
    if isinstance(module, nn.Bilinear):
        return (tensor.shape[1] * tensor.shape[2], tensor.shape[0])
    receptive = 1
    for s in tensor.shape[2:]:
        receptive *= int(s)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # weight is (in, out/groups, *k): each output sums over in/groups channels times the
        # kernel taps (divided by the stride per spatial axis, on average).
        taps = receptive
        for s in module.stride:
            taps = max(1, taps // int(s))
        return (tensor.shape[0] // module.groups * taps, tensor.shape[1] * receptive)
    return (tensor.shape[1] * receptive, tensor.shape[0] * receptive)


@dataclass
class Layer:
    """A module with parameters of its own, and what the build recorded about it."""

    name: str
    module: nn.Module
    site: Location | None
    inits: dict[str, InitCall]
    laws: dict[str, list[Piece] | None] = field(default_factory=dict)
    laws_recorded: bool = False
    _stats: dict[str, ParamStats] = field(default_factory=dict)
    _values: dict[str, ParamValue] = field(default_factory=dict)

    @property
    def type_name(self) -> str:
        return type(self.module).__name__

    def parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.module.named_parameters(recurse=False))

    def param(self, pname: str) -> torch.Tensor | None:
        """The parameter tensor, for its shape and layout; its values are read through
        ``value`` (the layers test enforces it)."""
        value = getattr(self.module, pname, None)
        return value if isinstance(value, torch.Tensor) else None

    def value(self, pname: str) -> ParamValue | None:
        """What the parameter holds: measured on a real tensor, from its init laws on meta."""
        if pname not in self._values:
            tensor = self.param(pname)
            if tensor is None:
                return None
            self._values[pname] = value_of(tensor, self.laws.get(pname), self.laws_recorded)
        return self._values[pname]

    def extremes(self, pname: str) -> tuple[float, float] | None:
        """(min, max) of a parameter (the support, for drawn values), or None when unknown."""
        value = self.value(pname)
        if value is None or value.numel == 0 or not value.known:
            return None
        constant = value.constant()
        if constant is not None:
            return (constant, constant)
        _, _, low, high = value.moments()
        return (float(low), float(high))

    def unreadable(self) -> dict[str, str]:
        """This layer's own parameters whose values no rule can read, with why (NaN or Inf; an
        init law that is unknown on the meta device)."""
        bad = {}
        for pname in self.parameters():
            value = self.value(pname)
            if value is not None and value.numel and not value.known:
                bad[pname] = value.why
        return bad

    def non_finite(self) -> list[str]:
        """This layer's own parameters that hold NaN or Inf (not judged by value rules)."""
        return [p for p, why in self.unreadable().items() if why == "holds NaN or Inf"]

    def readable(self) -> bool:
        """Every own parameter holds values a rule can read (see ``unreadable``). The engine
        reports the others as not judged by the value rules."""
        return not self.unreadable()

    def is_constant(self, pname: str) -> bool:
        """Every entry holds the same value (zero included)."""
        value = self.value(pname)
        return value is not None and value.known and value.numel > 0 and \
            value.constant() is not None

    def stats(self, pname: str) -> ParamStats | None:
        if pname not in self._stats:
            value = self.value(pname)
            tensor = self.param(pname)
            if value is None or tensor is None or not value.known or not value.numel:
                return None
            fan_in, fan_out = fan_in_out(self.module, pname, tensor)
            constant = value.constant()
            if constant is not None:
                mean, std, low, high = constant, 0.0, constant, constant
            else:
                mean, std, low, high = value.moments()
            self._stats[pname] = ParamStats(numel=value.numel, mean=float(mean), std=float(std),
                                            min=float(low), max=float(high), fan_in=fan_in,
                                            fan_out=fan_out)
        return self._stats[pname]

    def init_of(self, pname: str) -> InitCall | None:
        return self.inits.get(pname)

    def drawn(self, pname: str) -> bool:
        """The parameter's last recorded write drew it at random (PyTorch's default init
        included), so its values are noise. False when it was written otherwise (``copy_``,
        ``fill_``, ``prior_bias_``) or by a write the build did not record (an assignment to
        ``.data``, a ``Parameter`` made from chosen values): someone chose those values."""
        call = self.inits.get(pname)
        if call is None:
            return False
        if not call.by_user:
            return True  # torch's reset_parameters() draws every default init
        return call.name.rsplit(".", 1)[-1] in RANDOM_INITS

    def site_of(self, pname: str | None = None) -> Location | None:
        """Where to point a finding: the user's init call if there was one, else the layer."""
        if pname:
            call = self.inits.get(pname)
            if call is not None and call.by_user and call.location is not None:
                return call.location
        return self.site


@dataclass(frozen=True)
class Use:
    """A node in a graph, with the part (graph) it belongs to."""

    part: GraphPart
    node: fx.Node

    def shape(self) -> tuple[int, ...] | None:
        return shape_of(self.node)


# Ops that move or view data without changing values are walked through to the real consumer
# (the tables are ``biaslint.vocabulary``'s).
def is_shape_only(use: Use) -> bool:
    node = use.node
    if node.op == "call_function":
        return node.target in SHAPE_FUNCTIONS
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    if node.op == "call_module":
        module = use.part.gm.get_submodule(node.target)
        return isinstance(module, SHAPE_MODULES)
    return False


class AnalysedModel:
    """The facts rules read. Built from a ``Capture`` only."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.loaded = capture.loaded
        self.model: nn.Module = capture.loaded.model
        self.name = capture.loaded.name
        self.inputs_known = capture.loaded.inputs is not None
        self._real_outputs: dict[str, torch.Tensor | None] = {}
        # What the rules' real forward raised (capture ran, the real forward did not): the
        # rules that read it judge nothing, and the engine says so.
        self.forward_failure: str | None = None
        # why ``skipped_at_random`` could not run every seed (None: it did, or had no need)
        self.census_failure: str | None = None
        self._real_inputs: dict[str, torch.Tensor | None] = {}
        self._return: Any = None  # what the real forward returned (``real_return``)
        self._returned_known = False
        self._products: dict[str, list[Any]] = {}  # ``real_products``
        # Per call of a module in the real forward, in call order: (rms of its first input,
        # rms of its output); a few floats, so every hooked module records them.
        self._real_scales: dict[str, list[tuple[float, float]]] = {}
        self._orders: dict[int, tuple[fx.Graph, dict[fx.Node, int], list[fx.Node]]] = {}
        # Claims a rule's analysis made that its measurement overruled, by rule code.
        self.disagreements: dict[str, list[Disagreement]] = {}
        self.rule_notes: list[str] = []
        # Seconds spent in measurements the rules asked for (the bias screen), by name.
        self.timings: dict[str, float] = {}
        # Whether a rule will read the parameter screen (``silent_parameters``): the bias screen
        # then keeps what that screen reads from its forward (the engine sets it).
        self.gradients_wanted = False

    def disagree(self, code: str, layer: str, claim: str, measured: str) -> None:
        """Record that rule ``code`` derived ``claim`` about ``layer`` and the measurement on
        the example inputs did not show it. The rule does not report the claim; the engine
        counts it in the rule's scope (json, the zoo sweeps, the tests)."""
        self.disagreements.setdefault(code, []).append(Disagreement(layer, claim, measured))

    def note(self, code: str, text: str) -> None:
        """A line for the report's notes from rule ``code`` (rules never print)."""
        self.rule_notes.append(f"{code}: {text}")

    # -- the model as a whole ------------------------------------------------------------------
    # Rules read the model through these, never through ``model``, ``capture`` or ``target``
    # (tests/test_layers.py enforces it).
    @property
    def root(self) -> nn.Module:
        """The model itself: the module named ``""`` (``submodule("")``)."""
        return self.model

    def construction_site(self, name: str) -> Location | None:
        """Where the build constructed the module ``name`` (any module, with parameters of its
        own or not); None when it was not recorded."""
        return self.loaded.module_sites.get(name)

    @property
    def writes_recorded(self) -> bool:
        """The build was recorded, so ``never_written`` knows every parameter's history."""
        return self.loaded.param_unwritten is not None

    def never_written(self, name: str, pname: str) -> Unwritten | None:
        """The entries of module ``name``'s parameter ``pname`` that the build allocated
        without values (``torch.empty``) and no call wrote since; None when every entry was
        written, or when the build was not recorded (``writes_recorded``)."""
        qualified = f"{name}.{pname}" if name else pname
        return (self.loaded.param_unwritten or {}).get(qualified)

    @property
    def lost_inits(self) -> tuple[LostInit, ...] | None:
        """Init calls whose values no parameter keeps (``load.lasting``); None when the build
        was not recorded."""
        return self.loaded.lost_inits

    @property
    def config_scale(self) -> ConfigScale | None:
        """The differential build's comparison (BL017); None when it was not made."""
        return self.loaded.config_scale

    @property
    def reset_on_meta(self) -> tuple[str, ...]:
        """Modules whose never-written parameters biaslint reset on the meta device (as a
        deferred init does): what a build with values leaves in them is not known."""
        return tuple(self.loaded.reset_on_meta)

    @property
    def captured_forward_failed(self) -> bool:
        """The forward raised on the example inputs when the graph was captured: the graph then
        comes from symbolic tracing, and which modules a run calls is not known."""
        return self.capture.forward_error is not None

    @property
    def not_called(self) -> tuple[str, ...]:
        """The layers the captured forward did not call on the example inputs."""
        return tuple(self.capture.coverage.not_called)

    @property
    def has_optimizer(self) -> bool:
        """Whether the target gave the model's optimizer (BL011 reads it)."""
        return bool(getattr(self.loaded, "optimizers", ()))

    def param_groups(self, embeddings: bool = True) -> list[ParamGroup]:
        """The parameter groups of the optimizers the target gave, in the model's terms."""
        from biaslint.analysis.optimizers import param_groups

        return param_groups(self.model, getattr(self.loaded, "optimizers", ()), embeddings)

    def embedding_sizes(self) -> set[int]:
        """The vocabulary size (``num_embeddings``) of every ``nn.Embedding`` in the model."""
        return {m.num_embeddings for m in self.model.modules() if isinstance(m, nn.Embedding)}

    # -- layers --------------------------------------------------------------------------------
    @cached_property
    def layers(self) -> dict[str, Layer]:
        result: dict[str, Layer] = {}
        sites = self.loaded.module_sites
        inits = self.loaded.param_inits
        laws = getattr(self.loaded, "param_laws", None)
        for name, module in self.model.named_modules():
            own = [p for p, _ in module.named_parameters(recurse=False)]
            if not own:
                continue
            prefix = f"{name}." if name else ""
            result[name] = Layer(
                name=name,
                module=module,
                site=sites.get(name),
                inits={p: inits[prefix + p] for p in own if prefix + p in inits},
                laws={p: laws.get(prefix + p) for p in own} if laws is not None else {},
                laws_recorded=laws is not None,
            )
        return result

    def layer_within(self, name: str) -> "Layer | None":
        """The layer ``name``, or else the first layer inside module ``name`` (a module with no
        parameters of its own, such as an attention block, is judged at one of its layers)."""
        if name in self.layers:
            return self.layers[name]
        return next((layer for layer_name, layer in self.layers.items()
                     if name == "" or layer_name.startswith(name + ".")), None)

    def scores_module(self, name: str) -> str:
        """Where a softmax's scores are computed: the module ``name`` the softmax was recorded
        in, or its parent when that is an ``nn.Softmax`` child the attention module calls."""
        try:
            module = self.submodule(name)
        except AttributeError:
            return name
        if isinstance(module, nn.Softmax) and name:
            return name.rsplit(".", 1)[0] if "." in name else ""
        return name

    def layer_of_parameter(self, qualified: str) -> "Layer | None":
        """The layer that holds a parameter (a parametrization's originals: the parametrized
        module), else its nearest ancestor that is a layer, else any layer inside it."""
        name = qualified.rsplit(".", 1)[0] if "." in qualified else ""
        if ".parametrizations." in f".{name}.":
            name = f".{name}".split(".parametrizations.")[0].lstrip(".")
        while name and name not in self.layers:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return self.layer_within(name)

    def layers_of_type(self, *types: type[nn.Module]) -> Iterator[Layer]:
        for layer in self.layers.values():
            if isinstance(layer.module, types):
                yield layer

    def modules_of_type(self, *types: type[nn.Module]) -> list[Layer]:
        """Every module of these types as a ``Layer``, with parameters of its own or not (an
        ``InstanceNorm`` or a ``LayerNorm(elementwise_affine=False)`` has none): the one in
        ``layers`` when it has parameters, else one with no parameters and its construction
        site. Each module once, under its first name."""
        made = self.__dict__.setdefault("_bare_layers", {})
        found = []
        for name, module in self.model.named_modules():
            if not isinstance(module, types):
                continue
            layer = self.layers.get(name) or made.get(name)
            if layer is None:
                layer = made[name] = Layer(name=name, module=module,
                                           site=self.loaded.module_sites.get(name), inits={})
            found.append(layer)
        return found

    def norm_inputs(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Per norm module: its first input in the real forward, as (groups, entries), each row
        the entries it takes one mean and variance (or mean square) over in training
        (``vocabulary.normalized_groups``), in its own dtype. Empty on the meta device or
        without inputs; a norm whose input the forward did not give, or whose shape does not fit
        the norm, is left out."""
        from biaslint.vocabulary import normalized_groups

        result = {}
        for name, fed in self.real_inputs(names).items():
            if not fed.is_floating_point():
                continue
            groups = normalized_groups(self.model.get_submodule(name), fed)
            if groups is not None and groups.numel():
                result[name] = groups
        return result

    def real_outputs(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """What these modules output on the example inputs, from one real ``no_grad`` forward.

        For the few facts that need values, not shapes (a head's actual initial logits). The
        user's RNG and whatever the forward does to the model (BatchNorm running stats, cached
        attributes) are undone: linting never changes the model. Empty when no inputs are known
        or the forward fails (capture reports that).
        """
        names = list(names)
        if self.on_meta():
            return {}  # a meta model's outputs have no values
        self.prefetch(names)
        return {n: t for n in names if (t := self._real_outputs.get(n)) is not None}

    def no_forward(self) -> str | None:
        """Why no real forward can be run on this model (no example inputs; parameters on the
        meta device hold no values), or None when ``real_outputs`` can measure."""
        if not self.inputs_known:
            return "no example inputs"
        if self.on_meta():
            return "no forward with values on the meta device"
        return None

    def on_meta(self) -> bool:
        """The model's parameters are on the meta device: they hold no values, and no forward
        can measure anything. (Read once: a lint never moves the model between devices.)"""
        found = self.__dict__.get("_on_meta")
        if found is None:
            found = self.__dict__["_on_meta"] = any(p.device.type == "meta"
                                                    for p in self.model.parameters())
        return found

    def _wants_attention(self) -> bool:
        """A softmax (or scaled_dot_product_attention) in the graph: the attention measure has
        something to look at."""
        return any(_is_softmax(use.node) or isinstance(self.module_of(use), nn.Softmax)
                   for use in self.graph_nodes())

    def prefetch(self, names: Iterable[str], attention: bool = False,
                 returned: bool = False) -> None:
        """Run the one real ``no_grad`` forward that answers ``real_outputs(names)`` and
        ``real_scales(names)`` (and, with ``attention``, the ``attention`` measure; with
        ``returned``, ``real_return``) for every
        rule at once.

        Rules that read a real forward would each run one; the engine asks them up front what
        they will read and calls this once. Values are the same as separate forwards would give:
        each starts from the same model state and RNG state (both restored after every run).
        Outputs the capture already recorded on a real forward are reused without running.
        """
        inputs = self.loaded.inputs
        if inputs is None or self.on_meta():
            return
        wanted = [n for n in dict.fromkeys(names) if n not in self._real_outputs]
        recorded = getattr(self.capture, "real_values", None)
        if recorded is not None:
            for name in [n for n in wanted if n in recorded]:
                self._real_outputs[name], self._real_inputs[name] = recorded[name]
            wanted = [n for n in wanted if n not in recorded]
        attention = attention and "attention" not in self.__dict__ and self._wants_attention()
        if attention and getattr(self.capture, "attention", None) is not None:
            self.__dict__["attention"] = list(self.capture.attention)  # measured while recorded
            attention = False
        returned = returned and not self._returned_known
        if not wanted and not attention and not returned:
            return
        self._forward(wanted, attention)

    def _forward(self, wanted: list[str], attention: bool) -> None:
        """One real ``no_grad`` forward with hooks on ``wanted`` (and the attention measure)."""
        inputs = self.loaded.inputs
        assert inputs is not None
        seen: dict[str, torch.Tensor] = {}
        fed: dict[str, torch.Tensor] = {}
        scales: dict[str, list[tuple[float, float]]] = {name: [] for name in wanted}
        hooks = []
        for name in wanted:
            def hook(_m: Any, args: Any, out: Any, _name: str = name) -> None:
                first = args[0] if args and isinstance(args[0], torch.Tensor) else None
                if isinstance(out, torch.Tensor):
                    # read now: an in-place op after the layer would rewrite it
                    scales[_name].append((_rms(first), _rms(out)))
                if isinstance(out, torch.Tensor) and _name not in seen:
                    # copies: an in-place activation after the layer (ReLU(inplace=True))
                    # would otherwise rewrite what was recorded
                    seen[_name] = out.detach().clone()
                    if first is not None:
                        fed[_name] = first.detach().clone()
            hooks.append(self.model.get_submodule(name).register_forward_hook(hook))
        from biaslint.analysis.attention import measuring

        measured: list = []
        try:
            # state and RNG restored, as ``measure_attention`` does
            with measuring(self.model) if attention else contextlib.nullcontext([]) as found:
                self._run_forward()
            measured = list(found)
        except Exception as exc:  # said by the engine: those rules judge nothing
            seen, fed, measured = {}, {}, []
            scales = {}
            self.forward_failure = failure_of(self.model, exc).describe()
        finally:
            for h in hooks:
                h.remove()
        for name in wanted:
            self._real_outputs[name] = seen.get(name)
            self._real_inputs[name] = fed.get(name)
            if name in scales:
                self._real_scales[name] = scales[name]
        if attention:
            self.__dict__["attention"] = measured

    def bias_screen(self, names: Iterable[str],
                    proven: Mapping[tuple[str, str], Sequence[tuple[int, int]]] | None = None
                    ) -> "Screen | None":
        """The measured bias screen (``analysis.sensitivity``) over these layers' additive
        biases, on the model and the example inputs; None without inputs or on the meta device
        (where there are no values to measure). ``proven``: per (layer, bias parameter), the
        elements the graph walk derived as cancelled. Run once per model: the first caller's
        layers are the ones measured."""
        if self.loaded.inputs is None or self.on_meta():
            return None
        if "_bias_screen" not in self.__dict__:
            from biaslint.analysis.sensitivity import screen_biases

            not_called = set(self.not_called)
            wanted = [n for n in names if n not in not_called]
            inputs = self.loaded.inputs
            start = time.perf_counter()
            shared = self._shared_gradients(wanted, proven or {}) \
                if self.gradients_wanted else None
            if shared is not None:  # for the parameter screen (``silent_parameters``)
                self.__dict__["_shared_gradients"] = shared
            self.__dict__["_bias_screen"] = screen_biases(self.model, inputs.args,
                                                          inputs.kwargs, wanted, proven or {},
                                                          shared)
            if shared is not None:
                shared.release()  # the parameter screen reads only the peaks
            self.timings["screen"] = time.perf_counter() - start
        return self.__dict__["_bias_screen"]

    def _shared_gradients(self, layers: list[str],
                          proven: Mapping[tuple[str, str], Sequence[tuple[int, int]]]
                          ) -> "Gradients":
        """The bias screen's training-mode forward and backwards over ``layers``, keeping the
        peak gradients the parameter screen reads too (``silent_parameters``): one forward and
        its backwards per lint for both."""
        from biaslint.analysis.gradients import still_zero, trainable_parameters
        from biaslint.analysis.sensitivity import PEAK, training_gradients

        params = [p for _, _, p in trainable_parameters(self.model, self._biases())]
        assert self.loaded.inputs is not None  # the callers returned None before

        def still(first: dict[Any, torch.Tensor], dtype: torch.dtype) -> set[Any]:
            return {(PEAK, id(p)) for p, z in zip(params, still_zero([first], params, dtype))
                    if z}

        inputs = self.loaded.inputs
        return training_gradients(self.model, inputs.args, inputs.kwargs, layers, proven,
                                  params, still)

    def _biases(self) -> set[tuple[str, str]]:
        """Every (layer, additive bias parameter) of the model: the bias screen's, not the
        parameter screen's."""
        from biaslint.analysis.sensitivity import bias_pairs

        return {(name, pname) for name, module in self.model.named_modules()
                for pname, _ in bias_pairs(module)}

    def silent_parameters(self) -> "GradientScreen | None":
        """The trainable parameters (additive biases aside: the bias screen's) that no output
        depends on, measured (``analysis.gradients``); None without inputs or on the meta
        device. Run once per model, on the bias screen's forward and backwards when it ran
        first with this screen wanted (``gradients_wanted``), else on a pass of its own."""
        if self.loaded.inputs is None or self.on_meta():
            return None
        if "_gradient_screen" not in self.__dict__:
            from biaslint.analysis.gradients import screen_parameters

            inputs = self.loaded.inputs
            start = time.perf_counter()
            shared = self.__dict__.pop("_shared_gradients", None) or \
                self._shared_gradients([], {})  # no bias screen ran first: a pass of its own
            self.__dict__["_gradient_screen"] = screen_parameters(
                self.model, inputs.args, inputs.kwargs, self._biases(), shared)
            self.timings["gradients"] = time.perf_counter() - start
        return self.__dict__["_gradient_screen"]

    def skipped_at_random(self, tries: int = 3) -> list[str]:
        """The layers the capture's training-mode forward did not call that another
        training-mode forward, under another seed, does: LayerDrop and stochastic-depth
        variants that skip whole layers at random. They are trained, but no graph holds them.

        Only in training mode, with inputs and values, and when some layer was not called:
        up to ``tries`` ``no_grad`` forwards with call hooks on those layers, the model, torch's
        and Python's RNG restored after each. A layer that no seed calls is left as not called
        (a branch this model does not take in training)."""
        import random

        from biaslint.capture.preserve import preserved

        not_called = list(self.not_called)
        inputs = self.loaded.inputs
        if not not_called or inputs is None or not self.model.training or self.on_meta():
            return []
        found: set[str] = set()

        def hook(name: str) -> Any:
            return lambda module, args: found.add(name)

        hooks = [self.model.get_submodule(name).register_forward_pre_hook(hook(name))
                 for name in not_called]
        state = random.getstate()
        try:
            for seed in range(1, tries + 1):
                with preserved(self.model), torch.no_grad(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    random.seed(seed)
                    self.model(*inputs.args, **inputs.kwargs)
                if len(found) == len(not_called):
                    break
        except Exception as exc:  # said by the engine: the rest stays "not called", unverified
            self.census_failure = failure_of(self.model, exc).describe()
        finally:
            random.setstate(state)
            for h in hooks:
                h.remove()
        return [name for name in not_called if name in found]

    def _run_forward(self) -> None:
        """One real ``no_grad`` forward on the example inputs, the model and RNG restored after;
        what it returns is kept for ``real_return``."""
        from biaslint.capture.preserve import preserved

        inputs = self.loaded.inputs
        assert inputs is not None
        with preserved(self.model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = self.model(*inputs.args, **inputs.kwargs)
        self._return, self._returned_known = _copied(out), True

    def real_return(self) -> Any:
        """What the model's forward returned on the example inputs (tensors copied), from the
        same kind of real forward as ``real_outputs``; None on the meta device, without inputs
        or when the forward fails."""
        if not self._returned_known and self.loaded.inputs is not None and not self.on_meta():
            try:
                self._run_forward()
            except Exception as exc:  # said by the engine, as in prefetch
                self.forward_failure = failure_of(self.model, exc).describe()
                self._returned_known = True
        return self._return

    def returned(self, use: Use) -> torch.Tensor | None:
        """The tensor the forward returned where the graph's output holds ``use``'s value, as
        is or through shape-only ops: the same value read at the model's output instead of
        where it was computed. None when the output does not hold it or no forward ran."""
        path = self._output_path(use)
        if path is None:
            return None
        value = self.real_return()
        for step in path:
            try:
                if isinstance(value, (tuple, list)) and isinstance(step, int):
                    value = value[step]
                elif isinstance(value, Mapping):
                    value = value[step]
                else:
                    value = getattr(value, str(step))
            except (IndexError, KeyError, AttributeError, TypeError):
                return None
        return value if isinstance(value, torch.Tensor) else None

    def _output_path(self, use: Use) -> tuple[Any, ...] | None:
        """Where the graph's output holds ``use`` (keys and indices into the return value)."""
        output = next((n for n in reversed(use.part.gm.graph.nodes) if n.op == "output"), None)
        if output is None or not output.args:
            return None

        def holds(node: fx.Node) -> bool:
            current = node
            while current is not use.node:  # walk back through shape-only ops to ``use``
                inputs = current.all_input_nodes
                if not inputs or not is_shape_only(Use(use.part, current)) or \
                        self._dropout_active(Use(use.part, current)):
                    return False
                current = inputs[0]
            return True

        def search(value: Any, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if isinstance(value, fx.Node):
                return path if holds(value) else None
            items = value.items() if isinstance(value, dict) else \
                enumerate(value) if isinstance(value, (tuple, list)) else ()
            for key, item in items:
                found = search(item, path + (key,))
                if found is not None:
                    return found
            return None

        return search(output.args[0], ())

    def table_products(self, qualified: str) -> list[Use]:
        """The product nodes (``@``, matmul, ``F.linear``, einsum...) with an operand that reads
        the parameter ``qualified`` (under any name it is registered under, through transposes,
        views and casts), in every graph, in graph order."""
        param = self._parameter(qualified)
        if param is None:
            return []
        names = set(self._parameter_names.get(id(param), ()))
        return [use for use, read in self._products_in_graphs if read & names]

    @cached_property
    def _products_in_graphs(self) -> list[tuple[Use, set[str]]]:
        """Every product node, with the qualified names of the parameters its operands view."""
        from biaslint.analysis.products import is_product, table_read, tensor_operands

        found = []
        for use in self.graph_nodes():
            if not is_product(use.node):
                continue
            reads = {use.part.full_name(str(read.target)) for operand in tensor_operands(use.node)
                     if (read := table_read(operand)) is not None}
            if reads:
                found.append((use, reads))
        return found

    def real_products(self, tables: Iterable[str]) -> dict[str, list[Any]]:
        """Per parameter (qualified name): each product that takes it as an operand in one real
        ``no_grad`` forward, in call order (``analysis.products.RealProduct``: the output and
        the other operand). Built-in layers that own the parameter are not looked into: their
        calls are not nodes of the graph either. Empty without inputs, on the meta device, or
        when the forward fails (``forward_failure`` says why)."""
        tables = list(tables)
        wanted = [t for t in dict.fromkeys(tables) if t not in self._products]
        if wanted and self.loaded.inputs is not None and not self.on_meta():
            from biaslint.analysis.products import watch_products
            from biaslint.capture.leaves import is_default_leaf

            params = {t: p for t in wanted if (p := self._parameter(t)) is not None}
            ids = {id(p) for p in params.values()}
            owners = [m for m in self.model.modules() if is_default_leaf(m) and any(
                id(p) in ids for p in m.parameters(recurse=False))]
            found: dict[str, list[Any]] = {t: [] for t in params}
            try:
                with watch_products(params, owners) as found:
                    self._run_forward()
            except Exception as exc:  # said by the engine, as in prefetch
                self.forward_failure = failure_of(self.model, exc).describe()
                found = {t: [] for t in params}
            for t in wanted:
                self._products[t] = found.get(t, [])
        return {t: self._products.get(t, []) for t in tables}

    def rerun(self, name: str, replaced: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Module ``name``'s output on the input it got in the real forward, with its
        parameters in ``replaced`` swapped for the given tensors (the module is not changed):
        what an init would give, measured before anyone applies it. None when its input is
        not known or the module takes more than one."""
        fed = self.real_inputs([name]).get(name)
        if fed is None:
            return None
        module = self.model.get_submodule(name)
        try:
            with torch.no_grad():
                out = torch.func.functional_call(module, dict(replaced), (fed,))
        except Exception:  # a layer that needs more than its first input
            return None
        return out if isinstance(out, torch.Tensor) else None

    def _parameter(self, qualified: str) -> torch.Tensor | None:
        owner, _, pname = qualified.rpartition(".")
        try:
            value = getattr(self.model.get_submodule(owner), pname, None)
        except AttributeError:
            return None
        return value if isinstance(value, torch.Tensor) else None

    def real_scales(self, names: Iterable[str]) -> dict[str, list[tuple[float, float]]]:
        """Per call of each of these modules in the real forward, in call order: (rms of its
        first positional input, rms of its tensor output), over all entries in float64 (NaN
        for an input that is not a tensor). From the shared forward (``prefetch``); a module
        called more than once whose outputs the capture recorded (first call only) gets a
        forward of its own. Empty on the meta device, without inputs, or when it fails."""
        names = list(dict.fromkeys(names))
        if self.on_meta() or self.loaded.inputs is None:
            return {}
        self.prefetch(names)
        for name in [n for n in names if n not in self._real_scales]:
            out, fed = self._real_outputs.get(name), self._real_inputs.get(name)
            if len(self.calls_of(name)) == 1 and out is not None:
                self._real_scales[name] = [(_rms(fed), _rms(out))]  # its only call
        missing = [n for n in names if n not in self._real_scales]
        if missing and self.forward_failure is None:
            self._forward(missing, attention=False)
        return {n: list(self._real_scales[n]) for n in names if n in self._real_scales}

    @cached_property
    def attention(self) -> list:  # list[AttentionSoftmax]
        """Every softmax over attention scores in one real forward (``analysis.attention``);
        empty without inputs, on the meta device, or when the forward fails."""
        if self.loaded.inputs is None or self.on_meta():
            return []
        if not self._wants_attention():
            return []  # no softmax in the graph: no forward to spend
        self.prefetch((), attention=True)
        return self.__dict__.get("attention", [])

    def real_inputs(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The first positional input of these modules in the same real forward."""
        names = list(names)
        self.real_outputs(names)
        return {n: t for n in names if (t := self._real_inputs.get(n)) is not None}

    # -- graph -------------------------------------------------------------------------------
    @cached_property
    def _calls(self) -> dict[str, list[Use]]:
        calls: dict[str, list[Use]] = {}
        for part in self.capture.parts:
            for node in part.gm.graph.nodes:
                if node.op == "call_module":
                    calls.setdefault(part.full_name(node.target), []).append(Use(part, node))
        return calls

    @cached_property
    def _parameter_names(self) -> dict[int, list[str]]:
        """Every qualified name each parameter tensor is registered under (several when tied
        to another module or aliased as another attribute)."""
        names: dict[int, list[str]] = {}
        for qualified, param in self.model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(qualified)
        return names

    def value_of(self, module: nn.Module | None, pname: str) -> ParamValue | None:
        """The value of ``module``'s own parameter ``pname`` (any module of the model)."""
        if module is None:
            return None
        layer = self._layers_by_module.get(id(module))
        return layer.value(pname) if layer is not None else None

    def buffer_value(self, module: nn.Module, name: str) -> ParamValue | None:
        """What the module's buffer ``name`` holds (measured, or from its init law on the meta
        device); None when there is no such buffer."""
        buffer = getattr(module, name, None)
        if not isinstance(buffer, torch.Tensor):
            return None
        laws = getattr(self.loaded, "buffer_laws", None)
        qualified = None
        if buffer.device.type == "meta" and laws is not None:
            qualified = next((f"{n}.{name}" if n else name for n, m in self.model.named_modules()
                              if m is module), None)
        return value_of(buffer, (laws or {}).get(qualified or ""),
                        laws is not None and qualified in laws)

    def zero_buffer(self, module: nn.Module, name: str) -> bool:
        """The module's buffer ``name`` holds zeros only; False when absent or unknown."""
        value = self.buffer_value(module, name)
        return value is not None and value.known and value.constant() == 0

    def constant_buffer(self, module: nn.Module, name: str) -> bool:
        """The module's buffer ``name`` holds one value in every entry."""
        value = self.buffer_value(module, name)
        return value is not None and value.known and value.constant() is not None

    @cached_property
    def _layers_by_module(self) -> dict[int, Layer]:
        return {id(layer.module): layer for layer in self.layers.values()}

    def tied_names(self, name: str, pname: str) -> list[str]:
        """Every qualified name the parameter ``pname`` of module ``name`` is registered under
        (more than one when it is tied)."""
        param = getattr(self.model.get_submodule(name), pname, None)
        return list(self._parameter_names.get(id(param), ())) if param is not None else []

    def is_shared(self, name: str, pname: str | None = None) -> bool:
        """Whether parameter ``pname`` of module ``name`` (any of its parameters when None) is
        also registered elsewhere, so it also learns and acts through another module."""
        module = self.model.get_submodule(name)
        params = [p for n, p in module.named_parameters(recurse=False)
                  if pname is None or n == pname]
        return any(len(self._parameter_names.get(id(p), ())) > 1 for p in params)

    @cached_property
    def all_training(self) -> bool:
        """Every module is in training mode (the usual case: nothing was traced in eval mode)."""
        return all(m.training for m in self.model.modules())

    def submodule(self, name: str) -> nn.Module:
        """The model's module of that qualified name (``""`` for the root)."""
        return self.model.get_submodule(name)

    @property
    def graphs(self) -> tuple[GraphPart, ...]:
        """The captured graphs (a whole model traces as one; see ``Capture``)."""
        return tuple(self.capture.parts)

    def graph_nodes(self) -> Iterator[Use]:
        """Every node of every captured graph, each graph in its topological order."""
        for part in self.capture.parts:
            for node in part.gm.graph.nodes:
                yield Use(part, node)

    def node_order(self, part: GraphPart) -> tuple[dict[fx.Node, int], list[fx.Node]]:
        """Position of each node in its graph, and the nodes in order (graphs are not edited
        after capture, so this is computed once per graph)."""
        cached = self._orders.get(id(part.gm.graph))
        if cached is None or cached[0] is not part.gm.graph:
            nodes = list(part.gm.graph.nodes)
            cached = (part.gm.graph, {n: i for i, n in enumerate(nodes)}, nodes)
            self._orders[id(part.gm.graph)] = cached
        return cached[1], cached[2]

    def reads_of(self, qualified: str) -> list[Use]:
        """The ``get_attr`` nodes that read the parameter or buffer ``qualified`` directly
        (``F.linear(x, self.weight, self.bias)``), in every graph."""
        return list(self._reads.get(qualified, ()))

    @cached_property
    def _reads(self) -> dict[str, list[Use]]:
        reads: dict[str, list[Use]] = {}
        for use in self.graph_nodes():
            if use.node.op == "get_attr":
                reads.setdefault(use.part.full_name(str(use.node.target)), []).append(use)
        return reads

    def calls_of(self, name: str) -> list[Use]:
        """Every call_module node that runs the module ``name`` (several when it is reused)."""
        return self._calls.get(name, [])

    def module_of(self, use: Use) -> nn.Module | None:
        if use.node.op != "call_module":
            return None
        return use.part.gm.get_submodule(use.node.target)

    def module_name(self, use: Use) -> str:
        return use.part.full_name(str(use.node.target))

    def users(self, use: Use) -> list[Use]:
        return [Use(use.part, u) for u in use.node.users]

    def producers(self, use: Use) -> list[Use]:
        return [Use(use.part, n) for n in use.node.all_input_nodes]

    def consumers_of(self, use: Use) -> list[Use]:
        """The ops that really consume ``use``'s value, walking through shape-only ops."""
        result: list[Use] = []
        stack = self.users(use)
        seen: set[fx.Node] = set()
        while stack:
            current = stack.pop()
            if current.node in seen:
                continue
            seen.add(current.node)
            if is_shape_only(current) and not self._dropout_active(current):
                stack.extend(self.users(current))
            else:
                result.append(current)
        return result

    def _dropout_active(self, use: Use) -> bool:
        return dropout_active(use.node, self.module_of(use))


def _rms(t: torch.Tensor | None) -> float:
    """Root mean square over all entries; NaN for no float tensor. Each chunk of 2^16 entries
    is reduced in float32 and the chunks summed in float64: 2e-8 relative over 1.3e7 entries
    and 14 ms, where a float64 copy of the whole output takes 20x longer and one float32 sum
    drifts by 3e-4 (both measured). A chunk whose squares overflow float32 is redone in
    float64."""
    if t is None or not t.is_floating_point():
        return float("nan")
    if not t.numel():
        return 0.0
    flat = t.detach().reshape(-1)
    total = 0.0
    for chunk in flat.split(1 << 16):
        # float64 entries (a model built under set_default_dtype(float64)) cannot be reduced
        # in float32: vector_norm refuses to narrow them
        wide = chunk.dtype == torch.float64
        norm = float(torch.linalg.vector_norm(chunk, dtype=None if wide else torch.float32))
        if not math.isfinite(norm):
            norm = float(torch.linalg.vector_norm(chunk.double()))
        total += norm * norm
    return math.sqrt(total / flat.numel())


def _is_softmax(node: fx.Node) -> bool:
    import torch.nn.functional as F

    if node.op == "call_function":
        return node.target in (F.softmax, torch.softmax, F.scaled_dot_product_attention)
    return node.op == "call_method" and node.target == "softmax"


def _copied(value: Any, depth: int = 0) -> Any:
    """A return value with its tensors copied (the model's later runs cannot rewrite them);
    containers rebuilt, other objects kept as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if depth > 6:
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_copied(v, depth + 1) for v in value)
    if isinstance(value, list):
        return [_copied(v, depth + 1) for v in value]
    if type(value) is dict:
        return {k: _copied(v, depth + 1) for k, v in value.items()}
    return value
