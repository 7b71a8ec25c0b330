"""BL002 on raw weights the forward contracts itself (``F.linear``, ``x @ w``, einsum). Before,
they were outside the rule's scope: a zero weight into a ReLU passed in silence. The truth of
each verdict is measured by training the model."""

from __future__ import annotations

import textwrap

import torch

from biaslint.engine import lint_loaded
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig

HEADER = """\
import math
import torch
import torch.nn as nn
import torch.nn.functional as F
"""


def _lint(write_target, body: str, device: str | None = None):
    target = write_target(HEADER + textwrap.dedent(body))
    loaded = load_target(target, device=device)
    result = lint_loaded(loaded, TargetConfig.of(target, device=device),
                         Settings(select=("BL002",)))
    [scope] = [s for s in result.rules if s.code == "BL002"]
    return result, scope, loaded


def _trained_gradients(model, inputs, pname: str, steps: int = 50) -> float:
    """The largest gradient ``pname`` gets over ``steps`` of SGD on random regression targets."""
    torch.manual_seed(3)
    model = model.double()
    x = inputs.double()
    target = torch.randn_like(model(x))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    largest = 0.0
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        largest = max(largest, float(dict(model.named_parameters())[pname].grad.abs().max()))
        optimizer.step()
    return largest


DEAD = """
class RawMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(32, 16))
        self.b1 = nn.Parameter(torch.zeros(32))
        self.w2 = nn.Parameter(torch.randn(4, 32) / math.sqrt(32))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.w1, self.b1)), self.w2)


def build():
    return RawMLP(), torch.randn(8, 16)
"""


def test_a_zero_raw_weight_into_relu_is_dead_as_training_shows(write_target):
    for device in ("meta", None):
        result, scope, loaded = _lint(write_target, DEAD, device)
        [finding] = result.findings
        assert finding.parameter == "w1" and finding.data["verdict"] == "dead"
        assert scope.unjudged == ()
    assert _trained_gradients(loaded.model, torch.randn(8, 16), "w1") == 0.0
    # With a positive bias the units pass gradient back: no finding, and training moves it.
    alive = DEAD.replace("torch.zeros(32))", "torch.full((32,), 0.1))")
    result, scope, loaded = _lint(write_target, alive)
    assert not [f for f in result.findings if f.parameter == "w1"]
    assert [why for _, why in scope.unjudged] == [
        "declined: its weight w1 is all 0: whether its units recover depends on what takes its "
        "products, which is not followed for weights the forward contracts itself"]
    assert _trained_gradients(loaded.model, torch.randn(8, 16), "w1") > 0.0


def test_a_zero_output_projection_is_the_deliberate_pattern(write_target):
    result, scope, loaded = _lint(write_target, """
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_in = nn.Parameter(torch.randn(16, 32) / 4)
            self.w_out = nn.Parameter(torch.zeros(32, 4))

        def forward(self, x):
            return torch.tanh(x @ self.w_in) @ self.w_out


    def build():
        return Net(), torch.randn(8, 16)
    """)
    assert result.findings == () and scope.unjudged == ()
    assert _trained_gradients(loaded.model, torch.randn(8, 16), "w_out") > 0.0


def test_a_constant_raw_weight_whose_consumers_are_not_followed_is_said(write_target):
    result, scope, _ = _lint(write_target, """
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.full((16, 32), 0.02))
            self.w2 = nn.Parameter(torch.full((32, 8), 0.1))

        def forward(self, x):
            h = torch.tanh(torch.einsum("bi,ih->bh", x, self.w1))
            return torch.einsum("bh,ho->bo", h, self.w2)


    def build():
        return Net(), torch.randn(8, 16)
    """)
    assert result.findings == ()
    [(layer, why)] = scope.unjudged
    assert layer == "" and "w1 is all 0.02" in why


SWIGLU = """
class SwiGLU(nn.Module):
    def __init__(self, d=16, hidden=32):
        super().__init__()
        self.w_gate = nn.Linear(d, hidden, bias=False)
        self.w_up = nn.Linear(d, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d, bias=False)
        ZEROS

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Attention(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        QK

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-2, -1) / 4
        return torch.softmax(scores, -1) @ self.v(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = Attention()
        self.ffn = SwiGLU()
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.attn(h)
        return self.out(h + self.ffn(h))


def build():
    return Net(), torch.randn(2, 6, 8)
"""


