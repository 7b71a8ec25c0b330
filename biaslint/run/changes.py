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

Each entry also keeps the target's lint time (``seconds``), which ``--shard-times`` balances
CI shards by (``biaslint.run.shard``).

The files are recorded by ``biaslint.load.files``; this module keeps the cache and asks git.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from biaslint.errors import ConfigError
from biaslint.run.libraries import distributions, version_of, versions
from biaslint.run.shard import lint_seconds
from biaslint.run.worktree import SOURCES_FILE, sources_cache, work_tree

CACHE_FILE = SOURCES_FILE
CACHE_FORMAT = 1




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
    linted from (a path target resolves from there), and the source of every plugin rule
    taking part (``biaslint.rules.plugins``): an edited rule judges again."""
    from dataclasses import fields

    state = {
        "config": {f.name: _plain(getattr(config, f.name)) for f in fields(config)},
        # The plugin modules are keyed by their rules' sources, below.
        "settings": {f.name: _plain(getattr(settings, f.name)) for f in fields(settings)
                     if f.name not in (*_NOT_KEYED, "plugins")},
        "folder": lint_dir,
    }
    plugins = _plugin_sources()
    if plugins:  # (a run without plugin rules keys as before they existed)
        state["plugins"] = plugins
    text = json.dumps(state, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _plugin_sources() -> dict[str, str | None]:
    """Each plugin rule taking part, by code: the hash of the file that defines it."""
    import inspect

    from biaslint.rules import all_rules, is_builtin

    sources: dict[str, str | None] = {}
    for rule in all_rules():
        if not is_builtin(rule):
            try:
                sources[rule.code] = file_hash(Path(inspect.getfile(rule)))
            except (TypeError, OSError):  # defined where no file holds it
                sources[rule.code] = None
    return sources


def file_hash(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None




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
        tracking = cls(root, sources_cache(folder), lint_dir, changes)
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
        moved += [f"{name} {version} -> {version_of(name) or 'not installed'}" for name, version
                  in (entry.get("libraries") or {}).items() if version_of(name) != version]
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
                "libraries": distributions(sources.libraries),
                "recorded": stamp,
                "files": self._relative(sources.files),
            }
            seconds = lint_seconds(getattr(result, "timings", None) or {})
            if seconds is not None:  # what --shard-times balances the shards by
                entry["seconds"] = seconds
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
