"""A layer the training-mode forward skipped at random (LayerDrop, stochastic depth) is trained
but outside every graph: the lint says so and does not pass (a held-out miss of issue 26, M2M100's
first encoder layer). A branch the model never takes in training stays "not called"."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = """
    import torch, torch.nn as nn

    class LayerDrop(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))
            self.norms = nn.ModuleList(nn.BatchNorm1d(16) for _ in range(6))
            self.head = nn.Linear(16, 4)
            self.p = p

        def forward(self, x):
            for layer, norm in zip(self.layers, self.norms):
                if self.training and torch.rand(()) < self.p:
                    continue  # skipped at random in training, like LayerDrop
                x = torch.relu(norm(layer(x)))
            return self.head(x)

    class EvalOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(16, 16)
            self.export_head = nn.Linear(16, 4)  # used only in eval: never trained
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = torch.relu(self.body(x))
            return self.head(x) if self.training else self.export_head(x)

    class FailsLater(LayerDrop):
        def forward(self, x):
            if torch.initial_seed() != 0:  # runs under the lint's seed, fails under any other
                raise RuntimeError("no other seed")
            return super().forward(x)

    def fails_later():
        return FailsLater(0.5), (torch.randn(8, 16),)

    def dropping():
        return LayerDrop(0.5), (torch.randn(8, 16),)

    def not_dropping():
        return LayerDrop(0.0), (torch.randn(8, 16),)

    def eval_only():
        return EvalOnly(), (torch.randn(8, 16),)
"""


def _run(tmp_path, target):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS))
    return subprocess.run([sys.executable, "-m", "biaslint", f"models.py:{target}", "--select",
                           "BL001"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_layers_skipped_at_random_in_training_are_said_and_do_not_pass(tmp_path):
    proc = _run(tmp_path, "dropping")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "skipped at random" in proc.stdout and "layerdrop=0.0" in proc.stderr


def test_the_same_model_without_layer_drop_is_judged_whole(tmp_path):
    proc = _run(tmp_path, "not_dropping")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # six cancelled biases, all judged
    # built by one line in a loop: one group of six
    assert proc.stdout.count("BL001 [warning]") == 1 and "BL001 [warning] 6 layers" in proc.stdout
    assert "skipped at random" not in proc.stdout + proc.stderr


def test_a_branch_never_taken_in_training_stays_not_called(tmp_path):
    proc = _run(tmp_path, "eval_only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "export_head" in proc.stdout and "skipped at random" not in proc.stdout


def test_a_census_that_cannot_run_is_said(tmp_path):
    proc = _run(tmp_path, "fails_later")
    out = proc.stdout + proc.stderr
    assert "could not tell whether the layers the forward did not call" in out, out
    assert "no other seed" in out
