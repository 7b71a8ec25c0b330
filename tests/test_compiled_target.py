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
