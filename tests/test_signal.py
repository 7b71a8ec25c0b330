"""Signal propagation (``analysis.signal``): the curves in the JSON agree with the activation
RMS that forward hooks of our own measure, on a ResNet, a ViT and a deep unnormalized MLP."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from fixtures import signal_models

FIXTURE = Path(signal_models.__file__)


def _reference(build):
    """Per layer with parameters of its own: the RMS of its output (first call) by a forward
    hook, and of the gradient of sum(g * y) reaching that output, g ~ N(0, 1) seeded 0, on a
    copy whose ReLUs are not in place (so the hooked output is the layer's own)."""
    torch.manual_seed(0)
    model, x = build()
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    layers = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    acts: dict[str, float] = {}
    outs: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def hook(name):
        def fn(_m, _a, out):
            out = out[0] if isinstance(out, tuple) else out
            if name not in acts:
                order.append(name)
                acts[name] = out.detach().double().pow(2).mean().sqrt().item()
                out.retain_grad()
                outs[name] = out
        return fn

    for name in layers:
        model.get_submodule(name).register_forward_hook(hook(name))
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    (g * y).sum().backward()
    grads = {n: (t.grad.double().pow(2).mean().sqrt().item() if t.grad is not None else None)
             for n, t in outs.items()}
    # nn.MultiheadAttention applies its out_proj with F.linear: the projection's output is the
    # attention's first output, so that is its point, right after the attention's.
    for name in layers:
        parent = name.rsplit(".", 1)[0]
        if name.endswith(".out_proj") and isinstance(model.get_submodule(parent),
                                                      nn.MultiheadAttention):
            order.insert(order.index(parent) + 1, name)
            acts[name], grads[name] = acts[parent], grads[parent]
    return order, acts, grads


def _lint_json(cli, attr: str) -> dict:
    result = cli(f"{FIXTURE}:{attr}", "--format", "json", "--signal", "--allow-incomplete")
    assert result.exit_code in (0, 1), result.stderr
    [target] = json.loads(result.stdout)["results"]
    assert target["signal"] is not None, target["notes"]
    return target["signal"]


@pytest.mark.parametrize("attr", ["resnet", "vit", "deep_mlp"])
def test_signal_in_json_agrees_with_forward_hooks(cli, attr: str) -> None:
    signal = _lint_json(cli, attr)
    order, acts, grads = _reference(getattr(signal_models, attr))
    points = signal["points"]
    assert [p["layer"] for p in points] == order  # one point per layer, in execution order
    for point in points:
        want = acts[point["layer"]]
        assert point["activation_rms"] == pytest.approx(want, rel=0.10), point
        if grads[point["layer"]] is not None and point["layer"] != "":
            assert point["gradient_rms"] == pytest.approx(grads[point["layer"]], rel=0.10), point


def test_deep_mlp_curve_shows_the_growth() -> None:
    """The bad init's curve: each N(0, 1) layer multiplies the RMS by ~sqrt(64/2) = 5.7."""
    import biaslint

    torch.manual_seed(0)
    model, x = signal_models.deep_mlp()
    report = biaslint.check(model, x)
    rms = [p.activation_rms for p in report.signal.points]
    growth = [b / a for a, b in zip(rms[:9], rms[1:10])]
    assert all(3.0 < g < 10.0 for g in growth), growth
    assert any(f.code == "BL003" for f in report.findings)


def test_residual_and_norm_boundaries_marked() -> None:
    import biaslint

    torch.manual_seed(0)
    model, x = signal_models.resnet()
    points = {p.layer: p for p in biaslint.check(model, x).signal.points}
    # Each BasicBlock ends in a residual sum after its last BatchNorm (or its downsample's).
    assert points["layer1.0.bn2"].residual_after and points["layer4.1.bn2"].residual_after
    assert not points["conv1"].residual_after and not points["layer1.0.bn1"].residual_after
    assert points["bn1"].norm and not points["conv1"].norm


def test_signal_leaves_the_model_as_it_was() -> None:
    import biaslint

    torch.manual_seed(0)
    model, x = signal_models.resnet()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    report = biaslint.check(model, x)
    assert report.signal is not None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training


def test_no_signal_without_inputs_says_why() -> None:
    import biaslint

    report = biaslint.check(nn.Sequential(nn.Linear(4, 4)))
    assert report.signal is None
    assert any(n.startswith("signal propagation not measured") for n in report.result.notes)


def test_failing_backward_is_a_note_not_an_error() -> None:
    """A model whose output needs no gradient (argmax): activation curve, no gradient curve."""
    import biaslint

    class Argmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x).argmax(-1)

    report = biaslint.check(Argmax(), torch.randn(3, 8))
    [point] = report.signal.points
    assert math.isfinite(point.activation_rms) and point.gradient_rms is None
    assert report.signal.loss.startswith("none")


def test_text_runs_do_not_measure_the_signal(cli) -> None:
    """The text report does not show it, so it costs nothing there."""
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    result = lint(TargetConfig(f"{FIXTURE}:deep_mlp"), Settings())
    assert result.signal is None and "signal" not in result.timings


def test_values_json_cannot_hold_are_null() -> None:
    """An overflowed activation (Inf) or NaN is null in the JSON, which stays strict JSON."""
    from biaslint.analysis.signal import Signal, SignalPoint

    point = SignalPoint("fc", "Linear", float("inf"), float("nan"), 1.5, False, False)
    data = Signal((point,), "loss").as_dict()
    assert data["points"][0]["activation_rms"] is None
    assert data["points"][0]["gradient_rms"] is None
    assert data["points"][0]["weight_gradient_rms"] == 1.5
    json.dumps(data, allow_nan=False)
