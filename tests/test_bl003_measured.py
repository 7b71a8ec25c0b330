"""BL003 judges what the init does, and the measurement on the example inputs decides.

* A constant the forward applies before a chain's first layer (``x / 255``, ``x * (1/255)``,
  ``(x - mean) / std`` with fixed buffers) is the input's normalization, not the init's growth:
  the Atari DQN (Mnih et al., 2015) with CleanRL's orthogonal init is quiet, with and without it.
* With example inputs every chain claim is measured by forward hooks (rms of the last layer's
  output, or input for vanishing, over the rms of the first layer's input). The tests measure
  the same quantities with hooks of their own and compare; a claim the measurement does not show
  is not reported and is counted as a disagreement.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from biaslint.engine import lint_loaded
from biaslint.findings import Severity
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def lint_model(write_target):
    """Build and lint the target with BL003; return (loaded target, result)."""

    def run(source: str, attr: str = "build", input_shapes: tuple = (), device: str | None = None):
        target = write_target(source, attr=attr)
        loaded = load_target(target, input_shapes=input_shapes, device=device)
        result = lint_loaded(loaded, TargetConfig(target=target, device=device),
                             Settings(select=("BL003",)))
        assert not [n for n in result.notes if "crashed" in n], result.notes
        return loaded, result

    return run


def rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


@torch.no_grad()
def scales(model: nn.Module, names: list[str], *args: torch.Tensor) -> dict[str, list]:
    """Per call of each named module: (rms of its input, rms of its output), in call order."""
    seen: dict[str, list] = {name: [] for name in names}
    hooks = []
    for name in names:
        def hook(_m, inputs, out, _name=name) -> None:
            seen[_name].append((rms(inputs[0].detach()), rms(out.detach())))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        model(*args)
    finally:
        for h in hooks:
            h.remove()
    return seen


def chain_growth(model: nn.Module, chain: list[str], *args: torch.Tensor,
                 calls: tuple[int, ...] | None = None) -> tuple[float, float]:
    """(rms of the chain's output, rms entering its last layer) over the rms entering its first
    layer; ``calls``: which call of each layer is the chain's (the first by default)."""
    seen = scales(model, chain, *args)
    base = seen[chain[0]][calls[0] if calls else 0][0]
    end = seen[chain[-1]][calls[-1] if calls else 0]
    return end[1] / base, end[0] / base


def disagreements(result) -> tuple:
    (scope,) = [s for s in result.rules if s.code == "BL003"]
    return scope.disagreements


def chain_findings(result) -> list:
    return [f for f in result.findings if "chain" in f.data]


# -- the Atari DQN --------------------------------------------------------------------------------

DQN = '''
import math

import torch
import torch.nn as nn


def layer_init(layer, std=math.sqrt(2), bias_const=0.0):  # CleanRL's
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def normal_init(layer, std=None, bias_const=None):  # the mistake: std 1 whatever the fan-in
    nn.init.normal_(layer.weight, 0.0, 1.0)
    return layer


INIT = {init}


class QNetwork(nn.Module):
    def __init__(self, n_actions=6):
        super().__init__()
        self.network = nn.Sequential(
            INIT(nn.Conv2d(4, 32, 8, stride=4)), nn.ReLU(),
            INIT(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            INIT(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
            nn.Flatten(),
            INIT(nn.Linear(3136, 512)), nn.ReLU(),
            INIT(nn.Linear(512, n_actions), std=1),
        )
        # Fixed per-channel pixel statistics (buffers, never trained).
        self.register_buffer("mean", torch.full((1, 4, 1, 1), 33.0))
        self.register_buffer("std", torch.full((1, 4, 1, 1), 55.0))

    def forward(self, x):
        return self.network({normalize})


def pixels():
    return torch.randint(0, 256, (8, 4, 84, 84)).float()  # uint8-range frames, as floats


def build():
    return QNetwork(), pixels()


def build_without_inputs():
    return QNetwork()
'''

NORMALIZE = {"none": "x", "div": "x / 255.0", "mul": "x * (1 / 255)",
             "stats": "(x - self.mean) / self.std"}
CHAIN = ["network.0", "network.2", "network.4", "network.7", "network.9"]


def dqn(init: str, normalize: str) -> str:
    return DQN.format(init=init, normalize=NORMALIZE[normalize])


@pytest.mark.parametrize("normalize", list(NORMALIZE))
@pytest.mark.parametrize("attr", ["build", "build_without_inputs"])
def test_cleanrl_dqn_is_quiet_and_keeps_the_scale(lint_model, normalize, attr):
    loaded, result = lint_model(dqn("layer_init", normalize), attr=attr)
    assert result.findings == (), [f.message for f in result.findings]
    assert disagreements(result) == ()
    model = loaded.model
    # Every hidden layer's gain is sqrt(2), the ReLU target: BL003's fix would write the same.
    for name in CHAIN[:-1]:
        weight = model.get_submodule(name).weight
        gain = rms(weight) * math.sqrt(weight[0].numel())
        assert gain == pytest.approx(math.sqrt(2), rel=0.02)
    # Measured, the chain keeps the scale: from unit-scale input into its first layer, and on
    # real pixels through the model's own forward (whatever it does to them first).
    unit, _ = chain_growth(model.network, [n.removeprefix("network.") for n in CHAIN],
                           torch.randn(8, 4, 84, 84))
    real, hidden = chain_growth(model, CHAIN, torch.randint(0, 256, (8, 4, 84, 84)).float())
    assert 0.1 <= unit <= 10 and 0.1 <= real <= 10 and 0.1 <= hidden <= 10


@pytest.mark.parametrize("normalize", ["none", "div", "stats"])
def test_dqn_with_std_1_fires_and_its_growth_is_measured(lint_model, normalize):
    source = dqn("normal_init", normalize)
    loaded, result = lint_model(source)
    model, inputs = loaded.model, loaded.inputs.args
    errors = [f for f in result.findings if f.severity == Severity.ERROR]
    assert len(errors) == 1 and errors[0].data["chain"] == CHAIN
    finding = errors[0]
    assert finding.data["measured"] is True and "measured on the example inputs" in finding.message
    out, _ = chain_growth(model, CHAIN, *inputs)
    assert out > 100
    assert finding.data["growth"] == pytest.approx(out, rel=1e-5)  # the growth it reports
    # The measured per-layer ratios are the ones the hooks here see.
    seen = scales(model, CHAIN, *inputs)
    assert finding.data["measured_per_layer"] == pytest.approx(
        [seen[n][0][1] / seen[n][0][0] for n in CHAIN], rel=1e-5)
    # The prediction (zero-mean Gaussian input into the first layer) is of the same size; pixels
    # are all positive, which is why it is not closer (1.6x here).
    assert out / 3 <= finding.data["predicted_growth"] <= out * 3
    assert disagreements(result) == ()


def test_dqn_with_std_1_without_inputs_or_on_meta_says_it_is_derived(lint_model):
    source = dqn("normal_init", "div")
    for attr, device, why in [("build_without_inputs", None, "no example inputs"),
                              ("build", "meta", "no forward with values on the meta device")]:
        loaded, result = lint_model(source, attr=attr, device=device)
        errors = [f for f in result.findings if f.severity == Severity.ERROR]
        assert len(errors) == 1, [f.message for f in result.findings]
        assert errors[0].data["measured"] is False
        assert f"predicted from unit-scale input into model.network[0]; not measured: {why}" \
            in errors[0].message
        assert disagreements(result) == ()
    # The derived claim is true: unit-scale input into the first layer grows by about that much.
    torch.manual_seed(0)
    loaded, result = lint_model(source, attr="build_without_inputs")
    (error,) = [f for f in result.findings if f.severity == Severity.ERROR]
    out, _ = chain_growth(loaded.model.network, [n.removeprefix("network.") for n in CHAIN],
                          torch.randn(8, 4, 84, 84))
    assert out > 100 and error.data["growth"] == pytest.approx(out, rel=0.6)


def test_linting_with_a_measurement_leaves_the_model_as_it_was(lint_model, write_target):
    source = '''
import torch
import torch.nn as nn

def build():
    model = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64))
    for conv in (model[0], model[2]):
        nn.init.normal_(conv.weight, std=1.0)
    return model, torch.randn(4, 16, 16, 16)
'''
    target = write_target(source)
    loaded = load_target(target)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    rng = torch.get_rng_state()
    result = lint_loaded(loaded, TargetConfig(target=target), Settings(select=("BL003",)))
    after = loaded.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats included
    assert torch.equal(rng, torch.get_rng_state())
    (info,) = chain_findings(result)
    assert info.severity == Severity.INFO and info.data["measured"] is True
    out, _ = chain_growth(loaded.model, ["0", "2"], *loaded.inputs.args)
    assert out > 100 and info.data["growth"] == pytest.approx(out, rel=1e-5)


# -- the documented examples, measured ----------------------------------------------------------

def test_bad_example_is_measured_and_agrees(lint_model):
    from biaslint.rules.bl003_fan_in_blind_init import FanInBlindInit

    loaded, result = lint_model(FanInBlindInit.bad_example, input_shapes=((256, 256),))
    (error,) = [f for f in result.findings if f.severity == Severity.ERROR]
    assert error.data["chain"] == ["0", "2", "4"] and error.data["measured"] is True
    out, _ = chain_growth(loaded.model, ["0", "2", "4"], *loaded.inputs.args)
    assert out > 100 and error.data["growth"] == pytest.approx(out, rel=1e-5)
    assert disagreements(result) == ()


def test_good_example_is_quiet_with_inputs(lint_model):
    from biaslint.rules.bl003_fan_in_blind_init import FanInBlindInit

    loaded, result = lint_model(FanInBlindInit.good_example, input_shapes=((256, 256),))
    assert result.findings == () and disagreements(result) == ()
    out, hidden = chain_growth(loaded.model, ["0", "2", "4"], *loaded.inputs.args)
    assert 0.1 <= out <= 10 and 0.1 <= hidden <= 10


# -- where the prediction and the measurement disagree, the measurement decides ----------------

DEAD_FEATURES = '''
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        with torch.no_grad():  # huge weights on the features the inputs never use
            self.fc1.weight[:, 32:].normal_(0.0, 30.0)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

def build():
    x = torch.randn(256, 64)
    x[:, 32:] = 0  # padding features, always zero
    return Net(), x

def build_without_inputs():
    return Net()
'''

# Weights drawn from uniform(0, a): not zero-mean, so on all-positive inputs every product adds
# up coherently, while the prediction (zero-mean weights) sees a gain of 0.037 per layer.
POSITIVE_WEIGHTS = '''
import torch
import torch.nn as nn

def build_without_inputs():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))
    for i in (0, 2, 4):
        nn.init.uniform_(model[i].weight, 0.0, 0.002)
        nn.init.zeros_(model[i].bias)
    return model

def build():
    return build_without_inputs(), torch.rand(256, 1024)  # pixels in [0, 1]
'''


@pytest.mark.parametrize("source, chain, direction, culprit", [
    (DEAD_FEATURES, ["fc1", "fc2", "fc3"], "grows", "fc1"),
    (POSITIVE_WEIGHTS, ["0", "2", "4"], "shrinks", "0"),
])
def test_a_claim_the_measurement_does_not_show_is_a_disagreement(lint_model, source, chain,
                                                                  direction, culprit):
    # Derived alone, the analysis claims the chain leaves the band.
    _, derived = lint_model(source, attr="build_without_inputs")
    (claim,) = chain_findings(derived)
    assert claim.severity == Severity.ERROR and claim.module == culprit
    assert f"activation scale {direction}" in claim.message and claim.data["measured"] is False
    # On the example inputs it does not: no chain finding, one disagreement naming the claim.
    loaded, result = lint_model(source)
    assert chain_findings(result) == []
    (disagreement,) = disagreements(result)
    assert disagreement.layer == culprit and direction in disagreement.claim
    assert "inside [0.01, 100]" in disagreement.measured
    out, hidden = chain_growth(loaded.model, chain, *loaded.inputs.args)
    measured = out if direction == "grows" else hidden
    assert 0.01 <= measured <= 100
    assert f"measured ~{measured:.3g}x" in disagreement.measured


def test_single_layer_gain_stays_reported_and_true_where_the_chain_is_not(lint_model):
    loaded, result = lint_model(DEAD_FEATURES)
    (warning,) = result.findings
    assert warning.module == "fc1" and warning.severity == Severity.WARNING
    assert "uncorrelated unit-scale entries" in warning.message
    # The statement: on inputs with uncorrelated unit-scale entries, the layer alone multiplies
    # the scale by its gain.
    fc1 = loaded.model.fc1
    x = torch.randn(8192, 64)
    with torch.no_grad():
        measured = rms(fc1(x) - fc1.bias) / rms(x)
    assert warning.data["gain"] == pytest.approx(measured, rel=0.05) and measured > 100


SHARED_HEAD = '''
import torch
import torch.nn as nn

class Net(nn.Module):
    """One head run on two levels (as detection heads run on every FPN level): the level whose
    chain explodes is the head's second call."""

    def __init__(self):
        super().__init__()
        self.quiet, self.loud = nn.Linear(64, 64), nn.Linear(64, 64)
        self.head1, self.head2 = nn.Linear(64, 64), nn.Linear(64, 10)
        for layer in (self.quiet, self.head1, self.head2):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.normal_(self.loud.weight, std=30.0)

    def forward(self, x):
        a = self.head2(torch.relu(self.head1(torch.relu(self.quiet(x)))))
        b = self.head2(torch.relu(self.head1(torch.relu(self.loud(x)))))
        return a, b

def build():
    return Net(), torch.randn(128, 64)
'''


def test_a_shared_head_is_measured_at_the_chains_own_call(lint_model):
    loaded, result = lint_model(SHARED_HEAD)
    (error,) = [f for f in chain_findings(result) if f.severity == Severity.ERROR]
    assert error.data["chain"] == ["loud", "head1", "head2"] and error.data["measured"] is True
    second, _ = chain_growth(loaded.model, ["loud", "head1", "head2"], *loaded.inputs.args,
                             calls=(0, 1, 1))
    first, _ = chain_growth(loaded.model, ["loud", "head1", "head2"], *loaded.inputs.args)
    assert first < 100  # the head's first call (the quiet level) would not have shown it
    assert second > 100 and error.data["growth"] == pytest.approx(second, rel=1e-5)
    assert disagreements(result) == ()


# -- torchvision ------------------------------------------------------------------------------

def _torchvision(lint_model, name: str, init: str) -> tuple:
    pytest.importorskip("torchvision")
    source = f'''
import torch
import torch.nn as nn
import torchvision.models as models

def build():
    model = models.{name}(weights=None, num_classes=10).eval()  # eval: no dropout noise
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and {init!r} == "normal":
            nn.init.normal_(module.weight, 0.0, 1.0)
    return model, torch.randn(2, 3, 64, 64)
'''
    return lint_model(source)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_torchvision_default_init_is_quiet_without_disagreement(lint_model, name):
    _, result = _torchvision(lint_model, name, "default")
    assert result.findings == () and disagreements(result) == ()


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_torchvision_std_1_claims_are_measured_without_disagreement(lint_model, name):
    loaded, result = _torchvision(lint_model, name, "normal")
    assert result.findings  # every conv and linear at 10x+ its target gain
    assert disagreements(result) == ()
    for finding in chain_findings(result):
        assert finding.data["measured"] is True
        out, hidden = chain_growth(loaded.model, finding.data["chain"], *loaded.inputs.args)
        grows = "grows" in finding.message
        assert finding.data["growth"] == pytest.approx(out if grows else hidden, rel=1e-5)
        assert (out > 100) if grows else (hidden < 0.01)
    if name == "vgg11":  # norm-free conv stacks through max pooling: chains to measure
        assert chain_findings(result)


FAILS_AFTER_CAPTURE = '''
import torch
import torch.nn as nn

CALLS = [0]

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 10)
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.normal_(fc.weight)

    def forward(self, x):
        CALLS[0] += 1
        if CALLS[0] > 1:  # the capture's forward works, the measuring one does not
            raise RuntimeError("the second forward fails")
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

def build():
    return Net(), torch.randn(64, 256)
'''


def test_a_forward_that_fails_after_the_capture_is_an_error_not_a_derived_claim(lint_model):
    # the capture ran on fake tensors; the real forward the measurement needs fails: the
    # target cannot run on its inputs, which is its error (exit 2), not a claim left derived
    from biaslint.errors import TargetError

    with pytest.raises(TargetError, match="the forward failed on the example inputs.*"
                                          "the second forward fails"):
        lint_model(FAILS_AFTER_CAPTURE)


SCALED_BETWEEN = '''
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 256), nn.Linear(256, 256), nn.Linear(256, 10)
        for fc in (self.fc1, self.fc2, self.fc3):
            INIT
            nn.init.zeros_(fc.bias)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)) SCALE)))

def build():
    return Net()
'''


@pytest.mark.parametrize("init, scale, claimed", [
    # He init, a constant between the layers shrinks the scale: not the init's, no claim (its
    # fix would write the same gain).
    ("nn.init.kaiming_normal_(fc.weight, nonlinearity='relu')", "/ 1000", False),
    # std 1 and the same constant: the init's own share (16x per layer) leaves the band too.
    ("nn.init.normal_(fc.weight)", "* 1000", True),
])
def test_a_constant_between_layers_is_blamed_on_the_init_only_for_its_share(
        lint_model, init, scale, claimed):
    source = SCALED_BETWEEN.replace("INIT", init).replace("SCALE", scale)
    loaded, result = lint_model(source)
    chains = chain_findings(result)
    out, hidden = chain_growth(loaded.model, ["fc1", "fc2", "fc3"], torch.randn(512, 256))
    model = loaded.model
    gains = [rms(fc.weight) * math.sqrt(256) for fc in (model.fc1, model.fc2)]
    if claimed:
        (error,) = chains
        assert "grows" in error.message and out > 100
        # The init's share: the same layers without the constant grow past the band as well.
        x = torch.randn(512, 256)
        with torch.no_grad():
            alone = model.fc3(torch.relu(model.fc2(torch.relu(model.fc1(x)))))
        assert rms(alone) / rms(x) > 100
    else:
        assert chains == []
        assert hidden < 0.01  # it does shrink: by the constant, with every gain at the target
        assert gains == pytest.approx([math.sqrt(2)] * 2, rel=0.05)
