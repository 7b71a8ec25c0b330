"""Parameters no output depends on, measured: what the bias screen does for biases, for every
other trainable parameter.

On the model as the screen prepares it (``sensitivity.screening``: training mode, every
all-equal or tiny parameter re-drawn, so a zero-initialized gate does not hide what is behind
it), one forward and up to two backwards of random projections of the floating outputs, the
bias screen's (``sensitivity.training_gradients``). A parameter whose gradient is zero in each
is a candidate; it is confirmed when shifting every entry
by a large random value (10 units, both signs, on the example batch and a second batch drawn
like it, float64 where the model runs in it) moves no output. A unit merely off on these inputs
comes on under such a shift, and is refuted.

What this finds is structural on these inputs: a softmax over one position (its output is the
constant 1), a recurrent direction whose only step read starts from the initial state, a product
with a constant zero. Parameters autograd never reaches (unused, or behind a ``detach``) are
BL010's, unless an output moves when they are shifted: the forward then computes with them
outside autograd (``torch.no_grad()``, a reentrant checkpoint), and they are ``cut``. Additive
biases are BL001's.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from biaslint.analysis.sensitivity import (
    PEAK,
    Gradients,
    Runner,
    degenerate,
    in_float64,
    prepared,
    screening,
    settled,
    widened,
)

# A gradient counts as zero below this fraction of the largest gradient entry of any parameter
# (only a proposal: the shift of 10 units confirms or refutes it, so a small live gradient costs
# forwards, never a finding).
ZERO_FLOAT32, ZERO_FLOAT64 = 1e-6, 1e-12
_BATCH_STATISTICS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class GradientScreen:
    """Per (layer, parameter): confirmed silent, or zero-gradient but moved when shifted."""

    silent: list[tuple[str, str]] = field(default_factory=list)
    flat: list[tuple[str, str]] = field(default_factory=list)  # refuted: off on these inputs
    # Autograd reaches no output from them, yet shifting them moves one: the forward computes
    # with them outside autograd (``torch.no_grad()``, a reentrant checkpoint whose inputs need
    # no gradient). They never train.
    cut: list[tuple[str, str]] = field(default_factory=list)
    # ... and those the confirmation budget ran out before: not judged for that
    cut_unsettled: list[tuple[str, str]] = field(default_factory=list)
    measured: int = 0  # parameters whose gradient was measured
    error: str | None = None  # why nothing was measured
    forwards: int = 0


def screen_parameters(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                      skip: Iterable[tuple[str, str]], shared: Gradients) -> GradientScreen:
    """Measure which trainable parameters (but ``skip``) no output depends on, from ``shared``:
    the training-mode forward and backwards that kept these parameters' peak gradients
    (``sensitivity.training_gradients``; the bias screen's, when it ran). Never changes
    ``model``; the RNG is restored."""
    with torch.random.fork_rng(devices=[]), widened(model, args, kwargs) as (args, kwargs):
        state = random.getstate()
        try:
            return _screen(model, args, kwargs, set(skip), shared)
        finally:
            random.setstate(state)


def _screen(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
            skip: set[tuple[str, str]], shared: Gradients) -> GradientScreen:
    run, why = prepared(model, args, kwargs)
    if run is None:
        return GradientScreen(error=why)
    trainable = trainable_parameters(model, skip)
    result = GradientScreen(measured=len(trainable))
    if not trainable:
        return result
    # the values the screen re-draws, for the last check on the model as it is
    originals = [(p, p.detach().clone()) for p in {id(p): p for p in model.parameters()}.values()
                 if p.numel() and p.is_floating_point() and degenerate(p.detach())]
    with screening(model):
        if shared.error is not None:
            result.error = shared.error + ("; give example inputs its training-mode forward "
                                           "accepts (a detector needs its targets)"
                                           if shared.raised else "")
            return result
        if not {id(p) for _, _, p in trainable} <= shared.peaked:
            result.error = "the training-mode pass did not keep every parameter's gradient"
            return result
        run.forwards += 1
        run.baseline = shared.baseline
        zero = None if shared.projections is None else \
            [entry for entry, z in zip(trainable, still_zero(
                shared.projections, [p for _, _, p in trainable], run.dtype)) if z]
        if zero is None:
            result.error = "no floating output depends on a parameter through autograd"
            return result
        result.cut, result.cut_unsettled = _cut(run, shared.projections, trainable)
        pieces = [(layer, pname, 0, int(p.numel())) for layer, pname, p in zero]
        held, moving = settled(run, pieces)
        if held:  # without random masks: a block stochastic depth dropped on the seeded run
            held, also = _settled_in_eval(run, held)
            moving += also
        if held:  # and exactly, on the model as built
            with _as_built(originals):
                exact = _exactly(run, held)
            if exact is None:  # float32 bit for bit cannot tell a weak path from none
                result.error = (f"the model does not run in float64, where the last, exact "
                                f"check of the {len(held)} parameter(s) left is made")
                result.forwards = run.forwards
                return result
            held, also = exact
            moving += also
        result.forwards = run.forwards
    result.silent = [(layer, pname) for layer, pname, _, _ in held]
    result.flat = [(layer, pname) for layer, pname, _, _ in moving]
    return result


def _cut(run: Runner, projections: Sequence[dict[Any, torch.Tensor]] | None,
         trainable: Sequence[tuple[str, str, torch.Tensor]]
         ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the trainable parameters autograd reaches no output from, no gradient at all in the
    first projection rather than a zero one, whose shift moves an output all the same; those
    the confirmation budget ran out before). All of them are shifted together first: when
    none moves an output (unused parameters, BL010's), that costs one shift per batch."""
    if not projections:
        return [], []
    first = projections[0]
    unreached = [(layer, pname, 0, int(p.numel())) for layer, pname, p in trainable
                 if (PEAK, id(p)) not in first and p.numel()]
    if not unreached:
        return [], []
    spent, run.budget_spent = run.budget_spent, False
    try:
        _, moving = settled(run, unreached, start=run.forwards)
        if run.budget_spent:  # what the budget did not reach counts as moving: no claim
            return [], [(layer, pname) for layer, pname, _, _ in moving]
    finally:
        run.budget_spent = run.budget_spent or spent
    return [(layer, pname) for layer, pname, _, _ in moving], []


@dataclass
class _Exact(Runner):
    """A runner for which any change of an output is a move."""

    @property
    def tolerance(self) -> float:
        return 0.0


def _exactly(run: Runner, held: list[Any]) -> tuple[list[Any], list[Any]] | None:
    """The pieces whose shifts leave every output bit for bit as it was, random masks off, in
    float64 where the model runs in it. A structural silence is exact (a softmax over one key
    outputs exactly 1, a weight times a zero state is exactly 0, a discarded position is
    discarded); a path that is only weak (two layer scales of 1e-5 in a row: 1e-14 of the
    output) moves, and is refuted. None when the model does not run in float64."""
    with in_float64(run) as wide:
        if wide is None:  # None: not judged (a weak path of 1e-14 and none look alike in float32)
            return None
        exact = _Exact(wide.model, wide.dtype, wide.args, wide.kwargs)
        result = _settled_in_eval(exact, held)
        run.forwards += exact.forwards
        return result


@contextlib.contextmanager
def _as_built(originals: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """The re-drawn parameters hold their built values for the block: a silence the re-draw
    made (a saturation it caused) is refuted on the model as it is. (A zero-initialized gate is
    back at 0 here; what is behind it was no candidate: its gradient, with the gate re-drawn,
    was not zero.)"""
    redrawn = [(p, p.detach().clone()) for p, _ in originals]
    with torch.no_grad():
        for param, value in originals:
            param.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for param, value in redrawn:
                param.copy_(value)


def _settled_in_eval(run: Runner, held: list[Any]) -> tuple[list[Any], list[Any]]:
    """The pieces that hold again with random masks off: every module in eval mode but the
    batch and instance norms, which keep normalizing by the batch (fresh running statistics
    would rescale a deep network until its outputs saturate, and hide any shift). A parameter
    silent only because a random mask (dropout, stochastic depth, layer drop) dropped its block
    on the seeded run is refuted here. Put back in training mode after."""
    model = run.model
    model.eval()
    for module in model.modules():
        if isinstance(module, _BATCH_STATISTICS):
            module.train()
    saved = (run.batches, run.baseline)
    try:
        run.batches = []
        run.baseline = run.outputs()
        return settled(run, held)
    finally:
        run.batches, run.baseline = saved
        model.train()


def still_zero(projections: Sequence[dict[Any, torch.Tensor]], params: Sequence[torch.Tensor],
               dtype: torch.dtype) -> list[bool]:
    """Per parameter, whether its gradient is zero in every projection that asked for it, read
    from peaks (``sensitivity.PEAK``): its largest entry at most ``ZERO`` times the largest of
    any of ``params`` in the first projection. A parameter autograd does not reach is not
    zero (it is BL010's): it has no peak in the first projection. A later projection that has
    no peak for it did not ask (the bias screen's third asks for biases alone)."""
    relative = ZERO_FLOAT64 if dtype == torch.float64 else ZERO_FLOAT32
    first = [projections[0].get((PEAK, id(p))) for p in params]
    largest = max((float(peak) for peak in first if peak is not None), default=0.0)
    zero = [peak is not None and float(peak) <= relative * largest for peak in first]
    for projection in projections[1:]:
        for i, param in enumerate(params):
            peak = projection.get((PEAK, id(param)))
            if zero[i] and peak is not None:
                zero[i] = float(peak) <= relative * largest
    return zero


def trainable_parameters(model: nn.Module, skip: set[tuple[str, str]]
                         ) -> list[tuple[str, str, torch.Tensor]]:
    """Every floating parameter that trains (requires_grad), once (a shared one by its first
    name), but ``skip``."""
    seen: set[int] = set()
    found = []
    for layer, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad or not param.is_floating_point() \
                    or param.numel() == 0:
                continue
            seen.add(id(param))
            if (layer, pname) not in skip:
                found.append((layer, pname, param))
    return found
