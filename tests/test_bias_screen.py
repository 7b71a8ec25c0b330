"""BL001 on real tensors: the bias screen measures which bias elements the outputs do not depend
on, and every claim it makes is checked here by the perturbation oracle (``tests/oracle.py``),
element by element, on models the graph walk cannot follow."""

from __future__ import annotations

import textwrap

import pytest
import torch

from biaslint.engine import lint_loaded
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig

from oracle import Oracle, biased_layers, split_inputs

HEADER = """
import math
import torch
import torch.nn as nn
import torch.nn.functional as F
"""


@pytest.fixture
def lint(write_target):
    """Lint ``source`` with BL001; return (result, oracle over the built model)."""

    def run(source: str):
        target = write_target(HEADER + textwrap.dedent(source))
        torch.manual_seed(0)
        loaded = load_target(target)
        result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",),
                                                                  debug=True))
        assert not [n for n in result.notes if "crashed" in n], result.notes
        return result, Oracle(loaded.model, *split_inputs(loaded.inputs))

    return run


def claimed_elements(result, layer: str, param: str = "bias") -> set[int]:
    """The elements of ``layer.param`` BL001 claims are cancelled."""
    elements: set[int] = set()
    for f in result.findings:
        if f.module != layer or f.parameter != param:
            continue
        if f.data["verdict"] == "redundant":
            elements |= set(range(f.data["parameters"]))
        elif f.data["verdict"] == "redundant-slice":
            for a, b in f.data.get("slices", [f.data["slice"]]):
                elements |= set(range(a, b))
    return elements


def truly_cancelled(oracle: Oracle, layer: str, param: str = "bias") -> set[int]:
    """Per element, measured: the elements whose change, alone, moves no output. (A dead
    layer, whose weight moves nothing either, has no cancelled elements: it is not BL001's.)"""
    if oracle.dead(layer):
        return set()
    size = getattr(oracle.model.get_submodule(layer), param).numel()
    return {i for i in range(size)
            if oracle.verdict(layer, param, index=slice(i, i + 1)) == "redundant"}


def assert_exact(result, oracle: Oracle, layers=None) -> None:
    """BL001 claims exactly the elements the oracle measures as cancelled, on every layer."""
    for layer in layers or biased_layers(oracle.model):
        assert claimed_elements(result, layer) == truly_cancelled(oracle, layer), layer
    for scope in result.rules:
        assert not scope.disagreements, scope.disagreements


INTERLEAVED = """
class Interleaved(nn.Module):
    '''A fused projection laid out per head as [q_h, k_h, v_h], scores through baddbmm.'''

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, 3, d // self.heads).unbind(3)
        q, k, v = (t.transpose(1, 2).reshape(b * self.heads, n, -1) for t in (q, k, v))
        scores = torch.baddbmm(q.new_zeros(b * self.heads, n, n), q, k.transpose(1, 2))
        out = scores.softmax(-1) @ v
        return self.out(out.view(b, self.heads, n, -1).transpose(1, 2).reshape(b, n, d))

def build():
    return Interleaved(), torch.randn(2, 5, 16)
"""

CENTRED_BY_VAR = """
class Centred(nn.Module):
    '''A batch norm written by hand with nanmean(): the walk does not know nanmean().'''

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        mean = y.nanmean(dim=(0, 2, 3), keepdim=True)
        var = y.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
        return self.head(torch.relu((y - mean) * torch.rsqrt(var + 1e-5)))

def build():
    return Centred(), torch.randn(2, 3, 6, 6)
"""

GATHERED_TABLE = """
class RelativeBias(nn.Module):
    '''Scores plus a position-bias table gathered by index (torch.gather), keys cancelled.'''

    def __init__(self, dim=8, n=5):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(2 * n - 1))
        idx = torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1
        self.register_buffer("index", idx)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q @ k.transpose(-1, -2)
        bias = torch.gather(self.table.expand(x.shape[1], -1), 1, self.index)
        return (scores + bias).softmax(-1) @ v

def build():
    return RelativeBias(), torch.randn(2, 5, 8)
"""

WRAPPED_MHA = """
class Wrapped(nn.Module):
    '''nn.MultiheadAttention inside a module of one's own, fed from a projection.'''

    def __init__(self, dim=8):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x):
        h = self.proj(x)
        return self.attn(h, h, h, need_weights=False)[0]

def build():
    return Wrapped(), torch.randn(2, 5, 8)
"""


