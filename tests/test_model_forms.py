"""Forms of model code the lint must run through, or refuse in one line: gradient checkpointing
in its reentrant form, a TorchScript submodule."""

from __future__ import annotations

import pytest
import torch

from biaslint.engine import lint
from biaslint.settings import Settings, TargetConfig

CHECKPOINTED = """
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=REENTRANT)
        return self.fc(x.mean((2, 3)))


def build():
    return Net(), torch.randn(2, 3, 8, 8)
"""


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_is_measured_in_either_form(write_target, reentrant):
    """The reentrant form cannot be differentiated with torch.autograd.grad, so every measured
    rule (BL001's screen, BL015) went unjudged and the lint ended incomplete. It now runs as a
    plain call while biaslint lints: complete, with the same findings as the other form."""
    from torch.utils.checkpoint import CheckpointFunction

    target = write_target(CHECKPOINTED.replace("REENTRANT", str(reentrant)))
    result = lint(TargetConfig(target), Settings())
    assert not result.incomplete, result.incomplete
    assert sorted(f.module for f in result.findings if f.code == "BL001") == [
        "blocks.0.conv", "blocks.1.conv"]
    assert "apply" not in CheckpointFunction.__dict__  # put back


def test_the_plain_call_keeps_what_the_reentrant_form_does_not_train():
    """With no input that requires a gradient, the reentrant form gives the function's
    parameters none; the plain call runs without gradients then, as the reentrant forward does."""
    from torch.utils.checkpoint import checkpoint

    from biaslint.load.guard import reentrant_checkpoints_plain

    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with reentrant_checkpoints_plain():
        cut = checkpoint(layer, x, use_reentrant=True)
        kept = checkpoint(layer, x.requires_grad_(), use_reentrant=True)
    assert not cut.requires_grad and kept.requires_grad


def test_a_torchscript_submodule_is_one_line(cli, write_target):
    target = write_target("""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.block = torch.jit.script(nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)))

    def forward(self, x):
        return self.block(self.stem(x))


def build():
    return Net(), torch.randn(2, 3, 8, 8)
""")
    result = cli(target)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("biaslint: error")]
    assert len(lines) == 1 and "submodule block is a TorchScript module" in lines[0], lines
    assert "internal error" not in result.stderr


VMAPPED_MASK = """
import torch
import torch.nn as nn


def chunked(q, k):  # a block-causal mask, written per position as transformers writes masks
    return torch.div(q, 2, rounding_mode="trunc") >= torch.div(k, 2, rounding_mode="trunc")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        positions = torch.arange(x.shape[1])
        mask = torch.vmap(torch.vmap(chunked, in_dims=(None, 0)), in_dims=(0, None))(
            positions, positions)
        scores = (self.q(x) @ self.k(x).transpose(1, 2)).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, -1) @ x


def build():
    return Net(), torch.randn(2, 6, 8)
"""


def test_a_mask_built_under_vmap_does_not_stop_the_lint(write_target):
    """The attention measurement read a scalar's value (is the scale zero?) inside torch.vmap,
    where reading a value raises: transformers' Nemotron ASR models failed with "the forward
    failed on the example inputs" (exit 2). Inside a functorch transform it reads nothing."""
    result = lint(TargetConfig(write_target(VMAPPED_MASK)), Settings())
    assert result.error is None, result.error
    assert [f.module for f in result.findings if f.code == "BL001"] == ["k"]
