"""Record the project files a target's build and forward ran or read (for --changed-since).


What "executed" means: the file of every Python code object that ran while the target was
imported and built, every project module first imported while it was captured and its rules
ran the forward, plus, for each such file, the files that ran while its module was first
imported (a module imported by an earlier target of the same run still counts for this one)
and its parent packages' ``__init__``. The forward runs code that the build defined or
imported, so the capture is not traced call by call: that would cost seconds on a large model
(millions of Python calls). Library code (the standard library, site-packages, torch,
biaslint) is not recorded: the versions stand for it.

The build's recording runs on the ``call`` events of ``sys.settrace`` only (no line events),
chained with a tracer already installed (a coverage tool keeps working). No torch import at
module level.
"""

from __future__ import annotations

import builtins
import functools
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from biaslint.settings import CACHE_DIR

# Per module file: the project files that ran while that module was first imported. Kept for
# the life of the process: a later target that uses the module does not import it again.
_IMPORT_DEPS: dict[str, set[str]] = {}
_CANDIDATE: dict[str, bool] = {}
_OPEN_SINKS: list[set[str]] = []  # the active recordings' sets of files opened for reading
_HOOKED = False
_SKIP_PARTS = frozenset({"site-packages", "dist-packages", "__pycache__", ".git", CACHE_DIR})


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    """Folders whose code is a library's, not the project's: the versions stand for it."""
    import site
    import sysconfig

    dirs = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib",
                                                         "platlib")}
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv's site.py
        pass
    dirs.add(site.getusersitepackages())
    dirs.add(os.path.dirname(os.path.abspath(__file__)))  # biaslint itself
    return tuple(os.path.normcase(os.path.abspath(d)).rstrip(os.sep) + os.sep
                 for d in dirs if d)


def _candidate(filename: str) -> bool:
    """Whether code or data in ``filename`` may be the project's (decided once per name)."""
    known = _CANDIDATE.get(filename)
    if known is not None:
        return known
    ok = bool(filename) and not filename.startswith("<")
    if ok:
        path = os.path.normcase(os.path.abspath(filename))
        ok = not path.startswith(_library_dirs()) and not _SKIP_PARTS.intersection(
            path.split(os.sep)) and not path.endswith((".pyc", ".pyo", ".so", ".pyd"))
    _CANDIDATE[filename] = ok
    return ok


def is_project_file(filename: str) -> bool:
    """Whether code in ``filename`` may be the project's: not the standard library's,
    site-packages', torch's or biaslint's own (the files a recording keeps)."""
    return _candidate(filename)


_LIBRARY: dict[str, str | None] = {}


def installed_library(filename: str) -> str | None:
    """The installed package a file belongs to (``timm`` for .../site-packages/timm/x.py), or
    None for a file outside site-packages."""
    return _library(filename)


def _library(filename: str) -> str | None:
    """The top-level package of a file in site-packages (``timm`` for .../timm/layers/x.py)."""
    if filename in _LIBRARY:
        return _LIBRARY[filename]
    parts = filename.replace("\\", "/").split("/")
    top = None
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[len(parts) - parts[::-1].index(marker):]
            if len(rest) > 1:
                top = rest[0]
            elif rest:
                top = rest[0][:-3] if rest[0].endswith(".py") else None
    _LIBRARY[filename] = top
    return top


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """``open`` audit events while recording: files the build reads (a JSON config, a vocabulary,
    a checkpoint it loads) are its sources too. Never raises: that would fail the open."""
    if event != "open" or not _OPEN_SINKS:
        return
    try:
        path, mode, flags = args
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return
        if isinstance(mode, str):
            reading = not set(mode) & set("wax+")
        else:
            reading = not (flags or 0) & (os.O_WRONLY | os.O_RDWR)
        if reading and _candidate(path):
            full = os.path.abspath(path)
            for sink in _OPEN_SINKS:
                sink.add(full)
    except Exception:  # an audit hook must not break the user's open()
        pass