TINY_MAP = """
class TinyMap(nn.Module):
    # A depthwise-separable block at the end of a detector's backbone, where the map is down
    # to 1x1 (kornia's YuNet at a 64 px input): the depthwise conv's zero padding leaves only
    # the centre tap, so the pointwise conv's bias is constant per channel into the BatchNorm,
    # which cancels it; with 2 samples the norm divides by a tiny std, and rounding lifts some
    # cancelled elements' gradients above the zero test.

    def __init__(self, c=64):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.point = nn.Conv2d(c, c, 1)
        self.depth = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        h = self.pool(torch.relu(self.stem(x)))
        h = torch.relu(self.bn(self.depth(self.point(h))))
        return self.head(h.flatten(1))

def build():
    return TinyMap(), torch.randn(2, 3, 16, 16)
"""


@pytest.mark.parametrize("source", [INTERLEAVED, CENTRED_BY_VAR, GATHERED_TABLE, TINY_MAP],
                         ids=["interleaved-qkv", "centred-by-var", "gathered-table",
                              "one-pixel-map"])
def test_claims_exactly_what_the_oracle_measures(lint, source):
    result, oracle = lint(source)
    assert result.findings, "each of these models has a cancelled bias"
    assert_exact(result, oracle)
    assert all(f.data["measured"] for f in result.findings)


def test_interleaved_key_elements_are_named_as_runs(lint):
    result, oracle = lint(INTERLEAVED)
    [finding] = [f for f in result.findings if f.module == "qkv"]
    # per head h the key block is [12h + 4, 12h + 8): four runs of four
    assert finding.data["slices"] == [[12 * h + 4, 12 * h + 8] for h in range(4)]
    assert finding.severity.name == "INFO"
    for a, b in finding.data["slices"]:
        assert oracle.verdict("qkv", index=slice(a, b)) == "redundant"


def test_a_measured_cancellation_names_where_it_happens_and_where_the_walk_stopped(lint):
    result, _ = lint(CENTRED_BY_VAR)
    [finding] = [f for f in result.findings if f.module == "conv"]
    assert "Centred" in finding.message and "(measured)" in finding.message
    assert any("nanmean()" in note and "conv" in note for note in result.notes), result.notes
    assert finding.fix is not None and "bias=False" in finding.fix.code


CENTRED_BLOCKS = """
class Block(nn.Module):
    # the norm written with nanmean() (the walk stops there) as a block's own forward

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        mean = y.nanmean(dim=(0, 2, 3), keepdim=True)
        var = y.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
        return torch.relu((y - mean) * torch.rsqrt(var + 1e-5))


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1, bias=False)
        self.blocks = nn.Sequential(Block(), Block(), Block())
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))

def build():
    return Stack(), torch.randn(2, 3, 6, 6)
"""


def test_each_measured_cancellation_names_its_own_blocks_op(lint):
    """Where one block's cancellation was located, the same layer in the next block of the same
    kind is told the same op in its own block (located once per kind: each search is two
    forwards), never the first block's."""
    result, oracle = lint(CENTRED_BLOCKS)
    for i in range(3):
        [finding] = [f for f in result.findings if f.module == f"blocks.{i}.conv"]
        assert f"'blocks.{i}'" in finding.message, finding.message
        others = [f"'blocks.{j}" for j in range(3) if j != i]
        assert not any(o in finding.message for o in others), finding.message
        assert oracle.verdict(f"blocks.{i}.conv", "bias") == "redundant"


def test_a_key_slice_of_a_wrapped_multihead_attention(lint):
    result, oracle = lint(WRAPPED_MHA)
    [finding] = [f for f in result.findings if f.module == "attn"]
    assert finding.parameter == "in_proj_bias" and finding.data["slice"] == [8, 16]
    assert oracle.verdict("attn", "in_proj_bias", index=slice(8, 16)) == "redundant"
    assert oracle.verdict("attn", "in_proj_bias", index=slice(0, 8)) == "live"
    assert claimed_elements(result, "proj") == truly_cancelled(oracle, "proj") == set()


