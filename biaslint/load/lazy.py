"""Lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ...): their parameters exist only after a
first forward, which infers their shapes. A build that returns one not yet run gives the lint
nothing to read there; biaslint runs that first forward itself, as training would."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn as nn
from torch.nn.modules.lazy import LazyModuleMixin

from biaslint.errors import TargetError


def lazy_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose parameters or buffers are not made yet."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        unmade = getattr(module, "has_uninitialized_params", None)
        if isinstance(module, LazyModuleMixin) and unmade is not None and unmade():
            found.append((name, cast(nn.Module, module)))
    return found


def materialize(target: str, model: nn.Module, args: tuple[Any, ...] | None,
                kwargs: dict[str, Any] | None) -> str:
    """Run the first forward that makes the lazy modules' parameters (and their init), in eval
    mode without gradients so that no running statistic moves and no dropout draws; each
    module's training flag is put back. A note that says so; a one-line ``TargetError`` when
    there are no example inputs or the forward fails."""
    lazy = lazy_modules(model)
    named = ", ".join(f"{type(m).__name__} '{n}'" for n, m in lazy[:3]) + \
        (f" and {len(lazy) - 3} more" if len(lazy) > 3 else "")
    if args is None and kwargs is None:
        raise TargetError(f"{target}: {named} make their parameters on their first forward, "
                          "and there are no example inputs to run it: return (model, "
                          "example_inputs) from the build, or give --input-shape")
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*(args or ()), **(kwargs or {}))
    except Exception as exc:
        raise TargetError(f"{target}: the first forward, which makes the parameters of {named}, "
                          f"failed: {type(exc).__name__}: {_first_line(exc)}; give example "
                          "inputs the model accepts") from exc
    finally:
        for module, flag in flags:
            module.training = flag
    return (f"ran one forward (eval mode, no gradients) on the example inputs to make the "
            f"parameters of the lazy modules {named}, as a first training step would")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""
