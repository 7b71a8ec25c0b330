"""Capture by recording the model's own forward on fake tensors (biaslint.capture.record).

Library code that a proxy tracer cannot run (``torch.is_tensor`` checks, einops, ``nn.Parameter``
checks, ``len()`` of a tensor, data-dependent branches) must be recorded whole, and what BL001
then says about the layers inside must be what the perturbation oracle measures.
"""

from __future__ import annotations

import operator
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from biaslint.capture import capture
from biaslint.capture.record import record_forward
from biaslint.load import ExampleInputs, LoadedTarget

from oracle import assert_agrees

HEADER = """
import torch
import torch.nn as nn
import torch.nn.functional as F
"""


def _loaded(model: nn.Module, *args, **kwargs) -> LoadedTarget:
    return LoadedTarget("test", model, ExampleInputs(args=args, kwargs=kwargs), {}, {})


# -- library code runs as written ---------------------------------------------------------------

def test_is_tensor_and_len_checks_run_as_in_a_real_forward(judge):
    # diffusers' timestep handling: a proxy is not a tensor, and len() of it fails.
    findings, oracle = judge(HEADER + """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.emb = nn.Linear(1, 8)

    def forward(self, x, t):
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float32)
        if len(t.shape) == 0:
            t = t[None]
        t = t.expand(x.shape[0]).to(x.dtype)
        h = self.bn(self.conv(x))
        return h + self.emb(t[:, None])[:, :, None, None]

def build():
    return Net(), (torch.randn(4, 3, 8, 8), torch.tensor(3.0))
""")
    assert_agrees(findings, oracle, {"conv": "redundant", "emb": "live"})


def test_parameter_type_checks_and_direct_weight_use(judge):
    # peft's DoRA asserts its weight is an nn.Parameter; a proxy tracer hands it a Proxy.
    findings, oracle = judge(HEADER + """
class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(8))

    def forward(self, x):
        if not isinstance(self.weight, nn.Parameter):
            raise TypeError("Input weight should be of type nn.Parameter")
        return F.conv2d(x, self.weight, self.bias, padding=1)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Scaled()
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x)).relu()

def build():
    return Net(), torch.randn(4, 3, 8, 8)
""")
    assert_agrees(findings, oracle, {"conv": "redundant"})


def test_einops_rearrange_is_recorded(judge):
    pytest.importorskip("einops")
    findings, oracle = judge(HEADER + """
from einops import rearrange
from einops.layers.torch import Rearrange

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_tokens = Rearrange("b c h w -> b (h w) c")
        self.proj = nn.Linear(3, 16)
        self.norm = nn.LayerNorm(16)
        self.q = nn.Linear(16, 16)
        self.k = nn.Linear(16, 16)

    def forward(self, x):
        t = self.norm(self.proj(self.to_tokens(x)))
        q = rearrange(self.q(t), "b n (h d) -> b h n d", h=2)
        k = rearrange(self.k(t), "b n (h d) -> b h n d", h=2)
        return (q @ k.transpose(-1, -2)).softmax(-1)

def build():
    return Net(), torch.randn(2, 3, 4, 4)
""")
    # k's bias is cancelled by the softmax over keys; LayerNorm removes only proj's mean.
    assert_agrees(findings, oracle, {"proj": "partial", "k": "redundant", "q": "live"})


def test_data_dependent_branch_records_from_a_real_forward(judge):
    findings, oracle = judge(HEADER + """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if x.abs().sum().item() > 0:  # always true on these inputs
            h = h.relu()
        return self.head(h)

def build():
    return Net(), torch.randn(4, 3, 8, 8)
""")
    assert_agrees(findings, oracle, {"conv": "redundant", "head": "live"})


def test_in_place_write_links_later_reads():
    # y.mul_(mask) then bn(y): BatchNorm sees the masked bias, which varies over positions, so
    # the bias is live. The graph must make bn read the mul_, not the value before it.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.register_buffer("mask", torch.linspace(0.5, 2.0, 64).reshape(1, 1, 8, 8))

        def forward(self, x):
            y = self.conv(x)
            y.mul_(self.mask)
            return self.bn(y)

    rec = record_forward(Net(), (torch.randn(2, 3, 8, 8),), {}, _fake())
    bn = next(n for n in rec.gm.graph.nodes if n.op == "call_module" and n.target == "bn")
    assert bn.args[0].op == "call_method" and bn.args[0].target == "mul_"

    from biaslint.engine import lint_loaded
    from biaslint.settings import Settings, TargetConfig

    result = lint_loaded(_loaded(Net(), torch.randn(2, 3, 8, 8)), TargetConfig("test"),
                         Settings(select=("BL001",)))
    assert not result.findings

    from oracle import bias_verdict

    assert bias_verdict(Net(), torch.randn(2, 3, 8, 8), "conv") == "live"