def test_dead_paths_are_counted_not_claimed(lint):
    """Units a very negative bias keeps off, and a softmax over one key: the bias gets no
    gradient, and neither does the weight. Not a cancellation found by measuring; said in a
    note. The query and key biases are the exception: the walk proves from the graph that a
    softmax over a length-1 axis removes them whatever the values, and the perturbation bears
    that out."""
    result, oracle = lint("""
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.off = nn.Linear(8, 8)
            nn.init.constant_(self.off.bias, -100.0)
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.out = nn.Linear(8, 8)

        def forward(self, x, token):
            h = torch.relu(self.off(x))
            scores = self.q(token) @ self.k(token).transpose(-1, -2)  # one key: softmax is 1
            return self.out(h) + scores.softmax(-1) @ self.v(token)

    def build():
        return Dead(), (torch.randn(2, 8), torch.randn(2, 1, 8))
    """)
    assert sorted(f.module for f in result.findings) == ["k", "q"]
    assert all("softmax" in f.message and f.data["measured"] for f in result.findings)
    assert oracle.verdict("k") == oracle.verdict("q") == "redundant"
    assert any("dead path" in note and "off.bias" in note and "k.bias" not in note
               for note in result.notes), result.notes
    # the units kept off, and the q/k layers, move nothing at all on these inputs
    assert oracle.dead("off") and oracle.dead("q") and oracle.dead("k")
    assert claimed_elements(result, "off") == set()


def test_the_model_is_left_bit_for_bit(write_target):
    """The screen trains-mode, re-draws, perturbs and differentiates the model itself: all of
    it is put back (parameters, buffers, requires_grad, training flags, the RNG)."""
    target = write_target(HEADER + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.gate = nn.Parameter(torch.zeros(8))  # re-drawn during the screen
            self.head = nn.Linear(8, 4)
            self.head.weight.requires_grad_(False)

        def forward(self, x):
            h = self.bn(self.conv(x)).mean((2, 3)) * self.gate
            return self.head(h)

    def build():
        model = Net()
        model.eval()
        return model, torch.randn(2, 3, 6, 6)
    """))
    torch.manual_seed(0)
    loaded = load_target(target)
    model = loaded.model
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    # views of the parameters' storages held across the lint (a rule's earlier read): the
    # screen's float64 re-check must put the storages back, not new ones of the old dtype
    views = {n: p.detach() for n, p in model.named_parameters()}
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",)))
    assert [f.module for f in result.findings] == ["conv"]
    assert result.findings[0].data["measured"]
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all(torch.equal(views[n], params[n]) for n in params)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == pointers
    assert all(p.dtype == params[n].dtype for n, p in model.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_a_derived_claim_the_measurement_refutes_is_counted_not_reported(lint, monkeypatch):
    """Make the walk wrong on purpose (every bias 'cancelled'): the measurement overrules each
    claim, nothing is reported, and every overruled claim is counted in the rule's scope."""
    from biaslint.rules.bl001_redundant_bias import check
    from biaslint.rules.bl001_redundant_bias.propagation import Verdict

    monkeypatch.setattr(check, "analyse_bias",
                        lambda model, name, *a, **k: Verdict(True, ["a wrong walk"]))
    result, oracle = lint("""
    def build():
        return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)), torch.randn(4, 8)
    """)
    assert not result.findings
    [scope] = [s for s in result.rules if s.code == "BL001"]
    assert {d.layer for d in scope.disagreements} == {"0", "2"}
    assert oracle.verdict("0") == oracle.verdict("2") == "live"


def test_without_values_the_walk_stands_alone_and_says_so(write_target):
    target = write_target(HEADER + textwrap.dedent("""
    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    """))
    loaded = load_target(target, ((2, 3, 8, 8),), device="meta")
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",)))
    [finding] = result.findings
    assert finding.module == "0" and finding.data["measured"] is False
    assert any("derived from the graph alone" in n for n in result.notes), result.notes


def test_a_bias_the_forward_also_reads_directly_is_measured_in_all_its_uses(lint):
    """WavLM-style: the q/k/v biases are concatenated by the forward itself and handed to
    F.multi_head_attention_forward. The walk does not follow a bias read outside its layer's
    calls; the measurement covers every use. The key bias is reported, without a bias=False
    edit (it would break the torch.cat)."""
    result, oracle = lint("""
    class Attention(nn.Module):
        def __init__(self, dim=8, heads=2):
            super().__init__()
            self.heads = heads
            self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

        def forward(self, x):  # x: (length, batch, dim)
            out, _ = F.multi_head_attention_forward(
                x, x, x, x.shape[-1], self.heads, None,
                torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)),
                None, None, False, 0.0, self.out_proj.weight, self.out_proj.bias,
                training=self.training, need_weights=False, use_separate_proj_weight=True,
                q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
                v_proj_weight=self.v_proj.weight)
            return out

    def build():
        return Attention(), torch.randn(5, 2, 8)
    """)
    assert [f.module for f in result.findings] == ["k_proj"]
    [finding] = result.findings
    assert finding.data["measured"] and finding.fix is not None and not finding.fix.edits
    assert oracle.verdict("k_proj") == "redundant"
    assert oracle.verdict("q_proj") == oracle.verdict("v_proj") == "live"


def test_a_weightless_bias_beside_an_empty_weight_is_measured_not_crashed():
    # MobileBERT's LM head: a bias of its own, children's weights (one of them with 0 rows)
    # that do not line up with its elements; the screen must not take them for stacked rows
    import torch.nn as nn

    import biaslint

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(8, 0)
            self.decoder = nn.Linear(8, 16, bias=False)
            self.bias = nn.Parameter(torch.zeros(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.decoder(x), self.dense(x)], -1) + self.bias

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.key = nn.Linear(8, 8)
            self.query = nn.Linear(8, 8)
            self.head = Head()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2), -1)
            return self.head(scores @ x)

    torch.manual_seed(0)
    report = biaslint.check(Net(), torch.randn(2, 5, 8), select=["BL001"])
    assert not any("crashed" in n for n in report.result.notes), report.result.notes
    assert report.result.incomplete == ()
    assert [f.module for f in report.findings] == ["key"]


