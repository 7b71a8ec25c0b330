"""Record where the user's code built each module and last initialized each parameter.

While the target builds we patch ``nn.Module.__init__``, the ``torch.nn.init`` functions and the
in-place ``Tensor`` initializers, and note the first stack frame outside torch (and outside
biaslint) for each call. Everything patched is restored in ``finally``, even when the build raises.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
import sysconfig
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from biaslint.findings import BuildFrame, InitCall, Location
from biaslint.load.law_recorder import LawBook, LawMode, init_function_law
from biaslint.load.unwritten import EmptyBook, EmptyMode
from biaslint.sources import remembered

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

# Initializers in torch.nn.init that write a tensor in place.
INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "sparse_",
)
# In-place Tensor methods that (re)write every element of a tensor.
TENSOR_METHODS = (
    "normal_", "uniform_", "zero_", "fill_", "copy_", "constant_", "exponential_",
    "log_normal_", "cauchy_", "geometric_", "random_", "bernoulli_", "set_",
)


def is_library_frame(filename: str) -> bool:
    path = os.path.abspath(filename)
    return (path.startswith(_TORCH_DIR) or path.startswith(_OWN_DIR)
            or filename.startswith("<frozen"))


_SOURCE_FILES: dict[str, str] = {}  # code filename -> inspect's source file name, when a file


def _frame_info(frame: FrameType) -> Any:
    """``inspect.getframeinfo(frame, context=0)``, with the source file name (which asks the
    file system and may scan ``sys.modules``) looked up once per code file."""
    code_position = getattr(inspect, "_get_code_position", None)
    filename = _SOURCE_FILES.get(frame.f_code.co_filename)
    if code_position is None or filename is None:
        info = inspect.getframeinfo(frame, context=0)
        if os.path.isfile(info.filename):
            _SOURCE_FILES[frame.f_code.co_filename] = info.filename
        return info
    import dis

    positions = code_position(frame.f_code, frame.f_lasti)
    if positions[0] is None:
        positions = (frame.f_lineno, *positions[1:])
    return inspect.Traceback(filename, positions[0], frame.f_code.co_name, None, None,
                             positions=dis.Positions(*positions))


def frame_location(frame: FrameType) -> Location:
    info = _frame_info(frame)
    positions = getattr(info, "positions", None)
    line = info.lineno
    col = 0
    end_line = line
    if positions is not None and positions.lineno is not None:
        line = positions.lineno
        col = (positions.col_offset or 0) + 1
        end_line = positions.end_lineno or line
    return Location(file=display_path(info.filename), line=line, col=col, end_line=end_line,
                    function=info.function)


def display_path(filename: str) -> str:
    key = (filename, os.getcwd())
    shown = _DISPLAY_PATHS.get(key)
    if shown is None:
        try:
            rel = os.path.relpath(filename)
        except ValueError:  # other drive on Windows
            rel = ".."
        shown = _DISPLAY_PATHS[key] = filename if rel.startswith("..") else rel
    return shown


_DISPLAY_PATHS: dict[tuple[str, str], str] = {}  # one relpath per file and working directory


def user_frame(skip_self: object | None = None) -> FrameType | None:
    """The innermost frame outside torch and biaslint (and outside ``skip_self``'s own methods)."""
    frame = sys._getframe(1)
    while frame is not None:
        if not is_library_frame(frame.f_code.co_filename):
            if skip_self is None or frame.f_locals.get("self") is not skip_self:
                return frame
        frame = frame.f_back
    return None


_COMPREHENSIONS = frozenset({"<listcomp>", "<genexpr>", "<dictcomp>", "<setcomp>"})
# A deeper chain is cut: the layer's place is decided by its innermost calls, and a recursive
# builder must not cost a walk of its whole stack per layer.
_CHAIN_LIMIT = 24
_STDLIB_DIRS = tuple({os.path.realpath(sysconfig.get_paths()[key]) + os.sep
                      for key in ("stdlib", "platstdlib")})


@functools.lru_cache(maxsize=4096)
def _passed_through(filename: str) -> bool:
    """A frame the walk goes through without recording: torch (``@torch.no_grad`` wrappers),
    and the standard library (``contextlib``, ``functools``) but not installed packages."""
    if is_library_frame(filename):
        return True
    path = os.path.realpath(filename)
    return path.startswith(_STDLIB_DIRS) and "site-packages" not in path \
        and "dist-packages" not in path


@functools.lru_cache(maxsize=4096)
def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def _chain(frame: FrameType | None, entry: FrameType | None
           ) -> tuple[tuple[Any, int, str], ...]:
    """The user calls from ``frame`` (the construction site) outwards, up to the function
    biaslint's loader called or ``entry`` (the frame that entered ``biaslint.recording()``)."""
    chain: list[tuple[Any, int, str]] = []
    while frame is not None and len(chain) < _CHAIN_LIMIT:
        code = frame.f_code
        if _in_package(code.co_filename):
            _mark_entry(chain)  # the loader called the innermost frame so far
            break
        if _passed_through(code.co_filename):
            frame = frame.f_back
            continue
        name = code.co_name
        if name in _COMPREHENSIONS:
            kind = "comprehension"
        elif name == "<module>":
            kind = "module"
        elif name == "__init__" and isinstance(frame.f_locals.get("self"), nn.Module):
            kind = "init"
        else:
            kind = "function"
        chain.append((code, frame.f_lasti, kind))
        if frame is entry:
            # Code in the ``with biaslint.recording():`` block, and the function it calls to
            # build the model, are what the command line's target function is.
            if len(chain) > 1 and chain[-2][2] == "function":
                chain[-2] = (*chain[-2][:2], "entry")
            _mark_entry(chain)
            break
        frame = frame.f_back
    return tuple(chain)


def _mark_entry(chain: list[tuple[Any, int, str]]) -> None:
    if chain and chain[-1][2] == "function":
        chain[-1] = (*chain[-1][:2], "entry")


def _build_frame(code: Any, lasti: int, kind: str) -> BuildFrame:
    filename = _SOURCE_FILES.get(code.co_filename)
    if filename is None:
        filename = inspect.getsourcefile(code) or code.co_filename
    line, col, end_line = code.co_firstlineno, 0, None
    code_position = getattr(inspect, "_get_code_position", None)
    if code_position is not None:
        positions = code_position(code, lasti)
        if positions[0] is not None:
            line, end_line = positions[0], positions[1] or positions[0]
            col = (positions[2] or 0) + 1
    else:  # Python 3.10: the line only
        rows = [row for start, end, row in code.co_lines() if start <= lasti < end and row]
        line = rows[0] if rows else code.co_firstlineno
    location = Location(file=display_path(filename), line=line, col=col,
                        end_line=end_line or line, function=code.co_name)
    return BuildFrame(location, kind, getattr(code, "co_qualname", code.co_name),
                      0 if kind == "module" else code.co_firstlineno)


@dataclass
class _InitEvent:
    storage: Any
    start: int
    stop: int
    call: InitCall
    # id() of the module whose own ``__init__`` or ``reset_parameters`` made the call (the
    # innermost such frame), None when none did (a ``model.apply(init)`` after the build)
    writer: int | None = None


# The methods in which a module initializes its own parameters.
_CONSTRUCTING = frozenset({"__init__", "reset_parameters", "_reset_parameters"})


def _writer(frame: FrameType | None, skip: object | None = None) -> int | None:
    """The module whose construction (or reset) the call at ``frame`` is part of, ``skip``
    aside (a module being constructed is not its own parent)."""
    while frame is not None:
        if frame.f_code.co_name in _CONSTRUCTING and frame.f_code.co_argcount:
            owner = frame.f_locals.get(frame.f_code.co_varnames[0])
            if isinstance(owner, nn.Module) and owner is not skip:
                return id(owner)
        frame = frame.f_back
    return None


@dataclass
class BuildRecord:
    """What the patched build saw: module construction sites and in-place init writes."""

    module_sites: dict[int, tuple[nn.Module, Location]] = field(default_factory=dict)
    init_events: list[_InitEvent] = field(default_factory=list)
    laws: LawBook | None = None  # the init laws of meta tensors (``record_build(laws=True)``)
    # what the build allocated without values (torch.empty) and never wrote, real or meta
    empties: EmptyBook = field(default_factory=EmptyBook)
    # Init calls that wrote a tensor autograd computed (a parametrization's ``weight``), with
    # that tensor (kept: it is what tells which module attribute it was)
    computed_writes: list[tuple[torch.Tensor, InitCall]] = field(default_factory=list)
    # Per module: the user calls that led to its construction, innermost first, as raw
    # (code, instruction offset, kind) triples; made into ``BuildFrame``s only for the modules
    # the model keeps (``chain_of``), so a build pays for no source lookups it does not use.
    module_chains: dict[int, tuple[tuple[Any, int, str], ...]] = field(default_factory=dict)
    # Per module: id() of the module whose constructor built it (None: built at top level)
    built_in: dict[int, int | None] = field(default_factory=dict)

    def site_of(self, module: nn.Module) -> Location | None:
        entry = self.module_sites.get(id(module))
        return entry[1] if entry and entry[0] is module else None

    def chain_of(self, module: nn.Module) -> tuple[BuildFrame, ...]:
        if self.site_of(module) is None:
            return ()
        # A loop or a helper builds many layers through the same few calls: each made once.
        made = self.__dict__.setdefault("_frames", {})
        chain = []
        for raw in self.module_chains.get(id(module), ()):
            frame = made.get(raw)
            if frame is None:
                frame = made[raw] = _build_frame(*raw)
            chain.append(frame)
        return tuple(chain)

    def init_of(self, tensor: torch.Tensor) -> InitCall | None:
        """The last recorded write that covered this tensor's memory."""
        key = memory_span(tensor)
        if key is None:
            return None
        storage, start, stop = key
        for event in reversed(self.init_events):
            if event.storage == storage and event.start <= start and stop <= event.stop:
                return event.call
        return None


def last_writers(record: BuildRecord,
                 model: nn.Module) -> dict[str, tuple[int | None, int | None]]:
    """For each parameter the build wrote: ``id()`` of the module whose own ``__init__`` or
    ``reset_parameters`` made its last recorded write (None when no module's did, e.g. a
    ``model.apply(init)`` after the build), and of the module answerable for it: the same,
    or for a torch layer's own draw the nearest module up its construction that is not a torch
    layer (a peft prompt encoder built the ``nn.Embedding`` whose default it keeps)."""
    events: dict[Any, list[_InitEvent]] = {}
    for event in record.init_events:
        events.setdefault(event.storage, []).append(event)
    out: dict[str, tuple[int | None, int | None]] = {}
    by_id = {id(module): module for module in model.modules()}
    for name, param in model.named_parameters(remove_duplicate=False):
        key = memory_span(param)
        if key is None:
            continue
        storage, start, stop = key
        covering = [e for e in events.get(storage, ()) if e.start < stop and start < e.stop]
        if covering:
            writer = covering[-1].writer
            out[name] = (writer, _built_by(record, writer, by_id))
    return out


def _built_by(record: BuildRecord, writer: int | None, by_id: dict[int, nn.Module]) -> int | None:
    """``writer``, or when it is a torch layer, the nearest module up its construction that
    is not (torch's own layers are everyone's; who built them says whose init it is)."""
    seen = 0
    while writer is not None and seen < 64:
        module = by_id.get(writer)
        if module is None or not type(module).__module__.startswith("torch."):
            return writer
        parent = record.built_in.get(writer)
        if parent is None:
            return writer
        writer, seen = parent, seen + 1
    return writer


def memory_span(tensor: Any) -> tuple[Any, int, int] | None:
    if not isinstance(tensor, torch.Tensor):
        return None
    try:
        storage: Any = tensor.untyped_storage()
        # A meta tensor has no memory: its storage object stands for it.
        storage = ("meta", storage._cdata) if tensor.device.type == "meta" \
            else storage.data_ptr()
    except Exception:  # sparse, fake or otherwise storage-less tensors
        return None
    size = tensor.element_size()
    start = tensor.storage_offset() * size
    extent = 1 + sum((s - 1) * st for s, st in zip(tensor.shape, tensor.stride()) if s > 0)
    return storage, start, start + extent * size


def _format_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [_short(a) for a in args[1:]]
    parts += [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)}>"
    if isinstance(value, float):
        return f"{value:g}"
    if not isinstance(value, (bool, int, str, type(None), torch.dtype, torch.device, tuple)):
        # Never ``repr`` a storage or a user object: printing a storage builds a tensor and
        # calls ``set_`` on it, which is what is being recorded (the deepcopy hang).
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_ABSENT = object()  # the patched class had no attribute of its own by that name


