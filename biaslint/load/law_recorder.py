"""Record the init law of every write to a tensor's memory while a model builds.

On the meta device a model has shapes and no values: what it would start from is what its init
calls draw. A ``TorchFunctionMode`` sees every torch call of the build: factories
(``torch.randn``, ``torch.zeros``, ``torch.tensor([...])``), in-place writes (``normal_``,
``uniform_``, ``fill_``, ``copy_``, ``x[a:b] = 1.0``), and the arithmetic that scales or shifts
them (``torch.randn(d) * 0.02``, ``w.mul_(gain)``, the ``uniform_ -> erfinv_ -> mul_ -> add_ ->
clamp_`` of a truncated normal). For each it paints the law of what was written onto the bytes it
wrote (``LawBook``), so a parameter's law is read back from its own memory: ``p.data = x``,
``set_``, views, slices and ties need nothing special. What the algebra does not cover is
painted ``unknown`` with the call that made it; a rule then says "not judged" for that layer.

The laws are recorded for meta tensors only (a real tensor's values are measured, never
inferred), unless ``track_real`` is set (the tests compare laws with measured values).
"""

from __future__ import annotations

import bisect
import math
from types import FunctionType
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from biaslint.laws import EXACT_LIMIT, Law, Piece, scalar_of

Key = tuple[str, int]

_INIT_NAMES = frozenset({"uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
                         "eye_", "dirac_", "xavier_uniform_", "xavier_normal_",
                         "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_"})

_VIEWS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "t", "permute", "__getitem__",
    "narrow", "select", "unsqueeze", "squeeze", "flatten", "unflatten", "expand", "expand_as",
    "split", "chunk", "unbind", "as_strided", "detach", "alias", "movedim", "swapaxes",
    "swapdims", "diagonal", "unfold", "__get__", "requires_grad_", "detach_", "share_memory_",
    "set_", "__set__", "real", "view_as_real", "contiguous_", "tensor_split", "split_with_sizes",
    "numel", "dim", "size", "stride", "storage_offset", "data_ptr", "untyped_storage",
    "is_contiguous", "element_size", "nelement", "is_floating_point", "is_complex",
    "__len__", "__bool__", "__format__", "__repr__", "__hash__", "__eq__", "__ne__", "__iter__",
    "register_hook", "retain_grad", "_is_view", "__reduce_ex__", "__setstate__",
    "__deepcopy__", "__torch_function__", "__contains__", "__dir__", "__array__",
})
_COPIES = frozenset({
    "clone", "contiguous", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "cpu", "cuda", "positive", "__pos__", "resolve_conj", "resolve_neg",
})
_CONSTANT_FACTORIES = {"zeros": 0.0, "zeros_like": 0.0, "new_zeros": 0.0, "ones": 1.0,
                       "ones_like": 1.0, "new_ones": 1.0}
_FULL = frozenset({"full", "full_like", "new_full"})
_EMPTY = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"})
_RERUN = frozenset({"tensor", "as_tensor", "asarray", "arange", "linspace", "logspace", "eye",
                    "range", "scalar_tensor", "from_numpy", "frombuffer", "new_tensor"})
_SCALE = {"mul": 1, "multiply": 1, "__mul__": 1, "__rmul__": 1, "div": -1, "divide": -1,
          "true_divide": -1, "__truediv__": -1, "__div__": -1}
_SHIFT = {"add": 1, "__add__": 1, "__radd__": 1, "sub": -1, "subtract": -1, "__sub__": -1}
_IN_PLACE_SCALE = {"mul_": 1, "div_": -1, "true_divide_": -1, "__imul__": 1, "__itruediv__": -1}
_IN_PLACE_SHIFT = {"add_": 1, "sub_": -1, "__iadd__": 1, "__isub__": -1}


def storage_key(tensor: torch.Tensor) -> Key | None:
    try:
        storage = tensor.untyped_storage()
    except Exception:  # sparse, nested or storage-less tensors
        return None
    if tensor.device.type == "meta":
        return ("meta", storage._cdata)
    return ("real", storage.data_ptr())


