"""Undo what running the user's model does to it.

Capture and analysis run the user's forward (traced, on fake tensors, or for real under
``no_grad``). A forward may cache tensors on its modules (RAFT's correlation pyramid, KV
caches, lazily built masks), register buffers, flip train/eval flags, and BatchNorm updates its
running statistics in place. Linting must leave the model exactly as it was built.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's attributes, parameter/buffer/child registrations and buffer values
    on exit, whatever happened inside."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    # TorchScript modules keep their state in C++ (their registries are read-only wrappers):
    # their buffers are restored below like any other, the rest is left alone.
    attributes = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules))
                  for m in model.modules() if not isinstance(m, torch.jit.ScriptModule)]
    try:
        yield
    finally:
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
