"""Lint only what a change touches: ``--changed-since REF``.

Every ``biaslint check`` run inside a git work tree records, per target, the project files its
build and forward executed (and the files they opened for reading), each with a content hash,
in ``.biaslint_cache/sources.json`` (next to the pyproject.toml read, else in the current
folder). ``--changed-since REF`` then skips a target only when all of these hold:

* the cache has an entry for it made by the same biaslint, torch and Python versions, with the
  same settings (everything ``[tool.biaslint]`` and the command line feed the lint: selected
  rules, rule options, input shapes, class priors, head, device, target mean);
* none of its recorded files differs between REF and the working tree (``git diff REF`` plus
  untracked files);
* every recorded file still has the recorded hash: a cache made from other file contents (another
  branch, an edit since) is never trusted.

Every other target is linted, and the run says, per target, why it was linted or skipped.

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
import hashlib
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from biaslint.errors import ConfigError

CACHE_DIR = ".biaslint_cache"
CACHE_FILE = "sources.json"
CACHE_FORMAT = 1

# ---------------------------------------------------------------------------------------------
# Recording (runs where the target is linted: in process, or in a worker process)
# ---------------------------------------------------------------------------------------------

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


class _Recorder:
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

    def __init__(self, recorder: _Recorder, importer: Callable[..., Any]) -> None:
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
class Recording:
    """What a recording saw: ``files`` (absolute paths), or None when it cannot be trusted
    (the target's code replaced the trace function, so part of it ran unseen); ``libraries``:
    the top-level packages in site-packages whose code ran or that it imported (their versions are
    recorded)."""

    files: tuple[str, ...] | None = None
    libraries: tuple[str, ...] = ()


def combined(recordings: Sequence[Recording]) -> Recording:
    """One recording of several blocks run in turn (untrusted if any of them is)."""
    if not recordings or any(r.files is None for r in recordings):
        return Recording()
    return Recording(files=tuple(sorted({f for r in recordings for f in r.files or ()})),
                     libraries=tuple(sorted({lib for r in recordings for lib in r.libraries})))


@contextmanager
def recording_sources(target: str | None = None, trace: bool = True) -> Iterator[Recording]:
    """Record the project files that run (or are opened for reading) within the block.

    ``trace=False``: no call tracer; only the project modules first imported inside the block
    (with what their import ran) and the files opened for reading."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed: inert while no recording is active
        _HOOKED = True
    recording = Recording()
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
    recorder = _Recorder(previous)
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


# ---------------------------------------------------------------------------------------------
# The cache and the choice of targets (the process that runs ``biaslint check``)
# ---------------------------------------------------------------------------------------------


def work_tree(start: Path) -> Path | None:
    """The git work tree holding ``start`` (the nearest folder with a ``.git``), or None. No
    git process: a plain run only records, and needs nothing more."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def versions() -> dict[str, str]:
    """What stands for the library code a target ran: a new version invalidates its entry."""
    from importlib import metadata

    from biaslint.version import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = "unknown"
    return {"biaslint": __version__, "torch": torch_version,
            "python": "{}.{}".format(*sys.version_info[:2])}


def _plain(value: Any) -> Any:
    """Settings as JSON data, the same every run: mappings sorted, tuples as lists, enums as
    their names."""
    from enum import Enum

    if isinstance(value, Enum):
        return str(value)
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


# Settings that change how a run reports, not what it finds (the signal curves are a picture).
_NOT_KEYED = ("debug", "record_sources", "signal")


def settings_key(config: Any, settings: Any, lint_dir: str) -> str:
    """A digest of everything besides the files that decides a target's findings: its config
    (input shapes, priors, head, device, target mean), the run's settings (selected rules, rule
    options, severities, per-module ignores: what [tool.biaslint] sets) and the folder it is
    linted from (a path target resolves from there)."""
    from dataclasses import fields

    state = {
        "config": {f.name: _plain(getattr(config, f.name)) for f in fields(config)},
        "settings": {f.name: _plain(getattr(settings, f.name)) for f in fields(settings)
                     if f.name not in _NOT_KEYED},
        "folder": lint_dir,
    }
    text = json.dumps(state, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def file_hash(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _top_levels() -> dict[str, list[str]]:
    from importlib import metadata

    try:
        return dict(metadata.packages_distributions())
    except Exception:  # a broken installed distribution: no library versions
        return {}


# Stood for by ``versions()`` already.
_OWN = frozenset({"torch", "biaslint"})
# Import machinery that site-packages installs in every process (setuptools' distutils shim,
# virtualenv's, an editable install's finder, all on sys.meta_path): it runs on every import,
# never as a model's code.
_MACHINERY = frozenset({"_distutils_hack", "_virtualenv"})


def _distributions(libraries: Iterable[str]) -> dict[str, str]:
    """The installed distributions (and versions) that provide these top-level packages."""
    found: dict[str, str] = {}
    for top in libraries:
        if top in _OWN or top in _MACHINERY or top.startswith("__editable__"):
            continue
        for distribution in _providers(top):
            version = _version(distribution)
            if version is not None and distribution.lower() not in _OWN:
                found[distribution] = version
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=None)
def _providers(top: str) -> tuple[str, ...]:
    """The distributions that provide the top-level package ``top``. Most are named like it
    (torchvision, timm, transformers): the distribution of that name counts when its RECORD
    lists the package's files. Otherwise every installed distribution's files are read
    (``packages_distributions``, a few hundred ms with a large environment)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(top)
        listed = (distribution.read_text("top_level.txt") or "").split()
        if top in listed:  # the distribution says so itself (a small file)
            return (distribution.metadata["Name"] or top,)
        files = distribution.files or ()
    except Exception:  # not installed under that name, or a broken RECORD
        files = ()
    if any(f.parts and (f.parts[0] == top or f.parts[0] in (f"{top}.py", f"{top}.pth"))
           for f in files):
        return (distribution.metadata["Name"] or top,)
    return tuple(_listed_top_levels().get(top, ()) or _top_levels().get(top, ()))


