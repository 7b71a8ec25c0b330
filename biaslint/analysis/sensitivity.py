"""The bias screen: which elements of which biases the outputs do not depend on, measured.

BL001's walk derives a cancellation from the ops it knows; real code keeps writing attention,
position biases and fused projections in ways the walk has not met, and a derivation that meets
an unknown op says "live". The screen measures instead, on the example inputs:

1. The model in training mode (BL001 judges the model as it trains: BatchNorm normalizes by the
   batch's statistics), in its own floating dtype, with every all-equal or tiny parameter
   re-drawn around its own value for the screen's duration. Cancellation is a property of the
   structure; a zero-initialized gate or a 1e-6 layer scale would hide everything behind it at
   init and make live biases look cancelled, or cancelled ones look dead.
2. One forward and one backward of ``L = sum_k <g_k, y_k>`` over the floating outputs ``y_k``,
   with ``g_k`` drawn N(0, 1): for almost every draw, an element of a bias gets a zero gradient
   exactly when no output depends on it to first order.
3. An element with a zero gradient whose unit still gets a weight gradient (the layer's output
   there matters, the constant offset does not) is a *candidate* cancellation. One whose weight
   gets no gradient either is a *dead path* (a unit off on these inputs, a branch whose result is
   unused, a softmax over one position): that is not BL001's, and it is counted apart.
4. Candidates are confirmed by perturbation, each candidate element shifted by a large random
   value. A zero gradient alone also picks up what is merely flat on one batch; an exact
   cancellation holds at any size, on any batch. Elements the graph walk derived as cancelled
   (the rule passes them) are confirmed by one shift on the example inputs: the walk proves
   they cancel for any input, and the shift shows the proof holds on this model. Elements only
   the measurement found are shifted all at once, both signs, on the example inputs and on a
   second batch drawn like them, then by halves when something moves (runs of several elements
   and lone elements in separate groups), and what holds is shifted again in float64.

Random masks (dropout) are the same in every run (a fixed seed), so they are judged as they
train.

Cost. The screen works on the model itself and puts back, bit for bit, what it changes: the
training flags and cached attributes (``capture.preserve``), the re-drawn parameters and the
perturbed biases (saved before, copied back after), ``requires_grad``, the RNG. A float64 copy
of every model would cost its memory twice over and a float64 forward of every model; in
float32 the zero-gradient test is only the proposal, and the perturbation, a shift of 10 units
where a live bias at init moves outputs by orders of magnitude more than float32's rounding,
decides. One forward and one backward; a second backward only for candidates the walk did not
derive; the forward and backwards are shared with the parameter screen (``analysis.gradients``,
``training_gradients``). A derived cancellation costs one more forward; one only the
measurement found costs three, plus two per part that moves, plus two in float64.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from biaslint.capture.preserve import preserved

# Relative output change below which outputs "did not move", and relative gradient size below
# which an element's gradient counts as zero. float64 rounding through a deep network stays near
# 1e-13 relative; a live bias moved by O(10) moves outputs far above 1e-8. The float32 figures
# carry the same margins over float32's ~1e-7 rounding (as tests/oracle.py does).
FLOAT64_MOVE, FLOAT32_MOVE = 1e-8, 1e-4
# The zero-gradient test only proposes candidates (the perturbation decides). In float32 a
# cancelled bias's gradient is a sum of terms that cancel to 1e-8..2e-6 of the layer's largest
# gradient (measured on timm's MLP-Mixer and EfficientFormer at 224 px), while a live element
# can fall as low as 1e-6 by chance in one random projection: an element is proposed only when
# it is below the threshold in two independent projections (a live one then rarely is: about
# one element in 10^5), and a live element wrongly proposed costs forwards, not a finding.
FLOAT64_ZERO, FLOAT32_ZERO = 1e-9, 3e-5
# Against the sum of the terms a bias gradient adds up (|d loss / d output| over positions), a
# cancelled sum leaves float32 rounding of 7e-8 (MONAI's VNet) to 9e-6 (GPT-NeoX's partial
# rotary keys), while live elements measured 3e-3 and up there; elements a LayerNorm partly
# cancels fall in between (torchvision's MaxViT proposed 12 at 3e-5, 6 at 2e-5, each refuted
# at the cost of confirmation forwards, never reported).
FLOAT64_TERMS, FLOAT32_TERMS = 1e-11, 2e-5
PROJECTIONS = 3  # the third only for lone elements both others left flat (``_unsettled``)
# Forwards the confirmation may spend splitting groups that moved; what is left unconfirmed
# when they run out is said (a cost cap can only cost findings).
CONFIRMATION_BUDGET = 48
# A group of this many lone elements or fewer that moved is split into single elements at once.
SINGLES = 8
THIRD_FOR = 2  # lone candidates left after two projections that ask for a third
# Parameters whose largest magnitude is below this are "tiny" and re-drawn (layer scale 1e-6,
# ReZero's 0): what hides a path at init is not a structure that cancels it.
TINY = 1e-3
# The confirmation shift, in units of N(0, 1): far outside what a bias holds at init, so a unit
# that is merely off on the example inputs comes on, and a saturated one moves.
SHIFT = 10.0
SEED = 0
# A training forward that draws random numbers (dropout, stochastic depth; from torch's, CUDA's,
# Python's or numpy's generator) is run under SEED, and a cancellation is then measured for one
# draw of its masks. A mask shared by all the positions a norm averages over (Dropout2d between
# a conv and its BatchNorm, one draw per sample and channel) that happens to keep or drop a
# channel in every sample of the batch cancels that channel's bias for that draw alone: with a
# batch of 4 and p = 0.5, one channel in eight. The second batch runs under the first of these
# seeds, and what only the measurement found is then shifted again under the others (one forward
# for the draw, one for the shift).
RESEEDS = (SEED + 11, SEED + 12, SEED + 13, SEED + 14, SEED + 15)


# Per (layer, bias parameter): the runs [start, stop) of elements the graph walk derived as
# cancelled.
Proven = Mapping[tuple[str, str], Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class BiasMeasure:
    """What the screen measured for one bias parameter."""

    layer: str
    param: str  # "bias", or "in_proj_bias" for nn.MultiheadAttention
    numel: int
    cancelled: tuple[tuple[int, int], ...] = ()  # runs [start, stop) confirmed cancelled
    dead: tuple[tuple[int, int], ...] = ()  # runs whose unit gets no gradient at all
    unconfirmed: tuple[tuple[int, int], ...] = ()  # zero gradient, but the perturbation moved
    no_gradient: bool = False  # not read by the differentiated forward (unused or detached)

    @property
    def whole(self) -> bool:
        """Every element is confirmed cancelled."""
        return self.cancelled == ((0, self.numel),)


@dataclass
class Screen:
    """The screen's result: per (layer, param), what it measured; or why it could not run."""

    biases: dict[tuple[str, str], BiasMeasure] = field(default_factory=dict)
    dtype: str = ""
    error: str | None = None  # why nothing was measured
    notes: list[str] = field(default_factory=list)
    forwards: int = 0
    # The model and inputs, kept while a rule may still ask where a cancellation happens.
    runner: "Runner | None" = field(default=None, repr=False)

    @property
    def ran(self) -> bool:
        return self.error is None

    def of(self, layer: str, param: str = "bias") -> BiasMeasure | None:
        return self.biases.get((layer, param))

    def release(self) -> None:
        """Drop the reference to the model and inputs."""
        self.runner = None

    def holds(self, layer: str, param: str, elements: Sequence[tuple[int, int]]) -> bool | None:
        """Measure a claim the screen did not make itself (a cancellation the graph walk
        derived): do large shifts of these elements, both signs, on both batches, leave every
        output where it was? None when the screen's model is gone."""
        if self.runner is None:
            return None
        group = [(layer, param, a, b) for a, b in elements]
        with widened(self.runner.model), screening(self.runner.model):
            if _holds(self.runner, group):
                return True
            if self.runner.dtype == torch.float64:
                return False
            # float32 rounding of a shift of 10, amplified by a later normalization of nearly
            # constant values, can move outputs by more than the tolerance: float64 decides
            with in_float64(self.runner) as wide:
                return wide is not None and _holds(wide, group)

    def locate(self, layer: str, param: str, elements: Sequence[tuple[int, int]]) -> str | None:
        """Where a measured cancellation happens: the first module (in the order calls finish)
        outside the layer whose input moves with the bias and whose output does not; else the
        innermost module around the layer whose output does not move (the cancelling op is a
        function call inside it). None when the copy is gone or nothing can be told."""
        if self.runner is None:
            return None
        with widened(self.runner.model), screening(self.runner.model):
            return _locate(self.runner, layer, param, elements)


