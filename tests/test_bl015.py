"""BL015 measured by training: each model is trained 5 Adam steps (lr 1e-2, a regression loss on
a random target), in float64; then each parameter in turn is re-drawn (N(0, 3^2)) and the
outputs on a fresh batch compared: a parameter whose re-draw moves no output by more than 1e-9
(relative) is one no output depends on, after training as at init. The rule must flag exactly
those parameters (additive biases are BL001's, parameters autograd never reaches BL010's) and
name the reason where the graph has one; a zero-initialized gate, which moves on the first step
and lets what is behind it train from the second, must not hide those parameters."""

from __future__ import annotations

import textwrap

import pytest
import torch

HEAD = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Tagger(nn.Module):
    def __init__(self, read="last"):
        super().__init__()
        self.read = read
        self.lstm = nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        out, (h, _) = self.lstm(x)
        if self.read == "last":
            return self.head(out[:, -1])
        if self.read == "first":
            return self.head(out[:, 0])
        return self.head(torch.cat([h[-2], h[-1]], dim=-1))


class CrossAttention(nn.Module):
    '''Queries from the tokens, keys and values from ``slots`` memory entries.'''
    def __init__(self, slots=1, sdpa=False, module=False):
        super().__init__()
        self.slots, self.sdpa = slots, sdpa
        self.softmax = nn.Softmax(dim=-1) if module else None
        self.memory = nn.Parameter(torch.randn(slots, 16))
        self.q = nn.Linear(16, 16)
        self.k = nn.Linear(16, 16)
        self.v = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        memory = self.memory.expand(x.shape[0], -1, -1)
        q, k, v = self.q(x), self.k(memory), self.v(memory)
        if self.sdpa:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-2, -1) / 4.0
            weights = self.softmax(scores) if self.softmax is not None else \
                torch.softmax(scores, dim=-1)
            attended = weights @ v
        return self.out(x + attended)


class Gated(nn.Module):
    '''adaLN-Zero style: the branch is scaled by a gate initialized to zero.'''
    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.gate = nn.Parameter(torch.zeros(16))
        self.head = nn.Linear(16, 16)

    def forward(self, x):
        return self.head(x + self.gate * self.branch(x))


class Zeroed(nn.Module):
    '''A scale read through a product with a constant 0.'''
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(16))
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x) + 0 * self.scale * x
"""

# name -> (build expression, input expression, expected reason of each flagged layer)
CASES = {
    "bidirectional LSTM read at the last step": ("Tagger('last')", "torch.randn(6, 10, 8)",
                                                 {"lstm": "reverse"}),
    "bidirectional LSTM read at the first step": ("Tagger('first')", "torch.randn(6, 10, 8)",
                                                  {"lstm": "measured"}),
    "bidirectional LSTM read through h_n": ("Tagger('h')", "torch.randn(6, 10, 8)", {}),
    "cross-attention over one memory slot": ("CrossAttention(1)", "torch.randn(4, 7, 16)",
                                             {"q": "one-key", "k": "one-key"}),
    "an nn.Softmax module over one memory slot": ("CrossAttention(1, module=True)",
                                                  "torch.randn(4, 7, 16)",
                                                  {"q": "one-key", "k": "one-key"}),
    "sdpa over one memory slot": ("CrossAttention(1, sdpa=True)", "torch.randn(4, 7, 16)",
                                  {"q": "one-key", "k": "one-key"}),
    "cross-attention over three slots": ("CrossAttention(3)", "torch.randn(4, 7, 16)", {}),
    "zero-initialized gate": ("Gated()", "torch.randn(4, 16)", {}),
    "a parameter times a constant 0": ("Zeroed()", "torch.randn(4, 16)", {"": "measured"}),
}


def _silent_after_training(namespace: dict, build: str, inputs: str) -> set[tuple[str, str]]:
    """Parameters (biases aside) whose re-draw after 5 Adam steps moves no output."""
    torch.manual_seed(0)
    model = eval(build, namespace).double()
    x = eval(inputs, namespace).double()
    with torch.no_grad():
        target = torch.randn_like(model(x))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    fresh = torch.randn_like(x)
    silent = set()
    with torch.no_grad():
        before = model(fresh)
        for name, p in model.named_parameters():
            layer, _, pname = name.rpartition(".")
            if pname.startswith("bias"):
                continue  # an additive bias: BL001's
            kept = p.detach().clone()
            p.copy_(torch.randn_like(p) * 3)
            change = float((model(fresh) - before).abs().max() / before.abs().max())
            p.copy_(kept)
            if change <= 1e-9:
                silent.add((layer, pname))
    return silent


@pytest.mark.parametrize("select", [("BL015",), ("BL001", "BL015")],
                         ids=["alone", "sharing BL001's forward"])
@pytest.mark.parametrize("name", list(CASES))
def test_bl015_flags_exactly_what_training_leaves_alone(name, select, lint_source):
    """Alone, and on the bias screen's forward and backwards when BL001 runs too."""
    build, inputs, reasons = CASES[name]
    namespace: dict = {}
    exec(compile(HEAD, "<bl015>", "exec"), namespace)
    truth = _silent_after_training(namespace, build, inputs)
    source = HEAD + textwrap.dedent(f"""
        def build():
            torch.manual_seed(0)
            return {build}, {inputs}
        """)
    result = lint_source(source, select=select)
    assert not result.error, result.error
    findings = [f for f in result.findings if f.code == "BL015"]
    claimed = {(f.module, p) for f in findings for p in f.data["parameters"]}
    assert claimed == truth, (claimed, truth)
    assert {f.module: f.data["reason"] for f in findings} == reasons


