"""User code cannot end, hijack or corrupt a run: exits, interrupts, prints and global state
changes in a build or a forward (through the real CLI, and the Python API where it applies)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

GOOD = """
import torch
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)
"""

HOSTILE = {
    "exit0": "import sys\n\ndef build():\n    sys.exit(0)\n",
    "exit3": "import sys\n\ndef build():\n    sys.exit(3)\n",
    "interrupt": "def build():\n    raise KeyboardInterrupt\n",
    "hard_exit": "import os\n\ndef build():\n    os._exit(5)\n",
    "hard_exit_at_import": "import os\nos._exit(0)\n\ndef build():\n    pass\n",
    "hard_exit_in_forward": textwrap.dedent("""
        import os
        import torch
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 4)

            def forward(self, x):
                os._exit(0)

        def build():
            return Net(), torch.randn(2, 4)
        """),
    "exit_at_import": "import sys\nsys.exit(0)\n\ndef build():\n    pass\n",
    "exit_in_forward": textwrap.dedent("""
        import sys
        import torch
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 4)

            def forward(self, x):
                sys.exit(0)

        def build():
            return Net(), torch.randn(2, 4)
        """),
}


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_an_exit_or_interrupt_in_user_code_is_that_targets_error(tmp_path: Path, kind: str):
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad.py").write_text(HOSTILE[kind])
    proc = _cli(tmp_path, "good.py:build", "bad.py:build", "--format", "json")
    assert proc.returncode == 2, proc.stderr
    report = json.loads(proc.stdout)  # still a valid document, with both targets in it
    by_target = {r["target"]: r for r in report["results"]}
    assert by_target["bad.py:build"]["error"]
    assert [f["module"] for f in by_target["good.py:build"]["findings"]] == ["0"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("biaslint: error")]
    assert len(errors) == 1 and "bad.py:build" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr


PRINTS = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        print("building", flush=True)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        print("forward on", tuple(x.shape))
        return self.bn(self.conv(x))

print("imported")

def build():
    return Net(), torch.randn(2, 3, 8, 8)
"""


@pytest.mark.parametrize("fmt", ["json", "sarif"])
@pytest.mark.parametrize("isolated", [False, True])
def test_model_prints_never_reach_the_machine_format_on_stdout(tmp_path, fmt, isolated):
    (tmp_path / "chatty.py").write_text(textwrap.dedent(PRINTS))
    extra = ["--timeout", "120"] if isolated else []
    proc = _cli(tmp_path, "chatty.py:build", "--format", fmt, *extra)
    assert proc.returncode == 1, proc.stderr
    document = json.loads(proc.stdout)
    assert document
    assert "imported" in proc.stderr and "building" in proc.stderr


STATEFUL = """
import random
import torch
import torch.nn as nn

def build():
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    torch.manual_seed(1234)
    random.seed(99)
    lin = nn.Linear(256, 256)
    nn.init.normal_(lin.weight)
    return nn.Sequential(lin), torch.randn(2, 256)
"""

RANDOM = """
import torch
import torch.nn as nn

def build():
    lin = nn.Linear(256, 256)
    lin.weight.data.normal_(0, 1)  # unseeded: drawn from whatever the global RNG holds
    return nn.Sequential(lin), torch.randn(2, 256)
"""


def test_state_a_build_changes_does_not_leak_into_the_next_target(tmp_path):
    (tmp_path / "stateful.py").write_text(textwrap.dedent(STATEFUL))
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    alone = _cli(tmp_path, "good.py:build", "--format", "json")
    after = _cli(tmp_path, "stateful.py:build", "good.py:build", "--format", "json")
    good = [r for r in json.loads(after.stdout)["results"] if r["target"] == "good.py:build"]
    assert good[0]["findings"] == json.loads(alone.stdout)["results"][0]["findings"]
    assert good[0]["error"] is None


def test_the_python_api_restores_global_state(tmp_path, monkeypatch):
    import random

    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "stateful_api.py").write_text(textwrap.dedent(STATEFUL))
    torch.manual_seed(7)
    random.seed(7)
    before = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_rng_state(),
              random.getstate())
    lint(TargetConfig("stateful_api.py:build"), Settings())
    after = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_rng_state(),
             random.getstate())
    assert before[:2] == after[:2]
    assert torch.equal(before[2], after[2]) and before[3] == after[3]