CONV_BN_AND_ONE_KEY = """
class Both(nn.Module):
    '''A conv bias a batch norm cancels (BL001's) and query/key projections read through a
    softmax over one memory entry (their biases BL001's, their weights BL015's).'''

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.memory = nn.Parameter(torch.randn(1, 8))
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.bn(self.conv(x)).mean((2, 3))
        scores = self.q(h)[:, None] @ self.k(self.memory).T  # one key: the softmax is 1
        return h + (scores.softmax(-1) @ self.v(self.memory))[:, 0]

def build():
    return Both(), torch.randn(4, 3, 6, 6)
"""


def _lint_counting(write_target, source: str, select: tuple[str, ...]):
    """Lint ``source``; return the findings (code, layer, message) and how many forwards
    ran in training mode with gradients on."""
    target = write_target(HEADER + textwrap.dedent(source))
    torch.manual_seed(0)
    loaded = load_target(target)
    differentiated: list[bool] = []
    loaded.model.register_forward_pre_hook(  # values: not the capture's fake or meta tensors
        lambda module, args: differentiated.append(
            module.training and torch.is_grad_enabled() and type(args[0]) is torch.Tensor
            and args[0].device.type != "meta"))
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=select))
    assert not result.incomplete, result.incomplete
    found = sorted((f.code, f.module, f.message) for f in result.findings)
    return found, sum(differentiated)


def test_the_bias_and_parameter_screens_share_one_training_forward(write_target):
    """BL001's bias screen and BL015's parameter screen read the same training-mode forward and
    backwards: selecting both runs no more differentiated forwards than BL001 alone, and each
    finds what it finds alone."""
    alone_001, forwards_001 = _lint_counting(write_target, CONV_BN_AND_ONE_KEY, ("BL001",))
    alone_015, forwards_015 = _lint_counting(write_target, CONV_BN_AND_ONE_KEY, ("BL015",))
    both, forwards_both = _lint_counting(write_target, CONV_BN_AND_ONE_KEY, ("BL001", "BL015"))
    # the batch norm cancels the conv bias; the softmax over one key, the q and k biases
    assert [f[:2] for f in alone_001] == [("BL001", "conv"), ("BL001", "k"), ("BL001", "q")]
    assert [f[:2] for f in alone_015] == [("BL015", "k"), ("BL015", "q")]
    assert both == sorted(alone_001 + alone_015)
    assert forwards_001 == forwards_015 == 1
    assert forwards_both == 1


