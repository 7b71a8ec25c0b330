"""The messages between a client and the warm server: JSON, one per line, over a Unix socket.

The client's first message carries its stdin, stdout and stderr as file descriptors
(``SCM_RIGHTS``): the child writes to the client's own terminal, pipe or file, so streaming,
colours and terminal width are a cold run's. No torch here.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_REQUEST = 1 << 22  # arguments, environment and sys.path of one lint
STREAMS = 3  # stdin, stdout, stderr


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


class Reader:
    """Messages from ``sock``, line by line; fds that came with the first bytes are kept."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def fill(self, with_fds: bool = False) -> bool:
        """Read what is there; False when the other end closed."""
        if with_fds:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, STREAMS)
            self.fds.extend(fds)
        else:
            data = self.sock.recv(1 << 16)
        if not data:
            return False
        self.buffer += data
        if len(self.buffer) > MAX_REQUEST:
            raise ValueError("message too long")
        return True

    def messages(self) -> list[dict[str, Any]]:
        out = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                out.append(json.loads(line))
        return out

    def next(self, with_fds: bool = False) -> dict[str, Any] | None:
        """The next whole message (blocking), or None when the other end closed first."""
        while b"\n" not in self.buffer:
            if not self.fill(with_fds):
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message