@functools.lru_cache(maxsize=1)
def _listed_top_levels() -> dict[str, list[str]]:
    """Top-level package -> distributions, from each distribution's ``top_level.txt`` (a small
    file, where it has one): before reading every distribution's whole RECORD."""
    from importlib import metadata

    found: dict[str, list[str]] = {}
    try:
        for distribution in metadata.distributions():
            for top in (distribution.read_text("top_level.txt") or "").split():
                found.setdefault(top, []).append(distribution.metadata["Name"])
    except Exception:  # a broken installed distribution: the full scan decides
        return {}
    return found


@dataclass(frozen=True)
class Changes:
    """The files (relative to the work tree, ``/``-separated) that differ between ``ref`` and the
    working tree: tracked files changed, added or deleted (staged or not), and untracked ones."""

    ref: str
    root: Path
    paths: frozenset[str]


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise ConfigError("--changed-since needs git, and no git is on PATH; install git or "
                          "run without --changed-since") from None


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].strip() if lines else f"git exited with code {proc.returncode}"


def changes_since(ref: str, start: Path) -> Changes:
    """What differs from ``ref``. Raises ``ConfigError`` (one line) outside a git work tree, for
    a ref git does not know, or when git fails."""
    if not ref or ref.startswith("-"):
        raise ConfigError(f"--changed-since {ref!r}: give a git commit, branch or tag "
                          "(e.g. --changed-since origin/main)")
    top = _git(["rev-parse", "--show-toplevel"], start)
    if top.returncode != 0:
        raise ConfigError(f"--changed-since {ref}: {_shown_dir(start)} is not inside a git work "
                          "tree; run biaslint in your repository's checkout, or drop "
                          "--changed-since")
    root = Path(top.stdout.decode("utf-8", "surrogateescape").strip()).resolve()
    verify = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root)
    if verify.returncode != 0:
        raise ConfigError(f"--changed-since {ref}: git knows no commit {ref!r} in this "
                          "repository; check the name, or fetch it first (in GitHub Actions: "
                          "actions/checkout with fetch-depth: 0)")
    paths: set[str] = set()
    for args in (["diff", "--name-only", "--no-renames", "-z", ref, "--"],
                 ["ls-files", "--others", "--exclude-standard", "-z"]):
        proc = _git(args, root)
        if proc.returncode != 0:
            raise ConfigError(f"--changed-since {ref}: git {args[0]} failed: {_stderr(proc)}")
        paths.update(p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p)
    return Changes(ref, root, frozenset(paths))