def storage_runs(tensor: torch.Tensor) -> list[tuple[int, int]] | None:
    """The element ranges [start, stop) of the storage that the tensor covers, in its logical
    order; None when it overlaps itself (stride 0) or is laid out in another order."""
    n = tensor.numel()
    offset = tensor.storage_offset()
    if n == 0:
        return []
    if tensor.is_contiguous():
        return [(offset, offset + n)]
    dims = [(s, st) for s, st in zip(tensor.shape, tensor.stride()) if s != 1]
    if any(st <= 0 for _, st in dims) or any(dims[i][1] < dims[i + 1][1] * dims[i + 1][0]
                                             for i in range(len(dims) - 1)):
        return None
    # Merge the innermost dims that are contiguous into one run length.
    run = 1
    while dims and dims[-1][1] == run:
        run *= dims[-1][0]
        dims.pop()
    count = 1
    for s, _ in dims:
        count *= s
    if count > 65536:
        return None
    starts = [offset]
    for size, stride in dims:
        starts = [b + i * stride for b in starts for i in range(size)]
    return [(b, b + run) for b in starts]


class LawBook:
    """Painted laws per storage, in element units of the storage."""

    def __init__(self) -> None:
        self._pieces: dict[Key, list[Piece]] = {}  # sorted by start, disjoint
        self._starts: dict[Key, list[int]] = {}  # each piece's start, for bisection
        self._alive: list[torch.Tensor] = []  # keep painted storages alive: no address reuse

    # -- writing -----------------------------------------------------------------------------
    def paint(self, tensor: torch.Tensor, law: Law) -> None:
        key = storage_key(tensor)
        if key is None:
            return
        runs = storage_runs(tensor)
        if runs is None:
            # A self-overlapping or permuted view: note what we can, but no per-entry order.
            start = tensor.storage_offset()
            extent = 1 + sum((s - 1) * st for s, st in zip(tensor.shape, tensor.stride())
                             if s > 0)
            # Every entry written once (a transposed view): a per-entry law still holds, exact
            # values in logical order do not; with gaps or repeats, nothing is known.
            if law.kind == "exact" or tensor.numel() != extent:
                law = Law.unknown("written through a view biaslint cannot follow")
            runs = [(start, start + extent)]
        self._alive.append(tensor)
        offset = 0
        for start, stop in runs:
            self._paint_run(key, start, stop, law, offset)
            offset += stop - start

    def _paint_run(self, key: Key, start: int, stop: int, law: Law, offset: int) -> None:
        """Paint [start, stop): the pieces stay sorted and disjoint; the ones it overlaps are
        found by bisection and spliced (a table written one column at a time paints tens of
        thousands of runs)."""
        if stop <= start:
            return
        pieces = self._pieces.setdefault(key, [])
        starts = self._starts.setdefault(key, [])
        i = max(bisect.bisect_right(starts, start) - 1, 0)
        if i < len(pieces) and pieces[i].stop <= start:
            i += 1
        j = bisect.bisect_left(starts, stop, lo=i)
        new: list[Piece] = []
        if i < j and pieces[i].start < start:
            first = pieces[i]
            new.append(Piece(first.start, start, first.law, first.offset))
        new.append(Piece(start, stop, law, offset))
        if i < j and pieces[j - 1].stop > stop:
            last = pieces[j - 1]
            new.append(Piece(stop, last.stop, last.law, last.offset + (stop - last.start)))
        pieces[i:j] = new
        starts[i:j] = [p.start for p in new]

    def copy_region(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """``target`` holds a copy of ``source`` (deepcopy, ``to``, ``clone``)."""
        self.paint(target, self.law_of(source))

    # -- reading -----------------------------------------------------------------------------
    def pieces(self, tensor: torch.Tensor) -> list[Piece] | None:
        """The laws over the tensor's flattened entries, or None when it is not contiguous in
        its storage (then ``law_of`` gives one law for all of it)."""
        key = storage_key(tensor)
        if key is None:
            return None
        start = tensor.storage_offset()
        n = tensor.numel()
        if not tensor.is_contiguous():
            return None
        return self._sub_pieces(key, start, start + n)

    def law_of(self, tensor: torch.Tensor) -> Law:
        """One law for every entry of the tensor (a source being copied, scaled or shifted)."""
        if tensor.device.type != "meta" and storage_key(tensor) not in self._pieces:
            return _measured(tensor)
        pieces = self.pieces(tensor)
        if pieces is None:
            runs = storage_runs(tensor)
            key = storage_key(tensor)
            if runs is None or key is None:
                law = self._uniform_law(tensor)
                if law is not None and law.kind not in ("exact",) and not law.is_random:
                    return law
                return Law.unknown("read through a view with repeated or reordered entries")
            pieces = []
            at = 0
            for start, stop in runs:
                sub = self._sub_pieces(key, start, stop)
                for p in sub:
                    pieces.append(Piece(p.start + at, p.stop + at, p.law, p.offset))
                at += stop - start
        return combine(pieces, tensor.numel())

    def _sub_pieces(self, key: Key, start: int, stop: int) -> list[Piece]:
        out: list[Piece] = []
        cursor = start
        pieces = self._pieces.get(key, [])
        first = max(bisect.bisect_right(self._starts.get(key, []), start) - 1, 0)
        for piece in pieces[first:]:
            if piece.start >= stop:
                break
            if piece.stop <= start:
                continue
            lo, hi = max(piece.start, start), min(piece.stop, stop)
            if lo > cursor:
                out.append(Piece(cursor - start, lo - start, Law.unknown("never written")))
            out.append(Piece(lo - start, hi - start, piece.law, piece.offset + (lo - piece.start)))
            cursor = hi
        if cursor < stop:
            out.append(Piece(cursor - start, stop - start, Law.unknown("never written")))
        return out

    def _uniform_law(self, tensor: torch.Tensor) -> Law | None:
        key = storage_key(tensor)
        laws = {id(p.law): p.law for p in self._pieces.get(key, ())} if key else {}
        return next(iter(laws.values())) if len(laws) == 1 else None


def combine(pieces: list[Piece], numel: int) -> Law:
    """One law for a tensor made of pieces: the piece's law when there is one, exact values
    when every piece is exact and small, else unknown (mixing draws loses the per-entry law)."""
    if not pieces:
        return Law.unknown("no entries") if numel else Law.constant(0.0)
    unknown = next((p.law for p in pieces if not p.law.known), None)
    if unknown is not None:
        return unknown
    if len(pieces) == 1:
        p = pieces[0]
        if p.law.kind == "exact":
            return Law.exact(p.exact_values(), p.law.how)
        return p.law
    if all(not p.law.is_random for p in pieces) and numel <= EXACT_LIMIT:
        parts = [p.exact_values() if p.law.kind == "exact"
                 else torch.full((p.size,), p.law.value, dtype=torch.float64) for p in pieces]
        return Law.exact(torch.cat(parts))
    first = pieces[0].law
    if all(p.law == first for p in pieces):
        return first
    return Law.unknown("made of entries drawn by different calls")


def _measured(tensor: torch.Tensor) -> Law:
    """The law of a real tensor: its values (they are known)."""
    if not isinstance(tensor, torch.Tensor) or tensor.is_sparse or tensor.is_complex():
        return Law.unknown("not a dense real tensor")
    if tensor.numel() > EXACT_LIMIT:
        return Law.unknown(f"copied from a tensor of {tensor.numel():,} values")
    try:
        return Law.exact(tensor.detach())
    except Exception:  # quantized, fake or otherwise unreadable
        return Law.unknown("values not readable")


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, *names: str,
         default: Any = None) -> Any:
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[index] if len(args) > index else default


