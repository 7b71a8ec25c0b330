"""``biaslint --watch``: lint, then lint again each target whose source files change, warm, and
print only what changed. It runs in the client (no torch): every lint is a child of the warm
server, which writes a JSON report this process compares with the last one.

The files of a target are those its last lint recorded (``.biaslint_cache/sources.json``, the
records ``--changed-since`` reads: the project files its build and forward ran, inside a git
work tree); with no record, the target's own file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from biaslint.errors import ConfigError
from biaslint.serve import client

POLL = 0.3  # seconds between looks at the files
INTERRUPTED = 130  # the exit of a lint Ctrl-C stopped (``cli.EXIT_INTERRUPTED``)
# The options --watch cannot take: it writes its own report and prints its own lines.
REFUSED = ("--format", "--output", "-o", "--fix", "--diff", "--write-baseline", "--shard",
           "--changed-since", "--cold")


@dataclass(frozen=True)
class Shown:
    """A finding as watch mode tells it apart and prints it."""

    target: str
    code: str
    module: str
    parameter: str
    where: str
    message: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.target, self.code, self.module, self.parameter)

    def line(self, sign: str) -> str:
        return f"{sign} {self.where}: {self.code} {self.message}"


@dataclass
class Watched:
    """What the last lint of each target found, and the state of the files it read."""

    findings: dict[str, dict[tuple[str, str, str, str], Shown]] = field(default_factory=dict)
    files: dict[str, dict[Path, tuple[int, int] | None]] = field(default_factory=dict)
    errors: dict[str, str | None] = field(default_factory=dict)


def watch(targets: Sequence[str], options: dict[str, Any],
          argv: Sequence[str] | None = None, rounds: int | None = None) -> int:
    """Lint ``targets`` (else the configured ones), then again each whose files change, until
    Ctrl-C; ``rounds`` ends it after that many lints (tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    given = [a for a in args if a.split("=")[0] in REFUSED]
    if given:
        raise ConfigError(f"--watch prints what changed and writes no report: drop {given[0]}")
    names = list(targets) or _configured(options.get("config"))
    rest = [a for a in args if a not in ("--watch", "--warm") and a not in targets]
    state = Watched()
    print(f"biaslint: watching {len(names)} target{'s' if len(names) != 1 else ''}; "
          "Ctrl-C ends", flush=True)
    due = list(names)
    done = 0
    while rounds is None or done < rounds:
        if due:
            _lint(due, rest, state)
            done += 1
            due = []
            continue
        time.sleep(POLL)
        due = [t for t in names if _changed(state.files.get(t, {}))]
    return 0


def _configured(config: str | None) -> list[str]:
    from biaslint.run.config import load_config

    found = [entry["target"] for entry in load_config(config).targets]
    if not found:
        raise ConfigError("--watch: no target given and none configured: run biaslint "
                          "--watch MODULE:ATTR")
    return found


def _lint(targets: list[str], rest: list[str], state: Watched) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="biaslint-watch-") as folder:
        report = Path(folder) / "report.json"
        forwarded: list[int] = []
        with open(os.devnull, "r+b") as null:
            code = client.lint([*targets, *rest, "--format", f"json={report}"],
                               fds=(null.fileno(), null.fileno(), null.fileno()),
                               forwarded=forwarded)
        if code == INTERRUPTED or forwarded:  # a Ctrl-C the client handed to the lint (or
            raise KeyboardInterrupt  # that came as it ended) ends the watch
        results = results_of(report)
    seconds = time.monotonic() - started
    if results is None:
        print(f"biaslint: the lint of {', '.join(targets)} ended with exit {code} and no "
              "report: run it without --watch to see why", flush=True)
        for target in targets:
            state.files[target] = _files(target, state.files.get(target))
        return
    for result in results:
        _show(result, state, seconds)


def results_of(path: Path) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    results = data.get("results") if isinstance(data, dict) else None
    return results if isinstance(results, list) else None


def _show(result: dict[str, Any], state: Watched, seconds: float) -> None:
    target = str(result["target"])
    first = target not in state.findings
    now = {s.key: s for s in (_shown(target, f) for f in result.get("findings") or [])}
    before = state.findings.get(target, {})
    error = result.get("error")
    lines = []
    if error and error != state.errors.get(target):
        lines.append(f"! {target}: {error}")
    elif not error and state.errors.get(target):
        lines.append(f"  {target}: builds again")
    lines += [now[k].line("+") for k in now if k not in before]
    lines += [before[k].line("-") for k in before if k not in now]
    state.findings[target], state.errors[target] = now, error
    state.files[target] = _files(target, state.files.get(target))
    if first and not state.files[target]:
        lines.append(f"  {target}: no source file recorded or found to watch: it is not "
                     "linted again")
    count = f"{len(now)} finding{'s' if len(now) != 1 else ''}"
    if first:
        print("\n".join([*lines, f"{target}: {count} ({seconds:.1f} s)"]), flush=True)
    elif lines:
        print("\n".join([*lines, f"{target}: {count} now ({seconds:.1f} s)"]), flush=True)
    else:
        print(f"{target}: no change ({count}, {seconds:.1f} s)", flush=True)


def _shown(target: str, finding: dict[str, Any]) -> Shown:
    where = finding.get("file") or target
    if finding.get("line"):
        where = f"{where}:{finding['line']}"
    return Shown(target, str(finding.get("code")), str(finding.get("module") or ""),
                 str(finding.get("parameter") or ""), str(where),
                 str(finding.get("message") or ""))


def _files(target: str, before: dict[Path, tuple[int, int] | None] | None
           ) -> dict[Path, tuple[int, int] | None]:
    """The files ``target``'s last lint read, each with its state now."""
    return {path: _state(path) for path in files_of(target)}


def _state(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


def files_of(target: str) -> list[Path]:
    """The files ``target``'s last lint recorded as read, else its own file (absolute)."""
    return _recorded(target) or target_file(target)


def _changed(files: dict[Path, tuple[int, int] | None]) -> bool:
    return any(_state(path) != state for path, state in files.items())


def _recorded(target: str) -> list[Path]:
    """The files the source cache recorded for ``target`` (absolute), or none."""
    from biaslint.run.worktree import sources_cache, work_tree
    from biaslint.serve.address import project_folder

    cache = sources_cache(project_folder())
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        entry = data["targets"][target]
        files = list(entry["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    root = work_tree(cache.parent)
    return [root / name for name in files] if root is not None else []


def target_file(target: str) -> list[Path]:
    """The file that defines ``target`` (``file.py:attr``, or ``pkg.mod:attr`` under the
    working directory), when it is there."""
    module = target.split(":", 1)[0]
    if module.endswith(".py"):
        return [Path(module).resolve()]
    base = Path.cwd() / Path(*module.split("."))
    return [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()]
