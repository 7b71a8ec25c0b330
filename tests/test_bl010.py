"""BL010 measured against autograd: the parameters it names get no gradient from a backward of
every output, and no parameter that gets a gradient is named.

Each model below is built, linted, then run forward on its example inputs with every output
summed into one backward pass: a parameter "gets a gradient" when its ``.grad`` is not None and
not all zero.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

CASES: dict[str, tuple[str, set[str]]] = {}


def case(name: str, body: str, unused: set[str]) -> None:
    CASES[name] = (textwrap.dedent(body), unused)


HEAD = """
import torch
import torch.nn as nn
import torch.nn.functional as F
"""

case("never called", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(16, 32)
        self.aux = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 2))
        self.head = nn.Linear(32, 2)
    def forward(self, x):
        return self.head(torch.relu(self.enc(x)))
def build():
    return M(), torch.randn(8, 16)
""", {"aux.0.weight", "aux.0.bias", "aux.2.weight", "aux.2.bias"})

case("output discarded", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(16, 32)
        self.proj = nn.Linear(32, 32)
        self.head = nn.Linear(32, 2)
    def forward(self, x):
        h = torch.relu(self.enc(x))
        unused = self.proj(h)
        return self.head(h)
def build():
    return M(), torch.randn(8, 16)
""", {"proj.weight", "proj.bias"})

case("parameter never read", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)
        self.temperature = nn.Parameter(torch.ones(1))
    def forward(self, x):
        return self.lin(x)
def build():
    return M(), torch.randn(8, 16)
""", {"temperature"})

case("branch not taken on these inputs", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.small = nn.Linear(16, 4)
        self.large = nn.Linear(16, 4)
    def forward(self, x):
        return self.small(x) if x.shape[0] < 32 else self.large(x)
def build():
    return M(), torch.randn(8, 16)
""", {"large.weight", "large.bias"})

case("chain whose end is dropped", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 4)
    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.c(x)
def build():
    return M(), torch.randn(8, 16)
""", {"a.weight", "a.bias", "b.weight", "b.bias"})

case("module dict entry unused", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"cls": nn.Linear(16, 4), "reg": nn.Linear(16, 1)})
    def forward(self, x):
        return self.heads["cls"](x)
def build():
    return M(), torch.randn(8, 16)
""", {"heads.reg.weight", "heads.reg.bias"})

case("detached projection", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.teacher = nn.Linear(16, 4)
        self.student = nn.Linear(16, 4)
    def forward(self, x):
        return self.student(x) - self.teacher(x).detach()
def build():
    return M(), torch.randn(8, 16)
""", {"teacher.weight", "teacher.bias"})

case("all used: MLP", HEAD + """
def build():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)), torch.randn(8, 16)
""", set())

case("frozen and unused: quiet", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)
        self.old = nn.Linear(16, 4).requires_grad_(False)
    def forward(self, x):
        return self.lin(x)
def build():
    return M(), torch.randn(8, 16)
""", set())

case("tied embedding and head", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight
    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))
def build():
    return M(), torch.randint(0, 50, (2, 8))
""", set())

case("functional use of own parameters", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 16) * 0.1)
        self.b = nn.Parameter(torch.zeros(4))
    def forward(self, x):
        return F.linear(x, self.w, self.b)
def build():
    return M(), torch.randn(8, 16)
""", set())

case("attention and LSTM internals", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.lstm = nn.LSTM(16, 8, batch_first=True)
    def forward(self, x):
        y, _ = self.attn(x, x, x)
        out, (h, c) = self.lstm(y)
        return out
def build():
    return M(), torch.randn(2, 5, 16)
""", set())

case("half of a weight used", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)
    def forward(self, x):
        return self.lin(x)[:, :4]
def build():
    return M(), torch.randn(8, 16)
""", set())

case("several outputs, one head each", HEAD + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 16)
        self.a = nn.Linear(16, 2)
        self.b = nn.Linear(16, 3)
    def forward(self, x):
        h = self.body(x)
        return {"a": self.a(h), "b": self.b(h)}
def build():
    return M(), torch.randn(8, 16)
""", set())


def _gradients(model: torch.nn.Module, inputs) -> set[str]:
    """Qualified names of the parameters a backward of every output reaches."""
    model.zero_grad(set_to_none=True)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    out = model(*args)
    leaves = out.values() if isinstance(out, dict) else (out if isinstance(out, (tuple, list))
                                                          else [out])
    total = sum(t.float().sum() for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad)
    total.backward()
    return {n for n, p in model.named_parameters()
            if p.grad is not None and bool(p.grad.abs().sum() > 0)}


@pytest.mark.parametrize("name", list(CASES))
def test_named_parameters_get_no_gradient_and_the_rest_do(name, write_target):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    source, expected = CASES[name]
    target = write_target(source)
    torch.manual_seed(0)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL010",)))
    named = {p for f in result.findings for p in f.data["parameters"]}
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    reached = _gradients(loaded.model, loaded.inputs.args[0] if len(loaded.inputs.args) == 1
                         else tuple(loaded.inputs.args))
    assert not named & reached, "named, yet it gets a gradient"
    assert named == trainable - reached, "gets no gradient, yet not named (or the reverse)"
    assert named == expected


@pytest.mark.parametrize(("name", "says"), [
    ("never called", "is never called by the forward on the example inputs"),
    ("branch not taken on these inputs", "if other inputs take a branch that calls it"),
    ("output discarded", "is called, but no output depends on what it returns"),
    ("parameter never read", "parameter model.temperature is never read by the forward"),
    ("detached projection", "only through .detach()"),
])
def test_the_message_says_why(name, says, lint_source):
    result = lint_source(CASES[name][0], select=("BL010",))
    assert len(result.findings) == 1
    assert says in result.findings[0].message
    assert "find_unused_parameters=True" in result.findings[0].message
