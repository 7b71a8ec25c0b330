"""BL003 fan-in-blind init: every claim checked by measuring activations on random input.

The measured scale is the root mean square over all entries (the quantity He et al.'s analysis
predicts and the rule reports): flagged chains must measure > 100x or < 1/100; quiet models
stay within [0.1, 10] unless the test says why not.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from biaslint.engine import lint_loaded
from biaslint.findings import Severity
from biaslint.load import load_target
from biaslint.rules.bl003_fan_in_blind_init import FanInBlindInit
from biaslint.settings import Settings, TargetConfig


@pytest.fixture(autouse=True)
def _seeded():
    """Random init and random inputs, but the same ones on every run."""
    torch.manual_seed(0)


@pytest.fixture
def lint_model(write_target):
    """Build the target once; return (model, findings) so the test measures the linted model."""

    def run(source: str, **options):
        target = write_target(source)
        loaded = load_target(target)
        settings = Settings(select=("BL003",), rule_options={"BL003": options} if options else {})
        result = lint_loaded(loaded, TargetConfig(target=target), settings)
        assert not [n for n in result.notes if "crashed" in n], result.notes
        return loaded.model, list(result.findings)

    return run


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


@torch.no_grad()
def measure(model: nn.Module, chain: list[str], x: torch.Tensor) -> tuple[float, float]:
    """(rms at the chain's output, rms entering its last layer), relative to the chain's input."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def first(_m, args, _out) -> None:  # returning None keeps the module's output
        seen.setdefault("first_in", args[0])

    def last(_m, args, out) -> None:
        seen.setdefault("last_in", args[0])
        seen.setdefault("out", out)

    hooks = [modules[chain[0]].register_forward_hook(first),
             modules[chain[-1]].register_forward_hook(last)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    base = rms(seen["first_in"])
    return rms(seen["out"]) / base, rms(seen["last_in"]) / base


def chain_findings(findings):
    return [f for f in findings if "chain" in f.data]


# -- the documented examples -------------------------------------------------------------------

def test_bad_example_is_an_error_that_measures_over_100x(lint_model):
    model, findings = lint_model(FanInBlindInit.bad_example)
    errors = [f for f in findings if f.severity == Severity.ERROR]
    assert len(errors) == 1
    finding = errors[0]
    assert finding.data["chain"] == ["0", "2", "4"]
    out, _ = measure(model, finding.data["chain"], torch.randn(256, 256))
    assert out > 100
    assert finding.data["growth"] == pytest.approx(out, rel=0.5)  # prediction agrees
    # Points at the layer (construction site) and quotes the init call with its line.
    assert finding.module == "0" and finding.location is not None
    assert "Tensor.normal_" in finding.message and "std 1" in finding.message
    assert "kaiming_normal_" in finding.fix.code and "nonlinearity='relu'" in finding.fix.code
    assert "std 0.0884" in finding.fix.code  # sqrt(2 / 256)


def test_good_example_is_quiet_and_measures_in_range(lint_model):
    model, findings = lint_model(FanInBlindInit.good_example)
    assert findings == []
    out, hidden = measure(model, ["0", "2", "4"], torch.randn(256, 256))
    assert 0.1 <= out <= 10 and 0.1 <= hidden <= 10


def test_applying_the_fix_makes_the_chain_quiet(lint_model):
    source = FanInBlindInit.bad_example.replace(
        "layer.weight.data.normal_()  # std 1, whatever the fan-in: 16x per layer at width 256",
        "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')")
    model, findings = lint_model(source)
    assert [f for f in findings if f.severity >= Severity.WARNING] == []


# -- vanishing ------------------------------------------------------------------------------

VANISHING = '''
import torch.nn as nn

def build():
    layers = []
    for _ in range(4):
        layers += [nn.Linear(64, 64), nn.{act}()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
    return model
'''


@pytest.mark.parametrize("act", ["Tanh", "ReLU", "GELU"])
def test_constant_small_std_vanishes_and_measures_under_1_100(lint_model, act):
    model, findings = lint_model(VANISHING.format(act=act))
    chains = chain_findings(findings)
    assert len(chains) == 1 and chains[0].severity == Severity.ERROR
    assert "shrinks" in chains[0].message
    assert "nn.init.normal_(..., std=0.01)" in chains[0].message
    _, hidden = measure(model, chains[0].data["chain"], torch.randn(512, 64))
    assert hidden < 0.01
    assert chains[0].data["growth"] == pytest.approx(hidden, rel=0.5)


def test_small_last_layer_of_residual_branch_is_quiet(lint_model):
    source = '''
import torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(256, 1024)
        self.fc2 = nn.Linear(1024, 256)
        nn.init.normal_(self.fc2.weight, std=1e-4)  # deliberately small residual read-out

    def forward(self, x):
        return x + self.fc2(self.fc1(x).relu())

def build():
    return Block()
'''
    model, findings = lint_model(source)
    assert findings == []


# -- quiet at the defaults everyone uses -------------------------------------------------------

DEFAULT_MLP = '''
import torch.nn as nn

def build():
    layers = []
    for _ in range({depth}):
        layers += [nn.Linear({width}, {width}), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear({width}, 10))
'''


@pytest.mark.parametrize("depth, width", [(2, 128), (4, 512), (8, 256), (16, 64)])
def test_pytorch_default_mlp_is_quiet(lint_model, depth, width):
    model, findings = lint_model(DEFAULT_MLP.format(depth=depth, width=width))
    assert findings == []
    names = [str(i) for i in range(0, 2 * depth + 1, 2)]
    out, hidden = measure(model, names, torch.randn(512, width))
    # Default init shrinks the scale 0.41x per ReLU layer, but the default bias (std
    # 1/sqrt(3 fan_in)) keeps a floor under it: never the 1/100 the rule errors on.
    assert hidden > 0.01
    if depth <= 2:
        # What the rule judges for vanishing: the activations entering the last layer.
        assert 0.1 <= hidden <= 10


GPT_BLOCK = '''
import torch.nn as nn

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.proj(nn.functional.gelu(self.fc(self.ln2(x))))

def build():
    model = nn.Sequential(nn.Embedding(100, {d}), Block({d}), Block({d}), nn.LayerNorm({d}),
                          nn.Linear({d}, 100))
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
    for block in (model[1], model[2]):
        nn.init.normal_(block.proj.weight, std=0.02 / (2 * 2) ** 0.5)  # GPT-2 residual scaling
    return model
'''


@pytest.mark.parametrize("d", [256, 768])
def test_gpt_style_std_002_is_quiet(lint_model, d):
    model, findings = lint_model(GPT_BLOCK.format(d=d))
    assert findings == []
    out, _ = measure(model, ["1.fc", "1.fc"], torch.randint(0, 100, (4, 16)))
    assert 0.1 <= out <= 10  # fc after LayerNorm: gain 0.02 * sqrt(d) >= 0.32


def test_embedding_with_std_1_is_quiet(lint_model):
    source = '''
import torch.nn as nn

def build():
    emb = nn.Embedding(1000, 512)
    nn.init.normal_(emb.weight, std=1.0)
    return nn.Sequential(emb, nn.LayerNorm(512), nn.Linear(512, 10))
'''
    _, findings = lint_model(source)
    assert findings == []


# -- single layers, normalization, saturating activations, recurrent weights --------------------

def test_single_huge_head_is_a_warning_with_measured_gain(lint_model):
    source = '''
import torch.nn as nn

def build():
    head = nn.Linear(512, 10)
    head.weight.data.normal_()
    return nn.Sequential(nn.LayerNorm(512), head)
'''
    model, findings = lint_model(source)
    assert len(findings) == 1 and findings[0].severity == Severity.WARNING
    gain = findings[0].data["gain"]
    assert gain == pytest.approx(math.sqrt(512), rel=0.05)
    out, _ = measure(model, ["1"], torch.randn(256, 512))
    assert out == pytest.approx(gain, rel=0.1)  # the layer alone multiplies the scale by ~22


BILINEAR = '''
import torch
import torch.nn as nn

class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(IN1, IN2, 32)
        INIT

    def forward(self, a, b):
        return self.bil(a, b)

def build():
    return Pair(), (torch.randn(512, IN1), torch.randn(512, IN2))
'''


@pytest.mark.parametrize("in1,in2,init,flagged", [
    (16, 16, "nn.init.normal_(self.bil.weight, 0.0, 1.0)", True),
    (64, 8, "nn.init.normal_(self.bil.weight, 0.0, 0.5)", True),
    (16, 16, "nn.init.normal_(self.bil.weight, 0.0, 1.0 / 16)", False),   # fan-in scaled
    (16, 1024, "pass", False),  # PyTorch's default (scaled by in1 only): quiet by design
])
def test_bilinear_gain_is_measured_on_unit_inputs(lint_model, in1, in2, init, flagged):
    source = BILINEAR.replace("IN1", str(in1)).replace("IN2", str(in2)).replace("INIT", init)
    model, findings = lint_model(source)
    assert bool(findings) == flagged, [f.message for f in findings]
    with torch.no_grad():
        a, b = torch.randn(4096, in1), torch.randn(4096, in2)
        bias = model.bil.bias
        measured = rms(model.bil(a, b) - bias)
    if flagged:
        assert findings[0].data["gain"] == pytest.approx(measured, rel=0.1)
        assert findings[0].data["ratio"] > 10
    elif init != "pass":
        assert measured < 10  # in range: no claim to check


def test_exploding_chain_into_batchnorm_is_info_only(lint_model):
    source = '''
import torch.nn as nn

def build():
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
    for conv in (model[0], model[2]):
        nn.init.normal_(conv.weight, std=1.0)
    return model
'''
    model, findings = lint_model(source)
    assert findings and all(f.severity == Severity.INFO for f in findings)
    out, _ = measure(model, ["0", "2"], torch.randn(4, 64, 16, 16))
    assert out > 100  # true before the norm; the norm then removes it from the forward signal


def test_tanh_saturation_is_flagged_per_layer(lint_model):
    source = '''
import torch.nn as nn

def build():
    model = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh())
    for layer in (model[0], model[2]):
        nn.init.normal_(layer.weight, std=1.0)
    return model
'''
    model, findings = lint_model(source)
    assert {f.module for f in findings} == {"0", "2"}
    out, _ = measure(model, ["0"], torch.randn(256, 512))
    assert out > 10  # pre-activations ~22x: tanh saturates
    assert all("nonlinearity='tanh'" in f.fix.code for f in findings)


def test_recurrent_weights_with_std_1(lint_model):
    source = '''
import torch.nn as nn

def build():
    rnn = nn.RNN(32, 256)
    nn.init.normal_(rnn.weight_hh_l0, std=1.0)
    return rnn
'''
    _, findings = lint_model(source)
    assert len(findings) == 1 and findings[0].parameter == "weight_hh_l0"
    assert findings[0].data["gain"] == pytest.approx(16, rel=0.1)


def test_default_rnn_and_lstm_are_quiet(lint_model):
    source = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.LSTM(1, 512))
'''
    _, findings = lint_model(source)
    assert findings == []


def test_thresholds_are_options(lint_model):
    source = DEFAULT_MLP.format(depth=2, width=64)
    _, findings = lint_model(source, max_gain_ratio=0.5)
    assert findings and all(f.severity == Severity.WARNING for f in findings)


# -- the prediction, over random configurations ---------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_predicted_growth_matches_measurement(lint_model, seed):
    rng = torch.Generator().manual_seed(seed)
    acts = ["ReLU", "Tanh", "GELU", "SiLU", "LeakyReLU", "Sigmoid"]
    act = acts[seed % len(acts)]
    std = [0.3, 1.0, 0.005, 0.5, 2.0, 0.02][seed]
    width = int(torch.randint(32, 257, (1,), generator=rng))
    source = f'''
import torch.nn as nn

def build():
    model = nn.Sequential(nn.Linear({width}, {width}), nn.{act}(), nn.Linear({width}, {width}),
                          nn.{act}(), nn.Linear({width}, {width}))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std={std})
            nn.init.zeros_(layer.bias)
    return model