def test_a_derived_cancellation_is_confirmed_in_float32_and_a_found_one_in_float64(
        lint, monkeypatch):
    """The float64 re-check tells "moves by 1e-6" from "does not move": it is spent on what
    the measurement found and the walk did not prove (a batch norm written by hand with nanmean()),
    not on what the walk derived (Conv2d -> BatchNorm2d), which the float32 shift confirms."""
    from biaslint.analysis import sensitivity

    widened: list[bool] = []
    real = sensitivity.in_float64

    def counted(run):
        widened.append(True)
        return real(run)

    monkeypatch.setattr(sensitivity, "in_float64", counted)
    result, oracle = lint("""
    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), torch.randn(2, 3, 6, 6)
    """)
    assert [(f.module, f.data["measured"]) for f in result.findings] == [("0", True)]
    assert oracle.verdict("0") == "redundant"
    assert not widened
    result, oracle = lint(CENTRED_BY_VAR)
    assert [(f.module, f.data["measured"]) for f in result.findings] == [("conv", True)]
    assert oracle.verdict("conv") == "redundant"
    assert widened


def test_a_third_projection_is_asked_only_for_lone_elements_two_left_flat():
    """Two random projections leave a few lone elements of a large model flat by chance, and
    the perturbation would try each with a forward of its own: a third projection is asked for
    the biases that still have two or more such lone candidates, and for nothing else (runs of
    several elements, one lone element, BL015's peaks)."""
    import torch.nn as nn

    from biaslint.analysis.sensitivity import Runner, _unsettled

    layer = nn.Linear(4, 8)
    run = Runner(layer, torch.float32, (), {})
    wanted = [("fc", "bias", layer, layer.bias, [layer.weight])]

    def projection(flat: list[int]) -> dict:
        gb = torch.ones(8)
        gb[flat] = 0.0
        return {id(layer.bias): gb, id(layer.weight): torch.ones(8, 4)}

    asks = {id(layer.bias), "fc", id(layer.weight)}
    assert _unsettled(run, wanted, [projection([1])]) == asks  # the second: any candidate
    assert _unsettled(run, wanted, [projection([1, 5]), projection([1, 5])]) == asks
    assert _unsettled(run, wanted, [projection([1, 5]), projection([1])]) == set()
    assert _unsettled(run, wanted, [projection([2, 3]), projection([2, 3])]) == set()
    assert _unsettled(run, wanted, [projection([1, 5]), projection([1, 5])],
                      proven={("fc", "bias"): ((5, 6),)}) == set()
    # a bias the second projection did not ask for is settled
    assert _unsettled(run, wanted, [projection([1, 5]), {}]) == set()


@pytest.mark.parametrize("batch,channels,p", [(4, 8, 0.3), (4, 16, 0.5), (2, 16, 0.3)])
def test_a_channel_a_dropout_mask_happens_to_keep_in_every_sample_is_not_claimed(
        write_target, batch, channels, p):
    """Dropout2d draws one mask per sample and channel: under one draw, a channel kept (or
    dropped) in every sample of the batch has its bias cancelled by the BatchNorm after it, for
    that draw only; under most draws the bias moves the outputs and trains. The screen measured
    one draw (and found 2 of 8 channels "cancelled" at batch 4, p = 0.3). The truth here is
    measured under eight draws: a channel is cancelled only if no draw moves an output."""
    target = write_target(HEADER + f"""
def build():
    model = nn.Sequential(nn.Conv2d(3, {channels}, 3, padding=1), nn.Dropout2d({p}),
                          nn.BatchNorm2d({channels}), nn.ReLU(), nn.Conv2d({channels}, 4, 1))
    return model, torch.randn({batch}, 3, 8, 8)
""")
    torch.manual_seed(0)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",)))
    oracles = [Oracle(loaded.model, *split_inputs(loaded.inputs), seed=seed) for seed in range(8)]
    truly = {i for i in range(channels)
             if all(o.verdict("0", index=slice(i, i + 1)) == "redundant" for o in oracles)}
    assert truly == set()  # no channel's bias is cancelled under every draw
    assert claimed_elements(result, "0") == truly


def test_a_mask_drawn_from_numpy_is_re_drawn_too(write_target):
    """A channel mask drawn from numpy's generator (as SpecAugment-style code does) is a random
    draw like torch's dropout: the channel a draw keeps in both samples is not claimed (it was,
    as slice 14:15, when only torch's generator was watched)."""
    target = write_target(HEADER + """
import numpy as np


class NumpyChannelDrop(nn.Module):
    def forward(self, x):
        keep = np.random.rand(x.shape[0], x.shape[1], 1, 1) > 0.5
        return x * torch.from_numpy(keep.astype("float32")) * 2


def build():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), NumpyChannelDrop(),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    return model, torch.randn(2, 3, 8, 8)
""")
    torch.manual_seed(0)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",)))
    oracles = [Oracle(loaded.model, *split_inputs(loaded.inputs), seed=seed) for seed in range(8)]
    truly = {i for i in range(16)
             if all(o.verdict("0", index=slice(i, i + 1)) == "redundant" for o in oracles)}
    assert truly == set()
    assert claimed_elements(result, "0") == truly