def test_the_same_model_gives_the_same_numbers_every_run(tmp_path):
    (tmp_path / "unseeded.py").write_text(textwrap.dedent(RANDOM))
    first = _cli(tmp_path, "unseeded.py:build", "--format", "json", "--select", "BL003")
    second = _cli(tmp_path, "unseeded.py:build", "--format", "json", "--select", "BL003")
    one = json.loads(first.stdout)["results"][0]["findings"]
    two = json.loads(second.stdout)["results"][0]["findings"]
    assert one and one == two  # messages quote measured gains: identical to the digit


def test_user_files_named_like_stdlib_or_torch_modules_do_not_break_workers(tmp_path):
    # A project with its own types.py / cuda.py: worker processes must import the real ones.
    script = Path(sys.executable).parent / "biaslint"
    if not script.exists():
        pytest.skip("the biaslint console script is not installed next to this Python")
    (tmp_path / "types.py").write_text("raise RuntimeError('the user types.py was imported')\n")
    (tmp_path / "cuda.py").write_text("raise RuntimeError('the user cuda.py was imported')\n")
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    proc = subprocess.run([str(script), "good.py:build", "-j", "2", "--format", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "internal error" not in proc.stderr and "was imported" not in proc.stderr
    [entry] = json.loads(proc.stdout)["results"]
    assert [f["module"] for f in entry["findings"]] == ["0"]


@pytest.mark.parametrize("kind", ["hard_exit", "exit3", "hard_exit_in_forward"])
def test_the_python_api_turns_an_exit_into_a_target_error(tmp_path, monkeypatch, kind):
    import os

    from biaslint.engine import lint
    from biaslint.errors import TargetError
    from biaslint.settings import Settings, TargetConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / f"api_{kind}.py").write_text(HOSTILE[kind])
    real_exit = os._exit
    with pytest.raises(TargetError, match="exit"):
        lint(TargetConfig(f"api_{kind}.py:build"), Settings())
    assert os._exit is real_exit  # restored


STREAM_FIRST = """
import time
import torch
import torch.nn as nn

def build():
    time.sleep({sleep})
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)
"""

STREAM_SECOND = """
import os
import torch.nn as nn

def build():
    # The report of the first target is on stdout (a file) before this build starts.
    with open(os.environ["REPORT"]) as handle:
        report = handle.read()
    if "first.py:build" not in report:
        raise RuntimeError("the first target's report was not written yet: " + repr(report))
    return nn.Sequential(nn.Linear(4, 4))
"""


def test_each_targets_text_report_is_printed_as_soon_as_it_is_done(tmp_path):
    import os

    (tmp_path / "first.py").write_text(STREAM_FIRST.format(sleep=0))
    (tmp_path / "second.py").write_text(STREAM_SECOND)
    report = tmp_path / "report.txt"
    with open(report, "w") as handle:
        proc = subprocess.run([sys.executable, "-m", "biaslint", "first.py:build",
                               "second.py:build"], cwd=tmp_path, stdout=handle,
                              stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "REPORT": str(report)})
    text = report.read_text()
    assert proc.returncode == 1, proc.stderr  # the first target's BL001 finding
    assert "second.py:build: no findings" in text, (text, proc.stderr)


def test_with_jobs_a_pipe_gets_the_reports_in_the_order_of_the_targets(tmp_path):
    (tmp_path / "slow.py").write_text(STREAM_FIRST.format(sleep=4))
    (tmp_path / "fast.py").write_text(GOOD)
    proc = _cli(tmp_path, "slow.py:build", "fast.py:build", "-j", "2")
    assert proc.returncode == 1, proc.stderr
    summaries = [line for line in proc.stdout.splitlines()
                 if line.startswith(("slow.py", "fast.py")) and ": 1 warning" in line]
    assert [s.split(":")[0] for s in summaries] == ["slow.py", "fast.py"], proc.stdout