'''
    model, findings = lint_model(source, max_growth=0.0, min_growth=0.0)  # report every chain
    chains = chain_findings(findings)
    assert len(chains) == 1
    out, _ = measure(model, ["0", "2", "4"], torch.randn(1024, width))
    assert chains[0].data["growth"] == pytest.approx(out, rel=0.3)


def test_huge_weights_do_not_overflow_the_prediction(lint_model):
    source = '''
import torch.nn as nn

def build():
    layers = []
    for _ in range(12):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    model = nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=1e6)
    return model
'''
    _, findings = lint_model(source)
    errors = [f for f in findings if f.severity == Severity.ERROR]
    assert len(errors) == 1 and math.isfinite(errors[0].data["growth"])


def test_conv_transpose_and_scalar_scaling_in_a_chain(lint_model):
    source = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1)
        for layer in (self.up1, self.up2):
            nn.init.normal_(layer.weight, std=1.0)

    def forward(self, x):
        return self.up2(nn.functional.leaky_relu(self.up1(x), 0.2) * 0.5)

def build():
    return Net()
'''
    model, findings = lint_model(source)
    errors = [f for f in findings if f.severity == Severity.ERROR]
    assert len(errors) == 1
    out, _ = measure(model, ["up1", "up2"], torch.randn(2, 128, 8, 8))
    assert out > 100
    assert errors[0].data["growth"] == pytest.approx(out, rel=0.5)
    assert "nn.init.normal_" in errors[0].fix.code and "std=" in errors[0].fix.code