class _CallTracer:
    """``trace`` is the global trace function: called on each new Python frame; it returns no
    line tracer, so the frame runs untraced (unless a tracer installed before wants its lines)."""

    def __init__(self, previous: Callable[..., Any] | None) -> None:
        self.previous = previous
        self.files: set[str] = set()
        self.libraries: set[str] = set()  # top-level packages of site-packages code that ran
        self.seen: set[Any] = set()
        self.importing: list[set[str]] = []  # the project modules being imported, innermost last

        self.trace = self._tracer()

    def _tracer(self) -> Callable[..., Any]:
        # A closure over locals, not a method: it runs on every Python call of the target.
        seen, files, libraries, importing = self.seen, self.files, self.libraries, self.importing
        previous, module = self.previous, self._module

        def trace(frame: Any, event: str, arg: Any) -> Any:
            code = frame.f_code
            if code in seen and not importing:  # the common case, kept short
                return None if previous is None else previous(frame, event, arg)
            name = code.co_filename
            if code not in seen:
                seen.add(code)
                if _candidate(name):
                    files.add(name)
                else:
                    library = _library(name)
                    if library is not None:
                        libraries.add(library)
            if importing and _candidate(name):
                for deps in importing:
                    deps.add(name)
            local = None if previous is None else previous(frame, event, arg)
            if code.co_name == "<module>" and _candidate(name):
                return module(frame, name, local)
            return local

        return trace

    def _module(self, frame: Any, name: str, inner: Any) -> Any:
        """A project module's body starts (its import): what runs until it returns is its."""
        deps = {name}
        _IMPORT_DEPS[os.path.abspath(name)] = deps
        self.importing.append(deps)
        if inner is None:
            frame.f_trace_lines = False  # only the return event is wanted

        def local(frame: Any, event: str, arg: Any) -> Any:
            nonlocal inner
            if event == "return" and deps in self.importing:
                self.importing.remove(deps)
            if inner is not None:
                inner = inner(frame, event, arg)
            return local

        return local


class _LibraryImportsUntraced:
    """``builtins.__import__`` while the build is traced: a library's first import (torch,
    torchvision, transformers: millions of Python calls, seconds under a tracer) runs with the
    tracer that was there before (usually none). The library is still recorded as run (its
    version stands for its code), and a project module a library imports is traced again."""

    def __init__(self, recorder: _CallTracer, importer: Callable[..., Any]) -> None:
        self.recorder = recorder
        self.importer = importer
        # per thread (sys.settrace is per thread): how deep in library imports running
        # untraced, and whether it is working out what a name is (which may import)
        self.local = threading.local()

    @property
    def untraced(self) -> int:
        return getattr(self.local, "untraced", 0)

    @untraced.setter
    def untraced(self, value: int) -> None:
        self.local.untraced = value

    @property
    def deciding(self) -> bool:
        return getattr(self.local, "deciding", False)

    @deciding.setter
    def deciding(self, value: bool) -> None:
        self.local.deciding = value

    def __call__(self, name: str, globals: Any = None, locals: Any = None,
                 fromlist: Any = (), level: int = 0) -> Any:
        if level != 0 or not name or self.deciding or name in sys.modules and not fromlist:
            return self.importer(name, globals, locals, fromlist, level)
        self.deciding = True
        try:
            library = _library_of(name.partition(".")[0])
        finally:
            self.deciding = False
        if (library is None) == (self.untraced == 0):  # the tracing it needs is on already
            return self.importer(name, globals, locals, fromlist, level)
        recorder = self.recorder
        if library is not None:
            if library:
                recorder.libraries.add(library)
            self.untraced += 1
            sys.settrace(recorder.previous)
            try:
                return self.importer(name, globals, locals, fromlist, level)
            finally:
                self.untraced -= 1
                if self.untraced == 0:
                    sys.settrace(recorder.trace)
        outer = self.untraced  # a project module imported by a library: traced again
        self.untraced = 0
        sys.settrace(recorder.trace)
        try:
            return self.importer(name, globals, locals, fromlist, level)
        finally:
            self.untraced = outer
            sys.settrace(recorder.previous)


_LIBRARY_OF: dict[str, str | None] = {}


def _library_of(top: str) -> str | None:
    """For a top-level module name: None when it may be the project's, else the library it
    belongs to (its site-packages folder name; "" for the standard library and built-ins)."""
    if top in _LIBRARY_OF:
        return _LIBRARY_OF[top]
    module = sys.modules.get(top)
    if module is not None:
        files = [getattr(module, "__file__", None), *list(getattr(module, "__path__", []))]
    else:
        import importlib.util

        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return None  # the import fails or is unusual: traced, the safe side
        files = [spec.origin, *list(spec.submodule_search_locations or [])]
    files = [f for f in files if isinstance(f, str)]
    if module is None and spec is not None and spec.origin in ("built-in", "frozen"):
        result: str | None = ""
    elif not files or any(_candidate(f) for f in files if f not in ("built-in", "frozen")):
        result = None
    else:
        result = next((lib for f in files if (lib := _library(f)) is not None), "")
    _LIBRARY_OF[top] = result
    return result


