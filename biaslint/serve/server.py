"""The warm server: ``python -m biaslint.serve.server SOCKET IDLE`` (the client starts it).

It imports torch, torchvision (when installed), biaslint and the modules a lint of a small model
imports from those and their dependencies (found by a probe child), and nothing of the user's.
It never runs a torch op. Then, one thread, one ``select`` loop:

- a connection from another user is refused (the socket is 0600 in a 0700 folder, and the
  peer's credentials are checked);
- a lint request forks a child (``child.prepare``, then the command line); the child's exit
  code, or the signal that killed it, goes back to the client; a client that goes away takes
  its child with it; a Ctrl-C the client forwards goes to the child's process group;
- before each lint, the files of every module the server imported are compared with what they
  were at its start: when biaslint, torch or a library they import changed on disk the server
  says "stale" and ends, and the client starts a new one;
- with nothing running for IDLE seconds, or on ``biaslint server stop``, it ends.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import re
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from biaslint.serve import child, protocol

_PROBE_WAIT = 300.0


def log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {text}", file=sys.stderr,
          flush=True)


def threads() -> int:
    """The process's OS threads (Linux), or 0 when that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def allowed_tops() -> set[str]:
    """Top-level module names the parent may import: the standard library's, and those of the
    distributions torch, torchvision and biaslint need, recursively."""
    from importlib import metadata

    tops: dict[str, list[str]] = metadata.packages_distributions()  # type: ignore[assignment]
    by_dist: dict[str, set[str]] = {}
    for top, dists in tops.items():
        for dist in dists:
            by_dist.setdefault(_norm(dist), set()).add(top)
    seen: set[str] = set()
    todo = ["torch", "torchvision", "biaslint"]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
            marker = text.partition(";")[2]
            if found and "extra" not in marker:  # what an extra adds is not a dependency
                todo.append(found.group(1))
    allowed = set(sys.stdlib_module_names) | {"biaslint", "torch", "torchvision"}
    for name in seen:
        allowed |= by_dist.get(name, set())
    return allowed


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def probe() -> list[str]:
    """The modules a lint of a small model imports, from a child that runs one (the parent
    must run no torch op itself)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (a child)
        code = 1
        try:
            os.close(read)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            import torch
            from torch import nn

            from biaslint.api import check

            model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
            check(model, (torch.randn(2, 3, 8, 8),), signal=True).to_json()
            os.write(write, "\n".join(sorted(sys.modules)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + _PROBE_WAIT
    while time.monotonic() < deadline:
        chunk = os.read(read, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    _pid, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        log("the probe lint failed: only torch, torchvision and biaslint are preloaded")
        return []
    return b"".join(chunks).decode().split("\n")


def preload() -> int:
    """Import what a lint will import; the number of modules imported."""
    import torch  # noqa: F401

    try:
        importlib.import_module("torchvision")
    except ImportError:
        pass
    import biaslint.cli  # noqa: F401
    import biaslint.run.check  # noqa: F401

    allowed = allowed_tops()
    before = len(sys.modules)
    for name in [*probe(), *own_modules()]:
        if name and name not in sys.modules and name.split(".")[0] in allowed \
                and not name.startswith(_NOT_PRELOADED):
            try:
                importlib.import_module(name)
            except Exception as exc:  # a module that cannot be imported alone: the child will
                log(f"not preloaded: {name}: {type(exc).__name__}: {exc}")
    return len(sys.modules) - before


def own_modules() -> list[str]:
    """Every module of biaslint's own that a command line may import (the probe runs the API,
    not the command line's reporting, configuration and records): a child imports none of them
    anew. The test and training-loop integrations, and the server itself, are left out (and
    not imported to be walked: ``pkgutil.walk_packages`` would)."""
    import pkgutil

    import biaslint

    found: list[str] = []

    def walk(folder: str, prefix: str) -> None:
        for info in pkgutil.iter_modules([folder], prefix):
            if info.name.startswith(_NOT_PRELOADED):
                continue
            found.append(info.name)
            if info.ispkg:
                walk(os.path.join(folder, info.name.rpartition(".")[2]), info.name + ".")

    for folder in biaslint.__path__:
        walk(folder, "biaslint.")
    return found


_NOT_PRELOADED = ("biaslint.serve", "biaslint.integrations", "biaslint.pytest_plugin",
                  "biaslint.testing", "biaslint.__main__")


def stamp() -> dict[str, tuple[int, int]]:
    """The modification time and size of every loaded module's file."""
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        try:
            info = os.stat(path)
        except OSError:
            continue
        out[path] = (info.st_mtime_ns, info.st_size)
    return out


def changed(recorded: dict[str, tuple[int, int]]) -> str | None:
    for path, (mtime, size) in recorded.items():
        try:
            info = os.stat(path)
        except OSError:
            return f"{path} was removed"
        if (info.st_mtime_ns, info.st_size) != (mtime, size):
            return f"{path} changed"
    return None


