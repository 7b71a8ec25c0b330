"""The README's contributor example is the real code, and the op it adds is judged right."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from biaslint.engine import lint_loaded
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig

from oracle import Oracle, split_inputs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_readme_op_example_is_the_source():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- bl001-op-example -->\n```python\n(.*?)```", readme, re.S)
    assert match, "the README lost its BL001 op example"
    source = (ROOT / "biaslint/rules/bl001_redundant_bias/ops_layout.py").read_text()
    assert match.group(1) in source


MODEL = """
import torch
import torch.nn as nn


class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn({roll}))


def build():
    return Rolled(), torch.randn(4, 3, 8, 8)
"""


@pytest.mark.parametrize("roll, redundant", [
    ("torch.roll(self.conv(x), shifts=(1, 2), dims=(2, 3))", True),  # spatial: per channel
    ("self.conv(x).roll(1, 1)", True),  # along the channels: each channel's bias moves whole
    ("self.conv(x).roll(5)", False),  # flat: channels' biases spill into their neighbours
])
def test_roll_keeps_a_per_channel_bias_per_channel(write_target, roll, redundant):
    target = write_target(MODEL.format(roll=roll))
    torch.manual_seed(0)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",)))
    claimed = {f.module for f in result.findings}
    oracle = Oracle(loaded.model, *split_inputs(loaded.inputs))
    assert ("conv" in claimed) is redundant
    assert (oracle.verdict("conv") == "redundant") is redundant