def test_a_gate_at_zero_hides_the_branch_at_init():
    """The gated case is not trivial: at init, with the gate at 0, the branch gets no gradient
    (what a screen without re-drawing would flag)."""
    namespace: dict = {}
    exec(compile(HEAD, "<bl015>", "exec"), namespace)
    model = namespace["Gated"]()
    model(torch.randn(4, 16)).sum().backward()
    assert not model.branch[0].weight.grad.any()


LAYER_DROP = """
import torch
import torch.nn as nn


class Block(nn.Module):
    '''A residual block dropped at random in training, as torchvision's stochastic depth
    does it: the branch times a 0/1 mask (so the dropped branch still gets a zero gradient).'''
    def __init__(self, p=0.9):
        super().__init__()
        self.p = p
        self.branch = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        keep = (torch.rand(()) >= self.p).float() if self.training else 1.0
        return self.head(x + self.branch(x) * keep)


def build():
    return Block(), torch.randn(4, 16)
"""


def test_a_block_dropped_at_random_is_not_silent(lint_source):
    """The screen's seeded run drops the block (its first draw is below p), so its gradient is
    zero there and a shift moves nothing with that mask; in eval mode the block runs, and a
    re-draw of its weights moves the output: it trains whenever it is not dropped."""
    from biaslint.analysis.sensitivity import SEED

    torch.manual_seed(SEED)
    assert float(torch.rand(())) < 0.9  # the seeded run drops it
    namespace: dict = {}
    exec(compile(LAYER_DROP, "<layer-drop>", "exec"), namespace)
    model, x = namespace["build"]()
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.branch[0].weight.normal_()
        assert not torch.allclose(model(x), before)
    result = lint_source(LAYER_DROP, select=("BL015",))
    assert [f for f in result.findings if f.code == "BL015"] == []


FLOAT32_INSIDE = """
import torch
import torch.nn as nn


class OneSlot(nn.Module):
    '''Cross-attention over one memory slot (q and k silent for good), with a tensor the forward
    makes in the default dtype, or an op that refuses float64 (as grouped_mm does).'''
    def __init__(self, refuse=False):
        super().__init__()
        self.refuse = refuse
        self.memory = nn.Parameter(torch.randn(1, 16))
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.anchor = nn.Linear(16, 16)

    def forward(self, x):
        if self.refuse and x.dtype == torch.float64:
            raise RuntimeError("Expected mat_a to be Float32, BFloat16 or Float16, got Double")
        anchors = torch.ones(x.shape[0], x.shape[1], 16)  # the default dtype
        memory = self.memory.expand(x.shape[0], -1, -1)
        q, k, v = self.q(x) + self.anchor(anchors), self.k(memory), self.v(memory)
        weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return x + weights @ v


def made_inside():
    torch.manual_seed(0)
    return OneSlot(), torch.randn(4, 7, 16)


def refuses_float64():
    torch.manual_seed(0)
    return OneSlot(refuse=True), torch.randn(4, 7, 16)
"""


def test_a_tensor_made_in_the_default_dtype_runs_in_float64(lint_source):
    """The exact check runs the model in float64 with float64 as the default dtype, so a
    ``torch.zeros(...)`` inside the forward does not stop it (a DETR decoder's queries)."""
    result = lint_source(FLOAT32_INSIDE, select=("BL015",), attr="made_inside")
    assert not result.error, result.error
    claimed = {(f.module, p) for f in result.findings for p in f.data["parameters"]}
    assert claimed == {("q", "weight"), ("k", "weight"), ("anchor", "weight")}, claimed
    assert not any("crashed" in line for line in result.incomplete), result.incomplete


def test_a_model_that_refuses_float64_is_not_judged_and_not_guessed(lint_source):
    """An op without a float64 kernel: no verdict (float32 bit for bit cannot tell a path of
    1e-14 from none), said as unjudged; no crash."""
    result = lint_source(FLOAT32_INSIDE, select=("BL015",), attr="refuses_float64")
    assert not result.error, result.error
    assert [f for f in result.findings if f.code == "BL015"] == []
    assert not any("crashed" in line for line in result.incomplete), result.incomplete
    # a measurement that failed is an incomplete analysis (exit 2), not a pass
    assert any("does not run in float64" in line for line in result.incomplete), result.incomplete
    assert [scope.judged for scope in result.rules if scope.code == "BL015"] == [0]