class Server:
    def __init__(self, path: Path, idle: float, lock: Any = None) -> None:
        self.path = path
        self.lock = lock  # the socket's lock file, held until the server stops listening
        self.idle = idle
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, tuple[socket.socket, protocol.Reader]] = {}
        self.clients: dict[socket.socket, int] = {}
        self.last = time.monotonic()
        self.stopping = False
        self.recorded: dict[str, tuple[int, int]] = {}
        self.started = time.time()
        self.served = 0
        self.preloaded = 0
        self.parent_threads = 0
        self.wake_read, self.wake_write = os.pipe()

    def listen(self) -> socket.socket:
        if self.path.exists():
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(mask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def serve(self) -> None:
        self.listener = self.listen()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stop())
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        log(f"listening on {self.path}")
        self.last = time.monotonic()  # the idle time counts from here, not from the preload
        while True:
            if not self.children and (self.stopping or time.monotonic() - self.last > self.idle):
                break
            wait = None if self.children else max(0.0, self.idle - (time.monotonic() - self.last))
            for key, _events in self.selector.select(wait if wait is not None else None):
                if key.data == "accept":
                    self.accept()
                elif key.data == "wake":
                    self.reap()
                else:
                    self.from_client(key.fileobj)  # type: ignore[arg-type]
            self.reap()
        self.close()

    def stop(self) -> None:
        """Listen no more (a new server may start at once); end when the lints running end."""
        if self.stopping:
            return
        self.stopping = True
        self.selector.unregister(self.listener)
        self.listener.close()
        self.path.unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.close()

    def close(self) -> None:
        log("ending")
        self.stop()

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # nothing waiting, or the listener closed by a stop since the select
            return
        conn.setblocking(True)
        conn.settimeout(30)
        try:
            self.handle(conn)
        except (OSError, ValueError) as exc:
            log(f"a request failed: {type(exc).__name__}: {exc}")
            conn.close()

    def handle(self, conn: socket.socket) -> None:
        reader = protocol.Reader(conn)
        if not _same_user(conn):
            protocol.send(conn, {"refused": "the server serves only the user who started it"})
            conn.close()
            return
        message = reader.next(with_fds=True)
        fds = reader.fds
        try:
            if message is None:
                conn.close()
                return
            if message.get("status"):
                protocol.send(conn, self.status())
                conn.close()
                return
            if message.get("stop"):
                protocol.send(conn, {"stopping": True})
                conn.close()
                self.stop()
                return
            why = changed(self.recorded)
            if why is not None or self.stopping:
                log(f"stale: {why}")
                protocol.send(conn, {"stale": why or "stopping"})
                conn.close()
                self.stop()
                return
            if len(fds) != protocol.STREAMS:
                protocol.send(conn, {"refused": "the request came without its streams"})
                conn.close()
                return
            self.fork(conn, reader, message, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def fork(self, conn: socket.socket, reader: protocol.Reader, message: dict[str, Any],
             fds: list[int]) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child: measured through the client in the tests)
            code = 2
            try:
                owned = [self.listener, conn, *[c for c in self.clients], self.selector]
                child.prepare(message, fds, owned)
                code = child.run()
            except BaseException as exc:  # the child must never return into the server loop
                try:
                    print(f"biaslint: error: the warm child failed: {type(exc).__name__}: "
                          f"{exc}", file=sys.stderr)
                except Exception:
                    pass
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.served += 1
        conn.setblocking(False)
        self.children[pid] = (conn, reader)
        self.clients[conn] = pid
        self.selector.register(conn, selectors.EVENT_READ, "client")
        protocol_send_quiet(conn, {"running": pid})

    def from_client(self, conn: socket.socket) -> None:
        pid = self.clients.get(conn)
        if pid is None:
            return
        reader = self.children[pid][1]
        try:
            alive = reader.fill()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            alive = False
        if not alive:  # the client went away: so does its lint
            self.selector.unregister(conn)
            del self.clients[conn]
            _signal_group(pid, signal.SIGTERM)
            return
        for message in reader.messages():
            number = message.get("signal")
            if isinstance(number, int) and number in (signal.SIGINT, signal.SIGTERM):
                _signal_group(pid, number)

    def reap(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            conn, _reader = self.children.pop(pid)
            if conn in self.clients:
                self.selector.unregister(conn)
                del self.clients[conn]
            if os.WIFSIGNALED(status):
                reply: dict[str, Any] = {"killed": os.WTERMSIG(status)}
            else:
                reply = {"exit": os.waitstatus_to_exitcode(status)}
            conn.setblocking(True)
            protocol_send_quiet(conn, reply)
            conn.close()
            self.last = time.monotonic()

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "started": self.started, "served": self.served,
                "running": len(self.children), "preloaded": self.preloaded,
                "modules": len(sys.modules), "threads": self.parent_threads,
                "idle_after": self.idle, "python": sys.executable}


def protocol_send_quiet(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        protocol.send(conn, message)
    except OSError:
        pass


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def _same_user(conn: socket.socket) -> bool:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the socket's mode and its folder's keep others out
        return True
    data = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return bool(uid == os.getuid())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path, idle = Path(args[0]), float(args[1])
    given = os.environ.pop("BIASLINT_SERVER_PATH", None)
    if given:
        sys.path[:] = given.split(os.pathsep)
    lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 (held while the server lives)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log("another server holds this socket: ending")
        return 0
    server = Server(path, idle, lock)
    start = time.perf_counter()
    server.preloaded = preload()
    server.parent_threads = threads()
    server.recorded = stamp()
    log(f"preloaded {server.preloaded} modules beyond torch, torchvision and biaslint in "
        f"{time.perf_counter() - start:.1f} s; {len(sys.modules)} modules, "
        f"{server.parent_threads} threads")
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