def test_two_zero_factors_of_one_product_are_dead_as_training_shows(write_target):
    """SwiGLU with its gate and up projections both zero, attention with its queries and keys
    both zero: each factor passes the other 0. One zero factor alone is the deliberate pattern
    (a zero gate, muP's zero query) and trains."""
    cases = {
        ("ffn.w_gate", "ffn.w_up"): ("for m in (self.w_gate, self.w_up): nn.init.zeros_(m.weight)",
                                     "pass"),
        ("attn.q", "attn.k"): ("pass", "for m in (self.q, self.k): nn.init.zeros_(m.weight)"),
        ("ffn.w_gate",): ("nn.init.zeros_(self.w_gate.weight)", "pass"),
        ("attn.q",): ("pass", "nn.init.zeros_(self.q.weight)"),
    }
    for zeros, (swiglu, qk) in cases.items():
        torch.manual_seed(0)
        result, scope, loaded = _lint(write_target, SWIGLU.replace("ZEROS", swiglu)
                                      .replace("QK", qk))
        dead = {f.module for f in result.findings if f.data.get("verdict") == "dead"}
        x = torch.randn(2, 6, 8)
        trained = {name: _trained_gradients(loaded.model, x, f"{name}.weight") for name in zeros}
        assert dead == {name for name, grad in trained.items() if grad == 0.0}, (zeros, trained)
        assert dead == (set(zeros) if len(zeros) == 2 else set())
        assert scope.unjudged == ()


DEADLOCK = """
def build():
    model = nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(),
        nn.Linear(64, 64), nn.Tanh(),
        nn.Linear(64, 10),
    )
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        BIAS
    return model, torch.randn(8, 16)
"""


def test_a_zero_layer_fed_only_by_another_zero_layer_is_dead_not_stalled(write_target):
    """The rule page's own example: the second zero layer's input is tanh(0) = 0, so its weight
    gets no gradient, and the first gets its gradient through the second's zero weight only.
    With a drawn bias in front, the input is not 0 and the second layer trains: a stall."""
    for bias, verdict in (("nn.init.zeros_(hidden.bias)", "dead"), ("pass", "stall")):
        torch.manual_seed(0)
        result, scope, loaded = _lint(write_target, DEADLOCK.replace("BIAS", bias))
        [second] = [f for f in result.findings if f.module == "2"]
        assert second.data["verdict"] == verdict
        moved = _trained_gradients(loaded.model, torch.randn(8, 16), "2.weight")
        assert (moved == 0.0) == (verdict == "dead"), moved


GROUPED = """
def build():
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=GROUPS, bias=False), nn.Tanh(),
        nn.Conv2d(8, 8, 1, bias=False), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    nn.init.zeros_(net[0].weight)
    nn.init.constant_(net[2].weight, 0.1)
    return net, torch.randn(4, 4, 8, 8)
"""


def _distinct_filters(model, x, steps: int = 100) -> int:
    """How many different filters the first conv holds after training with SGD."""
    _trained_gradients(model, x, "0.weight", steps)
    rows = model[0].weight.detach().flatten(1)
    return len({tuple(round(v, 9) for v in row.tolist()) for row in rows})


def test_a_constant_grouped_conv_keeps_clones_within_each_group(write_target):
    """Units of one group read the same input channels: with one weight, and a consumer that
    weighs them alike, they stay clones; a depthwise conv's units are alone in their group."""
    for groups, distinct in ((2, 2), (1, 1), (4, 4)):
        torch.manual_seed(0)
        result, scope, loaded = _lint(write_target, GROUPED.replace("GROUPS", str(groups)))
        found = [f for f in result.findings if f.module == "0"]
        assert _distinct_filters(loaded.model, torch.randn(4, 4, 8, 8)) == distinct
        assert found and found[0].data["verdict"] == "clones", result.findings
        assert found[0].data.get("groups", 1) == groups


CONCAT = """
class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(16, 32)
        self.mix = nn.Linear(64, 32)
        self.head = nn.Linear(32, 4)
        nn.init.zeros_(self.a.weight)
        nn.init.zeros_(self.a.bias)
        MIX

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), torch.tanh(self.b(x))], dim=-1)
        return self.head(torch.tanh(self.mix(h)))


def build():
    return TwoBranch(), torch.randn(8, 16)
"""


def test_clones_concatenated_with_other_features_stay_clones(write_target):
    for mix, clones in (("nn.init.constant_(self.mix.weight, 0.05)", True), ("pass", False)):
        torch.manual_seed(0)
        result, _, loaded = _lint(write_target, CONCAT.replace("MIX", mix))
        found = [f for f in result.findings if f.module == "a"]
        _trained_gradients(loaded.model, torch.randn(8, 16), "a.weight", 100)
        rows = loaded.model.a.weight.detach()
        distinct = len({tuple(round(v, 9) for v in row.tolist()) for row in rows})
        assert (distinct == 1) == clones
        assert bool(found and found[0].data["verdict"] == "clones") == clones, result.findings
