"""What a child forked by the warm server does before it runs the command line, so that it runs
as a cold ``biaslint`` process of the client's would.

Fork safety, and why each step is here:

- **Threads.** The parent imported torch and its libraries and never ran a torch op, so no
  OpenMP or torch intra-op pool exists yet: the child creates its own on its first op, sized
  by the client's environment (the server is keyed on the variables that size it,
  ``address.IMPORT_ENV_PREFIXES``). numpy's OpenBLAS starts its pool at import; OpenBLAS stops
  it before a fork and restarts it after (its ``pthread_atfork`` handlers).
- **Random numbers.** torch's default generator is untouched in the parent (its fixed seed, as
  in a fresh process). Python's ``random`` and numpy's global generator are seeded from the OS
  at import in a fresh process, so the child reseeds them from the OS: forked children must not
  share one sequence.
- **Signals.** The server's handlers (SIGCHLD wake-up, SIGTERM) are put back to Python's
  defaults, and the wake-up fd is cleared. The child leads a process group of its own, so a
  Ctrl-C the client forwards reaches it and the workers it starts, as the terminal's would.
- **Descriptors.** The client's stdin, stdout and stderr become 0, 1 and 2; every descriptor of
  the server (its socket, the other clients' connections) is closed; ``sys.stdin``,
  ``sys.stdout`` and ``sys.stderr`` are made anew with the client's encodings and buffering.
- **Process state.** Working directory, environment, ``sys.argv``, ``sys.path`` and umask are
  the client's.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sys
from typing import Any


def prepare(request: dict[str, Any], fds: list[int], owned: list[Any]) -> None:
    """Make this freshly forked process the client's. ``owned``: the server's sockets and
    selector, let go of before their descriptors are closed (a socket object collected later
    must not close a descriptor number the lint has reused)."""
    from biaslint.process import warm_child

    warm_child()
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for thing in owned:
        if hasattr(thing, "detach"):
            thing.detach()
        else:
            thing.close()  # the selector: its own descriptor, closed by itself
    os.closerange(3, _max_fd())
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(int(request["umask"]))
    sys.argv = list(request["argv"])
    sys.path[:] = list(request["path"])
    _streams(request["streams"])
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return int(os.sysconf("SC_OPEN_MAX"))


def _streams(streams: dict[str, dict[str, Any]]) -> None:
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        given = streams[name]
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        buffered: Any = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(buffered, encoding=given["encoding"], errors=given["errors"],
                                  line_buffering=given["line_buffering"],
                                  write_through=given["write_through"])
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def run() -> int:
    """The command line, as ``biaslint`` runs it; its exit code."""
    from biaslint.cli import run as command

    try:
        command()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0
