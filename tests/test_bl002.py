"""BL002 verdicts, each checked by training the same model a few SGD steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from biaslint.engine import lint_loaded
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig


@pytest.fixture
def lint_model(write_target):
    """Lint a source's build() with BL002 only; return (findings by module, the linted model)."""

    def run(source: str):
        target = write_target(source)
        torch.manual_seed(0)
        loaded = load_target(target)
        result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL002",)))
        return {f.module: f for f in result.findings}, loaded.model

    return run


def train(model: nn.Module, in_features: int, steps: int = 25, lr: float = 0.1,
          out_features: int | None = None, record_first_grads: bool = False):
    """A few SGD steps on a random regression task; returns the first step's grads if asked."""
    torch.manual_seed(1)
    x = torch.randn(32, in_features)
    with torch.no_grad():
        out = model(x)
    y = torch.randn_like(out)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    first: dict[str, torch.Tensor] = {}
    for step in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if step == 0 and record_first_grads:
            first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    return first


def rows_identical(weight: torch.Tensor) -> bool:
    rows = weight.detach().reshape(weight.shape[0], -1)
    return bool(torch.allclose(rows, rows[:1].expand_as(rows), atol=1e-7))


TANH_BOTH_ZERO = """
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 4))
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        nn.init.zeros_(hidden.bias)
    return model
"""


def test_two_zero_layers_clone_and_deadlock(lint_model):
    """The second zero layer's input is tanh(0) = 0 from a zero layer that feeds only it: its
    weight gets no gradient, and the first layer gets its gradient through that zero weight
    only. Not a stall: neither ever moves."""
    findings, model = lint_model(TANH_BOTH_ZERO)
    assert findings["0"].severity.name == "ERROR" and findings["0"].data["verdict"] == "clones"
    assert findings["2"].severity.name == "ERROR" and findings["2"].data["verdict"] == "dead"
    assert findings["2"].data["feeder"] == "0"
    assert "4" not in findings  # the random head
    first = train(model, 8, record_first_grads=True)
    assert torch.count_nonzero(first["0.weight"]) == 0
    # dead for good: after training both weights are still exactly zero
    assert torch.count_nonzero(model[2].weight) == 0 and torch.count_nonzero(model[0].weight) == 0
    assert rows_identical(model[0].weight) and rows_identical(model[0].bias[:, None])


SIGMOID_CLONES = """
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 4))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    nn.init.constant_(model[2].weight, 0.1)
    return model
"""


def test_constant_consumer_keeps_units_clones_but_they_learn(lint_model):
    findings, model = lint_model(SIGMOID_CLONES)
    assert findings["0"].data["verdict"] == "clones"
    # layer 2 is constant but its consumer is random: it breaks symmetry, so no finding
    assert "2" not in findings
    train(model, 8, steps=40)
    assert model[0].weight.abs().max() > 0  # it did learn...
    assert rows_identical(model[0].weight)  # ...but all its units learned the same thing
    assert not rows_identical(model[2].weight)  # layer 2's units became different


RELU_DEAD = """
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    return model
"""


def test_zero_layer_before_relu_is_dead(lint_model):
    findings, model = lint_model(RELU_DEAD)
    finding = findings["0"]
    assert finding.severity.name == "ERROR" and finding.data["dead_units"] == 16
    train(model, 8)
    assert model[0].weight.abs().max() == 0 and model[0].bias.abs().max() == 0


RELU_PARTLY_DEAD = """
import torch, torch.nn as nn
def build():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 16, 4))
    model[0].weight.data.zero_()  # bias keeps PyTorch's random default
    return model
"""


