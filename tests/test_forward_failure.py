"""A real forward that fails after the capture succeeded is an error of the target, never a
silent pass: the capture runs on fake tensors, which accept some inputs the real kernels refuse,
so one real forward always runs, whatever the rules selected read."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from biaslint.errors import TargetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOURCE = """
import torch, torch.nn as nn

CALLS = [0]

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        CALLS[0] += 1
        if CALLS[0] > {calls}:   # the capture's forward works, the next one does not
            raise RuntimeError("the second forward fails")
        return self.fc(torch.relu(self.hidden(x)))

def build():
    return Net(), torch.randn(32, 16)
"""


def test_a_real_forward_that_fails_after_the_capture_is_an_error_of_the_target(lint_source):
    # the capture's forward works, the real one does not: the target cannot be run on its
    # inputs, which a gate must not pass (nor leave to --allow-incomplete)
    with pytest.raises(TargetError, match="the forward failed on the example inputs.*"
                                          "RuntimeError: the second forward fails"):
        lint_source(SOURCE.replace("{calls}", "1"))


def test_the_same_model_whose_forwards_work_is_judged(lint_source) -> None:
    result = lint_source(SOURCE.replace("{calls}", "100"))
    assert result.incomplete == ()
    scopes = {s.code: s for s in result.rules}
    assert scopes["BL007"].judged > 0 and scopes["BL009"].judged > 0


def test_the_cli_exits_2(cli, write_target) -> None:
    target = write_target(SOURCE.replace("{calls}", "1"))
    result = cli(target)
    assert result.exit_code == 2
    assert "the forward failed on the example inputs" in result.stderr


@pytest.mark.parametrize("select", [(), ("--select", "BL001")])
def test_inputs_only_the_fake_capture_accepts_are_an_error(tmp_path, select) -> None:
    # fake tensors run a Long x Float matmul that real torch refuses: with ids fed to a Linear
    # the target cannot run, whether or not a selected rule reads the forward (issue 27, item 8)
    (tmp_path / "lin.py").write_text("import torch.nn as nn\n\n"
                                     "def build():\n    return nn.Sequential(nn.Linear(16, 4))\n")
    proc = subprocess.run([sys.executable, "-m", "biaslint", "lin.py:build", "--input-shape",
                           "2,16:int", *select], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "coverage 100%" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("biaslint: error:")]
    assert len(errors) == 1 and "the forward failed on the example inputs" in errors[0]
    assert "same dtype" in errors[0] and "--input-shape" in errors[0]
    assert "Traceback" not in proc.stderr


NESTED = """
import torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 4)

    def forward(self, x):
        return self.proj(x)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Block()

    def forward(self, x):
        return self.body(x)

def build():
    return Net()
"""


@pytest.mark.parametrize("source, where", [
    (NESTED, "(in 'body.proj', Linear)"),  # the real kernel refuses what fake tensors took
    (SOURCE.replace("{calls}", "1"), "(in the model's own forward, Net)"),
])
def test_the_error_of_a_real_forward_names_the_innermost_module(tmp_path, source, where):
    # As the README says of any forward that fails on the example inputs: one line names the
    # error and the innermost module it came from, also when only the real forward (after a
    # capture on fake tensors) fails
    (tmp_path / "net.py").write_text(source)
    args = ["--input-shape", "2,16:int"] if source is NESTED else []
    proc = subprocess.run([sys.executable, "-m", "biaslint", "net.py:build", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("biaslint: error:")]
    assert len(errors) == 1 and "the forward failed on the example inputs" in errors[0], errors
    assert where in errors[0], errors[0]