# -- which tensor is the bias, and which weight rows belong to each of its elements ------------

def bias_pairs(module: nn.Module) -> list[tuple[str, list[str]]]:
    """The additive bias parameters of a layer, each with the weight parameters whose units it
    shifts (in the order their rows line up with the bias's elements)."""
    if isinstance(module, nn.MultiheadAttention):
        if not isinstance(module.in_proj_bias, torch.Tensor):
            return []
        if module.in_proj_weight is not None:
            return [("in_proj_bias", ["in_proj_weight"])]
        return [("in_proj_bias", ["q_proj_weight", "k_proj_weight", "v_proj_weight"])]
    if isinstance(getattr(module, "bias", None), torch.Tensor) and \
            isinstance(getattr(module, "weight", None), torch.Tensor):
        return [("bias", ["weight"])]
    if isinstance(getattr(module, "bias", None), torch.Tensor):
        # no weight of its own (a learnable affine ``scale * x + bias``; a graph conv whose
        # weight sits in a child ``lin``): the layer's other parameters, its children's
        # included, tell a path that learns from a dead one
        others = [name for name, p in module.named_parameters(recurse=False)
                  if name != "bias" and p.is_floating_point()]
        if not others:
            others = [name for name, p in module.named_parameters()
                      if name != "bias" and p.is_floating_point()]
        return [("bias", others)]
    return []