def test_zero_conv_with_random_bias_has_some_dead_channels(lint_model):
    findings, model = lint_model(RELU_PARTLY_DEAD)
    finding = findings["0"]
    bias = model[0].bias.detach().clone()
    dead = bias <= 0
    assert finding.severity.name == "WARNING"
    assert finding.data["dead_units"] == int(dead.sum()) and 0 < int(dead.sum()) < 16
    torch.manual_seed(1)
    x = torch.randn(8, 3, 4, 4)
    y = torch.randn(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    w = model[0].weight.detach().flatten(1)
    assert w[dead].abs().max() == 0  # the dead channels never moved
    assert w[~dead].abs().max() > 0  # the live ones did


DELIBERATE = {
    "residual": """
import torch.nn as nn
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
    def forward(self, x):
        return x + self.fc2(self.fc1(x).relu())
def build():
    return nn.Sequential(nn.Linear(8, 8), Block(), Block(), nn.Linear(8, 4))
""",
    "lora": """
import torch.nn as nn
class LoRALinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.base = nn.Linear(8, 8)
        self.lora_A = nn.Linear(8, 2, bias=False)
        self.lora_B = nn.Linear(2, 8, bias=False)
        nn.init.zeros_(self.lora_B.weight)
    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * 0.5
def build():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), LoRALinear(), nn.ReLU(), nn.Linear(8, 4))
""",
    "adaln": """
import torch, torch.nn as nn
class DiTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8, elementwise_affine=False)
        self.mlp = nn.Linear(8, 8)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(8, 24))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)
    def forward(self, x):
        shift, scale, gate = self.ada(x).chunk(3, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        return x + gate * self.mlp(h)
def build():
    return nn.Sequential(nn.Linear(8, 8), DiTBlock(), nn.Linear(8, 4))
""",
    "residual_bn": """
import torch.nn as nn
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        nn.init.zeros_(self.conv2.weight)
    def forward(self, x):
        return x + self.bn(self.conv2(self.conv1(x).relu()))
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.block = Block()
        self.head = nn.Linear(16, 4)
    def forward(self, x):
        return self.head(self.block(self.stem(x).view(-1, 4, 2, 2)).flatten(1))
def build():
    return Net()
""",
    "head": """
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    return model
""",
}


@pytest.mark.parametrize("case", sorted(DELIBERATE))
def test_deliberate_zero_init_is_quiet_and_does_learn(lint_model, case):
    findings, model = lint_model(DELIBERATE[case])
    assert findings == {}
    zeros = [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2
             and p.abs().max() == 0]
    assert zeros, "the case must contain a zero weight"
    train(model, 8, steps=30)
    for name, p in zeros:
        assert p.abs().max() > 0, name  # it learned
        assert not rows_identical(p), name  # and its units became different


def test_constant_first_layer_with_random_consumer_is_quiet_and_breaks_symmetry(lint_model):
    findings, model = lint_model("""
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    nn.init.constant_(model[0].weight, 0.05)
    return model
""")
    assert findings == {}
    train(model, 8)
    assert not rows_identical(model[0].weight)


def test_constant_embedding_before_constant_layer_clones(lint_model):
    findings, model = lint_model("""
import torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        nn.init.constant_(self.emb.weight, 0.3)
        self.proj = nn.Linear(6, 6, bias=False)
        nn.init.constant_(self.proj.weight, 0.2)
        self.head = nn.Linear(6, 3)
    def forward(self, x):
        return self.head(self.proj(self.emb(x)).tanh())
def build():
    return M()
""")
    assert findings["emb"].data["verdict"] == "clones"
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (16, 5))
    y = torch.randn(16, 5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        ((model(ids) - y) ** 2).mean().backward()
        opt.step()
    emb = model.emb.weight.detach()
    # units of an embedding are its feature columns: they stay identical
    assert torch.allclose(emb, emb[:, :1].expand_as(emb), atol=1e-6)
    assert not torch.allclose(emb[0], emb[1])  # while the rows (tokens) did learn


def test_normalization_weights_and_zero_init_residual_are_quiet():
    import torchvision

    from biaslint.analysis import AnalysedModel
    from biaslint.capture import capture
    from biaslint.load import LoadedTarget
    from biaslint.rules import RuleContext
    from biaslint.rules.bl002_zero_constant_weight import ZeroConstantWeight

    model = torchvision.models.resnet18(zero_init_residual=True)
    loaded = LoadedTarget("resnet18", model, None, {}, {})
    analysed = AnalysedModel(capture(loaded))
    assert list(ZeroConstantWeight().check(analysed, RuleContext())) == []


# -- symmetry that looks unbreakable but is not: no "clones" claim ------------------------------

SYMMETRY_BREAKERS = {
    "split": """
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 16)
        nn.init.zeros_(self.first.weight); nn.init.zeros_(self.first.bias)
        self.a = nn.Linear(8, 4); nn.init.constant_(self.a.weight, 0.1)
        self.b = nn.Linear(8, 4); nn.init.constant_(self.b.weight, 0.1)
    def forward(self, x):
        left, right = torch.sigmoid(self.first(x)).chunk(2, dim=1)
        return self.a(left) * 2 - self.b(right)
def build():
    return M()
""",
    "heads": """
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 16)
        nn.init.zeros_(self.first.weight); nn.init.zeros_(self.first.bias)
        self.per_head = nn.Linear(4, 4); nn.init.constant_(self.per_head.weight, 0.1)
        self.out = nn.Linear(16, 4)
    def forward(self, x):
        h = torch.sigmoid(self.first(x)).view(-1, 4, 4)
        return self.out(self.per_head(h).flatten(1))
def build():
    return M()
""",
    "dropout": """
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Dropout(0.5), nn.Linear(16, 4))
    nn.init.zeros_(model[0].weight); nn.init.zeros_(model[0].bias)
    nn.init.constant_(model[3].weight, 0.1)
    return model
""",
}


@pytest.mark.parametrize("case", sorted(SYMMETRY_BREAKERS))
def test_no_clone_claim_when_consumers_treat_units_differently(lint_model, case):
    findings, model = lint_model(SYMMETRY_BREAKERS[case])
    assert all(f.data.get("verdict") != "clones" for f in findings.values()), findings
    first = model.get_submodule("first" if case != "dropout" else "0")
    train(model, 8, steps=30)
    assert not rows_identical(first.weight)


def test_grouped_conv_consumer_breaks_symmetry(lint_model):
    findings, model = lint_model("""
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Flatten(),
                          nn.Linear(8 * 16, 4))
    nn.init.zeros_(model[0].weight); nn.init.zeros_(model[0].bias)
    nn.init.constant_(model[2].weight, 0.1)
    return model
""")
    assert all(f.data.get("verdict") != "clones" for f in findings.values())
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 4, 4), torch.randn(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(30):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert not rows_identical(model[0].weight)


def test_conv_clones_through_flatten_into_constant_linear(lint_model):
    findings, model = lint_model("""
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(), nn.Flatten(),
                          nn.Linear(8 * 16, 4))
    nn.init.zeros_(model[0].weight); nn.init.zeros_(model[0].bias)
    nn.init.constant_(model[3].weight, 0.1)
    return model
""")
    assert findings["0"].data["verdict"] == "clones"
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 4, 4), torch.randn(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(30):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert model[0].weight.abs().max() > 0 and rows_identical(model[0].weight)


def _train_images(model: nn.Module, steps: int = 30, lr: float = 0.2) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        y = torch.randn_like(model(x))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("pool", ["nn.AdaptiveAvgPool2d(1), nn.Flatten()",
                                  "nn.MaxPool2d(2), nn.Flatten()",
                                  "Mean()"])
def test_conv_clones_through_pooling_into_constant_head(lint_model, pool):
    findings, model = lint_model(f"""
import torch.nn as nn
class Mean(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))
def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), {pool},
                          nn.LazyLinear(4) if False
                          else nn.Linear(16 * (9 if 'Max' in '{pool}' else 1), 4))
    nn.init.constant_(model[2].weight, 0.1); nn.init.zeros_(model[2].bias)
    nn.init.constant_(model[-1].weight, 0.1)
    return model
""")
    assert findings["2"].severity.name == "ERROR" and findings["2"].data["verdict"] == "clones"
    _train_images(model)
    assert model[2].weight.detach().ne(0.1).any() and rows_identical(model[2].weight)


@pytest.mark.parametrize("norm,beta,verdict", [
    ("nn.BatchNorm2d(8)", "zeros", "dead"),                # beta = 0: ReLU(0) passes back 0
    ("nn.GroupNorm(2, 8)", "zeros", "dead"),
    ("nn.InstanceNorm2d(8, affine=True)", "zeros", "dead"),
    ("nn.BatchNorm2d(8)", "half", "dead"),                 # channels 0-3 dead, 4-7 learn
    ("nn.GroupNorm(2, 8)", "half", "dead"),                # group 0 (channels 0-3) dead
    ("nn.GroupNorm(2, 8)", "alternate", "stall"),          # a live unit in each group feeds all
    ("nn.BatchNorm2d(8)", "positive", "stall"),            # beta > 0: 1/sqrt(eps) gradient
])
def test_zero_conv_then_norm_then_relu(lint_model, norm, beta, verdict):
    findings, model = lint_model(f"""
import torch
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), {norm}, nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1))
    nn.init.zeros_(model[2].weight)
    if "{beta}" == "half":
        with torch.no_grad():
            model[3].bias.copy_(torch.tensor([0.0] * 4 + [0.5] * 4))
    elif "{beta}" == "alternate":
        with torch.no_grad():
            model[3].bias.copy_(torch.tensor([0.0, 0.5] * 4))
    elif "{beta}" == "positive":
        nn.init.constant_(model[3].bias, 0.5)
    return model
""")
    found = findings.get("2")
    assert (found.data["verdict"] if found else None) == verdict
    before = model[2].weight.detach().clone()
    _train_images(model)
    moved = (model[2].weight.detach() - before).flatten(1).abs().amax(1)
    if verdict == "dead":
        dead = found.data["dead_units"]
        assert found.severity.name == ("ERROR" if dead == 8 else "WARNING")
        assert moved[:dead].max() == 0 and (dead == 8 or moved[dead:].min() > 0)
    else:
        assert moved.min() > 0  # every unit learns


# -- RNN and attention weights: only the stall verdict applies ----------------------------------

def test_zero_lstm_input_weight_starves_the_layer_before(lint_model):
    findings, model = lint_model("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        nn.init.zeros_(self.lstm.weight_ih_l0)
        self.head = nn.Linear(8, 4)
    def forward(self, x):
        out, _ = self.lstm(self.embed(x).unsqueeze(1))
        return self.head(out[:, -1])
def build():
    return M()
""")
    assert findings["lstm"].data["verdict"] == "stall"
    assert findings["lstm"].data["starved"] == ["embed"]
    first = train(model, 8, steps=3, record_first_grads=True)
    assert torch.count_nonzero(first["embed.weight"]) == 0
    assert first["lstm.weight_ih_l0"].abs().max() > 0  # the zero weight itself does learn


ATTENTION = """
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self, residual):
        super().__init__()
        self.residual = residual
        self.embed = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        nn.init.zeros_(self.attn.{param})
        self.head = nn.Linear(8, 4)
    def forward(self, x):
        h = self.embed(x).unsqueeze(1).expand(-1, 3, -1)
        a, _ = self.attn(h, h, h)
        if_residual = h + a if self.residual else a
        return self.head(if_residual.mean(1))
def build():
    return M({residual})
"""


@pytest.mark.parametrize("param,module", [("in_proj_weight", "attn"),
                                          ("out_proj.weight", "attn.out_proj")])
def test_zero_attention_projection_stalls_without_residual(lint_model, param, module):
    findings, model = lint_model(ATTENTION.format(param=param, residual=False))
    assert findings[module].data["verdict"] == "stall"
    first = train(model, 8, steps=2, record_first_grads=True)
    assert torch.count_nonzero(first["embed.weight"]) == 0


@pytest.mark.parametrize("param", ["in_proj_weight", "out_proj.weight"])
def test_zero_attention_projection_in_a_residual_is_quiet(lint_model, param):
    findings, model = lint_model(ATTENTION.format(param=param, residual=True))
    assert findings == {}
    first = train(model, 8, steps=2, record_first_grads=True)
    assert first["embed.weight"].abs().max() > 0  # the skip carries gradient to earlier layers


# -- regressions found by fuzzing random models against training ----------------------------------

def _check_claims(model: nn.Module, x: torch.Tensor, findings: dict) -> None:
    """Train 30 SGD steps; every claim the findings make must hold."""
    import copy

    before = copy.deepcopy(model)
    torch.manual_seed(2)
    with torch.no_grad():
        y = torch.randn_like(model(x))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first: dict[str, torch.Tensor] = {}
    for step in range(30):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        if step == 0:
            first = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    for name, finding in findings.items():
        weight = dict(model.named_parameters())[f"{name}.{finding.parameter}"].detach()
        start = dict(before.named_parameters())[f"{name}.{finding.parameter}"].detach()
        verdict = finding.data["verdict"]
        if verdict == "clones":  # within each group of a grouped conv
            groups = finding.data.get("groups", 1)
            assert all(rows_identical(part) for part in weight.chunk(groups)), \
                (name, finding.message)
            if groups > 1:  # and the groups themselves differ after training
                assert not rows_identical(weight), (name, finding.message)
        elif verdict == "dead":
            still = (weight - start).flatten(1).abs().amax(1) == 0
            assert int(still.sum()) >= finding.data["dead_units"], (name, finding.message)
        elif verdict == "stall":
            for layer in finding.data["starved"]:
                grads = [g for n, g in first.items() if n.rsplit(".", 1)[0] == layer]
                assert grads and all(torch.count_nonzero(g) == 0 for g in grads), (layer, name)


FUZZ_CASES = {
    # The zero layer is called twice: only fc_in, before its first call, is starved.
    "reused_zero_layer": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in, self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 1)
    def forward(self, x):
        h = self.fc(torch.tanh(self.fc_in(x)))
        return self.head(torch.tanh(self.fc(torch.tanh(h))))
def build():
    m = M(); nn.init.zeros_(m.fc.weight); return m, torch.randn(16, 8)
""", {"fc": ("stall", ["fc_in"])}),
    # A layer upstream is also called on a path that avoids the zero layer: not starved.
    "reused_upstream": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.z, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(16, 1)
    def forward(self, x):
        a = self.z(torch.tanh(self.enc(x)))
        b = torch.tanh(self.enc(x.flip(1)))
        return self.head(torch.cat([torch.tanh(a), b], 1))
