"""Record which memory the build allocated without values and never wrote (for BL012).

``torch.empty`` and its kin (``empty_like``, ``new_empty``, ``empty_strided``,
``Tensor.new(*sizes)``) hand out memory as it was: zeros, denormals, 1e28 or NaN. A
``TorchFunctionMode`` sees every torch call of the build, on real tensors and on the meta
device alike: it notes each such allocation (its bytes, the call, the user's line) and removes
from it every byte a later call writes (an in-place method, ``nn.init``, ``x[a:b] = v``,
``out=``, ``inplace=True``, ``copy_`` from ``load_state_dict``). A copy (``clone``, ``to``,
``deepcopy``) of unwritten memory is unwritten where its source was. What is left of a
parameter's bytes at the end is what nobody wrote.

A call that may write through a way the mode cannot follow (``numpy()``, a view it cannot lay
out, an error while it looks) counts as a write of the whole tensor: the record can miss an
uninitialized parameter, never invent one. Allocations are kept alive while some of their
bytes are unwritten, so no other tensor can take their address.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from biaslint.findings import Location, Unwritten
from biaslint.load.law_recorder import Key, storage_key, storage_runs

_ALLOCATIONS = frozenset({"empty", "empty_like", "new_empty", "empty_strided",
                          "new_empty_strided", "empty_permuted"})
_COPIES = frozenset({"clone", "contiguous", "to", "float", "double", "half", "bfloat16", "type",
                     "type_as", "cpu", "cuda", "__deepcopy__", "deepcopy"})
# In-place names that change a tensor's metadata, not its values.
_NOT_WRITES = frozenset({"requires_grad_", "detach_", "share_memory_", "set_", "resize_",
                         "resize_as_", "as_strided_", "squeeze_", "unsqueeze_", "t_",
                         "transpose_", "swapdims_", "swapaxes_", "rename_", "retain_grad_",
                         "_set_grad_enabled"})
_AUGMENTED = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                        "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
                        "__ilshift__", "__irshift__", "__imatmul__"})
# Calls after which the values may be written where the mode does not see it.
_ESCAPES = frozenset({"numpy", "__array__", "__dlpack__"})


# Past this many unwritten ranges (a loop writing every other column), a block keeps one flag per
# byte instead, when its storage has at most MASK_LIMIT bytes; a larger one is followed by the
# extent of each write, which can miss an unwritten byte between, never invent one.
MAX_RANGES = 256
MASK_LIMIT = 1 << 26


@dataclass
class _Block:
    tensor: torch.Tensor  # kept alive while tracked: its address is not reused
    unwritten: list[tuple[int, int]]  # byte ranges of the storage that no call wrote
    how: str
    location: Location | None
    # The unwritten bytes as the recorded build left them (real tensors): a model the user
    # holds may be written after the recording ended (``load_state_dict`` outside the block).
    sealed: list[torch.Tensor] | None = None
    # One flag per byte of the storage (True: unwritten), in place of ``unwritten`` once the
    # ranges fragment; ``left`` counts the True flags.
    mask: torch.Tensor | None = None
    left: int = 0

    def empty(self) -> bool:
        return self.left == 0 if self.mask is not None else not self.unwritten

    def changed(self) -> bool:
        """Some unwritten byte differs from what the recording saw at its end."""
        if self.sealed is None:
            return False
        return any(not torch.equal(old, new) for old, new in zip(self.sealed, self._bytes()))

    def _bytes(self) -> list[torch.Tensor]:
        raw = torch.empty(0, dtype=torch.uint8, device=self.tensor.device)
        raw.set_(self.tensor.untyped_storage())
        if self.mask is not None:
            return [raw[self.mask.to(raw.device)]]
        return [raw[a:b] for a, b in self.unwritten]

    def seal(self) -> None:
        if self.tensor.device.type != "meta":
            self.sealed = [part.clone() for part in self._bytes()]

    def write(self, tensor: torch.Tensor) -> None:
        """Take the bytes ``tensor`` covers out of the unwritten ones."""
        runs = None if self.mask is not None else _span_runs(tensor)
        if runs is not None and len(runs) + len(self.unwritten) <= MAX_RANGES:
            self.unwritten = _minus(self.unwritten, runs)
            return
        mask = self.mask if self.mask is not None else self._to_mask()
        if mask is None:
            self.unwritten = _minus(self.unwritten, [_extent(tensor)])
            return
        view = _byte_view(mask, tensor)
        if 0 in tensor.stride():
            view.fill_(False)
            self.left = int(mask.sum())
        else:
            self.left -= int(view.sum())
            view.fill_(False)

    def _to_mask(self) -> torch.Tensor | None:
        nbytes = self.tensor.untyped_storage().nbytes()
        if nbytes > MASK_LIMIT:
            return None
        mask = torch.zeros(nbytes, dtype=torch.bool)
        for a, b in self.unwritten:
            mask[a:b] = True
        self.mask, self.left, self.unwritten = mask, int(mask.sum()), []
        return mask

    def missing(self, tensor: torch.Tensor) -> int:
        """How many of the tensor's entries hold a byte no call wrote."""
        if self.mask is None:
            return _overlap(self.unwritten, _span(tensor)) // max(tensor.element_size(), 1)
        return int(_byte_view(self.mask, tensor).reshape(-1, tensor.element_size())
                   .any(dim=1).sum())

    def element_mask(self, start: int, count: int, size: int) -> torch.Tensor:
        """Per element [start, start + count) of ``size`` bytes (storage bytes from
        ``start * size``): whether any of its bytes is unwritten."""
        if self.mask is not None:
            part = self.mask[start * size:(start + count) * size]
            return part.reshape(count, size).any(dim=1)
        flags = torch.zeros(count, dtype=torch.bool)
        base = start * size
        for a, b in self.unwritten:
            lo, hi = max(a, base), min(b, base + count * size)
            if hi > lo:
                flags[(lo - base) // size:(hi - base + size - 1) // size] = True
        return flags


def _ranges_mask(block: _Block) -> torch.Tensor | None:
    """One flag per byte of the block's storage (True: unwritten), built from its ranges
    without changing the block; None past ``MASK_LIMIT`` bytes."""
    nbytes = block.tensor.untyped_storage().nbytes()
    if nbytes > MASK_LIMIT:
        return None
    mask = torch.zeros(nbytes, dtype=torch.bool)
    for a, b in block.unwritten:
        mask[a:b] = True
    return mask


def _byte_view(mask: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """The flags of the bytes ``tensor`` covers, shaped (*tensor.shape, element_size)."""
    size = tensor.element_size()
    return torch.as_strided(mask, (*tensor.shape, size),
                            (*(st * size for st in tensor.stride()), 1),
                            int(tensor.storage_offset()) * size)


def _span_runs(tensor: torch.Tensor) -> list[tuple[int, int]] | None:
    """The byte ranges the tensor covers, or None when the mode cannot lay it out run by run."""
    runs = storage_runs(tensor)
    if runs is None:
        return None
    size = tensor.element_size()
    return [(a * size, b * size) for a, b in runs]


def _runs_of(flags: torch.Tensor) -> list[tuple[int, int]]:
    """The runs [start, stop) of True in a 1-d boolean tensor."""
    hits = torch.nonzero(flags).reshape(-1)
    if not hits.numel():
        return []
    breaks = torch.nonzero(hits[1:] != hits[:-1] + 1).reshape(-1)
    starts = [int(hits[0])] + [int(hits[i + 1]) for i in breaks]
    stops = [int(hits[i]) + 1 for i in breaks] + [int(hits[-1]) + 1]
    return list(zip(starts, stops))


def _extent(tensor: torch.Tensor) -> tuple[int, int]:
    size = tensor.element_size()
    start = int(tensor.storage_offset())
    extent = 1 + sum((int(n) - 1) * st for n, st in zip(tensor.shape, tensor.stride()) if n > 0)
    return start * size, (start + extent) * size


def _span(tensor: torch.Tensor) -> list[tuple[int, int]]:
    """The byte ranges of its storage the tensor covers (its whole extent when the mode
    cannot lay it out entry by entry)."""
    size = tensor.element_size()
    runs = storage_runs(tensor)
    if runs is None:
        start = int(tensor.storage_offset())
        extent = 1 + sum((int(s) - 1) * st for s, st in zip(tensor.shape, tensor.stride())
                         if s > 0)
        runs = [(start, start + extent)]
    return [(a * size, b * size) for a, b in runs]


def _minus(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = ranges
    for lo, hi in cut:
        kept: list[tuple[int, int]] = []
        for a, b in out:
            if b <= lo or a >= hi:
                kept.append((a, b))
                continue
            if a < lo:
                kept.append((a, lo))
            if b > hi:
                kept.append((hi, b))
        out = kept
    return out


def _overlap(ranges: list[tuple[int, int]], within: list[tuple[int, int]]) -> int:
    return sum(max(0, min(b, hi) - max(a, lo)) for a, b in ranges for lo, hi in within)


class EmptyBook:
    """The allocations without values that some bytes of are still unwritten, by storage."""

    def __init__(self) -> None:
        self.blocks: dict[Key, _Block] = {}

    def seal(self) -> None:
        """The recording ends: keep the unwritten bytes as they are, to tell a later write."""
        for block in self.blocks.values():
            block.seal()

    def allocated(self, tensor: torch.Tensor, how: str, location: Location | None) -> None:
        key = storage_key(tensor)
        nbytes = tensor.untyped_storage().nbytes()
        if key is not None and nbytes:
            self.blocks[key] = _Block(tensor, [(0, nbytes)], how, location)

    def written(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        key = storage_key(tensor)
        block = self.blocks.get(key) if key is not None else None
        if key is None or block is None:
            return
        block.write(tensor)
        if block.empty():
            del self.blocks[key]

    def written_at(self, target: torch.Tensor, index: Any) -> None:
        """``target[index] = value``: the entries the index selects, when it is a view."""
        view = target[index] if index is not None else target
        if isinstance(view, torch.Tensor) and storage_key(view) == storage_key(target):
            self.written(view)
        else:  # advanced indexing: which entries were written is not a view
            self.written(target)

    def copied(self, source: Any, copy: Any) -> None:
        """``copy`` holds ``source``'s values: unwritten where they were."""
        if not isinstance(source, torch.Tensor) or not isinstance(copy, torch.Tensor):
            return
        key = storage_key(source)
        block = self.blocks.get(key) if key is not None else None
        if block is None or storage_key(copy) == key:
            return
        if not (source.is_contiguous() and copy.is_contiguous()) \
                or source.numel() != copy.numel():
            return  # not followed: the copy counts as written
        size, new_size = source.element_size(), copy.element_size()
        flags = block.element_mask(int(source.storage_offset()), source.numel(), size)
        if not bool(flags.any()):
            return
        copy_key = storage_key(copy)
        if copy_key is None:
            return
        fresh = _Block(copy, [], block.how, block.location)
        nbytes = copy.untyped_storage().nbytes()
        if nbytes <= MASK_LIMIT:
            fresh.mask = torch.zeros(nbytes, dtype=torch.bool)
            base = int(copy.storage_offset()) * new_size
            fresh.mask[base:base + copy.numel() * new_size] = \
                flags.repeat_interleave(new_size)
            fresh.left = int(fresh.mask.sum())
        else:  # a large storage: followed as ranges while they are few, else not followed
            base = int(copy.storage_offset()) * new_size
            ranges = _runs_of(flags)
            if len(ranges) > MAX_RANGES:
                return  # the copy counts as written: the record can miss, never invent
            fresh.unwritten = [(base + a * new_size, base + b * new_size) for a, b in ranges]
        self.blocks[copy_key] = fresh

    def _block_of(self, tensor: torch.Tensor) -> _Block | None:
        """The allocation ``tensor`` lives in while some of its bytes are unwritten, as the
        recording left them (None once something wrote them after it ended)."""
        key = storage_key(tensor)
        block = self.blocks.get(key) if key is not None else None
        if block is None or not tensor.numel() or block.changed():
            return None
        return block

    def unwritten_entries(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Per entry of ``tensor`` (its shape, on the CPU), whether some byte of it is one no
        call wrote; None when every entry was written, or when the entries cannot be told
        apart (a strided view of a storage past ``MASK_LIMIT`` bytes)."""
        block = self._block_of(tensor)
        if block is None:
            return None
        size = tensor.element_size()
        if tensor.is_contiguous():
            flags = block.element_mask(int(tensor.storage_offset()), tensor.numel(), size)
            flags = flags.reshape(tensor.shape)
        else:
            mask = block.mask if block.mask is not None else _ranges_mask(block)
            if mask is None:
                return None
            flags = _byte_view(mask, tensor).reshape(*tensor.shape, size).any(dim=-1)
        return flags if bool(flags.any()) else None

    def unwritten_of(self, tensor: torch.Tensor) -> Unwritten | None:
        """The tensor's entries no call wrote, or None when every one was written (or it was
        not allocated without values)."""
        block = self._block_of(tensor)
        if block is None:
            return None
        missing = block.missing(tensor)
        if not missing:
            return None
        return Unwritten(entries=missing, total=tensor.numel(), how=block.how,
                         location=block.location)


def _new_sizes(args: tuple[Any, ...]) -> bool:
    """``Tensor.new(*sizes)`` (no values) rather than ``Tensor.new(data)``."""
    rest = args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = tuple(rest[0])
    return bool(rest) and all(isinstance(s, int) and not isinstance(s, bool) for s in rest)


class EmptyMode(TorchFunctionMode):
    """The torch function mode that keeps an ``EmptyBook`` while a model builds. ``locate``
    names the user's line of the call being made."""

    def __init__(self, book: EmptyBook, locate: Callable[[], Location | None]) -> None:
        super().__init__()
        self.book = book
        self.locate = locate

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "").split(".")[0]
        if not self.book.blocks and name not in _ALLOCATIONS and name != "new":
            return result  # nothing tracked, nothing allocated: the common case
        try:
            self._after(func, name, args, kwargs, result)
        except Exception:  # the mode cannot follow: count every tensor argument written
            for value in list(args) + list(kwargs.values()):
                try:
                    self.book.written(value)
                except Exception:  # best effort, never break a build
                    pass
        return result

    def _after(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], result: Any) -> None:
        book = self.book
        out = kwargs.get("out")
        if out is not None:
            for target in out if isinstance(out, (tuple, list)) else (out,):
                book.written(target)
            return
        if isinstance(result, torch.Tensor) and (
                name in _ALLOCATIONS or (name == "new" and _new_sizes(args))):
            book.allocated(result, _allocator(func, name), self.locate())
            return
        first = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
        if name == "__setitem__" and len(args) > 1 and isinstance(first, torch.Tensor):
            book.written_at(first, args[1])
        elif name in _COPIES:
            book.copied(first, result)
        elif _writes_first(func, name, kwargs) or name in _ESCAPES:
            for target in first if isinstance(first, (tuple, list)) else (first,):
                book.written(target)


def _writes_first(func: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> bool:
    """The call writes its first argument: an in-place method or function (``normal_``,
    ``_foreach_mul_``), an augmented assignment, ``inplace=True``, an ``nn.init`` function."""
    if name in _NOT_WRITES:
        return False
    return (name.endswith("_") and not name.endswith("__")) or name in _AUGMENTED \
        or kwargs.get("inplace") is True or getattr(func, "__module__", None) == "torch.nn.init"


def _allocator(func: Callable[..., Any], name: str) -> str:
    return f"torch.{name}" if getattr(func, "__module__", None) == "torch" else f"Tensor.{name}"


def unwritten_parameters(model: nn.Module, book: EmptyBook) -> dict[str, Unwritten]:
    """The model's parameters with entries no call wrote, by qualified name (every name a tied
    parameter is registered under)."""
    found: dict[str, Unwritten] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        unwritten = book.unwritten_of(param)
        if unwritten is not None:
            found[name] = unwritten
    return found


def unwritten_masks(model: nn.Module, book: EmptyBook) -> dict[str, torch.Tensor]:
    """Per parameter with entries no call wrote (each tensor once, by its first name), which
    entries those are; parameters on the meta device hold no memory and have none."""
    found: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if param.device.type != "meta" and param.dtype.is_floating_point:
            flags = book.unwritten_entries(param)
            if flags is not None:
                found[name] = flags
    return found


# What the measurements read in place of the memory nobody wrote: the draw BL012's fix writes,
# trunc_normal(std=0.02), from a generator of its own (the same on every run).
DRAWN_STD = 0.02
DRAWN_SEED = 20250101


@contextmanager
def drawn_in(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[list[str]]:
    """While the lint runs, the entries no call of the build wrote hold a fixed draw instead
    of what the memory held (zeros, 1e28, NaN: different on every run, so a measurement on
    them would be too); the memory's bytes are put back after. Yields what was drawn, by
    parameter, for a note."""
    params = dict(model.named_parameters())
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    said: list[str] = []
    generator = torch.Generator().manual_seed(DRAWN_SEED)
    with torch.no_grad():
        for name, flags in masks.items():
            param = params.get(name)
            if param is None or param.shape != flags.shape or param.device.type == "meta":
                continue
            draw = torch.randn(param.shape, generator=generator).clamp_(-2.0, 2.0) * DRAWN_STD
            where = flags.to(param.device)
            kept.append((param, where, param.detach()[where].clone()))
            param.detach()[where] = draw.to(param.device, param.dtype)[where]
            said.append(f"{name} ({int(flags.sum()):,} of {param.numel():,} entries)")
    try:
        yield said
    finally:
        with torch.no_grad():
            for tensor, where, old in kept:
                tensor.detach()[where] = old
