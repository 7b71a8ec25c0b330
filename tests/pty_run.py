"""Run the command line on a pseudo-terminal, for the tests of what a user sees there
(test_terminal.py, test_formats.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def on_a_terminal(args: list[str], cwd: Path, columns: int = 80) -> tuple[int, str]:
    """Run ``python -m biaslint ARGS`` with stdin, stdout and stderr on one pseudo-terminal of
    ``columns`` x 24 (CI unset, so the live display draws) and return its exit code and all
    it wrote."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "BUILD_NUMBER")}
    env.update(TERM="xterm", COLUMNS=str(columns), LINES="24")
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "biaslint", *args], stdin=terminal,
                            stdout=terminal, stderr=terminal, env=env, cwd=cwd)
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + 300  # a safety net for a hung run, not a timing assertion
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        os.close(controller)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")
