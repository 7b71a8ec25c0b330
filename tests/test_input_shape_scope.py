"""--input-shape applies to the targets that return no example inputs (issue 27, item 4): with
several targets, one shape given for a target without inputs must not replace the token ids
another target returns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = """
    import torch, torch.nn as nn

    def plain():
        return nn.Sequential(nn.Linear(8, 4))

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, ids):
            return self.head(self.emb(ids).mean(1))

    def tokens():
        return Tokens(), (torch.randint(0, 100, (2, 5)),)
"""


def test_one_input_shape_for_several_targets_keeps_the_inputs_a_target_returns(tmp_path):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS))
    proc = subprocess.run([sys.executable, "-m", "biaslint", "models.py:plain",
                           "models.py:tokens", "--input-shape", "2,8"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "models.py:plain: no findings; coverage 100%" in out
    assert "models.py:tokens: no findings; coverage 100%" in out
    assert "input shape given was not used" in out
