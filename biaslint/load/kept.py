"""Keep the user's model as it was across a lint.

A forward may write to its own parameters and buffers: ``weight.mul_(2)`` under ``no_grad``, an
``Embedding(max_norm=...)`` renormalizing the rows it looks up, a running statistic or a step
counter. biaslint runs the forward several times (capture, the rules' measurements, the signal
plot). Without care, the user's model would come back changed from ``check()``, and the rules
after a forward would judge values the forward wrote instead of the ones the build made.

``KeptModel`` copies every parameter and buffer once, before the first forward, and puts back
exactly what changed: their values (into the same storage, so references the user keeps, an
optimizer's for one, still see the model), ``requires_grad`` and ``.grad``. The tensor objects
each module holds (a forward that rebinds ``self.weight``) and buffer values are already put
back around every forward by ``capture.preserve.preserved``; parameter values are not, hence
this. Whether a tensor was
written is read from its version counter, which every in-place op bumps, so restoring an
untouched model costs no copy. Tensors on the meta device hold no values and are not copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class _Saved:
    tensor: torch.Tensor
    value: torch.Tensor | None  # None on meta: nothing to put back
    version: int
    data_ptr: int
    shape: torch.Size
    requires_grad: bool
    grad: torch.Tensor | None


class KeptModel:
    """``restore()`` puts the model back as it was when this was made; ``written`` names the
    parameters and buffers a forward wrote (for a note: the user may not know)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._saved: dict[int, _Saved] = {}
        self._names: dict[int, str] = {}
        self.written: list[str] = []
        for prefix, module in model.named_modules(remove_duplicate=False):
            for kind in (module._parameters, module._buffers):
                for name, tensor in kind.items():
                    if tensor is None or id(tensor) in self._saved:
                        continue
                    self._names[id(tensor)] = f"{prefix}.{name}" if prefix else name
                    self._saved[id(tensor)] = _Saved(
                        tensor=tensor,
                        value=None if tensor.is_meta else tensor.detach().clone(),
                        version=tensor._version, data_ptr=_pointer(tensor), shape=tensor.shape,
                        requires_grad=tensor.requires_grad, grad=tensor.grad)

    def restore(self) -> None:
        for key, saved in self._saved.items():
            tensor = saved.tensor
            changed = (tensor._version != saved.version or _pointer(tensor) != saved.data_ptr
                       or tensor.shape != saved.shape)
            if changed and saved.value is not None and _same(tensor, saved):
                # written and put back (biaslint's own measurements do that): nothing to undo
                saved.version = tensor._version
            elif changed and saved.value is not None:
                self._mark(self._names[key])
                with torch.no_grad():
                    if tensor.shape != saved.shape or _pointer(tensor) != saved.data_ptr:
                        # rebound storage (``p.data = ...``, ``resize_``): take the values back
                        tensor.data = saved.value.clone()
                    else:
                        tensor.copy_(saved.value)
                saved.version, saved.data_ptr = tensor._version, _pointer(tensor)
            if tensor.requires_grad != saved.requires_grad and tensor.is_leaf:
                tensor.requires_grad_(saved.requires_grad)
            if tensor.grad is not saved.grad:
                tensor.grad = saved.grad

    def _mark(self, name: str) -> None:
        if name not in self.written:
            self.written.append(name)


def _same(tensor: torch.Tensor, saved: _Saved) -> bool:
    value = saved.value
    assert value is not None
    if tensor.shape != value.shape or tensor.dtype != value.dtype \
            or _pointer(tensor) != saved.data_ptr:
        return False
    if tensor.is_floating_point() or tensor.is_complex():
        return bool(torch.allclose(tensor.detach(), value, rtol=0.0, atol=0.0, equal_nan=True))
    return bool(torch.equal(tensor.detach(), value))


def _pointer(tensor: torch.Tensor) -> int:
    if tensor.is_meta:
        return 0
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return 0
