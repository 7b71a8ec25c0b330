"""The command line's run loop as a user meets it (issue 27): usage errors before torch loads,
the live progress line and the report sharing one terminal, ``-q`` streaming, and Ctrl-C.

Terminal behaviour is checked through the real command line on a pseudo-terminal whose output a
small terminal emulator (``Screen``) turns into what the user would see: carriage returns, line
erases and cursor moves applied, not stripped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the real entry point (``biaslint.cli.run``, as the ``biaslint`` command does) and says at
# exit whether torch was imported: the exit handlers run on both of ``cli._end``'s paths.
_PROBE = ("import atexit, sys\n"
          "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules,"
          " file=sys.stderr))\n"
          "from biaslint.cli import run\n"
          "run()\n")


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "2,x", "m.py:build"], "--input-shape '2,x' is not a shape"),
    (["--select", "BL999", "m.py:build"], "--select BL999: matches no rule"),
    (["--target-mean", "abc", "m.py:build"], "--target-mean 'abc'"),
    (["m.py"], "has no ':attr'"),
    ([], "no target given and none configured"),
    (["--format", "xml", "m.py:build"], "Invalid value for '--format'"),
])
def test_a_usage_error_is_decided_before_torch_loads(tmp_path: Path, args: list[str],
                                                     message: str):
    """Loading torch takes seconds; a mistyped option must not wait for it (checked by what is
    imported, not by the clock)."""
    (tmp_path / "m.py").write_text("def build():\n    raise AssertionError('never built')\n")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "torch imported: False" in proc.stderr
