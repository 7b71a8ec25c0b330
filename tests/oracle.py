"""The perturbation oracle: is a bias redundant, measured numerically rather than analysed.

A bias is redundant when changing it does not change anything the model outputs. We check that in
training mode (the mode BL001 judges), in float64, at *generic* parameter values: every all-zero,
constant or tiny parameter is re-drawn first, because a zero-initialized head, a zero gamma or a
1e-6 layer scale hides everything upstream of it at init and would make live biases look dead.

* ``redundant``: a random per-channel change of the bias leaves every output unchanged;
* ``partial``:   only a change by the same constant on every channel leaves them unchanged
  (a normalization removes the bias's mean, not the bias);
* ``live``:      both move the outputs.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Iterator

import numpy
import torch
import torch.nn as nn

from biaslint.findings import Severity

# Relative change of the outputs below which they "did not move". float64 rounding in a deep
# network stays around 1e-13 relative; a live bias of unit size moves outputs by far more than
# 1e-8 at generic parameter values (the tests perturb by a standard normal vector).
RELATIVE_TOLERANCE = 1e-8
# For models that only run in float32 (they build float32 tensors internally): float32 rounding
# through a deep network stays below ~1e-5 relative.
FLOAT32_TOLERANCE = 1e-4
# Parameters whose largest magnitude is below this count as "tiny" (layer scale 1e-6, ReZero).
TINY = 1e-3


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield value
    elif isinstance(value, dict) or hasattr(value, "items"):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def _as_double(value: Any, dtype: torch.dtype = torch.float64) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_as_double(v, dtype) for v in value)
    if isinstance(value, list):
        return [_as_double(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _as_double(v, dtype) for k, v in value.items()}
    return value


def redraw_degenerate(model: nn.Module, seed: int = 0) -> list[str]:
    """Give every all-equal or tiny parameter generic values around its own value; returns the
    names re-drawn. Nothing else changes, so the graph and every other parameter stay as built."""
    generator = torch.Generator().manual_seed(seed)
    redrawn = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            data = param.detach()
            if data.numel() == 0 or not data.is_floating_point():
                continue
            if bool(data.min() == data.max()) or float(data.abs().max()) < TINY:
                noise = torch.randn(data.shape, generator=generator, dtype=torch.float64)
                centre = float(data.mean()) if float(data.abs().max()) >= TINY else 0.0
                param.copy_((centre + 0.5 * noise).to(param.dtype))
                redrawn.append(name)
    return redrawn


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back the buffers a forward changed. One the forward replaced by another shape
    (ConViT recomputes ``rel_indices`` for the sequence length) is put back as it was, not
    broadcast into the new tensor; one the forward registered anew (x-transformers' ALiBi) is
    left, as the next forward would register it again."""
    with torch.no_grad():
        for name, value in saved.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            current = owner._buffers.get(leaf)
            if isinstance(current, torch.Tensor) and current.shape == value.shape:
                current.copy_(value)
            else:
                owner._buffers[leaf] = value.clone()