def _fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


# -- the graph has the form the rules read --------------------------------------------------------

def test_graph_form_matches_fx_tracing():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            h = self.lin(x) * self.scale
            a, b = h.chunk(2, dim=-1)
            return 1 - a, b.reshape(-1)

    rec = record_forward(Net(), (torch.randn(2, 4),), {}, _fake())
    nodes = list(rec.gm.graph.nodes)
    ops = [(n.op, n.target) for n in nodes]
    assert ("call_module", "lin") in ops and ("get_attr", "scale") in ops
    assert ("call_function", operator.mul) in ops
    assert ("call_method", "chunk") in ops and ("call_method", "reshape") in ops
    sub = next(n for n in nodes if n.target is operator.sub)
    assert sub.args[0] == 1  # 1 - a: the operands in the order written
    getitems = [n for n in nodes if n.target is operator.getitem]
    assert sorted(n.args[1] for n in getitems) == [0, 1]  # one per chunk used
    lin = next(n for n in nodes if n.target == "lin")
    assert lin.meta["biaslint_shape"].shape == (2, 4)
    assert rec.called == {"", "lin"}


def test_a_failing_submodule_is_named_in_the_note():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x).reshape(3, -1, 7)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 4)
            self.body = Broken()

        def forward(self, x):
            return self.body(self.stem(x))

    cap = capture(_loaded(Net(), torch.randn(2, 4)))
    note = next(n for n in cap.notes if n.startswith("forward on the example inputs failed"))
    assert "'body', Broken" in note and "RuntimeError" in note


# -- coverage counts what the forward calls ----------------------------------------------------

def test_layers_not_called_are_listed_apart_from_untraced():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 4)  # built, never called on these inputs
            self.attn = nn.MultiheadAttention(4, 2)  # out_proj is read by its parent's forward

        def forward(self, x):
            h = self.used(x)
            return self.attn(h, h, h)[0]

    cap = capture(_loaded(Net(), torch.randn(3, 2, 4)))
    cov = cap.coverage
    assert cov.not_called == ("spare",)
    assert (cov.traced, cov.total) == (3, 3) and cov.ratio == 1.0 and not cov.untraced