def build():
    m = M(); nn.init.zeros_(m.z.weight); return m, torch.randn(16, 8)
""", {}),
    # The consumer is reused: its second call weighs the units differently.
    "reused_consumer": ("""
import torch, torch.nn as nn, torch.nn.functional as F
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in, self.fc, self.head = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 4)
    def forward(self, x):
        h = self.fc(torch.tanh(self.fc_in(x)))
        return self.head(torch.tanh(self.fc(F.leaky_relu(h))))
def build():
    m = M()
    nn.init.zeros_(m.fc_in.weight); nn.init.zeros_(m.fc_in.bias)
    nn.init.constant_(m.fc.weight, 0.1); nn.init.zeros_(m.fc.bias)
    return m, torch.randn(16, 12)
""", {}),
    # Tied weights learn through the other module too.
    "tied_dead": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 1)
    def forward(self, x):
        return self.head(torch.relu(self.a(x)) + torch.tanh(self.b(x)))
def build():
    m = M(); m.b.weight = m.a.weight
    nn.init.zeros_(m.a.weight); nn.init.constant_(m.a.bias, -0.1)
    return m, torch.randn(16, 8)
""", {}),
    "tied_consumer": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre, self.a, self.b, self.head = (nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                               nn.Linear(8, 1))
    def forward(self, x):
        return self.head(torch.tanh(self.a(torch.tanh(self.pre(x)))) + torch.tanh(self.b(x)))