@dataclass
class SourceFiles:
    """What a recording saw: ``files`` (absolute paths), or None when it cannot be trusted
    (the target's code replaced the trace function, so part of it ran unseen); ``libraries``:
    the top-level packages in site-packages whose code ran or that it imported (their versions are
    recorded)."""

    files: tuple[str, ...] | None = None
    libraries: tuple[str, ...] = ()


def combined(recordings: Sequence[SourceFiles]) -> SourceFiles:
    """One recording of several blocks run in turn (untrusted if any of them is)."""
    if not recordings or any(r.files is None for r in recordings):
        return SourceFiles()
    return SourceFiles(files=tuple(sorted({f for r in recordings for f in r.files or ()})),
                     libraries=tuple(sorted({lib for r in recordings for lib in r.libraries})))


@contextmanager
def recording_sources(target: str | None = None, trace: bool = True) -> Iterator[SourceFiles]:
    """Record the project files that run (or are opened for reading) within the block.

    ``trace=False``: no call tracer; only the project modules first imported inside the block
    (with what their import ran) and the files opened for reading."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed: inert while no recording is active
        _HOOKED = True
    recording = SourceFiles()
    if not trace:
        before = set(sys.modules)
        opened: set[str] = set()
        _OPEN_SINKS.append(opened)
        try:
            yield recording
        finally:
            _OPEN_SINKS.remove(opened)
            files = set(opened)
            for name in set(sys.modules) - before:
                file = getattr(sys.modules.get(name), "__file__", None)
                if isinstance(file, str) and _candidate(file):
                    files.add(os.path.abspath(file))
            recording.files = tuple(sorted(_closure(files)))
        return
    previous, previous_threads = sys.gettrace(), threading.gettrace()
    recorder = _CallTracer(previous)
    opened: set[str] = set()
    _OPEN_SINKS.append(opened)
    importer = builtins.__import__
    _library_dirs()  # computed before the import function is replaced (it imports)
    builtins.__import__ = _LibraryImportsUntraced(recorder, importer)
    sys.settrace(recorder.trace)
    threading.settrace(recorder.trace)
    try:
        yield recording
    finally:
        intact = sys.gettrace() is recorder.trace
        sys.settrace(previous)
        threading.settrace(previous_threads)
        if isinstance(builtins.__import__, _LibraryImportsUntraced):
            builtins.__import__ = importer
        else:
            intact = False  # the target's code replaced the import function: part ran unseen
        _OPEN_SINKS.remove(opened)
        if intact:
            files = {os.path.abspath(f) for f in recorder.files} | opened
            if target is not None:
                files |= _target_files(target)
            recording.files = tuple(sorted(_closure(files)))
            recording.libraries = tuple(sorted(recorder.libraries))


def _target_files(target: str) -> set[str]:
    """The target's own module file: a module instance built at import time (``mod:model``)
    runs no code of that file when an earlier target of the run imported it already."""
    from biaslint.target import parse_target

    try:
        spec = parse_target(target)
    except Exception:  # the lint reported it
        return set()
    if spec.is_path:
        return {os.path.abspath(spec.module)}
    module = sys.modules.get(spec.module)
    file = getattr(module, "__file__", None)
    return {os.path.abspath(file)} if isinstance(file, str) else set()


def _closure(files: set[str]) -> set[str]:
    """``files`` plus, transitively, what ran when their modules (and parent packages) were
    first imported."""
    by_file: dict[str, str] = {}
    for module_name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and _candidate(file):
            by_file[os.path.abspath(file)] = module_name
    done: set[str] = set()
    todo = list(files)
    while todo:
        file = todo.pop()
        if file in done:
            continue
        done.add(file)
        todo.extend(os.path.abspath(f) for f in _IMPORT_DEPS.get(file, ()))
        module_name = by_file.get(file)
        while module_name and "." in module_name:
            module_name = module_name.rsplit(".", 1)[0]
            parent = getattr(sys.modules.get(module_name), "__file__", None)
            if isinstance(parent, str) and _candidate(parent):
                todo.append(os.path.abspath(parent))
    return done