def _paint_init(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Paint the law an ``nn.init`` function draws from onto its tensor (the current
    build recorder's, so a wrapper bound by an earlier import still paints the right book)."""
    mode = _BuildRecorder.current_mode
    tensor = args[0] if args else kwargs.get("tensor")
    if mode is None or not isinstance(tensor, torch.Tensor) or not mode._tracked(tensor):
        return
    rest = {k: v for k, v in kwargs.items() if k != "tensor"}
    try:
        with torch.device("cpu"):
            law = init_function_law(name, tensor, tuple(args[1:]), rest)
    except Exception:  # a law we cannot derive is unknown
        from biaslint.laws import Law

        law = Law.unknown(f"nn.init.{name}")
    mode.book.paint(tensor, law)


class _BuildRecorder:
    """Patches torch while a target builds; one at a time per process."""

    _lock = threading.Lock()
    current_mode: LawMode | None = None

    def __init__(self, laws: bool = False, track_real: bool = False,
                 book: LawBook | None = None, empties: EmptyBook | None = None) -> None:
        self.record = BuildRecord(empties=empties if empties is not None else EmptyBook())
        self.empty_mode = EmptyMode(self.record.empties, _user_line)
        self._depth = 0
        # The user's frame that entered ``biaslint.recording()`` (none when biaslint's loader
        # did): the outermost frame a construction chain records.
        self.entry: FrameType | None = None
        self._saved: list[tuple[Any, str, Any]] = []
        self.mode: LawMode | None = None
        if laws:
            self.record.laws = book if book is not None else LawBook()
            self.mode = LawMode(self.record.laws, track_real=track_real)

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, replacement)

    def install(self) -> None:
        record = self.record
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and (_in_package(frame.f_code.co_filename)
                                     or _passed_through(frame.f_code.co_filename)):
            frame = frame.f_back
        self.entry = frame
        original_init = nn.Module.__init__
        recorder = self

        def module_init(module: nn.Module, *args: Any, **kwargs: Any) -> None:
            original_init(module, *args, **kwargs)
            if id(module) not in record.built_in:
                record.built_in[id(module)] = _writer(sys._getframe(1), skip=module)
            if id(module) not in record.module_sites:
                frame = user_frame(skip_self=module)
                if frame is not None:
                    record.module_sites[id(module)] = (module, frame_location(frame))
                    try:
                        record.module_chains[id(module)] = _chain(frame, recorder.entry)
                    except Exception:  # provenance is best effort
                        record.module_chains.pop(id(module), None)

        self._patch(nn.Module, "__init__", module_init)
        for name in INIT_FUNCTIONS:
            if hasattr(nn.init, name):
                self._patch(nn.init, name, self._wrap(getattr(nn.init, name), f"nn.init.{name}"))
        for name in TENSOR_METHODS:
            if hasattr(torch.Tensor, name):
                self._patch(torch.Tensor, name,
                            self._wrap(getattr(torch.Tensor, name), f"Tensor.{name}"))
        for owner in (torch.Tensor, nn.Parameter):
            self._patch(owner, "__deepcopy__", self._copying(owner.__deepcopy__))
        self._patch(nn.Module, "__deepcopy__", self._module_copying())

    def _module_copying(self) -> Callable[..., Any]:
        """A module copied with ``copy.deepcopy`` (a common way to stack blocks) is never
        constructed: its site is its source's. The copy itself is the default deepcopy."""
        record = self.record

        def deepcopy(module: nn.Module, memo: dict[int, Any]) -> Any:
            result = copy._reconstruct(module, memo, *module.__reduce_ex__(4))
            entry = record.module_sites.get(id(module))
            if entry is not None and entry[0] is module and id(result) not in record.module_sites:
                record.module_sites[id(result)] = (result, entry[1])
                if id(module) in record.module_chains:
                    record.module_chains[id(result)] = record.module_chains[id(module)]
            return result

        return deepcopy

    def _copying(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``copy.deepcopy`` of a module copies each tensor (``clone``, or ``set_`` with a copied
        storage): not an init call, and the copy was initialized as its source was."""
        recorder = self

        def deepcopy(tensor: torch.Tensor, memo: dict[int, Any]) -> Any:
            recorder._depth += 1
            try:
                result = fn(tensor, memo)
            finally:
                recorder._depth -= 1
            try:
                recorder._inherit(tensor, result)
                mode = _BuildRecorder.current_mode
                if mode is not None and mode._tracked(result):
                    mode.book.copy_region(tensor, result)
            except Exception:  # provenance is best effort, never break a build
                pass
            return result

        deepcopy.__wrapped__ = fn
        return deepcopy

    def _inherit(self, source: torch.Tensor, copy: Any) -> None:
        call = self.record.init_of(source)
        span = memory_span(copy)
        if call is not None and span is not None:
            self.record.init_events.append(_InitEvent(*span, call))

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        recorder = self
        init_name = label[len("nn.init."):] if label.startswith("nn.init.") else None

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if recorder._depth:
                return fn(*args, **kwargs)
            recorder._depth += 1
            try:
                result = fn(*args, **kwargs)
                if init_name is not None:  # several of these are no-ops on meta tensors
                    _paint_init(init_name, args, kwargs)
                    recorder.record.empties.written(args[0] if args else kwargs.get("tensor"))
                try:  # still at depth 1: nothing the note does is recorded in turn
                    recorder._note(label, args, kwargs)
                except Exception:  # provenance is best effort, never break a build
                    pass
            finally:
                recorder._depth -= 1
            return result

        wrapper.__name__ = getattr(fn, "__name__", label)
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        wrapper.__wrapped__ = fn
        return wrapper

    def _note(self, label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        span = memory_span(args[0])
        if span is None:
            return
        caller = sys._getframe(2)
        by_user = not is_library_frame(caller.f_code.co_filename)
        frame = caller if by_user else user_frame()
        location = frame_location(frame) if frame is not None else None
        call = InitCall(name=label, args=_format_args(args, kwargs), location=location,
                        by_user=by_user)
        self.record.init_events.append(_InitEvent(*span, call, _writer(caller)))
        if args[0].grad_fn is not None:  # a computed tensor: the values may not last
            self.record.computed_writes.append((args[0], call))

    def restore(self) -> None:
        self.entry = None  # a frame keeps its locals alive
        for owner, name, value in reversed(self._saved):
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        self._saved.clear()


def _user_line() -> Location | None:
    frame = user_frame()
    return frame_location(frame) if frame is not None else None


@contextmanager
def record_build(laws: bool = False, track_real: bool = False,
                 book: LawBook | None = None,
                 empties: EmptyBook | None = None) -> Iterator[BuildRecord]:
    """Record construction sites and init calls inside the block; always restore torch.

    With ``laws``, also the init law of every meta tensor written (of every tensor with
    ``track_real``): ``BuildRecord.laws``. Always, what was allocated without values and not
    written since (``BuildRecord.empties``; ``empties`` continues an earlier record's)."""
    with _BuildRecorder._lock, remembered():
        # remembered(): the recorded lines are read later, from the text the code was compiled
        # from, not from whatever the file holds by then (``biaslint.sources``).
        recorder = _BuildRecorder(laws=laws, track_real=track_real, book=book, empties=empties)
        recorder.install()
        _BuildRecorder.current_mode = recorder.mode
        try:
            # The empty mode is entered last: it sees each call first, and the law mode's own
            # computations never reach it.
            if recorder.mode is not None:
                with recorder.mode, recorder.empty_mode:
                    yield recorder.record
            else:
                with recorder.empty_mode:
                    yield recorder.record
        finally:
            _BuildRecorder.current_mode = None
            recorder.restore()
            recorder.record.empties.seal()