def build():
    m = M(); m.b.weight = m.a.weight
    nn.init.constant_(m.pre.weight, 0.1); nn.init.zeros_(m.pre.bias)
    nn.init.constant_(m.a.weight, 0.1)
    return m, torch.randn(16, 8)
""", {}),
    # Each group of a grouped conv reads different input channels; the two units of one group
    # read the same ones, and the (zero) consumer weighs them alike: clones within each group.
    "grouped_producer": ("""
import torch, torch.nn as nn
def build():
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3), nn.GELU(), nn.Conv2d(6, 1, 1))
    nn.init.zeros_(m[0].weight); nn.init.constant_(m[0].bias, 0.1); nn.init.zeros_(m[2].weight)
    return m, torch.randn(16, 3, 8, 8)
""", {"0": ("clones", None)}),
    # The reverse direction still reads the input.
    "bidirectional_rnn": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.rnn = nn.GRU(8, 4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 1)
    def forward(self, x):
        y, _ = self.rnn(torch.tanh(self.pre(x)))
        return self.head(y.mean(1))
def build():
    m = M(); nn.init.zeros_(m.rnn.weight_ih_l0); return m, torch.randn(16, 5, 8)
""", {}),
    # Only the query projection is zero: keys and values still pass gradient.
    "mha_query_projection": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fq, self.fkv = nn.Linear(8, 8), nn.Linear(8, 3)
        self.attn = nn.MultiheadAttention(8, 2, kdim=3, vdim=3, batch_first=True)
        self.head = nn.Linear(8, 1)
    def forward(self, x):
        kv = torch.tanh(self.fkv(x))
        y, _ = self.attn(torch.tanh(self.fq(x)), kv, kv)
        return self.head(y.mean(1))
