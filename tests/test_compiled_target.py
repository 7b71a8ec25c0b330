"""A torch.compile'd model is linted through the module it compiles (issue 27, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
import torch.nn as nn

import biaslint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_cli_lints_a_compiled_module_through_its_original(tmp_path):
    (tmp_path / "compiled.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn

        def build():
            model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            return torch.compile(model), (torch.randn(2, 3, 16, 16),)
    """))
    proc = subprocess.run([sys.executable, "-m", "biaslint", "compiled.py:build", "--select",
                           "BL001"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "BL001" in out and "without a forward" not in out
    assert "torch.compile'd module" in out


def test_check_lints_a_compiled_module_through_its_original():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    report = biaslint.check(torch.compile(model), torch.randn(4, 4), select=["BL001"])
    assert [f.code for f in report.findings] == ["BL001"]
    assert report.findings[0].module == "0"


COMPILED_INSIDE = """
    import torch, torch.nn as nn

    @torch.compile
    def doubled(x):
        return torch.relu(x) * 2

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            return doubled(self.bn(self.conv(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.compile(Block())
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.block(x).mean((2, 3)))

    def build():
        return Net(), torch.randn(2, 3, 8, 8)

    def warm():  # compiled once by the build itself
        model, x = build()
        model(x)
        return model, x
"""


def test_compiled_submodules_and_functions_run_as_their_python_code(tmp_path):
    """A submodule or function under torch.compile inside the model: the compiled graph run
    under the capture's recording crashed the process (a segmentation fault, exit 139). The
    build and the lint run it as its Python code; the finding inside the block is found."""
    (tmp_path / "inside.py").write_text(textwrap.dedent(COMPILED_INSIDE))
    for target in ("inside.py:build", "inside.py:warm"):
        proc = subprocess.run([sys.executable, "-m", "biaslint", target, "--select", "BL001"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": ROOT})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        assert "block._orig_mod.conv" in out and "BL001" in out, out


def test_check_puts_torch_compile_back(tmp_path):
    """check() on a model whose block was compiled (and run) in the caller's process: linted
    eagerly, and torch.compile is as it was after."""
    import importlib.util

    path = tmp_path / "inside_held.py"
    path.write_text(textwrap.dedent(COMPILED_INSIDE))
    spec = importlib.util.spec_from_file_location("inside_held", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, x = module.build()
    report = biaslint.check(model, x, select=["BL001"])
    assert [f.module for f in report.findings] == ["block._orig_mod.conv"]
    import torch._dynamo

    assert not torch._dynamo.config.disable
    stance = getattr(torch._dynamo.eval_frame, "_stance", None)
    assert stance is None or stance.stance == "default"