def test_a_forward_that_raises_under_another_draw_claims_nothing_the_draws_did_not_check(
        write_target):
    """When the forward raises under one of the other draws of its random masks, what only the
    measurement found under one draw is not claimed, and a note says why."""
    target = write_target(HEADER + """
from biaslint.analysis.sensitivity import RESEEDS


class RaisesUnderOneDraw(nn.Module):
    def forward(self, x):
        if torch.initial_seed() == RESEEDS[1]:
            raise RuntimeError("not under this draw")
        return x


def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Dropout2d(0.3), RaisesUnderOneDraw(),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    return model, torch.randn(4, 3, 8, 8)
""")
    torch.manual_seed(0)
    result = lint_loaded(load_target(target), TargetConfig(target), Settings(select=("BL001",)))
    assert claimed_elements(result, "0") == set()
    assert any("raised under another draw" in n for n in result.notes), result.notes


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_low_precision_model_is_measured_in_float32(write_target, dtype):
    """A float16 or bfloat16 model was not measured at all ("the screen measures float32 and
    float64 models"): BL001 fell back on the walk and BL015 left every layer unjudged, so the
    lint ended incomplete. Its values are exact in float32: the screens measure it there, and
    the model comes back in its dtype, bit for bit."""
    from biaslint.engine import lint

    source = HEADER + textwrap.dedent(CENTRED_BY_VAR).replace(
        "return Centred(), torch.randn(2, 3, 6, 6)",
        f"return Centred().to(torch.{dtype}), torch.randn(2, 3, 6, 6).to(torch.{dtype})")
    target = write_target(source)
    result = lint(TargetConfig(target), Settings(select=("BL001", "BL015")))
    assert not result.incomplete, result.incomplete
    assert [f.module for f in result.findings if f.code == "BL001"] == ["conv"]
    assert "(measured)" in result.findings[0].message  # the walk does not know nanmean()

    torch.manual_seed(0)
    loaded = load_target(target)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001", "BL015")))
    after = loaded.model.state_dict()
    assert all(after[k].dtype == getattr(torch, dtype) and torch.equal(after[k], v)
               for k, v in before.items() if v.is_floating_point())


HALF_LIVE = """
class HalfLive(nn.Module):
    '''One projection whose first half goes into a BatchNorm (cancelled) and whose second half
    goes on live: most of the bias cancels, not all of it.'''

    def __init__(self, c=16):
        super().__init__()
        self.proj = nn.Linear(c, 2 * c)
        self.bn = nn.BatchNorm1d(c)
        self.head = nn.Linear(2 * c, 3)

    def forward(self, x):
        a, b = self.proj(x).chunk(2, dim=-1)
        return self.head(torch.cat([torch.relu(self.bn(a)), torch.tanh(b)], -1))

def build():
    return HalfLive(), torch.randn(8, 16)
"""


@pytest.mark.parametrize("source, layer", [(TINY_MAP, "point"), (HALF_LIVE, "proj")],
                         ids=["whole-bias-cancelled", "half-live"])
def test_elements_rounding_kept_from_the_zero_test_are_shifted_with_the_rest(
        lint, monkeypatch, source, layer):
    """A norm that divides by a tiny std (a 1x1 map, two samples; kornia's YuNet) leaves some
    cancelled elements' gradients above the zero test by rounding. Simulated here by taking 5
    elements out of the candidates: once most of the bias is confirmed, the rest is shifted
    too, and claimed only when no output moves, as the oracle measures."""
    import biaslint.analysis.sensitivity as sensitivity

    real = sensitivity._flat_and_alive

    def noisy(run, grads, name, pname, *rest):
        flat, alive = real(run, grads, name, pname, *rest)
        if name == layer:
            flat = flat.clone()
            flat[[1, 3, 5, 7, 9]] = False
        return flat, alive

    monkeypatch.setattr(sensitivity, "_flat_and_alive", noisy)
    result, oracle = lint(source)
    assert_exact(result, oracle, [layer])