def _attribute(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
    return module


def unit_gradient(module: nn.Module, weights: list[torch.Tensor], numel: int
                  ) -> torch.Tensor | None:
    """Per bias element, the largest weight-gradient magnitude of the unit it shifts; None when
    the weight's layout does not line up with the bias (the whole weight then stands for every
    unit)."""
    if not weights:
        return None
    if len(weights) > 1:
        # MultiheadAttention's separate q/k/v weights, rows stacked. Other lists (a weightless
        # bias paired with every parameter of its layer, an empty one among them) do not line
        # up with the bias's elements: the whole of them then stands for every unit.
        if any(w.dim() < 1 or w.numel() == 0 for w in weights) or \
                sum(int(w.shape[0]) for w in weights) != numel:
            return None
        rows = [magnitude(w.reshape(w.shape[0], -1), 1) for w in weights]
        return torch.cat(rows)
    grad = weights[0]
    if grad.numel() == 0:
        return None
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # weight (in, out/groups, *k): output channel g*(out/groups)+j reads weight[g's in, j]
        groups = int(module.groups)
        per = grad.reshape(groups, grad.shape[0] // groups, grad.shape[1], -1)
        return per.abs().amax(dim=(1, 3)).reshape(-1) if groups * grad.shape[1] == numel \
            else None
    if grad.dim() >= 1 and grad.shape[0] == numel:
        return magnitude(grad.reshape(numel, -1), 1)
    if grad.dim() >= 2 and grad.shape[-1] == numel:  # transformers' Conv1D: weight (in, out)
        return magnitude(grad.reshape(-1, numel), 0)
    return None


def magnitude(tensor: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The largest magnitude of a non-empty tensor, or along ``dim`` (NaN where it holds one),
    without a copy of its magnitudes (a classifier's weight gradient is 10^8 entries)."""
    low, high = torch.aminmax(tensor) if dim is None else torch.aminmax(tensor, dim=dim)
    return torch.maximum(high, -low)


def runs(mask: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """The contiguous runs [start, stop) where a 1-d boolean mask is True."""
    values = mask.tolist()
    found: list[tuple[int, int]] = []
    start = None
    for i, on in enumerate(values + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            found.append((start, i))
            start = None
    return tuple(found)


# -- inputs, outputs and runs -------------------------------------------------------------------

def _redrawn(value: Any, generator: torch.Generator) -> Any:
    """A second batch like the example: floating tensors drawn anew with each tensor's own mean
    and spread; integer, boolean and 0/1 tensors (token ids, masks) kept, since a redrawn id or
    mask could be invalid for the model."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() < 2:
            return value
        if bool(((value == 0) | (value == 1)).all()):
            return value  # a mask
        if not bool(torch.isfinite(value).all()) or float(value.abs().max()) > 1e4:
            return value  # an additive mask (-inf, finfo.min), or codes rather than data
        mean, std = value.mean(), value.std()
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
        return (mean + std * noise).to(value.device)
    if isinstance(value, tuple):
        return tuple(_redrawn(v, generator) for v in value)
    if isinstance(value, list):
        return [_redrawn(v, generator) for v in value]
    if isinstance(value, dict):
        return {k: _redrawn(v, generator) for k, v in value.items()}
    return value


def floating_outputs(value: Any, seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Every floating tensor in a forward's output (tuples, lists, dicts, ModelOutput-likes)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
    elif isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "values")):
        for v in value.values():
            yield from floating_outputs(v, seen)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from floating_outputs(v, seen)


def _generators() -> tuple[Any, ...]:
    """What the random generators a forward may draw from hold (torch's, CUDA's once in use,
    Python's and numpy's), as bytes, to tell whether a forward drew from any."""
    states: list[Any] = [bytes(torch.get_rng_state().tolist()), random.getstate()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.extend(bytes(s.tolist()) for s in torch.cuda.get_rng_state_all())
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, gauss, cached = numpy.random.get_state()
        states.append((kind, keys.tobytes(), pos, gauss, cached))
    return tuple(states)


def seeded(seed: int = SEED) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:  # numpy is optional: a model that draws from it needs it installed
        pass


Batch = tuple[tuple[Any, ...], dict[str, Any], list[torch.Tensor], int]


@dataclass
class Runner:
    """The model and the example inputs, and how the screen runs them."""

    model: nn.Module
    dtype: torch.dtype
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    forwards: int = 0
    baseline: list[torch.Tensor] = field(default_factory=list)  # the example batch's outputs
    budget_spent: bool = False  # the confirmation stopped at CONFIRMATION_BUDGET
    float32_only: bool = False  # the model would not run in float64: no re-check there
    second_tried: bool = False  # a second batch was drawn (``_batches``)
    second_rejected: bool = False  # and the forward rejected it
    random: bool = False  # the training forward draws random numbers (``_generators``)
    redraw_rejected: bool = False  # a forward under another draw raised (``_reseeded``)
    # every module's inputs and outputs on the example batch, unshifted (``_locate``)
    unshifted: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
    # (args, kwargs, unperturbed outputs, seed): the example batch and a second one drawn like
    # it, each with the seed its forwards run under
    batches: list[Batch] = field(default_factory=list)

    def outputs(self, args: tuple[Any, ...] | None = None,
                kwargs: dict[str, Any] | None = None, seed: int = SEED) -> list[torch.Tensor]:
        """One seeded forward without autograd; buffers and cached attributes restored."""
        self.forwards += 1
        with preserved(self.model), torch.no_grad():
            seeded(seed)
            out = self.model(*(self.args if args is None else args),
                             **(self.kwargs if kwargs is None else kwargs))
            return [t.detach().clone() for t in floating_outputs(out)]

    @property
    def tolerance(self) -> float:
        return FLOAT64_MOVE if self.dtype == torch.float64 else FLOAT32_MOVE

    @property
    def zero(self) -> float:
        return FLOAT64_ZERO if self.dtype == torch.float64 else FLOAT32_ZERO

    @property
    def terms(self) -> float:
        return FLOAT64_TERMS if self.dtype == torch.float64 else FLOAT32_TERMS


NAN_OUTPUTS = ("the model's outputs on the example inputs hold NaN, where a shift cannot show "
               "whether an output moves (NaN stays NaN); give inputs on which the model's "
               "outputs are numbers")


def unshiftable(outputs: Sequence[torch.Tensor]) -> bool:
    """An output holds NaN: no shift can be seen there, so "moves no output" would be
    claimed of whatever feeds only the NaN (a parameter holding garbage, a log of a negative
    number). The screens measure nothing then."""
    return any(bool(torch.isnan(y).any()) for y in outputs if y.is_floating_point()
               or y.is_complex())


def _raised(exc: BaseException) -> str:
    return f"the training-mode forward and backward raised {type(exc).__name__}: " \
        f"{_first_line(exc)}"


def moved(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """Largest change of any output, relative to that output's scale (at least 1). An output
    that held NaN before cannot show that it did not move: infinite."""
    worst = 0.0
    for a, b in zip(before, after):
        if a.shape != b.shape:
            return float("inf")
        if not a.numel() or torch.equal(a, b):  # untouched: no need to measure how far
            continue
        if bool(torch.isnan(a).any()):
            return float("inf")
        diff = (b - a).abs()
        scale = float(torch.nan_to_num(a.abs(), nan=0.0, posinf=0.0).max())
        change = float(torch.nan_to_num(diff, nan=float("inf")).max())
        worst = max(worst, change / max(scale, 1.0))
    return worst


def degenerate(data: torch.Tensor) -> bool:
    """All entries equal, or all tiny, or some NaN or infinite (memory nothing wrote, BL012's):
    what the screen re-draws (see ``screening``)."""
    low, high = torch.aminmax(data)  # one pass over a 10^8-entry weight, not three
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):  # aminmax keeps NaN
        return True
    return bool(low == high) or float(torch.maximum(high, -low)) < TINY


@contextlib.contextmanager
def screening(model: nn.Module) -> Iterator[None]:
    """The model as the screen measures it: training mode, degenerate parameters re-drawn,
    every parameter differentiable; all of it put back on exit, bit for bit."""
    params = list({id(p): p for p in model.parameters()}.values())
    flags = [p.requires_grad for p in params]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    generator = torch.Generator().manual_seed(SEED)
    with preserved(model):  # training flags, cached attributes, buffers
        try:
            model.train()
            with torch.no_grad():
                for param in params:
                    data = param.detach()
                    if data.numel() == 0 or not data.is_floating_point():
                        continue
                    if degenerate(data):
                        peak = float(data.abs().max())
                        saved.append((param, data.clone()))
                        noise = torch.randn(data.shape, generator=generator,
                                            dtype=torch.float64)
                        centre = float(data.mean()) if TINY <= peak < math.inf else 0.0
                        param.copy_((centre + 0.5 * noise).to(param.dtype))
            for param in params:
                if param.is_floating_point():
                    param.requires_grad_(True)
            yield
        finally:
            with torch.no_grad():
                for param, value in saved:
                    param.copy_(value)
            for param, flag in zip(params, flags):
                param.requires_grad_(flag)


def prepared(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[Runner | None, str | None]:
    """How the screen runs this model, or why it cannot."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes:
        return None, "the model has no floating parameter"
    if dtypes - {torch.float32, torch.float64}:
        return None, f"parameters in {', '.join(sorted(str(d) for d in dtypes))}: the screen " \
            "measures float32 and float64 models"
    dtype = torch.float64 if dtypes == {torch.float64} else torch.float32
    return Runner(model, dtype, tuple(args), dict(kwargs)), None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


# -- the screen ---------------------------------------------------------------------------------

@dataclass
class _Candidate:
    layer: str
    param: str
    elements: torch.Tensor  # bool mask over the bias


def screen_biases(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                  layers: Sequence[str], proven: Proven | None = None,
                  shared: "Gradients | None" = None) -> Screen:
    """Measure, for each named layer's additive bias, which elements the outputs do not depend
    on. ``proven``: per (layer, bias parameter), the runs of elements the graph walk derived as
    cancelled (their confirmation is not repeated in float64; see ``_confirm``). ``shared``:
    the forward and backwards already run over these layers (``training_gradients``), read
    instead of running them again. Never changes ``model``; the RNG is restored."""
    with torch.random.fork_rng(devices=[]), widened(model, args, kwargs) as (args, kwargs):
        state = random.getstate()
        try:
            return _screen(model, args, kwargs, layers, dict(proven or {}), shared)
        finally:
            random.setstate(state)


def _screen(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
            layers: Sequence[str], proven: Proven, shared: "Gradients | None") -> Screen:
    run, why = prepared(model, args, kwargs)
    if run is None:
        return Screen(error=why)
    with screening(model):
        return _measure(run, layers, proven, shared)


# A bias the screen measures: (layer, parameter name, layer module, bias, the weights it pairs).
_Screened = tuple[str, str, nn.Module, torch.Tensor, list[torch.Tensor]]
# Per bias judged on its gradients alone: its size and the runs of elements found dead.
_Partial = dict[tuple[str, str], dict[str, Any]]


def _measure(run: Runner, layers: Sequence[str], proven: Proven | None = None,
             shared: "Gradients | None" = None) -> Screen:
    screen = Screen(dtype=str(run.dtype).replace("torch.", ""))
    wanted = _screened_biases(run, layers)
    if not wanted:
        return screen
    if shared is not None and shared.error is None:
        grads, run.baseline, run.random = shared.projections, shared.baseline, shared.random
        run.forwards += 1
    elif shared is not None:
        return Screen(error=shared.error)
    else:
        tensors, sizes = _asked_for(wanted)
        try:
            grads = _gradients(run, tensors, sizes,
                               lambda found: _unsettled(run, wanted, found, proven))
        except Exception as exc:  # said: the screen did not run
            return Screen(error=_raised(exc))
        if grads is not None and unshiftable(run.baseline):
            return Screen(error=NAN_OUTPUTS)
    if grads is None:
        return Screen(error="no output depends on a parameter through autograd (the forward "
                            "runs without gradients)")
    screen.forwards = run.forwards
    candidates, partial = _zero_gradient_candidates(run, wanted, grads, screen)
    confirmed, refuted, second = _confirm(run, candidates, proven or {})
    _complete(run, confirmed, refuted)
    screen.notes.extend(_confirmation_notes(run, bool(candidates), second))
    screen.forwards = run.forwards
    screen.runner = run
    for (name, pname), info in partial.items():
        screen.biases[(name, pname)] = BiasMeasure(
            name, pname, info["numel"],
            cancelled=runs(confirmed[(name, pname)]) if (name, pname) in confirmed else (),
            dead=info["dead"],
            unconfirmed=runs(refuted[(name, pname)]) if (name, pname) in refuted else ())
    return screen


def _asked_for(wanted: list[_Screened]) -> tuple[list[torch.Tensor], dict[str, int]]:
    """The tensors whose gradients the screen reads (each bias and the weights it pairs, once)
    and the layers whose outputs it keeps, with their bias sizes."""
    tensors: list[torch.Tensor] = []
    for _, _, _, bias, weights in wanted:
        tensors.append(bias)
        tensors.extend(weights)
    sizes = {name: int(bias.numel()) for name, pname, _, bias, _ in wanted if pname == "bias"}
    return list({id(t): t for t in tensors}.values()), sizes


def _screened_biases(run: Runner, layers: Sequence[str]) -> list[_Screened]:
    """The 1-d floating, non-empty biases of ``layers``, each with the weights it pairs."""
    wanted: list[_Screened] = []
    for name in layers:
        module = run.model.get_submodule(name)
        for pname, wnames in bias_pairs(module):
            bias = getattr(module, pname)
            weights = [w for w in (_attribute(module, n) for n in wnames)
                       if isinstance(w, torch.Tensor)]
            if bias.dim() != 1 or not bias.is_floating_point() or bias.numel() == 0:
                continue  # an empty bias (a layer of 0 units) shifts nothing
            wanted.append((name, pname, module, bias, weights))
    return wanted


def _zero_gradient_candidates(run: Runner, wanted: list[_Screened],
                              grads: list[dict[Any, torch.Tensor]], screen: Screen
                              ) -> tuple[list[_Candidate], _Partial]:
    """Judge each bias on its gradients: one with none, or whose whole layer is dead, goes into
    ``screen`` now; the others are returned, with the zero-gradient elements to confirm by
    perturbation (the candidates) or the dead runs found."""
    candidates: list[_Candidate] = []
    partial: _Partial = {}
    for name, pname, module, bias, weights in wanted:
        numel = int(bias.numel())
        if id(bias) not in grads[0]:
            screen.biases[(name, pname)] = BiasMeasure(name, pname, numel, no_gradient=True)
            continue
        flat, alive = _flat_and_alive(run, grads, name, pname, module, bias, weights)
        if not bool(alive.any()) and bool(flat.all()):  # nothing in the layer learns: dead
            screen.biases[(name, pname)] = BiasMeasure(name, pname, numel,
                                                       dead=((0, numel),))
            continue
        if bool((flat & alive).any()):
            # Every zero-gradient element is tried, dead ones included: a bias whose live units
            # are cancelled and whose other units are unused still never changes the output.
            partial[(name, pname)] = {"numel": numel, "dead": ()}
            candidates.append(_Candidate(name, pname, flat))
        else:
            partial[(name, pname)] = {"numel": numel, "dead": runs(flat)}
    return candidates, partial


def _unsettled(run: Runner, wanted: list[_Screened], found: list[dict[Any, torch.Tensor]],
               proven: Proven | None = None) -> set[Any]:
    """What the next projection is asked for: the biases with a candidate in every projection so
    far (an element whose gradient was zero while its unit's weight's was not), with their
    weights and layer names. The others are settled: an element is a candidate only when its
    gradient is zero in every projection, and a unit with no weight gradient in a random
    projection gets none in any (a ReLU off on every position, an unused result). Nor is a
    later projection asked for candidates the graph walk derived (``proven``): it only spares
    the perturbation the elements a projection proposes by chance, and a derived cancellation
    is no chance; the perturbation tries it either way.

    The third projection is asked only when at least ``THIRD_FOR`` lone elements (runs of one)
    are still candidates: a random projection leaves a few elements' sums of terms within the
    flatness tolerance by chance (torchvision's MaxViT: 7 after two projections, 1 after a
    third), and the perturbation tries each such lone element with a forward of its own; one
    more backward costs about what one or two forwards do. Runs of several elements are how
    cancellations come, and go to the perturbation as they are."""
    still: set[Any] = set()
    lone = 0
    for name, pname, module, bias, weights in wanted:
        if id(bias) not in found[-1]:  # settled by an earlier projection
            continue
        flat, alive = _flat_and_alive(run, found, name, pname, module, bias, weights)
        candidates = flat & alive
        for a, b in (proven or {}).get((name, pname), ()):
            candidates[a:b] = False
        if not bool(candidates.any()):
            continue
        singles = sum(1 for a, b in runs(candidates) if b - a == 1)
        if len(found) == 1 or singles:
            still.update([id(bias), name, *(id(w) for w in weights)])
            lone += singles
    return still if len(found) == 1 or lone >= THIRD_FOR else set()


def _flat_and_alive(run: Runner, grads: list[dict[Any, torch.Tensor]], name: str, pname: str,
                    module: nn.Module, bias: torch.Tensor, weights: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bias element: whether its gradient is zero (to rounding) in every projection, and
    whether its unit learns at all (a weight gradient above zero in some projection)."""
    numel = int(bias.numel())
    flat = torch.ones(numel, dtype=torch.bool)
    alive = torch.zeros(numel, dtype=torch.bool)
    for projection in grads:
        gb = projection.get(id(bias))
        if gb is None:  # settled by an earlier projection (``_unsettled``)
            continue
        gws = [projection.get(id(w)) for w in weights]
        gws = [g if g is not None else torch.zeros_like(w) for g, w in zip(gws, weights)]
        units = unit_gradient(module, gws, numel)
        whole_weight = max((float(magnitude(g)) for g in gws if g.numel()), default=0.0)
        scale = max(float(gb.abs().max()), whole_weight)
        terms = projection.get(name) if pname == "bias" else None
        if units is not None:
            # against the unit's own weight gradient: the rounding left of a cancelled
            # bias's gradient scales with the gradient reaching its unit, and a unit that
            # is merely little used has a small weight gradient too
            small = gb.abs() <= run.zero * units
            alive |= units > run.zero * scale
        else:
            small = gb.abs() <= run.zero * scale
            if whole_weight > 0.0:
                alive[:] = True
        if isinstance(terms, torch.Tensor) and terms.numel() == numel:
            # or against the terms it sums: a unit whose weight gradient is itself small
            # (its input nearly the same at every position) leaves a residue larger than
            # the weight's gradient, never larger than the terms
            small |= gb.abs().to(torch.float64) <= run.terms * terms
        flat &= small
    return flat, alive


def _confirmation_notes(run: Runner, had_candidates: bool, second: bool) -> list[str]:
    """What the confirmation of the zero-gradient elements could not do, said."""
    notes: list[str] = []
    if had_candidates and not second:
        notes.append("the forward rejected a second batch drawn like the example "
                     "inputs: bias cancellations were confirmed on the example batch "
                     "alone")
    if run.float32_only:
        notes.append("the model does not run in float64: its bias cancellations were "
                     "confirmed in float32 only (to 1e-4 of the outputs)")
    if run.redraw_rejected:
        notes.append("the forward raised under another draw of its random masks: bias "
                     "cancellations only the measurement found are not reported (one draw "
                     "alone cannot tell them from a mask that kept a channel in every sample)")
    if run.budget_spent:
        notes.append(f"the confirmation stopped after {CONFIRMATION_BUDGET} forwards: "
                     "zero-gradient bias elements it did not reach are not reported")
    return notes


def _output_axis(module: nn.Module, out: torch.Tensor, numel: int) -> int | None:
    """The axis of a layer's output along which its bias is added (channels of a conv, the
    last axis of a linear; -1 for a one-element bias added everywhere), or None when it cannot
    be told."""
    if numel == 1:  # one scalar added everywhere (a learnable ``scale * x + bias``)
        return -1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if out.dim() > 1 and out.shape[1] == numel else None
    if out.dim() >= 1 and out.shape[-1] == numel:
        return out.dim() - 1
    return None


def _gradients(run: Runner, tensors: list[torch.Tensor], layers: dict[str, int],
               still: Callable[[list[dict[Any, torch.Tensor]]], set[Any]] | None = None,
               peaks: Sequence[torch.Tensor] = ()) -> list[dict[Any, torch.Tensor]] | None:
    """Per random projection of the floating outputs, the gradient of each tensor (by id); per
    tensor of ``peaks``, only its largest magnitude (a 0-d tensor, keyed ``(PEAK, id)``); and
    per layer in ``layers`` (name -> bias size) the sum over positions of |d loss / d output|
    per bias element (keyed by name): the size of the terms the bias's gradient adds up, which
    is what the rounding left of a cancelled sum is relative to. None when no output is
    differentiable. After the first projection, ``still`` (given the projections so far) names
    the keys the next one is asked for: what the earlier ones settled costs no further
    backward, and when nothing is left none runs. The backwards run before the buffers are put
    back: BatchNorm saves what it needs for its backward, and restoring a buffer in place first
    would invalidate it."""
    run.forwards += 1
    found: list[dict[Any, torch.Tensor]] = []
    seen: dict[str, list[tuple[torch.Tensor, int]]] = {}

    def keep(name: str, numel: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                return None
            axis = _output_axis(module, out, numel)
            if axis is None:
                return None
            seen.setdefault(name, []).append((out, axis))
            # the model goes on with a copy: an in-place op after the layer (ReLU(inplace))
            # must not turn the kept output into another value
            return out.clone()
        return hook

    hooks = [run.model.get_submodule(name).register_forward_hook(keep(name, numel))
             for name, numel in layers.items()]
    try:
        with preserved(run.model), torch.enable_grad():
            seeded()
            state = _generators()
            out = run.model(*run.args, **run.kwargs)
            run.random = _generators() != state
            outputs = [y for y in floating_outputs(out) if y.requires_grad]
            if not outputs:
                return None
            kept = [(name, y, axis) for name, calls in seen.items() for y, axis in calls]
            generator = torch.Generator().manual_seed(SEED + 1)
            asked = _Asked(tensors, list(peaks), kept)
            for k in range(PROJECTIONS):
                loss = projected(outputs, generator)
                if k and still is not None:
                    asked = asked.only(still(found))
                    if asked.empty:
                        break
                grads = torch.autograd.grad(loss, asked.wrt, allow_unused=True,
                                            retain_graph=k + 1 < PROJECTIONS)
                found.append(asked.result(grads))
            # the example batch's outputs, for the perturbations to be compared with
            run.baseline = [y.detach().clone() for y in floating_outputs(out)]
    finally:
        for h in hooks:
            h.remove()
    return found


PEAK = "peak"  # the key prefix of a gradient kept only as its largest magnitude


@dataclass
class _Asked:
    """What one backward asks for: whole gradients, peaks, kept layer outputs."""

    tensors: list[torch.Tensor]
    peaks: list[torch.Tensor]
    kept: list[tuple[str, torch.Tensor, int]]

    @property
    def wrt(self) -> list[torch.Tensor]:
        return self.tensors + self.peaks + [y for _, y, _ in self.kept]

    @property
    def empty(self) -> bool:
        return not (self.tensors or self.peaks or self.kept)

    def only(self, keys: set[Any]) -> "_Asked":
        return _Asked([t for t in self.tensors if id(t) in keys],
                      [t for t in self.peaks if (PEAK, id(t)) in keys],
                      [entry for entry in self.kept if entry[0] in keys])

    def result(self, grads: Sequence[torch.Tensor | None]) -> dict[Any, torch.Tensor]:
        whole, peaks = len(self.tensors), len(self.peaks)
        result: dict[Any, torch.Tensor] = {
            id(t): g.detach() for t, g in zip(self.tensors, grads[:whole]) if g is not None}
        for t, g in zip(self.peaks, grads[whole:whole + peaks]):
            if g is not None:
                result[(PEAK, id(t))] = magnitude(g.detach()) if g.numel() else g.new_zeros(())
        for (name, y, axis), g in zip(self.kept, grads[whole + peaks:]):
            if g is None:
                continue
            width = 1 if axis == -1 else y.shape[axis]
            terms = g.detach().abs().movedim(axis, -1).reshape(-1, width) if width > 1 \
                else g.detach().abs().reshape(-1, 1)
            result[name] = result.get(name, 0) + terms.sum(dim=0, dtype=torch.float64)
        return result


@dataclass
class Gradients:
    """One training-mode forward of the model as the screens measure it (``screening``) and
    its random projections' gradients: what the bias screen and the parameter screen
    (``analysis.gradients``) both read, so that a lint runs that forward and its backwards
    once. ``projections`` is None when no output is differentiable; ``error`` says why nothing
    was measured (the forward or a backward raised, or the outputs hold NaN)."""

    projections: list[dict[Any, torch.Tensor]] | None = None
    baseline: list[torch.Tensor] = field(default_factory=list)
    peaked: frozenset[int] = frozenset()  # ids of the tensors kept as peaks
    error: str | None = None
    raised: bool = False  # the error is the forward's or a backward's exception
    random: bool = False  # the forward drew random numbers (``Runner.random``)

    def release(self) -> None:
        """Keep only the peaks (the bias screen has read the whole gradients)."""
        if self.projections is not None:
            self.projections = [{k: v for k, v in p.items()
                                 if isinstance(k, tuple) and k[0] == PEAK}
                                for p in self.projections]


def training_gradients(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                       layers: Sequence[str], proven: Proven, peaks: Sequence[torch.Tensor],
                       still: Callable[[dict[Any, torch.Tensor], torch.dtype], set[Any]]
                       ) -> Gradients:
    """The bias screen's forward and backwards over ``layers``, also keeping the peak gradient
    of each of ``peaks`` (asked again in a later projection when ``still``, given the first
    projection and the dtype the model runs in, names it). The model
    is put back as it was; the RNG is restored."""
    with torch.random.fork_rng(devices=[]), widened(model, args, kwargs) as (args, kwargs):
        state = random.getstate()
        try:
            run, why = prepared(model, args, kwargs)
            if run is None:
                return Gradients(error=why)
            with screening(model):
                wanted = _screened_biases(run, layers)
                tensors, sizes = _asked_for(wanted)
                try:
                    grads = _gradients(run, tensors, sizes,
                                       lambda found: _unsettled(run, wanted, found, proven)
                                       | (still(found[0], run.dtype) if len(found) == 1
                                          else set()), peaks)
                except Exception as exc:  # said by each screen
                    return Gradients(error=_raised(exc), raised=True)
                if grads is not None and unshiftable(run.baseline):
                    return Gradients(error=NAN_OUTPUTS)
                return Gradients(grads, run.baseline, frozenset(id(p) for p in peaks),
                                 random=run.random)
        finally:
            random.setstate(state)


Piece = tuple[str, str, int, int]  # (layer, param, start, stop): a run of bias elements


def projected(outputs: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """``sum_k <g_k, y_k>`` with each ``g_k`` drawn N(0, 1) from ``generator``: one random
    projection of the floating outputs, to differentiate (NaN and Inf read as finite)."""
    total = torch.zeros((), dtype=outputs[0].dtype, device=outputs[0].device)
    for y in outputs:  # 0 + a + b: the same sum as Python's, typed
        draw = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.dtype)
        total = total + (draw * torch.nan_to_num(y)).sum()
    return total


def _batches(run: Runner, second: bool = True) -> None:
    """The example batch and (with ``second``) a second one drawn like it, each with its
    unperturbed outputs."""
    if not run.batches:
        run.batches.append((run.args, run.kwargs, run.baseline, SEED))
    if not second or run.second_tried:
        return
    run.second_tried = True
    args2, kwargs2 = _redrawn((run.args, run.kwargs), torch.Generator().manual_seed(SEED + 2))
    try:
        run.batches.append((args2, kwargs2, run.outputs(args2, kwargs2, RESEEDS[0]), RESEEDS[0]))
    except Exception:  # a second batch the model rejects: the first decides
        run.second_rejected = True


def _holds(run: Runner, group: Sequence[Piece], both: bool = True) -> bool:
    """Shift every element of ``group`` by a large random value (one sign on the example batch,
    the other on the second; the example batch alone without ``both``): True when no output
    moves on either."""
    _batches(run, both)
    params = {(layer, pname): getattr(run.model.get_submodule(layer), pname)
              for layer, pname, _, _ in group}
    signs = itertools.cycle((1.0, -1.0))
    for sign, (args, kwargs, before, seed) in zip(signs, run.batches if both else run.batches[:1]):
        shift = _shifts(group, params, sign)
        kept = {key: params[key].detach().clone() for key in shift}
        with torch.no_grad():
            for key, delta in shift.items():
                params[key].add_(delta)
        try:
            after = run.outputs(args, kwargs, seed)
        finally:
            with torch.no_grad():  # copied back: x + d - d is not x in floating point
                for key, value in kept.items():
                    params[key].copy_(value)
        if moved(before, after) > run.tolerance:
            return False
    return True


def _converted(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_converted(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _converted(v, dtype) for k, v in value.items()}
    return value


# Parameters the screens measure in float32: a shift of 10 and the float64 re-check are
# meaningless at bfloat16's 3 significant digits.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _lifted(value: Any) -> Any:
    """``value`` with its float16/bfloat16 tensors in float32 (the rest as they are)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in LOW_PRECISION else value
    if isinstance(value, (tuple, list)):
        return type(value)(_lifted(v) for v in value)
    if isinstance(value, dict):
        return {k: _lifted(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def widened(model: nn.Module, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
            ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """A float16/bfloat16 model measured in float32: its low-precision parameters and buffers
    hold float32 copies for the time of the block (writes go to the copies), the originals are
    put back after; yields the inputs with their low-precision tensors in float32. Every value
    of the model is exact in float32, so what is measured is the model's own function, without
    its rounding. A float32 or float64 model is left as it is."""
    params = [p for p in {id(p): p for p in model.parameters()}.values()
              if p.dtype in LOW_PRECISION]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()
               if b is not None and b.dtype in LOW_PRECISION]
    originals = [p.data for p in params]
    try:
        with torch.no_grad():
            for param in params:
                param.data = param.data.float()
            for module, name, buffer in buffers:
                module._buffers[name] = buffer.float()
        yield _lifted(tuple(args)), _lifted(dict(kwargs or {}))
    finally:
        for param, data in zip(params, originals):
            param.data = data
        for module, name, buffer in buffers:
            module._buffers[name] = buffer


@contextlib.contextmanager
def in_float64(run: Runner) -> Iterator[Runner | None]:
    """The model and inputs in float64 for the time of the block, the default dtype too (None,
    and the model as it was, when it will not run in float64: it makes float32 tensors inside,
    or an op has no float64 kernel); every tensor's dtype put back after (float32 round-trips
    through float64 exactly)."""
    model = run.model
    params = list(model.parameters())
    # The original storages: views of them held elsewhere (a value a rule read before) must
    # see the values put back, so the storages are put back, not new ones of the old dtype.
    storages = [p.data for p in params]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()
               if b is not None]
    wide: Runner | None = None

    def put_back() -> None:
        with torch.no_grad():
            for param, storage in zip(params, storages):
                if param.data is not storage:
                    storage.copy_(param.data)
                    param.data = storage
            for module, name, buffer in buffers:
                current = module._buffers.get(name)
                if current is not buffer and isinstance(current, torch.Tensor) and \
                        current.shape == buffer.shape:
                    buffer.copy_(current)
                module._buffers[name] = buffer

    # Tensors the forward makes with the default dtype (``torch.zeros(b, n, d)``) are float64
    # too for the time of the block, as they would be in a model built for float64.
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        try:
            model.double()  # buffers are new tensors: ``preserved`` puts the old ones back
            wide = Runner(model, torch.float64, _converted(run.args, torch.float64),
                           _converted(run.kwargs, torch.float64))
            wide.baseline = wide.outputs()
        except Exception:  # a float32 tensor made inside, an op with no float64 kernel
            wide = None
            torch.set_default_dtype(default)
            put_back()  # the block gets the model as it was, not half converted
        yield wide
    finally:
        torch.set_default_dtype(default)
        if wide is not None:
            run.forwards += wide.forwards
        put_back()


def settled(run: Runner, pieces: list[Piece], start: int | None = None, both: bool = True
            ) -> tuple[list[Piece], list[Piece]]:
    """Group testing: (pieces that hold, pieces that move), testing all together first and
    splitting what moves in halves, within the confirmation budget counted from ``start``
    (``run.forwards`` by default; what it does not reach counts as moving: it is never
    reported). Without ``both``, on the example batch alone (see ``_holds``)."""
    held: list[Piece] = []
    moving: list[Piece] = []
    # Runs of several elements (whole biases, thirds, per-head blocks: how cancellations come)
    # and lone elements (what a zero gradient also proposes by chance) are tried apart: a
    # group of mostly structural runs then holds at once instead of splitting around the
    # chance elements among it.
    runs_of_many = [p for p in pieces if p[3] - p[2] > 1]
    lone = [p for p in pieces if p[3] - p[2] == 1]
    pending = [group for group in (lone, runs_of_many) if group]
    start = run.forwards if start is None else start
    while pending:
        group = pending.pop()
        if run.forwards - start >= CONFIRMATION_BUDGET:
            moving.extend(group)
            run.budget_spent = True
        elif _holds(run, group, both):
            held.extend(group)
        elif len(group) == 1:
            moving.extend(group)
        elif all(b - a == 1 for _, _, a, b in group) and len(group) <= SINGLES:
            # Lone elements are what a zero gradient proposes by chance (a unit a norm nearly
            # cancels), and most of a group of them that moved move themselves: halving would
            # test nearly every one anyway, and the halves on top. Each is tried alone.
            pending.extend([piece] for piece in reversed(group))
        else:
            half = len(group) // 2
            pending.extend([group[half:], group[:half]])
    return held, moving


def _confirm(run: Runner, candidates: list[_Candidate], proven: Proven | None = None
             ) -> tuple[dict[tuple[str, str], torch.Tensor],
                        dict[tuple[str, str], torch.Tensor], bool]:
    """Perturb the candidates' elements all together; where the outputs move, split the group
    in halves until each part holds or is refuted alone.

    Elements the graph walk derived as cancelled (``proven``) are one group of their own. The
    walk's derivation is an exact identity that holds for any input and any shift (a norm
    subtracts the mean the bias shifts); what the measurement adds is that it holds on this
    model as built, which one random shift on the example batch shows (one forward). When that
    moves an output, the walk was wrong somewhere: the group is tried as the others are. The
    float64 re-check, which tells "moves by 1e-6" from "does not move", has nothing to add to a
    shift of 10 units that moved no output by 1e-4 where the walk proves none can. What the
    walk did not prove is tried apart (it neither hides a proven bias behind a moving one nor
    is hidden by it) on both batches, both signs, and what holds is tried again in float64 on
    the example batch (the float32 test already covered the second)."""
    if not candidates:
        return {}, {}, False
    # The unit of confirmation: one run of elements of one bias.
    # Largest first: cancellations come as whole biases, thirds and per-head blocks, and what a
    # zero gradient proposes by chance comes as single elements, which then split off together.
    pieces = sorted(((c.layer, c.param, a, b) for c in candidates for a, b in runs(c.elements)),
                    key=lambda piece: piece[2] - piece[3])
    sizes = {(c.layer, c.param): int(c.elements.numel()) for c in candidates}
    confirmed: dict[tuple[str, str], torch.Tensor] = {}
    refuted: dict[tuple[str, str], torch.Tensor] = {}

    def settle(group: list[Piece], verdict: bool) -> None:
        into = confirmed if verdict else refuted
        for layer, pname, a, b in group:
            mask = into.setdefault((layer, pname),
                                   torch.zeros(sizes[(layer, pname)], dtype=torch.bool))
            mask[a:b] = True

    derived = [p for p in pieces if any(a <= p[2] and p[3] <= b
                                        for a, b in (proven or {}).get((p[0], p[1]), ()))]
    start = run.forwards
    moving: list[Piece] = []
    if derived and _holds(run, derived, both=False):
        proven_held = derived
    else:
        proven_held, moving = settled(run, derived, start)
    held, also = settled(run, [p for p in pieces if p not in derived], start)
    moving += also
    if held and run.dtype != torch.float64:
        # float32 tells "moves by less than 1e-4" from "does not move", not from "moves by
        # 1e-6": what held is measured again in float64, where the tolerance is 1e-8 (a
        # channel behind a small weight, a key bias behind a float32-only mask)
        with in_float64(run) as wide:
            if wide is not None:
                held, also = settled(wide, held, both=False)
                moving += also
                run.budget_spent |= wide.budget_spent
            else:
                run.float32_only = True
    if held and run.random:  # after float64: what that refutes costs no re-drawn forwards
        held, also = _reseeded(run, held)
        moving += also
    settle(held + proven_held, True)
    settle(moving, False)
    return confirmed, refuted, not run.second_rejected


# At most this many biases, cancelled in most but not all of their elements, have the rest
# shifted to see whether the whole bias cancels (``_complete``).
COMPLETE_AT_MOST = 8
HOLES_AT_MOST = 8


def _complete(run: Runner, confirmed: dict[tuple[str, str], torch.Tensor],
              refuted: dict[tuple[str, str], torch.Tensor]) -> None:
    """Elements of a bias confirmed cancelled in part that were never proposed (their gradient
    was not zero; no shift refuted them): shifted too, both signs on both batches, then in
    float64, and confirmed where no output moves. A norm over a channel whose batch values
    nearly coincide (a 1x1 map, batch 2) divides by a tiny std, and rounding leaves cancelled
    elements' gradients above the zero test. Tried: the whole rest of a bias mostly confirmed;
    else the holes of one or two elements between its confirmed elements, together, then hole
    by hole (a longer gap is a block of its own: another head's query and value)."""
    done = 0
    for key, mask in confirmed.items():
        rest = ~mask
        if key in refuted:
            rest &= ~refuted[key]
        inside = torch.nonzero(mask).flatten()
        holes = rest.clone()
        holes[:int(inside[0])] = False
        holes[int(inside[-1]) + 1:] = False
        for a, b in runs(holes):
            if b - a > 2:  # a block (another head's query and value), not a rounding hole
                holes[a:b] = False
        mostly = bool(rest.any()) and int(mask.sum()) * 2 >= mask.numel()
        if done >= COMPLETE_AT_MOST or not (mostly or bool(holes.any())):
            continue  # nothing to try here (a key third and its neighbours)
        done += 1
        if mostly and _rest_holds(run, key, rest):
            mask |= rest
            continue
        if not bool(holes.any()):
            continue
        if _rest_holds(run, key, holes):
            mask |= holes
            continue
        for a, b in runs(holes)[:HOLES_AT_MOST]:
            one = torch.zeros_like(holes)
            one[a:b] = True
            if _rest_holds(run, key, one):
                mask |= one


def _rest_holds(run: Runner, key: tuple[str, str], elements: torch.Tensor) -> bool:
    group = [(key[0], key[1], a, b) for a, b in runs(elements)]
    if not _holds(run, group):
        return False
    if run.dtype != torch.float64:
        with in_float64(run) as wide:
            if wide is None or not _holds(wide, group, both=False):
                return False
    return not (run.random and _reseeded(run, group)[1])


def _reseeded(run: Runner, held: list[Piece]) -> tuple[list[Piece], list[Piece]]:
    """What held on the example and second batches (and in float64), shifted again under the
    other draws of a forward that draws random numbers (``RESEEDS``): (still held, moved).
    Nothing more is run when another draw leaves the example batch's outputs where they were
    (the draws reach no output: a dropout with p = 0). The splitting of a group that moves
    has a budget of its own: what held already must not be lost to forwards the first pass
    spent."""
    draws: list[Batch] = []
    for k, seed in enumerate(RESEEDS[1:]):
        args, kwargs = run.batches[k % len(run.batches)][:2]
        try:
            draws.append((args, kwargs, run.outputs(args, kwargs, seed), seed))
        except Exception:  # a draw the forward rejects: what held is not claimed (said)
            run.redraw_rejected = True
            return [], held
        if k == 0 and moved(run.baseline, draws[0][2]) == 0.0:
            return held, []
    saved = run.batches
    run.batches = draws
    try:
        return settled(run, held, run.forwards)
    finally:
        run.batches = saved


def _shifts(group: Sequence[Piece], params: dict[tuple[str, str], torch.Tensor],
            sign: float) -> dict[tuple[str, str], torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED + 3)
    shifts: dict[tuple[str, str], torch.Tensor] = {}
    for layer, pname, a, b in group:
        param = params[(layer, pname)]
        # contiguous whatever the parameter's layout: [a, b) are flat indices
        delta = shifts.setdefault((layer, pname), torch.zeros(
            param.shape, dtype=param.dtype, device=param.device))
        draw = torch.randn(b - a, generator=generator, dtype=torch.float64)
        # away from zero, so every element moves by at least half a unit of SHIFT
        delta.view(-1)[a:b] = (sign * SHIFT * (draw.sign() * (draw.abs() + 0.5))).to(param.dtype)
    return shifts


def _locate(run: Runner, layer: str, param: str, elements: Sequence[tuple[int, int]]
            ) -> str | None:
    model = run.model
    names = {id(m): n for n, m in model.named_modules()}

    def recorder(into: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]]
                 ) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            name = names.get(id(module))
            if name is None or name in into:
                return  # a shared module: its first call stands for it
            into[name] = ([t.detach().clone() for t in floating_outputs(args)],
                          [t.detach().clone() for t in floating_outputs(out)])
        return hook

    def record(shift: torch.Tensor | None) -> dict[str, tuple[list[torch.Tensor],
                                                               list[torch.Tensor]]]:
        seen: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        hooks = [m.register_forward_hook(recorder(seen)) for m in model.modules()]
        target = getattr(model.get_submodule(layer), param)
        kept = target.detach().clone()
        try:
            if shift is not None:
                with torch.no_grad():
                    target.add_(shift)
            run.outputs()
        finally:
            with torch.no_grad():
                target.copy_(kept)
            for h in hooks:
                h.remove()
        return seen

    target = getattr(model.get_submodule(layer), param)
    shift = torch.zeros_like(target)
    for a, b in elements:
        shift[a:b] = SHIFT
    try:
        if run.unshifted is None:  # the same for every bias located: recorded once
            run.unshifted = record(None)
        before, after = run.unshifted, record(shift)
    except Exception:  # a location we cannot tell is left out, not guessed
        return None
    inside = [n for n in before if n == layer or n.startswith(layer + ".")]
    around = [n for n in before if n == "" or layer.startswith(n + ".")]

    def still(name: str, which: int) -> bool:
        return name in after and moved(before[name][which], after[name][which]) <= run.tolerance

    for name in before:  # completion order
        if name in inside or name in around:
            continue
        if not still(name, 0) and still(name, 1):
            module = model.get_submodule(name)
            return f"{type(module).__name__} '{name}'"
    for name in sorted(around + [layer], key=len, reverse=True):
        if still(name, 1):
            module = model.get_submodule(name)
            return f"an op inside {type(module).__name__} '{name}'" if name else \
                f"an op inside the model's own forward ({type(module).__name__})"
    return None