def _shown_dir(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return "the current folder" if rel == "." else (str(path) if rel.startswith("..") else rel)


def _when(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return "an unknown date"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _some(paths: Sequence[str]) -> str:
    more = f" and {len(paths) - 2} more" if len(paths) > 2 else ""
    return ", ".join(paths[:2]) + more


@dataclass
class Tracking:
    """One run's cache: read at the start, updated with each target linted, written at the end.
    ``changes`` is set with ``--changed-since``."""

    root: Path  # the git work tree: the cache's paths are relative to it
    file: Path  # the cache file
    lint_dir: str  # where the targets are linted from, relative to the work tree
    changes: Changes | None = None
    entries: dict[str, Any] = field(default_factory=dict)
    now: dict[str, str] = field(default_factory=versions)
    _hashes: dict[str, str | None] = field(default_factory=dict)
    unreadable: str | None = None  # why the cache file could not be read, if it could not
    skipped: int = 0  # how many targets --changed-since skipped
    # This run's own changes to the entries: what ``write`` merges into the cache file as it is
    # then (another run may have written it since this one read it).
    _written: dict[str, Any] = field(default_factory=dict)
    _dropped: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, ref: str | None, config_file: str | None,
              workdir: str | None) -> "Tracking | None":
        """The run's tracking, or None outside a git work tree (nothing to compare with then)."""
        here = Path(workdir or os.getcwd()).resolve()
        changes = changes_since(ref, here) if ref is not None else None
        root = changes.root if changes is not None else work_tree(here)
        if root is None:
            return None
        root = root.resolve()
        folder = Path(config_file).resolve().parent if config_file else here
        lint_dir = os.path.relpath(here, root).replace(os.sep, "/")
        tracking = cls(root, folder / CACHE_DIR / CACHE_FILE, lint_dir, changes)
        tracking._read()
        return tracking

    def _read(self) -> None:
        self.entries, self.unreadable = self._load()

    def _load(self) -> tuple[dict[str, Any], str | None]:
        """The cache file's entries, and why it could not be read (if it could not)."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            return {}, f"{type(exc).__name__}: {exc}"
        if isinstance(data, dict) and data.get("format") == CACHE_FORMAT \
                and isinstance(data.get("targets"), dict):
            return {k: v for k, v in data["targets"].items() if isinstance(v, dict)}, None
        return {}, "not a biaslint source cache of this version"

    def _current(self, rel: str) -> str | None:
        if rel not in self._hashes:
            self._hashes[rel] = file_hash(self.root / rel)
        return self._hashes[rel]

    def why_lint(self, config: Any, settings: Any) -> str | None:
        """Why ``config`` must be linted, or None when ``--changed-since`` may skip it."""
        assert self.changes is not None
        ref = self.changes.ref
        entry = self.entries.get(config.target)
        if entry is None:
            missing = " (the cache file could not be read)" if self.unreadable else \
                " (never linted here, or the cache was not restored)"
            return f"no recorded source files{missing}"
        then = entry.get("versions") or {}
        moved = [f"{name} {then.get(name, '?')} -> {version}" for name, version in
                 self.now.items() if then.get(name) != version]
        moved += [f"{name} {version} -> {_version(name) or 'not installed'}" for name, version
                  in (entry.get("libraries") or {}).items() if _version(name) != version]
        if moved:
            return f"its record was made with other versions ({', '.join(moved)})"
        if entry.get("key") != settings_key(config, settings, self.lint_dir):
            return ("its settings changed since its record (rules, rule options, input shapes, "
                    "class priors, head, device or target mean)")
        files = entry.get("files")
        if not isinstance(files, dict) or not files:
            return "its record lists no source files"
        changed = sorted(p for p in files if p in self.changes.paths)
        if changed:
            return (f"{_some(changed)} changed since {ref}" if len(changed) <= 2 else
                    f"{len(changed)} of its source files changed since {ref} ({_some(changed)})")
        stale = sorted(p for p, digest in files.items() if self._current(p) != digest)
        if stale:
            return (f"{_some(stale)} differ{'s' if len(stale) == 1 else ''} from its recorded "
                    f"run, though not from {ref} (the cache is from other file contents)")
        return None

    def select(self, configs: Sequence[Any], settings: Any
               ) -> tuple[list[Any], list[Any], list[str]]:
        """Split ``configs`` into (to lint, skipped) and say why, one line per target."""
        assert self.changes is not None
        lint, skipped, lines = [], [], []
        for config in configs:
            reason = self.why_lint(config, settings)
            if reason is None:
                entry = self.entries[config.target]
                skipped.append(config)
                files = len(entry["files"])
                what = "its only source file is unchanged" if files == 1 else \
                    f"none of its {files} source files changed"
                lines.append(f"skipped {config.target}: {what} since "
                             f"{self.changes.ref} (recorded {_when(entry.get('recorded'))})")
            else:
                lint.append(config)
                lines.append(f"linting {config.target}: {reason}")
        return lint, skipped, lines

    def record(self, configs: Sequence[Any], results: Sequence[Any], settings: Any) -> bool:
        """Update the entries of the targets just linted: each that was linted gets its files and
        their hashes now; one that failed, or whose recording cannot be trusted, loses its entry
        (it is linted next time). Returns whether anything changed."""
        stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        changed = False
        for config, result in zip(configs, results):
            sources = getattr(result, "sources", None)
            if result.error or sources is None or sources.files is None:
                changed |= self.entries.pop(config.target, None) is not None
                self._written.pop(config.target, None)
                self._dropped.add(config.target)
                continue
            entry = {
                "key": settings_key(config, settings, self.lint_dir),
                "versions": dict(self.now),
                "libraries": _distributions(sources.libraries),
                "recorded": stamp,
                "files": self._relative(sources.files),
            }
            self.entries[config.target] = self._written[config.target] = entry
            self._dropped.discard(config.target)
            changed = True
        return changed

    def _relative(self, sources: Iterable[str]) -> dict[str, str]:
        cache_dir = self.file.parent
        files: dict[str, str] = {}
        for source in sources:
            path = Path(os.path.realpath(source))
            if not path.is_file() or cache_dir in path.parents:
                continue
            try:
                rel = path.relative_to(self.root).as_posix()
            except ValueError:
                continue  # outside the work tree: no commit can change it
            digest = file_hash(path)
            if digest is not None:
                files[rel] = digest
        return dict(sorted(files.items()))

    def write(self) -> str | None:
        """Write this run's records into the cache; returns why it could not, or None.

        Two runs may share the cache (two terminals, pre-commit next to an editor's run): each
        read it at its start and writes at its end, so writing the entries read at the start
        would drop what the other run wrote meanwhile. Under a lock, the file is read again, this
        run's own changes are merged into it, and the result replaces it atomically (a reader
        without the lock sees the old file or the new one, never part of one)."""
        folder = self.file.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ignore = folder / ".gitignore"
            if not ignore.exists():  # the cache never shows up as a change to commit
                ignore.write_text("# Created by biaslint (--changed-since).\n*\n",
                                  encoding="utf-8")
            with _locked(folder / f"{CACHE_FILE}.lock"):
                entries, _ = self._load()  # unreadable: rewritten with this run's records
                entries.update(self._written)
                for target in self._dropped:
                    entries.pop(target, None)
                self.entries = entries
                data = {"format": CACHE_FORMAT, "targets": dict(sorted(entries.items()))}
                temporary = folder / f".{CACHE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
                temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
                os.replace(temporary, self.file)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) within the block: ``flock`` on
    POSIX, ``msvcrt.locking`` on Windows. A file system that supports neither (some network
    mounts) runs the block unlocked: the merge in ``Tracking.write`` still keeps what another run
    wrote before this one re-read the file, only a write in that short window can be lost."""
    with open(path, "a+b") as handle:
        unlock: Callable[[], None] | None = None
        try:
            import fcntl
        except ImportError:  # Windows
            unlock = _lock_windows(handle)
        else:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                unlock = functools.partial(fcntl.flock, handle.fileno(), fcntl.LOCK_UN)
            except OSError:
                unlock = None
        try:
            yield
        finally:
            if unlock is not None:
                try:
                    unlock()
                except OSError:  # closing the file releases it anyway
                    pass


def _lock_windows(handle: Any) -> Callable[[], None] | None:
    """Lock the first byte of ``handle`` (``LK_LOCK`` retries for ~10 s before it fails; a
    minute in all, then unlocked rather than never finishing)."""
    import msvcrt

    for _ in range(6):
        try:
            handle.seek(0)
            lock = msvcrt.LK_LOCK  # type: ignore[attr-defined]  # msvcrt: Windows only
            msvcrt.locking(handle.fileno(), lock, 1)  # type: ignore[attr-defined]  # as above
        except OSError:
            continue

        def unlock() -> None:
            handle.seek(0)
            unlock = msvcrt.LK_UNLCK  # type: ignore[attr-defined]  # msvcrt: Windows only
            msvcrt.locking(handle.fileno(), unlock, 1)  # type: ignore[attr-defined]  # as above

        return unlock
    return None