class LawMode(TorchFunctionMode):
    """The torch function mode that paints laws while a model builds."""

    def __init__(self, book: LawBook, track_real: bool = False) -> None:
        super().__init__()
        self.book = book
        self.track_real = track_real
        self.paused = 0

    def _tracked(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and (value.device.type == "meta"
                                                    or self.track_real)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.paused or name in _VIEWS:
            return func(*args, **kwargs)
        # nn.init functions dispatch here; so do the stand-ins a library swaps into
        # torch.nn.init (transformers' guarded copies): Python functions of the same names.
        if getattr(func, "__module__", None) == "torch.nn.init" or (
                name in _INIT_NAMES and isinstance(func, FunctionType)):
            return self._init_function(func, name, args, kwargs)
        result = func(*args, **kwargs)
        try:
            with _cpu_factory():  # the laws' own tensors live on the CPU
                self._after(func, name, args, kwargs, result)
        except Exception:  # a law we cannot derive is unknown, never a failure
            for target in self._written(name, args, kwargs, result):
                try:
                    self.book.paint(target, Law.unknown(f"set by {name}"))
                except Exception:  # painting unknown is best effort too
                    pass
        return result

    # -- nn.init functions that dispatch to the mode (uniform_, normal_, kaiming_uniform_ in
    #    recent torch; more in others): their inner calls are not seen, so the law is taken from
    #    their arguments, with torch's own fan and gain helpers.
    def _init_function(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
        result = func(*args, **kwargs)
        tensor = args[0] if args else kwargs.get("tensor")
        if isinstance(tensor, torch.Tensor) and self._tracked(tensor):
            try:
                with _cpu_factory():
                    law = init_function_law(name, tensor, args[1:], kwargs)
            except Exception:  # a law we cannot derive is unknown
                law = Law.unknown(f"nn.init.{name}")
            self.book.paint(tensor, law)
        return result

    def _written(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 result: Any) -> list[torch.Tensor]:
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor) and self._tracked(out):
            return [out]
        if name.endswith("_") and not name.endswith("__") or name in ("__setitem__",) \
                or name.startswith("__i"):
            if args and self._tracked(args[0]):
                return [args[0]]
            return []
        if isinstance(result, torch.Tensor) and self._tracked(result):
            return [result]
        return []

    def _after(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], result: Any) -> None:
        book = self.book
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor) and self._tracked(out):
            book.paint(out, self._fresh(func, name, args, kwargs, out))
            return
        in_place = name.endswith("_") and not name.endswith("__") or name.startswith("__i")
        if name == "__setitem__":
            self._setitem(args)
            return
        if in_place:
            if args and self._tracked(args[0]):
                book.paint(args[0], self._in_place(name, args, kwargs))
            return
        if isinstance(result, torch.Tensor) and self._tracked(result):
            book.paint(result, self._fresh(func, name, args, kwargs, result))
        elif isinstance(result, (tuple, list)):
            for item in result:
                if isinstance(item, torch.Tensor) and self._tracked(item) \
                        and storage_key(item) not in book._pieces:
                    book.paint(item, Law.unknown(f"computed by {name}"))

    def _value_law(self, value: Any) -> Law:
        scalar = scalar_of(value)
        if scalar is not None:
            return Law.constant(scalar)
        if isinstance(value, torch.Tensor):
            return self.book.law_of(value)
        return Law.unknown(f"set from a {type(value).__name__}")

    def _setitem(self, args: tuple[Any, ...]) -> None:
        target, index, value = args[0], args[1], args[2]
        if not self._tracked(target):
            return
        view = target[index]  # the mode is off inside its own handler: not recorded
        law = self._value_law(value)
        if isinstance(view, torch.Tensor) and storage_key(view) == storage_key(target) \
                and view.numel():
            if law.kind == "exact" and law.values is not None \
                    and law.values.numel() != view.numel():
                law = Law.exact(torch.broadcast_to(law.values.reshape(
                    value.shape), view.shape)) if isinstance(value, torch.Tensor) else law
            if law.is_random and isinstance(value, torch.Tensor) \
                    and value.numel() < view.numel():
                law = Law.unknown("one draw broadcast over several entries")
            self.book.paint(view, law)
        else:  # advanced indexing: which entries were written is not a view
            self.book.paint(target, Law.unknown("written through an index tensor"))

    def _in_place(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Law:
        target = args[0]
        if name == "normal_":
            mean = scalar_of(_arg(args, kwargs, 1, "mean", default=0.0))
            std = scalar_of(_arg(args, kwargs, 2, "std", default=1.0))
            if mean is None or std is None:
                return Law.unknown("normal_ with tensor arguments")
            return Law.normal(mean, std, f"normal_({mean:g}, {std:.3g})")
        if name == "uniform_":
            a = scalar_of(_arg(args, kwargs, 1, "from", "a", default=0.0))
            b = scalar_of(_arg(args, kwargs, 2, "to", "b", default=1.0))
            if a is None or b is None:
                return Law.unknown("uniform_ with tensor arguments")
            return Law.uniform(a, b, f"uniform_({a:.3g}, {b:.3g})")
        if name in ("zero_",):
            return Law.constant(0.0, "zero_()")
        if name == "fill_":
            law = self._value_law(_arg(args, kwargs, 1, "value"))
            if law.kind == "constant":
                return law.with_how(f"fill_({law.value:g})")
            return Law.unknown("fill_ with a value biaslint cannot read")
        if name == "copy_":
            source = _arg(args, kwargs, 1, "src")
            law = self._value_law(source)
            if isinstance(source, torch.Tensor) and source.numel() != target.numel():
                if law.kind == "exact" and law.values is not None:
                    law = Law.exact(torch.broadcast_to(law.values.reshape(source.shape),
                                                       target.shape))
                elif law.is_random:
                    law = Law.unknown("one draw broadcast over several entries")
            return law
        if name in _IN_PLACE_SCALE or name in _IN_PLACE_SHIFT:
            before = self.book.law_of(target)
            other = _arg(args, kwargs, 1, "other")
            law = self._value_law(other)
            if law.kind != "constant":
                if before.kind in ("exact", "constant") and law.kind == "exact":
                    return self._fold(name.rstrip("_").strip("_").lstrip("i"), before, law)
                return Law.unknown(f"{name} by a tensor")
            if name in _IN_PLACE_SCALE:
                factor = law.value if _IN_PLACE_SCALE[name] > 0 else (
                    1 / law.value if law.value else math.inf)
                return before.affine(factor) if math.isfinite(factor) else \
                    Law.unknown("divided by zero")
            alpha = scalar_of(kwargs.get("alpha", 1.0)) or 1.0
            return before.affine(1.0, _IN_PLACE_SHIFT[name] * alpha * law.value)
        if name == "neg_":
            return self.book.law_of(target).affine(-1.0)
        if name in ("clamp_", "clip_", "clamp_min_", "clamp_max_"):
            before = self.book.law_of(target)
            if name == "clamp_min_":
                low, high = _arg(args, kwargs, 1, "min"), None
            elif name == "clamp_max_":
                low, high = None, _arg(args, kwargs, 1, "max")
            else:
                low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
            if (low is not None and scalar_of(low) is None) or \
                    (high is not None and scalar_of(high) is None):
                return Law.unknown(f"{name} with tensor bounds")
            return before.clamp(scalar_of(low), scalar_of(high))
        if name == "erfinv_":
            return self.book.law_of(target).erfinv()
        if name in ("requires_grad_", "detach_", "share_memory_", "set_", "resize_"):
            return self.book.law_of(target)
        return Law.unknown(f"set by {name}")

    def _fold(self, op: str, a: Law, b: Law) -> Law:
        x = a.values if a.kind == "exact" else torch.tensor(a.value, dtype=torch.float64)
        y = b.values if b.kind == "exact" else torch.tensor(b.value, dtype=torch.float64)
        fn = {"mul": torch.mul, "div": torch.div, "truediv": torch.div, "true_divide": torch.div,
              "add": torch.add, "sub": torch.sub}.get(op)
        if fn is None or x is None or y is None:
            return Law.unknown(f"{op} by a tensor")
        return Law.exact(fn(x, y))

    def _fresh(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], result: torch.Tensor) -> Law:
        """The law of a tensor a function returned."""
        if name in _EMPTY:
            return Law.uninitialized(f"torch.{name}")
        if name in _CONSTANT_FACTORIES:
            return Law.constant(_CONSTANT_FACTORIES[name], f"torch.{name}")
        if name in _FULL:
            index = 2 if name == "new_full" or name == "full_like" else 1
            value = scalar_of(_arg(args, kwargs, index, "fill_value"))
            return Law.constant(value, f"torch.{name}") if value is not None else \
                Law.unknown(f"torch.{name} with a tensor value")
        if name in ("randn", "randn_like", "new_randn"):
            return Law.normal(0.0, 1.0, f"torch.{name}")
        if name in ("rand", "rand_like"):
            return Law.uniform(0.0, 1.0, f"torch.{name}")
        if name == "normal":
            mean = scalar_of(_arg(args, kwargs, 0, "mean", default=0.0))
            std = scalar_of(_arg(args, kwargs, 1, "std", default=1.0))
            if mean is not None and std is not None:
                return Law.normal(mean, std, f"torch.normal({mean:g}, {std:.3g})")
            return Law.unknown("torch.normal with tensor arguments")
        if name in _RERUN:
            if result.numel() > EXACT_LIMIT:
                return Law.unknown(f"torch.{name} of {result.numel():,} values")
            rerun = {k: v for k, v in kwargs.items() if k != "out"}
            with _cpu_factory():
                again = func(*args, **{**rerun, "device": "cpu"}) if name != "new_tensor" \
                    else torch.as_tensor(args[1], dtype=result.dtype)
            return Law.exact(again, f"torch.{name}")
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        if name in _COPIES and tensors:
            return self.book.law_of(tensors[0])
        if name in ("neg", "__neg__", "negative"):
            return self.book.law_of(tensors[0]).affine(-1.0)
        if (name in _SCALE or name in _SHIFT or name in ("__rsub__", "rsub", "__rtruediv__",
                                                          "__rdiv__")) and args:
            return self._arithmetic(name, args, kwargs)
        if name in ("cat", "concat", "concatenate", "stack") and args:
            return self._cat(name, args, kwargs)
        # Anything else computed only from exact values is folded on the CPU.
        laws = [self.book.law_of(t) for t in tensors]
        if tensors and all(law.kind in ("constant", "exact") for law in laws) \
                and result.numel() <= EXACT_LIMIT:
            cpu = [self._materialize(t, law) for t, law in zip(tensors, laws)]
            swap = dict(zip(map(id, tensors), cpu))
            new_args = tuple(swap.get(id(a), a) for a in args)
            new_kwargs = {k: swap.get(id(v), v) for k, v in kwargs.items()}
            if "device" in new_kwargs:
                new_kwargs["device"] = "cpu"
            with _cpu_factory():
                value = func(*new_args, **new_kwargs)
            if isinstance(value, torch.Tensor):
                return Law.exact(value, f"computed by {name}")
        return Law.unknown(f"computed by {name}")

    def _materialize(self, tensor: torch.Tensor, law: Law) -> torch.Tensor:
        if law.kind == "constant":
            return torch.full(tuple(tensor.shape), law.value, dtype=torch.float64).to(
                tensor.dtype if tensor.dtype.is_floating_point else torch.float64)
        assert law.values is not None
        values = law.values.reshape(tuple(tensor.shape))
        return values.to(tensor.dtype) if tensor.dtype != torch.bool else values.bool()

    def _arithmetic(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Law:
        a, b = args[0], (args[1] if len(args) > 1 else kwargs.get("other"))
        la, lb = self._value_law(a), self._value_law(b)
        # One side a single number (a Python scalar or a one-entry tensor): an affine map of the
        # other side's law.
        a_single = not isinstance(a, torch.Tensor) or a.numel() == 1
        b_single = not isinstance(b, torch.Tensor) or b.numel() == 1
        if b_single and lb.kind == "constant" and not (a_single and la.kind == "constant"):
            tensor_law, c = la, lb.value
        elif a_single and la.kind == "constant" and not b_single:
            tensor_law, c = lb, la.value
        else:
            tensor_law, c = None, math.nan
        if tensor_law is not None:
            if name in _SCALE:
                if _SCALE[name] < 0:  # x / c (c on the right: torch has no scalar / tensor here)
                    return tensor_law.affine(1 / c) if c else Law.unknown("divided by zero")
                return tensor_law.affine(c)
            if name in _SHIFT:
                alpha = scalar_of(kwargs.get("alpha", 1.0))
                alpha = 1.0 if alpha is None else alpha
                if tensor_law is lb and name not in ("__radd__", "add", "__add__"):
                    return tensor_law.affine(-alpha, c)  # c - x
                return tensor_law.affine(1.0, _SHIFT[name] * alpha * c)
            if name in ("__rsub__", "rsub"):
                return tensor_law.affine(-1.0, c)
        if la.kind in ("constant", "exact") and lb.kind in ("constant", "exact"):
            x = self._materialize(a, la) if isinstance(a, torch.Tensor) else la.value
            y = self._materialize(b, lb) if isinstance(b, torch.Tensor) else lb.value
            op = {"mul": torch.mul, "multiply": torch.mul, "__mul__": torch.mul,
                  "__rmul__": torch.mul, "add": torch.add, "__add__": torch.add,
                  "__radd__": torch.add, "sub": torch.sub, "subtract": torch.sub,
                  "__sub__": torch.sub, "div": torch.div, "divide": torch.div,
                  "true_divide": torch.div, "__truediv__": torch.div, "__div__": torch.div,
                  "__rsub__": lambda p, q: q - p, "rsub": lambda p, q: q - p,
                  "__rtruediv__": lambda p, q: q / p, "__rdiv__": lambda p, q: q / p}.get(name)
            if op is not None:
                return Law.exact(torch.as_tensor(op(x, y), dtype=torch.float64))
        return Law.unknown(f"computed by {name} of two drawn tensors")

    def _cat(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Law:
        tensors = list(args[0])
        dim = _arg(args, kwargs, 1, "dim", default=0)
        laws = [self.book.law_of(t) for t in tensors]
        if any(not law.known for law in laws):
            return next(law for law in laws if not law.known)
        if all(law.kind in ("constant", "exact") for law in laws):
            total = sum(t.numel() for t in tensors)
            if total <= EXACT_LIMIT:
                cpu = [self._materialize(t, law) for t, law in zip(tensors, laws)]
                return Law.exact(torch.cat(cpu, dim) if name != "stack" else torch.stack(cpu, dim))
        if all(law == laws[0] for law in laws):
            return laws[0]
        return Law.unknown("joined from entries drawn by different calls")


class _cpu_factory:
    """Factories re-run for their values go to the CPU, whatever device context the build set."""

    def __enter__(self) -> None:
        self._mode = torch.device("cpu")
        self._mode.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def orthogonal_law(tensor: torch.Tensor, gain: float) -> Law:
    rows = tensor.shape[0] if tensor.dim() else 1
    cols = tensor.numel() // max(rows, 1)
    return Law.moments(0.0, abs(gain) / math.sqrt(max(rows, cols, 1)), "orthogonal",
                       f"orthogonal_(gain={gain:g})")


def paint_parameters(book: LawBook, model: nn.Module) -> dict[str, list[Piece] | None]:
    """The pieces of every parameter of the model, by qualified name."""
    result: dict[str, list[Piece] | None] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        result[name] = book.pieces(param)
    return result


def init_function_law(name: str, tensor: torch.Tensor, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Law:
    """The law ``torch.nn.init.<name>(tensor, *args, **kwargs)`` draws from."""
    init = nn.init
    how = f"nn.init.{name}"

    def get(index: int, key: str, default: Any) -> Any:
        return kwargs[key] if key in kwargs else (args[index] if len(args) > index else default)

    if name == "uniform_":
        return Law.uniform(get(0, "a", 0.0), get(1, "b", 1.0), how)
    if name == "normal_":
        return Law.normal(get(0, "mean", 0.0), get(1, "std", 1.0), how)
    if name == "trunc_normal_":
        return Law.trunc_normal(get(0, "mean", 0.0), get(1, "std", 1.0), get(2, "a", -2.0),
                                get(3, "b", 2.0), how)
    if name == "constant_":
        return Law.constant(get(0, "val", 0.0), how)
    if name in ("zeros_", "ones_"):
        return Law.constant(0.0 if name == "zeros_" else 1.0, how)
    if name in ("xavier_uniform_", "xavier_normal_"):
        fan_in, fan_out = init._calculate_fan_in_and_fan_out(tensor)
        std = get(0, "gain", 1.0) * math.sqrt(2.0 / float(fan_in + fan_out))
        if name == "xavier_normal_":
            return Law.normal(0.0, std, how)
        return Law.uniform(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, how)
    if name in ("kaiming_uniform_", "kaiming_normal_"):
        a, mode, nonlinearity = get(0, "a", 0), get(1, "mode", "fan_in"), \
            get(2, "nonlinearity", "leaky_relu")
        std = init.calculate_gain(nonlinearity, a) / math.sqrt(
            init._calculate_correct_fan(tensor, mode))
        if name == "kaiming_normal_":
            return Law.normal(0.0, std, how)
        return Law.uniform(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, how)
    if name == "orthogonal_":
        return orthogonal_law(tensor, get(0, "gain", 1.0))
    if name in ("eye_", "dirac_") and tensor.numel() <= EXACT_LIMIT:
        real = torch.empty(tuple(tensor.shape), dtype=torch.float64, device="cpu")
        getattr(init, name)(real, *args, **kwargs)
        return Law.exact(real, how)
    return Law.unknown(how)
