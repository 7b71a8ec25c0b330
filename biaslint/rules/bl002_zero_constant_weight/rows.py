"""BL002 below the layer: zero filters (weight rows) inside a weight that is otherwise drawn.

A unit whose weight row is all zero outputs exactly its bias, on every input. The whole-weight
verdicts do not see it (the other units differ), and most such units recover: their row's
gradient is the input times what comes back. Two paths stop what comes back for good, as they do
for a whole zero weight:

- the output goes only into a ReLU: a unit with a bias <= 0 (or no bias) outputs 0 there, and
  ReLU passes back 0 at 0 and below;
- it goes only into a BatchNorm or InstanceNorm (or a GroupNorm, for a group whose every channel
  is such a unit) whose output goes only into a ReLU: the unit's channel is the constant bias,
  the norm subtracts its mean and outputs exactly its own shift ``beta`` (0 without affine), and
  a ``beta <= 0`` is dead as above. In eval mode the running mean is subtracted instead, so it
  must be 0 there. That is exact only when the channel is exactly 0 (no bias, or a bias of
  exactly 0): a constant ``b != 0`` leaves the norm a rounding residue of its mean, which the
  ReLU can pass, so those units are not claimed (measured: some recover).

Everything else recovers and is left alone. Embedding rows are lookups (a zero ``padding_idx``
row is deliberate), so they are not units here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from biaslint.rules.bl002_zero_constant_weight.symmetry import (
    calls_and_outputs,
    channels_are_units,
    feeds_only_relu,
    weights_to_check,
)

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer, Use


@dataclass
class DeadRows:
    """The zero rows of one weight, and which of them are dead for good."""

    layer: "Layer"
    pname: str
    units: int
    zero: list[int]
    dead: list[int] = field(default_factory=list)
    through: list[str] = field(default_factory=list)  # the norms on the way, if any
    unjudged: str = ""  # why the dead ones cannot be told apart (drawn values on meta)


# One reading per analysed model: the rule's scope notes and its findings both ask.
_READ: "weakref.WeakKeyDictionary[AnalysedModel, list[DeadRows]]" = weakref.WeakKeyDictionary()


def dead_rows(model: "AnalysedModel") -> list[DeadRows]:
    """Every weight with some (not all) zero rows in front of a ReLU path, with its dead rows
    (read once per model)."""
    found = _READ.get(model)
    if found is None:
        found = _READ[model] = _read(model)
    return found


def _read(model: "AnalysedModel") -> list[DeadRows]:
    found = []
    for layer in model.layers.values():
        module = layer.module
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue  # Bilinear, Embedding, RNN, attention: units are not plain rows here
        if isinstance(module, nn.modules.conv._ConvTransposeNd) and module.groups != 1:
            continue  # its dim 1 indexes a group's channels: no one axis of units
        for pname, units_dim in weights_to_check(module):
            verdict = _judge(model, layer, pname, units_dim)
            if verdict is not None:
                found.append(verdict)
    return found


def _judge(model: "AnalysedModel", layer: "Layer", pname: str, units_dim: int
           ) -> DeadRows | None:
    value = layer.value(pname)
    if value is None or not value.known or value.constant() is not None:
        return None  # unreadable (said by the engine), or a whole constant weight (BL002 above)
    zero = value.zero_units(units_dim)
    if zero is None or not bool(zero.any()) or model.is_shared(layer.name):
        return None
    _, outputs = calls_and_outputs(model, layer)
    if not outputs:
        return None
    verdict = DeadRows(layer, pname, int(zero.numel()),
                       [int(i) for i in torch.nonzero(zero).reshape(-1)])
    relu = all(feeds_only_relu(model, out) for out in outputs)
    probe = torch.ones_like(zero)  # is every reader a norm into a ReLU at all?
    if not relu and any(_norm_into_relu(model, out, layer.module, probe) is None
                        for out in outputs):
        return None  # something else reads the unit: its gradient comes back, it recovers
    bias = _values(model, layer.module, "bias")
    if relu:
        if isinstance(bias, str):
            verdict.unjudged = "its bias is drawn, and which zero rows die depends on each value"
            return verdict
        alive = torch.zeros_like(zero) if bias is None else bias.reshape(-1) > 0
        verdict.dead = _indices(zero & ~alive)
        return verdict
    # a drawn bias (meta) is never exactly 0: no row is claimed through the norm
    exact = zero & (torch.ones_like(zero) if bias is None else
                    torch.zeros_like(zero) if isinstance(bias, str) else bias.reshape(-1) == 0)
    if not bool(exact.any()):
        return verdict
    dead = exact
    for out in outputs:
        found = _norm_into_relu(model, out, layer.module, exact)
        if found is None:
            return None
        name, below = found
        if isinstance(below, str):
            verdict.unjudged = below
            return verdict
        if below.numel() != dead.numel():
            return None
        dead = dead & below
        verdict.through.append(name)
    verdict.dead = _indices(dead)
    return verdict


_DRAWN = "drawn"  # ``_values`` of a parameter known in law only (drawn, on the meta device)


def _values(model: "AnalysedModel", module: nn.Module, pname: str) -> torch.Tensor | str | None:
    """A parameter's exact values; None when the module has none; ``_DRAWN`` when they are
    known in law only (drawn on the meta device), not entry by entry."""
    if getattr(module, pname, None) is None:
        return None
    value = model.value_of(module, pname)
    exact = value.exact() if value is not None and value.known else None
    return _DRAWN if exact is None else exact


def _norm_into_relu(model: "AnalysedModel", out: "Use", producer: nn.Module,
                    exact: torch.Tensor) -> tuple[str, torch.Tensor | str] | None:
    """When the one consumer of ``out`` is a per-channel normalization (or a GroupNorm) read on
    the units' axis whose output goes only into a ReLU: its name and which of the channels that
    are ``exact``ly 0 it outputs as a shift <= 0 (or, as a string, why that is not known). Else
    None.

    A channel that is exactly 0 comes out as exactly ``beta`` from batch statistics (mean 0,
    variance 0) and from running ones whose mean is 0; a GroupNorm's statistics mix its group,
    so only a group whose every channel is exactly 0 comes out as ``beta``."""
    consumers = model.consumers_of(out)
    if len(consumers) != 1:
        return None
    use = consumers[0]
    norm = model.module_of(use)
    if not isinstance(norm, (nn.modules.batchnorm._BatchNorm,
                             nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)):
        return None
    if not feeds_only_relu(model, use) or not channels_are_units(use, out, producer):
        return None
    name = model.module_name(use)
    exact = exact.clone()
    if isinstance(norm, nn.GroupNorm):
        groups = exact.reshape(norm.num_groups, -1)
        exact = groups.all(dim=1, keepdim=True).expand_as(groups).reshape(-1)
    elif norm.track_running_stats and not norm.training:
        running = model.buffer_value(norm, "running_mean")
        values = running.exact() if running is not None and running.known else None
        if values is None:
            return name, f"the running mean of {name} is not known entry by entry"
        exact &= values.reshape(-1) == 0
    beta = _values(model, norm, "bias")
    if isinstance(beta, str):
        return name, f"the shift of {name} is drawn, and which zero rows die depends on it"
    return name, exact if beta is None else exact & (beta.reshape(-1) <= 0)


def _indices(mask: torch.Tensor) -> list[int]:
    return [int(i) for i in torch.nonzero(mask).reshape(-1)]