def test_explosion_is_followed_through_max_pooling(lint_model):
    source = '''
import torch.nn as nn

def build():
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
    )
    for i in (0, 3, 6):
        nn.init.normal_(model[i].weight, std=1.0)
    return model
'''
    model, findings = lint_model(source)
    errors = [f for f in findings if f.severity == Severity.ERROR]
    assert len(errors) == 1 and errors[0].data["chain"] == ["0", "3", "6"]
    assert "lower bound" in errors[0].message
    out, _ = measure(model, ["0", "3", "6"], torch.randn(8, 16, 32, 32))
    assert out > 100 and out >= errors[0].data["growth"] * 0.9  # the prediction is a lower bound


@pytest.mark.parametrize("std", [0.02, 0.005])
def test_vanishing_through_max_pooling_is_claimed_only_as_measured(lint_model, write_target,
                                                                     std):
    """Max pooling raises the scale by an amount no prediction bounds: a vanishing chain across
    it is reported only when the example inputs measure it below 1/100, and never on meta."""
    source = f'''
import torch
import torch.nn as nn

def build():
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
    )
    for i in (0, 3, 6):
        nn.init.normal_(model[i].weight, std={std})
        nn.init.zeros_(model[i].bias)
    return model, torch.randn(8, 16, 32, 32)
'''
    model, findings = lint_model(source)
    _, hidden = measure(model, ["0", "3", "6"], torch.randn(8, 16, 32, 32))
    assert bool(findings) == (hidden < 0.01), (hidden, [f.message for f in findings])
    if findings:
        assert findings[0].data["measured"] and "only a measurement" in findings[0].message
    target = write_target(source)
    meta = lint_loaded(load_target(target, device="meta"), TargetConfig.of(target, device="meta"),
                       Settings(select=("BL003",)))
    assert meta.findings == ()


@pytest.mark.parametrize("std", [0.01, None])
def test_vanishing_is_followed_through_average_pooling(lint_model, std):
    """Average pooling can only lower the scale (the square of a mean is at most the mean of the
    squares), so the prediction continued through it is an upper bound: a chain of N(0, 0.01)
    convs, as AlexNet-era code draws them, vanishes across it, and the measurement agrees. He
    init stays quiet."""
    init = "nn.init.kaiming_normal_(model[i].weight, nonlinearity='relu')" if std is None \
        else f"nn.init.normal_(model[i].weight, std={std})"
    source = f'''
import torch.nn as nn

def build():
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    )
    for i in (0, 3, 6):
        {init}
        nn.init.zeros_(model[i].bias)
    return model
'''
    model, findings = lint_model(source)
    _, hidden = measure(model, ["0", "3", "6", "10"], torch.randn(8, 16, 32, 32))
    errors = [f for f in findings if f.severity == Severity.ERROR]
    assert bool(errors) == (hidden < 0.01), (hidden, [f.message for f in findings])
    if errors:
        [error] = errors
        assert error.data["chain"] == ["0", "3", "6", "10"] and "upper bound" in error.message
        assert error.data["predicted_growth"] >= hidden * 0.5