class Oracle:
    """Holds one float64 training-mode copy of a model (degenerate parameters re-drawn) and
    answers, per bias, whether perturbing it moves the outputs."""

    def __init__(self, model: nn.Module, args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        self.model = copy.deepcopy(model).to(dtype)
        self.tolerance = RELATIVE_TOLERANCE if dtype == torch.float64 else FLOAT32_TOLERANCE
        self.redrawn = redraw_degenerate(self.model, seed)
        self.model.train()
        self.args = _as_double(tuple(args), dtype)
        self.kwargs = _as_double(dict(kwargs or {}), dtype)
        self.seed = seed
        self.baseline = self._run()
        # The oracle's own check: with nothing perturbed, a second run must not move. A forward
        # that changes state it does not restore would make every bias look live.
        drift = self._distance(self._run())
        if drift > self.tolerance:
            raise AssertionError(f"the oracle is not repeatable on this model: a second run "
                                 f"moved the outputs by {drift:.2g}")

    def _run(self) -> list[torch.Tensor]:
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        # Identical random masks in every run: dropout draws from torch; some models draw from
        # numpy or random (wav2vec2's SpecAugment time masks).
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        numpy.random.seed(self.seed)
        try:
            with torch.no_grad():
                out = self.model(*self.args, **self.kwargs)
        finally:
            restore_buffers(self.model, buffers)
        return [t.detach().clone() for t in _tensors(out)]

    def moves(self, layer: str, param: str = "bias", delta: torch.Tensor | None = None,
              index: slice | None = None) -> float:
        """Largest relative output change when ``param`` of ``layer`` is shifted by ``delta``."""
        module = self.model.get_submodule(layer)
        tensor = getattr(module, param)
        saved = tensor.detach().clone()
        change = torch.zeros_like(saved)
        target = change if index is None else change[index]
        if delta is None:
            delta = torch.randn(target.shape, generator=torch.Generator().manual_seed(1),
                                dtype=torch.float64)
        target.copy_(delta.to(change.dtype))
        with torch.no_grad():
            tensor.add_(change)
        try:
            outputs = self._run()
        finally:
            with torch.no_grad():
                tensor.copy_(saved)
        return self._distance(outputs)

    def _distance(self, outputs: list[torch.Tensor]) -> float:
        """Largest change of any output against the baseline, relative to its scale."""
        worst = 0.0
        for before, after in zip(self.baseline, outputs):
            both_nan = torch.isnan(before) & torch.isnan(after)
            diff = torch.where(both_nan, torch.zeros_like(before), (after - before).abs())
            scale = float(torch.nan_to_num(before.abs()).max()) if before.numel() else 0.0
            worst = max(worst, float(torch.nan_to_num(diff, nan=float("inf")).max()
                                     if diff.numel() else 0.0) / max(scale, 1.0))
        return worst

    def dead(self, layer: str) -> bool:
        """No parameter of the layer moves any output: its output is never used."""
        module = self.model.get_submodule(layer)
        return all(self.moves(layer, name) <= self.tolerance
                   for name, _ in module.named_parameters(recurse=False))

    def verdict(self, layer: str, param: str = "bias", index: slice | None = None) -> str:
        if self.moves(layer, param, index=index) <= self.tolerance:
            return "redundant"
        module = self.model.get_submodule(layer)
        shape = getattr(module, param).detach()
        shape = shape if index is None else shape[index]
        constant = torch.full(shape.shape, 1.7, dtype=torch.float64)
        if self.moves(layer, param, delta=constant, index=index) <= self.tolerance:
            return "partial"
        return "live"


def bias_verdict(model: nn.Module, inputs: Any, layer: str, param: str = "bias",
                 index: slice | None = None) -> str:
    """One-shot form: ``inputs`` is a tensor, a tuple of args, or an object with args/kwargs."""
    args, kwargs = split_inputs(inputs)
    return Oracle(model, args, kwargs).verdict(layer, param, index)


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if hasattr(inputs, "args") and hasattr(inputs, "kwargs"):
        return tuple(inputs.args), dict(inputs.kwargs)
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return tuple(inputs), {}


def biased_layers(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv layers that carry a bias: the candidates BL001 judges."""
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            and isinstance(getattr(m, "bias", None), torch.Tensor)]


def warned(findings, name: str) -> bool:
    f = findings.get(name)
    return f is not None and f.severity is Severity.WARNING


def assert_agrees(findings, oracle, expected: dict[str, str]) -> None:
    """Each named layer: the oracle's measured verdict is the expected one, and BL001 warns iff
    the bias is redundant. Every other biased layer must agree with the oracle too."""
    for name in biased_layers(oracle.model):
        truth = oracle.verdict(name)
        if name in expected:
            assert truth == expected[name], f"oracle says {name} is {truth}"
        assert warned(findings, name) == (truth == "redundant"), (name, truth, findings.get(name))