def build():
    m = M(); nn.init.zeros_(m.attn.q_proj_weight); return m, torch.randn(16, 5, 8)
""", {}),
    # BatchNorm1d on (N, L, F) normalizes tokens, not the Linear's features.
    "token_batchnorm": ("""
import torch, torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)
    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x)))).mean(1)
def build():
    m = M(); nn.init.zeros_(m.fc1.weight); nn.init.zeros_(m.fc1.bias)
    with torch.no_grad():
        m.norm.bias.copy_(torch.linspace(-0.2, 0.2, 8))
    return m, torch.randn(16, 8, 8)
""", {}),
}


@pytest.mark.parametrize("case", sorted(FUZZ_CASES))
def test_no_false_claims_through_reuse_ties_groups_and_layouts(lint_model, case):
    source, expected = FUZZ_CASES[case]
    findings, model = lint_model(source)
    got = {name: (f.data["verdict"], f.data.get("starved")) for name, f in findings.items()}
    assert got == {name: (v, s) for name, (v, s) in expected.items()}, got
    torch.manual_seed(1)
    built = model
    x_shape = {"reused_zero_layer": (16, 8), "reused_upstream": (16, 8),
               "reused_consumer": (16, 12), "tied_dead": (16, 8), "tied_consumer": (16, 8),
               "grouped_producer": (16, 3, 8, 8), "bidirectional_rnn": (16, 5, 8),
               "mha_query_projection": (16, 5, 8), "token_batchnorm": (16, 8, 8)}[case]
    _check_claims(built, torch.randn(*x_shape), findings)


def test_fix_quotes_the_init_call_that_shares_the_constructors_line(lint_source):
    result = lint_source("""
        import torch
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.hid = nn.Linear(8, 8); nn.init.zeros_(self.hid.weight)
                self.out = nn.Linear(8, 2)

            def forward(self, x):
                return self.out(torch.relu(self.hid(x)))

        def build():
            return Net(), torch.randn(4, 8)
        """, select=("BL002",))
    [finding] = [f for f in result.findings if f.module == "hid"]
    assert finding.fix is not None and "self.hid.weight" in finding.fix.code
    assert "(8," not in finding.fix.code  # not the constructor's first argument
