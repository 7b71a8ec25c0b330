"""On big models the advice points the right way (issue 27, item 9): a model that does not fit
in memory is told to use --device meta, and a lint that is incomplete for want of example
inputs says to give them before it offers --allow-incomplete."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BIG = """
    import torch.nn as nn

    def build():  # 4 TB of float32 weights: the allocator refuses at once
        return nn.Sequential(nn.Linear(1 << 20, 1 << 20), nn.ReLU(), nn.Linear(1 << 20, 10))
"""

UNTRACEABLE = """
    import torch, torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, ids):
            if ids.sum() > 0:  # data-dependent control flow: symbolic tracing cannot follow
                ids = ids - 1
            return self.head(self.emb(ids).mean(1))

    def build():
        return Net()
"""


def _run(tmp_path, source, *args):
    (tmp_path / "model.py").write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "biaslint", "model.py:build", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_a_model_too_big_for_memory_is_told_to_use_the_meta_device(tmp_path):
    proc = _run(tmp_path, BIG)
    assert proc.returncode == 2
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("biaslint: error")]
    assert "ran out of memory" in error and "--device meta" in error
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    # and the advice works
    assert _run(tmp_path, BIG, "--device", "meta").returncode in (0, 1)


def test_an_incomplete_lint_without_inputs_leads_with_the_input_shape(tmp_path):
    proc = _run(tmp_path, UNTRACEABLE, "--device", "meta")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("biaslint: error")]
    assert "analysis incomplete" in error
    assert error.index("--input-shape") < error.index("--allow-incomplete"), error
