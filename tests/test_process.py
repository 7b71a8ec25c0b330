"""What a lint does to the process it runs in: the cycle collector and the end of the process.

A lint freezes the objects that exist before it (``gc.freeze``) so that a full collection does
not walk torch's millions of objects, and gives them back when it ends (the Python API leaves the
process as it found it). The command line ends its own process without tearing the interpreter
down, after running what an exit runs for the user's code (atexit handlers, logging's flush,
``weakref.finalize``), and exits normally while a thread the user's code started is running.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FREEZE_PROBE = '''
import gc
import torch
import torch.nn as nn

SEEN = {seen!r}


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        with open(SEEN, "a") as f:
            f.write(f"{{gc.get_freeze_count()}}\\n")
        return self.fc(x)


def build():
    return Probe(), torch.randn(2, 4)
'''


def test_a_lint_freezes_the_old_objects_and_gives_them_back(write_target, tmp_path: Path):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    seen_file = tmp_path / "seen.txt"
    target = write_target(FREEZE_PROBE.format(seen=str(seen_file)))
    assert gc.get_freeze_count() == 0
    result = lint(TargetConfig(target), Settings())
    assert result.error is None
    seen = [int(line) for line in seen_file.read_text().split()]
    # every forward of the lint (the capture's, the rules') ran with torch's objects frozen:
    # far more than the model's own handful
    assert seen and min(seen) > 100_000, seen
    assert gc.get_freeze_count() == 0  # the API leaves the collector as it found it


def test_the_api_on_a_model_you_hold_freezes_and_unfreezes_too():
    import torch
    import torch.nn as nn

    import biaslint

    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            seen.append(gc.get_freeze_count())
            return self.fc(x)

    report = biaslint.check(Probe(), torch.randn(2, 4), signal=False)
    assert report.result.error is None
    assert seen and min(seen) > 100_000
    assert gc.get_freeze_count() == 0


EXIT_PROBE = '''
import atexit
import logging
import threading
import time
import weakref

import torch
import torch.nn as nn

OUT = {out!r}

log = logging.getLogger("probe")
log.addHandler(logging.FileHandler(OUT + ".log", delay=True))
log.setLevel(logging.INFO)


class Token:
    pass


TOKEN = Token()


def _write(name, text):
    with open(OUT + "." + name, "w") as f:
        f.write(text)


def build():
    atexit.register(_write, "atexit", "ran")
    weakref.finalize(TOKEN, _write, "finalize", "ran")
    log.info("built")  # buffered by the handler until logging's atexit flush/close
    if {thread!r}:
        def late():
            time.sleep(1.0)
            _write("thread", "done")
        threading.Thread(target=late).start()
    model = nn.Sequential(nn.Linear(8, 8, bias={bias!r}), nn.BatchNorm1d(8))
    return model, torch.randn(4, 8)
'''


def _run(tmp_path: Path, thread: bool, bias: bool) -> subprocess.CompletedProcess[str]:
    out = str(tmp_path / "probe")
    (tmp_path / "exit_probe.py").write_text(
        textwrap.dedent(EXIT_PROBE.format(out=out, thread=thread, bias=bias)))
    return subprocess.run([sys.executable, "-m", "biaslint", "exit_probe.py:build",
                           "--select", "BL001"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("bias, code", [(False, 0), (True, 1)])
def test_the_command_line_ends_its_process_with_what_an_exit_runs(tmp_path: Path, bias: bool,
                                                                   code: int):
    proc = _run(tmp_path, thread=False, bias=bias)
    assert proc.returncode == code, proc.stderr
    assert ("BL001" in proc.stdout) == bias, proc.stdout  # the report reached the pipe
    for name in ("atexit", "finalize"):
        assert (tmp_path / f"probe.{name}").read_text() == "ran", name
    assert (tmp_path / "probe.log").read_text() == "built\n"


def test_a_running_user_thread_gets_the_normal_exit(tmp_path: Path):
    proc = _run(tmp_path, thread=True, bias=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "probe.thread").read_text() == "done"  # waited for, as Python does
    assert (tmp_path / "probe.atexit").read_text() == "ran"
