"""Lint several targets in parallel, each in its own process.

Building a user's model runs arbitrary code: it can segfault, exhaust memory, call ``os._exit``
or loop forever. One fresh process per target means such a target costs only its own result:
the parent sees the process die (or kills it at the deadline) and reports an error for that
target while the others carry on.

Processes come from ``forkserver`` on Linux (the server imports torch once, so each target
starts in well under a second instead of re-importing torch) and from ``spawn`` elsewhere.
Never plain ``fork``: the parent may already hold threads (OpenMP, rich, pytest), and forking a
threaded process can deadlock the child.

Ctrl-C belongs to the parent. The terminal sends SIGINT to every process of the run; the workers
ignore it (so none dies half-way through sending, with a traceback), and the parent, interrupted,
ends the workers still running before it re-raises.

A worker imports only what its function needs, not the caller's ``__main__``: a script calling
``lint_many`` at its top level (no ``if __name__ == "__main__":``) would otherwise run again in
every worker, which multiprocessing refuses with a traceback per worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import types
from contextlib import contextmanager
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection, wait
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Sequence

from biaslint.errors import BiaslintError
from biaslint.findings import TargetResult
from biaslint.settings import Settings, TargetConfig

# Modules the forkserver imports once so that every forked child starts with them loaded.
# ``torch._inductor.config``: every lint restores the deterministic-algorithms flag
# (``load.guard.preserved_state``), and torch imports it (and dynamo, seconds) to do so.
_PRELOAD = ["torch", "torch._inductor.config", "biaslint.engine", "biaslint.capture",
            "biaslint.capture.concrete", "biaslint.analysis"]
# After SIGTERM, how long a child gets to exit before SIGKILL (seconds). Long enough for an
# ordinary Python process to unwind, short enough that a hung target does not stall the run.
_TERM_GRACE = 2.0


@dataclass(frozen=True)
class Outcome:
    """What one isolated call produced: its value, or an error message and nothing."""

    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def _context() -> Any:
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _start_forkserver_away_from_user_files()
        return ctx
    return mp.get_context("spawn")


def _start_forkserver_away_from_user_files() -> None:
    """The forkserver is a ``python -c`` process: its first sys.path entry is the folder it
    starts in. Started in the user's project, a ``types.py`` or ``cuda.py`` there would be
    imported in place of the real module while torch loads. Start it in an empty folder."""
    import atexit
    import multiprocessing.forkserver as forkserver
    import shutil
    import tempfile

    here = os.getcwd()
    empty = tempfile.mkdtemp(prefix="biaslint-")  # the server's cwd for its lifetime
    atexit.register(shutil.rmtree, empty, ignore_errors=True)
    try:
        os.chdir(empty)
        with _sigint_ignored():
            forkserver.ensure_running()
    finally:
        os.chdir(here)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the forkserver starts: an ignored signal stays ignored across fork
    and exec, so the server and every worker it forks ignore Ctrl-C from their first instant
    (``_child`` ignores it too, for a server someone else started). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# In a worker: where ``emit`` sends its events (the pipe to the parent).
_EVENTS: Callable[[Any], None] | None = None


def emit(event: Any) -> None:
    """In a worker of ``run_isolated``, send ``event`` (picklable) to the parent's
    ``on_event``; elsewhere, nothing."""
    if _EVENTS is not None:
        _EVENTS(event)


def _child(conn: Connection, fn: Callable[[Any], Any], payload: Any, cwd: str,
           path: list[str], threads: int | None) -> None:
    global _EVENTS
    # Ctrl-C is the parent's to handle (the module's docstring): the parent ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(message: tuple[str, Any]) -> bool:
        try:
            conn.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return False  # the parent is gone: there is nobody left to tell

    def send_event(event: Any) -> None:
        send(("event", event))

    _EVENTS = send_event
    # The forkserver was started once, possibly from another working directory: take the
    # caller's cwd and sys.path so relative targets (model.py:build) resolve as they would
    # in-process.
    try:
        os.chdir(cwd)
        # The caller's path, with its working directory last: the user's project stays
        # importable for targets, but cannot stand in for stdlib or torch modules.
        sys.path[:] = [p for p in path if p not in ("", cwd)] + [cwd]
        if threads:
            import torch

            torch.set_num_threads(threads)
        message: tuple[str, Any] = ("ok", fn(payload))
    except BaseException as exc:  # everything is reported to the parent
        message = ("error", _describe(exc))
    _EVENTS = None
    try:
        send(message)
    except Exception as exc:  # e.g. an unpicklable value
        send(("error", f"result could not be sent back: {type(exc).__name__}: {exc}"))
    conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BiaslintError):
        return str(exc)
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {os.path.basename(last[0].filename)}:{last[0].lineno})" if last else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"internal error: {type(exc).__name__}: {text}{where}"


@dataclass
class _Running:
    index: int
    process: Any
    conn: Connection
    started: float


def run_isolated(fn: Callable[[Any], Any], payloads: Sequence[Any], jobs: int = 1,
                 timeout: float | None = None,
                 on_done: Callable[[int, Outcome], None] | None = None,
                 threads: int | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_event: Callable[[int, Any], None] | None = None,
                 main: bool = True) -> list[Outcome]:
    """Call ``fn(payload)`` for each payload, each in a fresh process, ``jobs`` at a time.

    ``fn`` must be importable by name (a module-level function) and its result picklable.
    A call that raises, kills its process, or runs past ``timeout`` seconds gives an
    ``Outcome`` with ``error`` set. Results come back in the order of ``payloads``;
    ``on_start(index)`` is called as each call's process starts, ``on_event(index, event)`` for
    each event the call sends with ``emit``, ``on_done(index, outcome)`` as each finishes (for
    progress output). ``main=False``: the workers do not import the caller's ``__main__`` (as
    multiprocessing otherwise does); only for an ``fn`` and payloads that do not come from it.
    Interrupted (Ctrl-C), the processes still running are ended before the interrupt goes on.
    """
    ctx = _context()
    jobs = max(1, jobs)
    outcomes: list[Outcome | None] = [None] * len(payloads)
    queue = list(range(len(payloads)))
    running: list[_Running] = []
    cwd, path = os.getcwd(), list(sys.path)

    def finish(item: _Running, outcome: Outcome) -> None:
        running.remove(item)
        item.conn.close()
        item.process.join(_TERM_GRACE)
        if item.process.is_alive():
            item.process.kill()
            item.process.join()
        outcomes[item.index] = outcome
        if on_done is not None:
            on_done(item.index, outcome)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                index = queue.pop(0)
                running.append(_start(ctx, fn, index, payloads[index], cwd, path, threads,
                                      main))
                if on_start is not None:
                    on_start(index)
            now = time.monotonic()
            wait_for = None
            if timeout is not None:
                wait_for = max(0.0, min(r.started + timeout for r in running) - now)
            ready = wait([r.conn for r in running], timeout=wait_for)
            now = time.monotonic()
            for item in list(running):
                outcome = _outcome_of(item, item.conn in ready, now - item.started, timeout,
                                      on_event)
                if outcome is not None:
                    finish(item, outcome)
    except BaseException:
        # Ctrl-C (or an error in a callback): the workers ignore SIGINT, so end them here
        # rather than leave them running, or dying later, after this process has gone.
        _end_all(running)
        raise
    return [o if o is not None else Outcome(error="not run") for o in outcomes]


def _start(ctx: Any, fn: Callable[[Any], Any], index: int, payload: Any, cwd: str,
           path: list[str], threads: int | None, main: bool) -> _Running:
    """The process of one call, started, in the working directory and with the ``sys.path``
    (and thread count) the child takes on."""
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, daemon=True,
                          args=(sender, fn, payload, cwd, path, threads))
    with _main_hidden(not main):
        process.start()
    sender.close()  # only the child writes; EOF on receiver once it is gone
    return _Running(index, process, receiver, time.monotonic())


def _outcome_of(item: _Running, readable: bool, elapsed: float, timeout: float | None,
                on_event: Callable[[int, Any], None] | None) -> Outcome | None:
    """What a running call came to: its result or error when it sent one, died or ran past
    ``timeout`` (its process then ended); None while it still runs (an event it sent is
    passed to ``on_event``)."""
    if readable:
        try:
            status, value = item.conn.recv()
        except (EOFError, OSError):
            item.process.join(_TERM_GRACE)
            return Outcome(error=_death(item.process.exitcode), seconds=elapsed)
        if status == "ok":
            return Outcome(value=value, seconds=elapsed)
        if status != "event":
            return Outcome(error=value, seconds=elapsed)
        if on_event is not None:
            on_event(item.index, value)
    if timeout is not None and elapsed >= timeout:
        item.process.terminate()
        item.process.join(_TERM_GRACE)
        return Outcome(error=f"timed out after {timeout:g} s", seconds=elapsed)
    return None


def _end_all(running: list[_Running]) -> None:
    for item in running:
        if item.process.is_alive():
            item.process.terminate()  # SIGTERM: a Python process ends at once, silently
    deadline = time.monotonic() + _TERM_GRACE
    for item in running:
        item.process.join(max(0.0, deadline - time.monotonic()))
        if item.process.is_alive():
            item.process.kill()
            item.process.join()
        item.conn.close()
    running.clear()


@contextmanager
def _main_hidden(hidden: bool) -> Iterator[None]:
    """While ``hidden``, ``__main__`` is an empty module with no file and no spec: what a
    starting process records of it is then nothing, and the worker imports no ``__main__``.

    multiprocessing makes each worker import the parent's ``__main__`` (as ``__mp_main__``) so
    that functions and classes defined there unpickle; a script that starts workers at its top
    level would then run again in each of them. Swapped only for the instant ``start()``
    records it, in this thread."""
    real = sys.modules.get("__main__")
    if not hidden or real is None:
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the process linting this target was killed by {name}{hint}"
    return f"the process linting this target exited with code {exitcode} before reporting"


def _plain(value: Any) -> Any:
    """Settings hold read-only mapping proxies, which do not pickle: send plain dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def settings_state(settings: Settings) -> dict[str, Any]:
    """Settings as a picklable dict, for a worker process (``settings_from`` reads it)."""
    return {f.name: _plain(getattr(settings, f.name)) for f in fields(settings)}


