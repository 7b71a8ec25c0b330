"""Init calls whose values no parameter keeps (for BL016), from what the recorded build saw.

- **Overwritten**: a call of the user's (``nn.init.*`` or an in-place draw or fill; not an
  installed library's, whose dead init code the user cannot change) whose every entry a later
  init call wrote again before the build ended: the first call's values are gone. A later
  ``copy_`` (a checkpoint loaded over the init) does not count: initializing and then loading
  is the usual way to build a pretrained model. The same call site writing
  again (``model.apply(init)`` twice, a loop) does not count either.
- **Computed**: a call that wrote a tensor autograd computed from parameters, which a module
  holds or recomputes (``torch.nn.utils.weight_norm``'s ``weight``, the ``weight`` a
  ``parametrize`` parametrization returns): the next forward computes it again from the
  parameters it is made of, so the init does nothing. Library calls count too: an init the
  model's own code asks for is lost whoever wrote it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn as nn

from biaslint.findings import LostInit

if TYPE_CHECKING:
    from biaslint.load.sites import BuildRecord, _InitEvent

# The calls that rewrite values without reading them (a ``copy_`` is a load: it does not count).
_REWRITES = ("nn.init.", "Tensor.normal_", "Tensor.uniform_", "Tensor.zero_", "Tensor.fill_",
             "Tensor.constant_", "Tensor.exponential_", "Tensor.log_normal_", "Tensor.cauchy_",
             "Tensor.geometric_", "Tensor.random_", "Tensor.bernoulli_")


def lost_inits(model: nn.Module, record: "BuildRecord") -> list[LostInit]:
    """Every init call of the recorded build that no parameter of ``model`` keeps."""
    return list(_overwritten(model, record)) + list(_computed(model, record))


def _span(tensor: torch.Tensor) -> tuple[Any, int, int] | None:
    from biaslint.load.sites import memory_span

    return memory_span(tensor)


def _overwritten(model: nn.Module, record: "BuildRecord") -> Iterator[LostInit]:
    params: dict[Any, list[tuple[int, int, str]]] = {}
    for name, param in model.named_parameters():
        span = _span(param)
        if span is not None:
            params.setdefault(span[0], []).append((span[1], span[2], name))
    events = record.init_events
    by_storage: dict[Any, list[int]] = {}  # each storage's events, in order: no n^2 scan
    for i, event in enumerate(events):
        by_storage.setdefault(event.storage, []).append(i)
    reported: dict[tuple[Any, ...], list[str]] = {}
    found: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for i, event in enumerate(events):
        if not event.call.by_user or not event.call.name.startswith(_REWRITES) \
                or _installed(event.call):
            continue
        names = [n for a, b, n in params.get(event.storage, ())
                 if event.start <= a and b <= event.stop]
        if not names:
            continue  # not a parameter of the model (a temporary, a buffer)
        later = _covering(event, [events[j] for j in by_storage[event.storage] if j > i])
        if later is None:
            continue
        key = (event.call.name, event.call.location, later.call.name, later.call.location)
        reported.setdefault(key, []).extend(names)
        found[key] = (event.call, later.call)
    for key, names in reported.items():
        call, by = found[key]
        yield LostInit("overwritten", call, tuple(dict.fromkeys(names)), by=by)


def _installed(call: Any) -> bool:
    """The call is an installed library's code (torchvision's, timm's): an init it writes and
    then overwrites itself is the library's dead code, not the user's lost init."""
    from biaslint.load.files import installed_library

    location = call.location
    return location is not None and installed_library(location.file) is not None


def _covering(event: "_InitEvent", later: list["_InitEvent"]) -> "_InitEvent | None":
    """The first later rewrite that covers every byte of ``event``'s (another call site's)."""
    for other in later:
        if not (other.start <= event.start and event.stop <= other.stop):
            continue
        if not other.call.name.startswith(_REWRITES):
            if other.call.name == "Tensor.copy_":
                return None  # a load over the init: the usual way, not a lost init
            continue
        if (other.call.name, other.call.location) == (event.call.name, event.call.location):
            return None  # the same call again (apply twice, a loop): its values stand
        return other
    return None


def _computed(model: nn.Module, record: "BuildRecord") -> Iterator[LostInit]:
    if not record.computed_writes:
        return
    owners = {id(p): n for n, p in model.named_parameters()}
    holders = _holders(model)
    for tensor, call in record.computed_writes:
        leaves = [owners[id(v)] for v in _leaves(tensor) if id(v) in owners]
        if not leaves:
            continue  # computed from no parameter of the model: nothing it meant
        held = holders.get(id(tensor)) or _parametrized(model, leaves)
        if held is None:
            continue  # not a module's weight: an activation or a temporary
        yield LostInit("computed", call, tuple(dict.fromkeys(leaves)), computed=held)


def _holders(model: nn.Module) -> dict[int, str]:
    """Tensors a module holds as a plain attribute (weight_norm's ``weight``), by id."""
    held = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) \
                    and value.grad_fn is not None:
                held[id(value)] = f"{name}.{attr}" if name else attr
    return held


def _parametrized(model: nn.Module, leaves: list[str]) -> str | None:
    """The parametrized attribute whose originals are exactly ``leaves``, if one is (a
    ``parametrize`` parametrization's, or the ``name_g``/``name_v`` pair of the older
    ``weight_norm`` hook, which computes ``name`` again before every forward)."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for hook in module._forward_pre_hooks.values():
            attr = getattr(hook, "name", None)
            if isinstance(attr, str) and {f"{prefix}{attr}_g", f"{prefix}{attr}_v"} == set(leaves):
                return f"{prefix}{attr}"
        parametrizations = getattr(module, "parametrizations", None)
        if not isinstance(parametrizations, nn.ModuleDict):
            continue
        for attr, plist in parametrizations.items():
            prefix = f"{name}.parametrizations.{attr}." if name else f"parametrizations.{attr}."
            originals = {f"{prefix}{n}" for n, _ in plist.named_parameters(recurse=False)}
            if originals and set(leaves) == originals:
                return f"{name}.{attr}" if name else attr
    return None


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors autograd would send ``tensor``'s gradient to."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()
    stack = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            found.append(variable)
        stack.extend(child for child, _ in getattr(node, "next_functions", ()))
    return found
