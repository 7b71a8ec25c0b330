"""The optimizers the target gave for the model, read as the rules need them: per parameter
group, its weight decay and which of its parameters should not be decayed (and why)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn

# Optimizers whose weight decay is decoupled from the gradient (AdamW's "p -= lr * wd * p");
# the others add ``wd * p`` to the gradient (L2). Either way a decayed parameter shrinks.
DECOUPLED = frozenset({"AdamW"})


@dataclass(frozen=True)
class ParamGroup:
    """One parameter group of one optimizer, in the model's terms."""

    optimizer: str  # the optimizer's class name, e.g. "AdamW"
    position: int  # which of the target's optimizers (0 for the only one)
    index: int  # the group's index in ``optimizer.param_groups``
    weight_decay: float
    decoupled: bool
    lr: float | None
    # The group's parameters that should not be decayed: (qualified name, why) with why one of
    # ``biaslint.init.no_decay_kind``'s kinds ("bias", "norm", "embedding", "1-d").
    kept: tuple[tuple[str, str], ...]
    size: int  # how many of the model's parameters the group holds


def param_groups(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                 embeddings: bool = True) -> list[ParamGroup]:
    """Every parameter group of ``optimizers`` that holds parameters of ``model``."""
    from biaslint.init import no_decay_kind

    kinds: dict[int, tuple[str, str | None]] = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{name}" if module_name else name
            kinds.setdefault(id(parameter), (qualified, no_decay_kind(module, name, parameter,
                                                                      embeddings)))
    groups = []
    for position, optimizer in enumerate(optimizers):
        for index, group in enumerate(optimizer.param_groups):
            held = [kinds[id(p)] for p in group["params"] if id(p) in kinds]
            if not held:
                continue
            groups.append(ParamGroup(
                optimizer=type(optimizer).__name__, position=position, index=index,
                weight_decay=float(group.get("weight_decay", 0.0) or 0.0),
                decoupled=type(optimizer).__name__ in DECOUPLED,
                lr=_number(group.get("lr")),
                kept=tuple((name, kind) for name, kind in held if kind is not None),
                size=len(held)))
    return groups


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
