"""BL008 measured: against synthetic targets drawn around the given mean (unit spread), the
initial MSE minus the MSE with the ideal bias is the excess the rule reports; it fires exactly
where that offset dominates (offset^2 > max(1, output variance)); its fix removes it."""

from __future__ import annotations

import textwrap

import pytest
import torch

HEAD = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, outputs=1, bias=True, squash=False, weight_std=None, bias_value=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.ReLU())
        self.out = nn.Linear(64, outputs, bias=bias)
        if weight_std is not None:
            nn.init.normal_(self.out.weight, std=weight_std)
        if bias_value is not None:
            nn.init.constant_(self.out.bias, bias_value)
        self.squash = squash

    def forward(self, x):
        y = self.out(self.body(x))
        return torch.sigmoid(y) if self.squash else y


class Depth(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.depth = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        return self.depth(torch.relu(self.body(x)))
"""

# name -> (build, inputs, means, fires, head)
CASES = {
    "house prices in k$": ("Net()", "torch.randn(64, 8)", (250.0,), True, "out"),
    "a mean the outputs already sit near": ("Net()", "torch.randn(64, 8)", (0.3,), False, "out"),
    "a mean of 3": ("Net()", "torch.randn(64, 8)", (3.0,), True, "out"),
    "three outputs, two far": ("Net(outputs=3)", "torch.randn(64, 8)", (10.0, -5.0, 0.0), True,
                               "out"),
    "bias already at the mean": ("Net(bias_value=250.0)", "torch.randn(64, 8)", (250.0,), False,
                                 "out"),
    "no bias to absorb it": ("Net(bias=False)", "torch.randn(64, 8)", (100.0,), True, "out"),
    "sigmoid output is not a regression head": ("Net(squash=True)", "torch.randn(64, 8)",
                                                (250.0,), False, "out"),
    "depth map from a conv": ("Depth()", "torch.randn(4, 3, 8, 8)", (50.0,), True, "depth"),
    "outputs spread wider than the offset": ("Net(weight_std=20.0)", "torch.randn(64, 8)",
                                             (20.0,), False, "out"),
    "one mean for several outputs": ("Net(outputs=4)", "torch.randn(64, 8)", (-40.0,), True,
                                     "out"),
}


def _source(build: str, inputs: str) -> str:
    return textwrap.dedent(HEAD) + f"\n\ndef build():\n    return {build}, {inputs}\n"


def _lint(target: str, means):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    torch.manual_seed(0)
    loaded = load_target(target)
    config = TargetConfig.of(target, target_mean=means)
    return lint_loaded(loaded, config, Settings(select=("BL008",))), loaded


def _head_outputs(model, name, inputs):
    seen = {}
    hook = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.setdefault("y", o))
    with torch.no_grad():
        model(inputs)
    hook.remove()
    y = seen["y"]
    y = y.movedim(1, -1) if y.dim() > 2 else y
    return y.reshape(-1, y.shape[-1]).double()


@pytest.mark.parametrize("name", list(CASES))
def test_fires_where_the_measured_offset_dominates_the_initial_error(name, write_target):
    build, inputs, means, fires, head = CASES[name]
    result, loaded = _lint(write_target(_source(build, inputs)), means)
    found = [f for f in result.findings if f.module == head]
    assert bool(found) == fires, [f.message for f in result.findings]
    y = _head_outputs(loaded.model, head, loaded.inputs.args[0])
    torch.manual_seed(5)
    # 400 draws of unit-spread targets around the mean: the expected MSE, to ~1/sqrt(400)
    target = torch.tensor(means, dtype=torch.float64).expand(y.shape[-1]) + \
        torch.randn((400,) + tuple(y.shape), dtype=torch.float64)
    offset = y.mean(0) - torch.tensor(means, dtype=torch.float64).expand(y.shape[-1])
    dominated = bool((offset ** 2 > torch.clamp(y.var(0, unbiased=False), min=1.0)).any())
    if "squash=True" not in build:  # a classifier's logits have no target mean to sit on
        assert dominated == fires
    if not found:
        return
    data = found[0].data
    mse = ((y - target) ** 2).mean()
    shifted = ((y - offset - target) ** 2).mean()  # the ideal bias: outputs' mean on the target's
    assert data["excess_mse"] == pytest.approx(float(mse - shifted), rel=0.02, abs=1e-6)
    if "bias=False" not in build:
        # the fix: write the ideal bias, and the rule is quiet
        import biaslint.init

        biaslint.init.regression_bias_(loaded.model.get_submodule(head), data["ideal_bias"])
        after = _head_outputs(loaded.model, head, loaded.inputs.args[0])
        assert torch.allclose(after.mean(0), torch.tensor(means, dtype=torch.float64).expand(
            after.shape[-1]), atol=1e-6)
    else:
        assert "no bias" in found[0].message


def test_a_mean_count_that_fits_no_head_is_one_clear_error(write_target, cli):
    target = write_target(_source("Net(outputs=3)", "torch.randn(8, 8)"))
    result = cli(target, "--target-mean", "1,2")
    assert result.exit_code == 2
    assert "--target-mean has 2 values but no regression head has that many outputs" in \
        result.stderr


def test_target_mean_in_the_config_is_validated(tmp_path, cli):
    from biaslint.errors import ConfigError
    from biaslint.run.config import load_config

    good = tmp_path / "good.toml"
    good.write_text('[tool.biaslint]\n'
                    'targets = [{target = "m.py:build", target-mean = [1.5, 2]}]\n')
    assert load_config(str(good)).targets[0]["target_mean"] == (1.5, 2.0)
    bad = tmp_path / "bad.toml"
    bad.write_text('[tool.biaslint]\ntargets = [{target = "m.py:build", target-mean = "x"}]\n')
    with pytest.raises(ConfigError, match="target-mean"):
        load_config(str(bad))


def test_off_without_a_target_mean(write_target):
    result, _ = _lint(write_target(_source("Net()", "torch.randn(8, 8)")), None)
    assert result.findings == ()