def test_a_traced_module_that_reads_none_of_its_own_parameters_is_inside_the_graph():
    """A custom module whose forward the graph traces through, holding a parameter that forward
    never reads (a spare scale, a table for a branch not taken), is inside the graph: graph
    rules see all it does, and BL010 reports the unused parameter. It was counted as a called
    layer outside any graph, and the lint ended incomplete (exit 2). A custom module called
    where the tracer cannot follow it stays outside."""
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.spare = nn.Parameter(torch.ones(4))  # never read

        def forward(self, x):
            return torch.relu(self.fc(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()
            self.table = nn.Parameter(torch.zeros(3))  # never read either

        def forward(self, x):
            return self.block(x) + 1

    cov = capture(_loaded(Net(), torch.randn(2, 4))).coverage
    assert (cov.traced, cov.total) == (3, 3) and not cov.untraced, cov


# -- recording changes nothing ---------------------------------------------------------------------

def test_recording_leaves_the_model_and_the_rng_as_they_were():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            if x.sum().item() > -1e9:  # forces the real forward as well as the fake one
                self.seen = x.shape[0]
            return self.drop(self.bn(self.conv(x)))

    torch.manual_seed(0)
    model = Net()
    inputs = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cap = capture(_loaded(model, inputs))
    assert any("recorded from a real forward" in n for n in cap.notes)
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "seen") and model.training
    assert nn.Module.__call__ is torch.nn.modules.module.Module.__call__
    assert "_wrapped_call_impl" in nn.Module.__call__.__name__


DEEPCOPY_BUILD = """
import copy
import torch
import torch.nn as nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(256, 256)
        self.register_buffer("scale", torch.ones(256))

    def forward(self, x):
        return self.lin(x) * self.scale

def build():
    block = Block()
    nn.init.normal_(block.lin.weight, 0, 1)
    # copy.deepcopy of a module with a buffer: a common way to stack layers (PyG's BasicGNN).
    return nn.Sequential(*[copy.deepcopy(block) for _ in range(3)]), torch.randn(2, 256)
"""


def test_deepcopy_during_the_build_finishes_and_keeps_provenance(tmp_path):
    (tmp_path / "stacked.py").write_text(textwrap.dedent(DEEPCOPY_BUILD))
    proc = subprocess.run([sys.executable, "-m", "biaslint", "stacked.py:build", "--select",
                           "BL003", "--format", "json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    import json

    findings = json.loads(proc.stdout)["results"][0]["findings"]
    # Every copy is judged, located where the block was written, and says which init drew it.
    assert sorted(f["module"] for f in findings) == ["0.lin", "1.lin", "2.lin"]
    assert all(f["file"] == "stacked.py" and f["line"] == 9 for f in findings)
    assert all("normal_(..., 0, 1) at stacked.py:17" in f["message"] for f in findings)


def test_a_write_into_a_view_reaches_the_base_tensor():
    # The conv's bias is written into part of z through a view; z then reaches the output, so
    # the bias is live. Nothing may read z's value from before the write (a dead end there
    # would look like a cancelled bias).
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            z = torch.zeros(x.shape[0], 8, 8, 8, dtype=x.dtype)
            part = z[:, :4]
            part[...] = self.conv(x)
            return self.head(z)

    from biaslint.engine import lint_loaded
    from biaslint.settings import Settings, TargetConfig

    from oracle import bias_verdict

    inputs = torch.randn(2, 3, 8, 8)
    rec = record_forward(Net(), (inputs,), {}, _fake())
    head = next(n for n in rec.gm.graph.nodes if n.op == "call_module" and n.target == "head")
    assert head.args[0].target.__name__ == "written_through_view"
    result = lint_loaded(_loaded(Net(), inputs), TargetConfig("test"), Settings(select=("BL001",)))
    assert bias_verdict(Net(), inputs, "conv") == "live"
    assert not result.findings


# -- forward hooks run during capture, and what they compute is in the graph ---------------------

@pytest.mark.parametrize(("hook", "expected"), [
    ("lambda mod, inp, out: out ** 2", "live"),  # the hook makes the bias matter
    ("lambda mod, inp, out: None", "redundant"),  # an observer changes nothing
    ("lambda mod, inp, out: out * 3.0", "redundant"),  # a linear rescale: still cancelled
])
def test_a_forward_hook_on_a_builtin_layer_is_part_of_the_graph(judge, hook, expected):
    findings, oracle = judge(HEADER + f"""
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16))
    model[0].register_forward_hook({hook})
    return model, torch.randn(4, 8)
""")
    assert_agrees(findings, oracle, {"0": expected})


def test_a_global_forward_hook_leaves_the_layers_unclaimed(judge):
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: out ** 2 if isinstance(mod, nn.Linear) else None)
    try:
        findings, oracle = judge(HEADER + """
def build():
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16)), torch.randn(4, 8)
""")
        assert_agrees(findings, oracle, {"0": "live"})
    finally:
        handle.remove()


def test_linting_leaves_hooks_a_forward_installs_on_first_use_behind_it(write_target):
    # transformers' output capturing installs hooks on the first forward and marks the model;
    # removing the mark but not the hooks made the next forward install them twice.
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    target = write_target(HEADER + """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.seen = []

    def forward(self, x):
        if not getattr(self, "_hooked", False):
            self.inner.register_forward_hook(lambda m, i, o: self.seen.append(o))
            self._hooked = True
        self.seen.clear()
        self.inner(x)
        if len(self.seen) != 1:
            raise RuntimeError(f"hook installed {len(self.seen)} times")
        return self.seen[0]

def build():
    return Net(), torch.randn(2, 4)
""")
    loaded = load_target(target)
    hooks_before = dict(loaded.model.inner._forward_hooks)
    lint_loaded(loaded, TargetConfig(target), Settings())
    assert dict(loaded.model.inner._forward_hooks) == hooks_before
    loaded.model(torch.randn(2, 4))  # installs its hook once, as on a model never linted
