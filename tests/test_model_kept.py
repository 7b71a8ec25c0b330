"""A lint leaves the user's model as it was, bit for bit, even when its forward writes to its
own parameters and buffers (issue 27, item 3), and the rules judge the values the build made."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
import torch.nn as nn

import biaslint
from biaslint.testing import assert_clean

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WritesItself(nn.Module):
    """A forward that writes: a scaled weight under no_grad, an Embedding renormalizing the rows
    it looks up (max_norm), a counter buffer, and a rebound parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8, max_norm=1.0)
        self.lin = nn.Linear(8, 4)
        self.out = nn.Linear(4, 3)
        self.register_buffer("count", torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.lin.weight.mul_(2)
            self.count += 1
        self.out.bias = nn.Parameter(self.out.bias.detach() + 1)
        return self.out(self.lin(self.emb(ids)).mean(1))


def _built() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = WritesItself()
    with torch.no_grad():
        model.emb.weight.mul_(5)  # rows beyond max_norm, which the forward would renormalize
    return model, (torch.randint(0, 50, (2, 6)),)


def _state(model: nn.Module) -> dict[str, tuple[int, torch.Tensor, bool]]:
    return {name: (id(t), t.detach().clone(), t.requires_grad) for name, t in
            [*model.named_parameters(), *model.named_buffers()]}


def _assert_same(model: nn.Module, before: dict[str, tuple[int, torch.Tensor, bool]]) -> None:
    after = _state(model)
    assert after.keys() == before.keys()
    for name, (ident, value, grad) in before.items():
        assert after[name][0] == ident, f"{name} is another tensor object"
        assert torch.equal(after[name][1], value), f"{name} changed"
        assert after[name][2] == grad


def test_the_forward_does_write_without_biaslint():
    # the model really changes when its forward runs: otherwise the tests below prove nothing
    model, (ids,) = _built()
    before = _state(model)
    model(ids)
    assert not torch.equal(model.lin.weight, before["lin.weight"][1])
    assert not torch.equal(model.emb.weight, before["emb.weight"][1])


def test_check_leaves_a_self_writing_model_bit_identical_and_says_it_writes():
    model, inputs = _built()
    before = _state(model)
    report = biaslint.check(model, inputs)
    _assert_same(model, before)
    assert any("the forward writes to" in n and "lin.weight" in n and "emb.weight" in n
               for n in report.result.notes)


def test_assert_clean_leaves_it_bit_identical():
    model, inputs = _built()
    before = _state(model)
    try:
        assert_clean(model, inputs, select=["BL001", "BL003"])
    except AssertionError:
        pass  # the verdict is not the point here
    _assert_same(model, before)


def test_a_rule_reads_the_values_the_build_made_not_those_a_forward_wrote(tmp_path):
    # BL003 reads the weight's scale: a forward that multiplies it by 1000 before the rules
    # run must not make a well-scaled layer look too wide
    (tmp_path / "grows.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn

        class Grows(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(256, 256)
                self.head = nn.Linear(256, 10)

            def forward(self, x):
                with torch.no_grad():
                    self.lin.weight.mul_(1000)
                return self.head(torch.relu(self.lin(x)))

        def build():
            return Grows(), (torch.randn(8, 256),)
    """))
    proc = subprocess.run([sys.executable, "-m", "biaslint", "grows.py:build", "--select",
                           "BL003", "--format", "json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the forward writes to lin.weight" in proc.stdout


WRITES = """
        import atexit, torch, torch.nn as nn

        class W(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(50, 8, max_norm=1.0)
                self.lin = nn.Linear(8, 4)

            def forward(self, ids):
                with torch.no_grad():
                    self.lin.weight.mul_(2)
                return self.lin(self.emb(ids)).mean(1)

        MODELS = []

        def build():
            model = W()
            with torch.no_grad():
                model.emb.weight.mul_(5)
            MODELS.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
            return model, (torch.randint(0, 50, (2, 6)),)

        @atexit.register
        def _compare():
            for model, saved in MODELS:
                same = all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
                print("MODEL", "same" if same else "changed", flush=True)
"""


def test_the_cli_leaves_the_built_model_bit_identical(tmp_path):
    (tmp_path / "writes.py").write_text(textwrap.dedent(WRITES))
    proc = subprocess.run([sys.executable, "-m", "biaslint", "writes.py:build"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert "MODEL same" in proc.stdout, proc.stdout + proc.stderr


def test_the_pytest_plugin_leaves_the_built_model_bit_identical(tmp_path):
    (tmp_path / "writes.py").write_text(textwrap.dedent(WRITES))
    (tmp_path / "pyproject.toml").write_text('[tool.biaslint]\ntargets = ["writes.py:build"]\n')
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--biaslint", "-q"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "MODEL same" in proc.stdout, proc.stdout + proc.stderr
