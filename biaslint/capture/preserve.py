"""Undo what running the user's model does to it.

Capture and analysis run the user's forward (traced, on fake tensors, or for real under
``no_grad``). A forward may cache tensors on its modules (RAFT's correlation pyramid, KV
caches, lazily built masks), register buffers, flip train/eval flags, and BatchNorm updates its
running statistics in place. Linting must leave the model exactly as it was built.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Iterator

import torch
import torch.nn as nn

# Restored below as registrations, with their own rules.
_REGISTRIES = {"_parameters", "_buffers", "_modules"}


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's attributes, parameter/buffer/child registrations and buffer values
    on exit, whatever happened inside."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    # TorchScript modules keep their state in C++ (their registries are read-only wrappers):
    # their buffers are restored below like any other, the rest is left alone.
    attributes = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules))
                  for m in model.modules() if not isinstance(m, torch.jit.ScriptModule)]
    # The contents of every dict a module holds (hook registries above all): a forward that
    # installs hooks on first use (transformers' output capturing) and marks the model as
    # hooked must not leave the hooks behind with the mark removed, or the next forward
    # installs them twice.
    contents = [(d, dict(d)) for m, state, *_ in attributes for key, d in state.items()
                if type(d) in (dict, collections.OrderedDict) and key not in _REGISTRIES]
    try:
        yield
    finally:
        for container, before_items in contents:
            if container.keys() != before_items.keys() or any(
                    container[k] is not v for k, v in before_items.items()):
                container.clear()
                container.update(before_items)
        for module, state, params, buffers, children in attributes:
            for key in [k for k in vars(module) if k not in state]:
                del module.__dict__[key]
            for key, value in state.items():
                if module.__dict__.get(key) is not value:
                    module.__dict__[key] = value
            for current, before in ((module._parameters, params), (module._buffers, buffers),
                                    (module._modules, children)):
                if current.keys() != before.keys() or any(
                        current[k] is not v for k, v in before.items()):
                    current.clear()
                    current.update(before)
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in saved and buf.shape == saved[name].shape:
                    buf.copy_(saved[name])