EVAL_ONLY = """
import torch
import torch.nn as nn


class Detector(nn.Module):
    '''As torchvision's detectors: in training mode the forward wants targets.'''
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)

    def forward(self, x, targets=None):
        if self.training and targets is None:
            raise AssertionError("targets should not be none when in training mode")
        return self.body(x)


def build():
    return Detector().eval(), torch.randn(4, 8)
"""


def test_a_forward_that_refuses_training_mode_leaves_bl015_incomplete_and_says_why(lint_source):
    result = lint_source(EVAL_ONLY, select=("BL015",))
    assert not result.error, result.error
    [line] = [x for x in result.incomplete if "BL015" in x]
    assert "targets should not be none" in line and "training-mode forward accepts" in line


NAN_OUT = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        # the log of a negative number: every output is NaN on these inputs
        return torch.log(self.a(x).abs() - 1e3) + self.b(x)


def build():
    return Net(), torch.randn(4, 8)
"""


@pytest.mark.parametrize("select", [("BL015",), ("BL001", "BL015")])
def test_outputs_holding_nan_are_not_measured_and_say_why(lint_source, select):
    """NaN stays NaN whatever a shift does, and its gradient is read as 0: "no output depends
    on it" would be claimed of every parameter. Neither screen measures; BL015 is incomplete
    with the reason (a, b and both biases all shape the output with numbers in)."""
    result = lint_source(NAN_OUT, select=select)
    assert not result.error, result.error
    assert [f for f in result.findings if f.code == "BL015"] == []
    [line] = [x for x in result.incomplete if "BL015" in x]
    assert "hold NaN" in line


CUT = """
import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint


class Net(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def block(self, x):
        return torch.relu(self.a(x))

    def forward(self, x):
        if self.how == "no_grad":
            with torch.no_grad():
                h = self.block(x)
        elif self.how == "reentrant":
            h = checkpoint.checkpoint(self.block, x, use_reentrant=True)
        elif self.how == "non-reentrant":
            h = checkpoint.checkpoint(self.block, x, use_reentrant=False)
        else:
            h = self.block(x)
        return self.b(h)


def build():
    torch.manual_seed(0)
    return Net(HOW), torch.randn(8, 16)
"""


@pytest.mark.parametrize("how", ["no_grad", "reentrant", "non-reentrant", "plain"])
def test_a_layer_computed_outside_autograd_never_trains_as_training_shows(how, lint_source):
    """The outputs depend on ``a`` in every form; under ``torch.no_grad()``, or in a reentrant
    checkpoint whose input needs no gradient, no gradient reaches it: training leaves it at its
    init. BL010 (graph) and the zero-gradient screen both missed it."""
    source = CUT.replace("HOW", repr(how))
    namespace: dict = {}
    exec(compile(source, "<cut>", "exec"), namespace)
    model, x = namespace["build"]()
    before = model.a.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    trains = not torch.equal(before, model.a.weight.detach())
    result = lint_source(source, select=("BL010", "BL015"))
    cut = [f for f in result.findings if f.data.get("reason") == "cut"]
    assert bool(cut) == (not trains), (how, [f.message for f in result.findings])
    if cut:
        [finding] = cut
        assert finding.module == "a" and finding.data["parameters"] == ["weight"]
    assert not [f for f in result.findings if f.code == "BL010"]


def test_a_layer_behind_an_integer_cast_is_cut_and_the_cast_named(lint_source):
    """A latent quantized to bytes (diffusers' AutoencoderTiny does it in its forward): the
    encoder's output reaches the decoder only through .byte(), so no gradient reaches it."""
    source = """
import torch
import torch.nn as nn


class Codec(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(16, 8)
        self.dec = nn.Linear(8, 16)

    def forward(self, x):
        q = torch.sigmoid(self.enc(x)).mul(255).round().byte()
        return self.dec(q / 255.0)


def build():
    torch.manual_seed(0)
    return Codec(), torch.randn(8, 16)
"""
    namespace: dict = {}
    exec(compile(source, "<codec>", "exec"), namespace)
    model, x = namespace["build"]()
    model(x).pow(2).mean().backward()
    assert model.enc.weight.grad is None and model.dec.weight.grad is not None
    result = lint_source(source, select=("BL010", "BL015"))
    [finding] = [f for f in result.findings if f.code == "BL015"]
    assert finding.module == "enc" and finding.data["reason"] == "cut"
    assert "byte()" in finding.message


def test_an_unreached_parameter_the_budget_did_not_shift_is_said_not_judged(lint_source,
                                                                           monkeypatch):
    """With no shifts left in the budget, a parameter autograd does not reach is neither
    reported nor passed: it is listed as not judged."""
    import biaslint.analysis.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "CONFIRMATION_BUDGET", 0)
    result = lint_source(CUT.replace("HOW", repr("no_grad")), select=("BL015",))
    assert not [f for f in result.findings if f.data.get("reason") == "cut"]
    [scope] = [s for s in result.rules if s.code == "BL015"]
    assert [layer for layer, _ in scope.unjudged] == ["a"]
    assert "budget ran out" in scope.unjudged[0][1]
