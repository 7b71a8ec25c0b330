"""The client side of a warm lint (``biaslint --warm``, ``warm = true``). It imports no torch.

It finds or starts this project's server, hands it the command line, the working directory,
the environment, ``sys.path``, the umask and its own stdin, stdout and stderr, forwards Ctrl-C,
and ends as the child ended: with its exit code, or by the same signal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from biaslint.errors import BiaslintError
from biaslint.serve import address, protocol

START_WAIT = 120.0  # seconds a new server may take to import torch and be ready
IDLE = 900.0  # a server with nothing to do ends after this long (seconds)


class ServerError(BiaslintError):
    """The warm server could not be started or reached."""


def request(argv: list[str]) -> dict[str, Any]:
    """What a child needs to run ``argv`` as this process would."""
    mask = os.umask(0)
    os.umask(mask)
    streams = {}
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, name)
        streams[name] = {"encoding": getattr(stream, "encoding", None) or "utf-8",
                         "errors": getattr(stream, "errors", None) or "strict",
                         "line_buffering": bool(getattr(stream, "line_buffering", False)),
                         "write_through": bool(getattr(stream, "write_through", False))}
    return {"argv": [sys.argv[0], *argv], "cwd": os.getcwd(), "env": dict(os.environ),
            "path": list(sys.path), "umask": mask, "streams": streams,
            "key": address.current_key()}


def connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def start_server(path: Path, idle: float) -> subprocess.Popen[bytes]:
    """A server for this client's Python, path and environment, in a session of its own (a
    Ctrl-C at the terminal does not reach it), its log beside the socket."""
    address.private_folder(path.parent)
    log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 (the server keeps it)
    env = dict(os.environ)
    env["BIASLINT_SERVER_PATH"] = os.pathsep.join(address.server_path(sys.path, os.getcwd()))
    return subprocess.Popen(
        [sys.executable, "-m", "biaslint.serve.server", str(path), str(idle)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(path.parent), env=env,
        start_new_session=True, close_fds=True)


def reach(path: Path, idle: float) -> socket.socket:
    """A connection to the server at ``path``, started when none answers."""
    sock = connect(path)
    if sock is not None:
        return sock
    process = start_server(path, idle)
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        sock = connect(path)
        if sock is not None:
            return sock
        if process.poll() is not None:
            raise ServerError(f"the warm server exited with code {process.returncode} before "
                              f"it was ready; its log: {path.with_suffix('.log')}")
        time.sleep(0.05)
    raise ServerError(f"the warm server was not ready after {START_WAIT:.0f} s; its log: "
                      f"{path.with_suffix('.log')}")


def lint(argv: list[str], idle: float = IDLE, fds: tuple[int, int, int] = (0, 1, 2),
         forwarded: list[int] | None = None) -> int:
    """Run ``biaslint argv`` in a child of the warm server, its stdin, stdout and stderr
    ``fds``; the child's exit code (a child killed by a signal kills this process by the same
    signal). ``forwarded`` gets each Ctrl-C or SIGTERM handed to the lint (watch mode ends
    on one even when the lint was ending anyway)."""
    path = address.socket_path(address.project_folder(), address.current_key())
    message = request(argv)
    for _attempt in range(3):
        sock = reach(path, idle)
        try:
            outcome = _served(sock, message, list(fds), forwarded)
        finally:
            sock.close()
        if "stale" not in outcome:
            return _ended(outcome)
        _wait_gone(path)  # it ends itself; the next attempt starts a fresh one
    raise ServerError("the warm server kept restarting (its libraries keep changing on disk)")


def _served(sock: socket.socket, message: dict[str, Any], fds: list[int],
            forwarded: list[int] | None = None) -> dict[str, Any]:
    protocol.send(sock, message, fds)
    reader = protocol.Reader(sock)
    # Ctrl-C and SIGTERM go to the lint (only the main thread can catch them: a language server
    # lints from a worker thread, and its lints end with the connection).
    main = threading.current_thread() is threading.main_thread()
    if main:
        previous = signal.signal(signal.SIGINT,
                                 lambda signum, frame: _forward(sock, signum, forwarded))
        terminate = signal.signal(signal.SIGTERM,
                                  lambda signum, frame: _forward(sock, signum, forwarded))
    try:
        while True:
            reply = reader.next()
            if reply is None:
                raise ServerError("the warm server closed the connection before the lint "
                                  "ended (it was stopped, or it crashed: see its log)")
            if "exit" in reply or "killed" in reply or "stale" in reply or "refused" in reply:
                return reply
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, terminate)


def _forward(sock: socket.socket, signum: int, forwarded: list[int] | None = None) -> None:
    if forwarded is not None:
        forwarded.append(signum)
    try:
        protocol.send(sock, {"signal": signum})
    except OSError:
        pass


def _ended(outcome: dict[str, Any]) -> int:
    if "refused" in outcome:
        raise ServerError(f"the warm server refused the lint: {outcome['refused']}")
    if "killed" in outcome:
        number = int(outcome["killed"])
        sys.stdout.flush()
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        time.sleep(1)  # the signal ends the process
    return int(outcome["exit"])


def _wait_gone(path: Path) -> None:
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def stop(project: Path | None = None) -> list[Path]:
    """Stop this project's servers (every key); the sockets they listened on."""
    found = address.sockets(address.project_folder(project))
    stopped = []
    for path in found:
        sock = connect(path)
        if sock is None:
            path.unlink(missing_ok=True)
            continue
        with sock:
            protocol.send(sock, {"stop": True})
            protocol.Reader(sock).next()
        stopped.append(path)
    return stopped


def status(project: Path | None = None) -> list[tuple[Path, dict[str, Any] | None]]:
    """This project's servers and what each says of itself (None: not answering)."""
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for path in address.sockets(address.project_folder(project)):
        sock = connect(path)
        if sock is None:
            out.append((path, None))
            continue
        with sock:
            protocol.send(sock, {"status": True})
            out.append((path, protocol.Reader(sock).next()))
    return out
