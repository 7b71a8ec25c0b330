"""BL007 measured: units it calls dead get exactly zero gradient (weights and bias) from a
backward pass on the example inputs and come alive with their bias at zero; units it calls
saturated pass back a slope under 0.01 (tanh) / 0.05 (sigmoid) on nearly every input. Gates and
small or positive biases stay quiet, and so do units the measurement shows alive."""

from __future__ import annotations

import textwrap

import pytest
import torch

HEAD = """
import torch
import torch.nn as nn


class Mlp(nn.Module):
    def __init__(self, act="relu", bias=None, half=None, conv=False, norm=False):
        super().__init__()
        self.conv = conv
        self.layer = nn.Conv2d(3, 16, 3, padding=1) if conv else nn.Linear(32, 64)
        self.norm = (nn.BatchNorm2d(16) if conv else nn.BatchNorm1d(64)) if norm else None
        self.act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
                    "gelu": nn.GELU(), "relu_inplace": nn.ReLU(inplace=True)}[act]
        self.out = nn.Linear(16 if conv else 64, 4)
        if bias is not None:
            nn.init.constant_(self.layer.bias, bias)
        if half is not None:
            with torch.no_grad():
                self.layer.bias[: self.layer.bias.numel() // 2] = half

    def forward(self, x):
        h = self.layer(x)
        if self.norm is not None:
            h = self.norm(h)
        h = self.act(h)
        if self.conv:
            h = h.mean((2, 3))
        return self.out(h)


class Glu(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(32, 64)
        self.value = nn.Linear(32, 64)
        self.out = nn.Linear(64, 4)
        nn.init.constant_(self.gate.bias, -6.0)  # a gate that starts closed: by design

    def forward(self, x):
        return self.out(torch.sigmoid(self.gate(x)) * self.value(x))


class Highway(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.Linear(32, 32)
        self.t = nn.Linear(32, 32)
        nn.init.constant_(self.t.bias, -6.0)  # carry at the start (Srivastava et al. use -1 to -3)

    def forward(self, x):
        t = torch.sigmoid(self.t(x))
        return torch.relu(self.h(x)) * t + x * (1 - t)


def x():
    return torch.randn(64, 32)
"""

# name -> (build, inputs, fires, layer, kind)
CASES = {
    "ReLU behind a bias of -5": ("Mlp(bias=-5.0)", "x()", True, "layer", "relu"),
    "default init": ("Mlp()", "x()", False, "layer", "relu"),
    "small positive ReLU bias": ("Mlp(bias=0.1)", "x()", False, "layer", "relu"),
    "large positive ReLU bias": ("Mlp(bias=5.0)", "x()", False, "layer", "relu"),
    "slightly negative bias, units still alive": ("Mlp(bias=-0.05)", "x()", False, "layer",
                                                   "relu"),
    "half the units behind -10": ("Mlp(half=-10.0)", "x()", True, "layer", "relu"),
    "tanh behind a bias of 6": ("Mlp(act='tanh', bias=6.0)", "x()", True, "layer", "tanh"),
    "sigmoid behind a bias of -8": ("Mlp(act='sigmoid', bias=-8.0)", "x()", True, "layer",
                                    "sigmoid"),
    "tanh with default bias": ("Mlp(act='tanh')", "x()", False, "layer", "tanh"),
    "conv + ReLU behind -20": ("Mlp(conv=True, bias=-20.0)", "torch.randn(8, 3, 12, 12)", True,
                               "layer", "relu"),
    "BatchNorm between: the bias is cancelled": ("Mlp(bias=-5.0, norm=True)", "x()", False,
                                                 "layer", "relu"),
    "GLU gate starting closed": ("Glu()", "x()", False, "gate", "sigmoid"),
    "highway carry gate": ("Highway()", "x()", False, "t", "sigmoid"),
    "GELU is not judged": ("Mlp(act='gelu', bias=-5.0)", "x()", False, "layer", None),
    # an in-place ReLU rewrites the layer's output: what is measured must be a copy
    "in-place ReLU, default init, two inputs": ("Mlp(act='relu_inplace')", "torch.randn(2, 32)",
                                                False, "layer", None),
    "in-place ReLU behind -5": ("Mlp(act='relu_inplace', bias=-5.0)", "x()", True, "layer",
                                "relu"),
    "tiny negative bias, two inputs: not dead on others": ("Mlp(bias=-0.02)",
                                                           "torch.randn(2, 32)", False, "layer",
                                                           None),
    "two rows are too few to call a unit dead": ("Mlp(bias=-5.0)", "torch.randn(2, 32)", False,
                                                 "layer", None),
}


def _source(build: str, inputs: str) -> str:
    return textwrap.dedent(HEAD) + f"\n\ndef build():\n    return {build}, {inputs}\n"


def _lint(target: str):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    torch.manual_seed(0)
    loaded = load_target(target)
    return lint_loaded(loaded, TargetConfig(target), Settings(select=("BL007",))), loaded


def _truth(model: torch.nn.Module, inputs: torch.Tensor, name: str, kind: str | None):
    """Per unit: killed by the measurement (dead: zero gradient; saturated: tiny slope)."""
    layer = model.get_submodule(name)
    seen = {}
    hook = layer.register_forward_hook(lambda m, a, out: seen.setdefault("z", out))
    model.zero_grad(set_to_none=True)
    model(inputs).pow(2).sum().backward()
    hook.remove()
    z = seen["z"].detach()
    z = (z.movedim(1, -1) if z.dim() > 2 else z).reshape(-1, z.shape[1] if z.dim() > 2
                                                         else z.shape[-1])
    grad = layer.weight.grad.reshape(layer.weight.shape[0], -1)
    if kind == "relu":
        return (grad.abs().sum(1) == 0) & (layer.bias.grad == 0) & (z <= 0).all(0)
    slope = 1 - torch.tanh(z) ** 2 if kind == "tanh" else torch.sigmoid(z) * (1 - torch.sigmoid(z))
    limit = 0.01 if kind == "tanh" else 0.05
    return (slope < limit).double().mean(0) >= 0.95