def settings_from(state: dict[str, Any]) -> Settings:
    return Settings(**{k: MappingProxyType(v) if isinstance(v, dict) else v
                       for k, v in state.items()})


def _lint_one(job: tuple[TargetConfig, dict[str, Any]]) -> TargetResult:
    from biaslint.engine import lint

    config, state = job
    # Each stage the engine reaches goes back to the parent (its live display, ``on_stage``).
    return lint(config, settings_from(state), on_stage=emit)


def lint_many(configs: Sequence[TargetConfig], settings: Settings = Settings(), jobs: int = 1,
              timeout: float | None = None,
              on_done: Callable[[int, TargetResult], None] | None = None,
              on_stage: Callable[[int, str], None] | None = None
              ) -> list[TargetResult]:
    """Lint each target in its own process, ``jobs`` at a time, in the order given.

    A target that fails to load, crashes its process or runs past ``timeout`` seconds gives a
    ``TargetResult`` with ``error`` set; the others are unaffected. ``on_done(index, result)`` is
    called as each target finishes (progress output, reports printed as they come), and
    ``on_stage(index, stage)`` as each reaches a stage: ``start`` (its process starts), then the
    engine's ``build``, ``capture``, ``analysis``, ``rules``.

    It needs no ``if __name__ == "__main__":`` guard in the calling script: the workers do not
    import the script (``run_isolated``'s ``main``).
    """
    def result_of(config: TargetConfig, outcome: Outcome) -> TargetResult:
        if outcome.error is not None:
            return TargetResult(target=config.target, error=outcome.error)
        return outcome.value

    cores = os.cpu_count() or 1
    # Each process gets its share of the cores: N processes each running a full-width
    # OpenMP pool would only fight over the same cores.
    threads = max(1, cores // max(1, min(jobs, len(configs) or 1)))
    outcomes = run_isolated(
        _lint_one, [(c, settings_state(settings)) for c in configs], jobs=jobs,
        timeout=timeout, threads=threads, main=False,
        on_done=None if on_done is None else lambda i, o: on_done(i, result_of(configs[i], o)),
        on_start=None if on_stage is None else lambda i: on_stage(i, "start"),
        on_event=None if on_stage is None else lambda i, stage: on_stage(i, str(stage)))
    return [result_of(config, outcome) for config, outcome in zip(configs, outcomes)]