@pytest.mark.parametrize("name", list(CASES))
def test_fires_exactly_on_units_the_measurement_shows_killed(name, write_target):
    build, inputs, fires, layer, kind = CASES[name]
    result, loaded = _lint(write_target(_source(build, inputs)))
    found = [f for f in result.findings if f.module == layer]
    assert bool(found) == fires, [f.message for f in result.findings]
    if kind is None:
        return
    killed = _truth(loaded.model, loaded.inputs.args[0], layer, kind)
    if fires:
        assert found[0].data["killed"] == int(killed.sum()) > 0
        # the bias did it: at zero bias the same units come alive
        with torch.no_grad():
            loaded.model.get_submodule(layer).bias.zero_()
        assert int(_truth(loaded.model, loaded.inputs.args[0], layer, kind).sum()) == 0
    elif name != "GLU gate starting closed" and name != "highway carry gate":
        assert int(killed.sum()) < 0.1 * killed.numel()
    else:  # the gate is saturated by design, and the rule knows it is a gate
        assert int(killed.sum()) > 0


def test_on_meta_a_layer_the_laws_do_not_settle_is_not_judged_and_said(write_target, cli):
    """Without a norm before it, how far w.x reaches over the inputs is not in any law: the
    layer with a bias of -5 is listed as not judged on meta, with that reason, never passed."""
    target = write_target(_source("Mlp(bias=-5.0)", "x()"))
    result = cli(target, "--select", "BL007", "--device", "meta")
    assert result.exit_code == 0 and "not run" not in result.stdout
    assert "BL007 (bias-kills-units) did not judge 1 layer(s): layer: on the meta device" in \
        result.stdout
    assert "not straight from a normalization" in result.stdout


NORMED = """
import torch
import torch.nn as nn


class Normed(nn.Module):
    def __init__(self, bias=None, act="relu", std=None, half=None):
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.layer = nn.Linear(64, 128)
        if std is not None:
            nn.init.normal_(self.layer.weight, std=std)
        if bias is not None:
            nn.init.constant_(self.layer.bias, bias)
        if half is not None:
            with torch.no_grad():
                self.layer.bias[:64] = half
        self.act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[act]
        self.out = nn.Linear(128, 4)

    def forward(self, x):
        return self.out(self.act(self.layer(self.norm(x))))


def build():
    return MODEL, torch.randn(32, 64) * 3 + 1
"""

# name -> (model, verdict on meta: "dead" / "saturated" / None for a pass / "not judged")
META_CASES = {
    "ReLU behind -20 after a LayerNorm": ("Normed(bias=-20.0)", "dead"),
    "half the tanh units behind 40, weight drawn normal": ("Normed(act='tanh', half=40.0, "
                                                           "std=0.01)", "saturated"),
    "half the ReLU units behind -40: too few to be sure": ("Normed(half=-40.0, std=0.1)",
                                                           "not judged"),
    "tanh behind 25 after a LayerNorm": ("Normed(act='tanh', bias=25.0, std=0.02)", "saturated"),
    "zero ReLU bias": ("Normed(bias=0.0)", None),
    "default tanh bias never reaches 3": ("Normed(act='tanh')", None),
    "default sigmoid bias": ("Normed(act='sigmoid')", None),
    "default ReLU bias: depends on the inputs' spread": ("Normed()", "not judged"),
    "ReLU behind -3: within the reach of w.x": ("Normed(bias=-3.0)", "not judged"),
}


def _lint_both(target: str):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    runs = []
    for device in (None, "meta"):
        loaded = load_target(target, device=device)
        runs.append((lint_loaded(loaded, TargetConfig.of(target, device=device),
                                 Settings(select=("BL007",))), loaded))
    return runs


@pytest.mark.parametrize("name", list(META_CASES))
def test_on_meta_the_laws_verdict_is_the_measured_one_over_seeds(name, write_target):
    """The same model built for real under several seeds and on meta: where meta judges, its
    verdict is the one the real forward measures under every seed (units with zero gradient,
    or a slope under the limit), and the count it claims is at most the measured one."""
    build, verdict = META_CASES[name]
    target = write_target(NORMED.replace("MODEL", build))
    for seed in range(4):
        torch.manual_seed(seed)
        (real, loaded), (meta, _) = _lint_both(target)
        [scope] = [s for s in meta.rules if s.code == "BL007"]
        if verdict == "not judged":
            assert scope.judged == 0 and meta.findings == ()
            [(layer, why)] = scope.unjudged
            assert layer == "layer" and "on the meta device" in why
            return
        assert scope.judged == 1 and scope.unjudged == ()
        kind = "relu" if "ReLU" in name else "tanh" if "tanh" in name else "sigmoid"
        killed = _truth(loaded.model, loaded.inputs.args[0], "layer", kind)
        assert [f.data["verdict"] for f in meta.findings] == \
            [f.data["verdict"] for f in real.findings] == ([verdict] if verdict else [])
        if verdict is None:
            assert int(killed.sum()) < 0.1 * killed.numel()
        else:
            assert 0 < meta.findings[0].data["killed"] <= int(killed.sum())
            assert "init laws" in meta.findings[0].message
