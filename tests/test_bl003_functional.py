"""BL003 on weights the forward contracts itself: raw ``nn.Parameter`` matrices used with
``F.linear``, ``x @ w`` or an einsum, an ``nn.Linear``'s weight given to ``F.linear`` (MAML-style
code), a raw conv kernel given to ``F.conv2d``. Before, none of them was judged and the lint
passed them in silence.

The truth of each case is measured: the product of the weight (as the forward scales it) with
unit-scale Gaussian inputs, its output rms over the input's, against 10x the gain that keeps the
scale through what takes the product.
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

from biaslint.engine import lint_loaded
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig

HEADER = """\
import math
import torch
import torch.nn as nn
import torch.nn.functional as F
"""

# name -> (source of the module ``Net`` and ``build``, weight name, measured product on unit
# inputs: x -> output of the weight's product as the forward computes it, target gain)
CASES = {
    "raw F.linear, std 1, ReLU": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(512, 512))
        self.w2 = nn.Parameter(torch.randn(10, 512) / math.sqrt(512))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.w1)), self.w2)
""", "w1", lambda m, x: F.linear(x, m.w1), math.sqrt(2)),
    "raw F.linear, He init": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(512, 512))
        nn.init.kaiming_normal_(self.w1, nonlinearity="relu")
        self.w2 = nn.Parameter(torch.randn(10, 512) / math.sqrt(512))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.w1)), self.w2)
""", "w1", lambda m, x: F.linear(x, m.w1), math.sqrt(2)),
    "nn.Linear weight through F.linear, std 1": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(512, 512)
        nn.init.normal_(self.fc.weight)

    def forward(self, x):
        return torch.tanh(F.linear(x, self.fc.weight, self.fc.bias))
""", "fc.weight", lambda m, x: F.linear(x, m.fc.weight), 5 / 3),
    "x @ w (in, out), std 1, to the output": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 64))

    def forward(self, x):
        return x @ self.w
""", "w", lambda m, x: x @ m.w, 1.0),
    "x @ w (in, out), scaled by its fan-in": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 64) / 16)

    def forward(self, x):
        return x @ self.w
""", "w", lambda m, x: x @ m.w, 1.0),
    "einsum (out, in), std 1, GELU": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 256))

    def forward(self, x):
        return F.gelu(torch.einsum("bsi,oi->bso", x, self.w))
""", "w", lambda m, x: torch.einsum("bsi,oi->bso", x, m.w), math.sqrt(2)),
    "equalized learning rate: N(0, 1) scaled by 1/sqrt(fan_in) in the forward": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(512, 512))
        self.scale = 1 / math.sqrt(512)

    def forward(self, x):
        return F.leaky_relu(F.linear(x, self.w * self.scale), 0.2)
""", "w", lambda m, x: F.linear(x, m.w * m.scale), math.sqrt(2 / 1.04)),
    "learned query, scaled scores": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Parameter(torch.randn(4, 512))

    def forward(self, x):
        scores = self.query @ x.transpose(-2, -1) * 512 ** -0.5
        return torch.softmax(scores, -1) @ x
""", "query", lambda m, x: m.query @ x.transpose(-2, -1) * 512 ** -0.5, 1.0),
    "raw conv kernel, std 1": ("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(16, 32, 3, 3))

    def forward(self, x):
        return F.relu(F.conv2d(x, self.k, padding=1))
""", "k", lambda m, x: F.conv2d(x, m.k, padding=1), math.sqrt(2)),
}

SHAPES = {"raw conv kernel, std 1": (2, 32, 16, 16), "learned query, scaled scores": (2, 64, 512),
          "einsum (out, in), std 1, GELU": (2, 16, 256), "x @ w (in, out), std 1, to the output":
          (32, 256), "x @ w (in, out), scaled by its fan-in": (32, 256)}


def _source(name: str) -> str:
    body, *_ = CASES[name]
    shape = SHAPES.get(name, (32, 512))
    return HEADER + textwrap.dedent(body) + f"\n\ndef build():\n    return Net(), " \
        f"torch.randn{shape}\n"


def _lint(target: str, device: str | None = None):
    loaded = load_target(target, device=device)
    result = lint_loaded(loaded, TargetConfig.of(target, device=device),
                         Settings(select=("BL003",)))
    return result, loaded


def _scope(result):
    [scope] = [s for s in result.rules if s.code == "BL003"]
    return scope


@pytest.mark.parametrize("name", list(CASES))
def test_weights_the_forward_contracts_itself_are_judged_as_measured(name, write_target):
    torch.manual_seed(0)
    target = write_target(_source(name))
    _, pname, product, target_gain = CASES[name]
    result, loaded = _lint(target)
    torch.manual_seed(1)
    x = torch.randn(SHAPES.get(name, (32, 512)))
    with torch.no_grad():
        measured = float(product(loaded.model, x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    truth = measured > 10 * target_gain
    flagged = [f for f in result.findings if f.code == "BL003"
               and pname.endswith(f.parameter or "")]
    assert bool(flagged) == truth, (measured, [f.message for f in result.findings])
    assert _scope(result).unjudged == ()
    meta, _ = _lint(target, "meta")  # the same verdict from the init law
    assert bool([f for f in meta.findings if f.code == "BL003"]) == truth


@pytest.mark.parametrize("divisor", [16, 1])
def test_a_weight_the_forward_standardizes_is_judged_as_computed(write_target, divisor):
    """Weight standardization: the forward divides the weight by its own std, so the product's
    scale is not its values'. On real tensors the weight is computed as the forward computes it
    from the parameters and judged; on the meta device there are no values, and the lint says
    it did not judge it instead of passing it."""
    source = HEADER + textwrap.dedent(f"""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(256, 256) * 30)

        def forward(self, x):
            w = (self.w - self.w.mean(1, keepdim=True)) / self.w.std(1, keepdim=True)
            return F.relu(F.linear(x, w / {divisor}))


    def build():
        return Net(), torch.randn(8, 256)
    """)
    target = write_target(source)
    result, loaded = _lint(target)
    w = loaded.model.w.detach()
    x = torch.randn(64, 256)
    with torch.no_grad():
        effective = (w - w.mean(1, keepdim=True)) / w.std(1, keepdim=True) / divisor
        measured = float(F.linear(x, effective).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    flagged = [f for f in result.findings if f.code == "BL003"]
    assert bool(flagged) == (measured > 10 * math.sqrt(2)), (measured, flagged)
    assert _scope(result).unjudged == ()
    meta, _ = _lint(target, "meta")
    assert [f for f in meta.findings if f.code == "BL003"] == []
    [(layer, why)] = _scope(meta).unjudged
    assert layer == "" and "its weight w" in why and "could not be computed" in why, why


def test_random_fourier_features_are_left_to_their_chosen_frequency(write_target):
    source = HEADER + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.freqs = nn.Parameter(torch.randn(2, 128) * 10)
            self.head = nn.Linear(256, 1)

        def forward(self, coords):
            proj = 2 * math.pi * (coords @ self.freqs)
            return self.head(torch.cat([proj.sin(), proj.cos()], -1))


    def build():
        return Net(), torch.rand(64, 2)
    """)
    result, _ = _lint(write_target(source))
    assert [f for f in result.findings if f.code == "BL003"] == []
    assert _scope(result).unjudged == ()


def test_learned_latents_a_layer_reads_are_no_weight_of_the_products_after(write_target):
    """Perceiver's latents: a parameter that goes through a norm and a projection (layers the
    rule judges themselves) before its product with the input's keys is that layer's input,
    not a weight: nothing to judge, nothing left unjudged (it was "not judged" before)."""
    source = HEADER + textwrap.dedent("""
    class Latents(nn.Module):
        def __init__(self, n=8, d=32):
            super().__init__()
            self.latents = nn.Parameter(torch.randn(n, d))
            self.norm = nn.LayerNorm(d)
            self.to_q = nn.Linear(d, d, bias=False)
            self.to_k = nn.Linear(d, d, bias=False)

        def forward(self, x):
            q = self.to_q(self.norm(self.latents)).expand(x.shape[0], -1, -1)
            scores = torch.einsum("bid,bjd->bij", q, self.to_k(x)) * 32 ** -0.5
            return torch.softmax(scores, -1) @ x


    def build():
        return Latents(), torch.randn(2, 5, 32)
    """)
    result, _ = _lint(write_target(source))
    assert [f for f in result.findings if f.code == "BL003"] == []
    assert _scope(result).unjudged == ()


@pytest.mark.parametrize("std", [1.0, 0.05])
def test_a_factored_weight_is_judged_as_the_product_the_forward_contracts(write_target, std):
    """``x @ (U @ V)``: the product of the two factors is the weight the input meets. Before,
    neither factor was judged (the factors' own product is not with the input) and the lint
    passed them; now the product is computed from the parameters and judged, on real tensors,
    and listed as not judged on meta."""
    source = HEADER + textwrap.dedent(f"""
    class LowRank(nn.Module):
        def __init__(self):
            super().__init__()
            self.u = nn.Parameter(torch.randn(256, 32) * {std})
            self.v = nn.Parameter(torch.randn(32, 256) * {std})

        def forward(self, x):
            return torch.relu(x @ (self.u @ self.v))


    def build():
        return LowRank(), torch.randn(16, 256)
    """)
    target = write_target(source)
    result, loaded = _lint(target)
    x = torch.randn(64, 256)
    with torch.no_grad():
        w = loaded.model.u @ loaded.model.v
        measured = float((x @ w).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    flagged = {f.parameter for f in result.findings if f.code == "BL003"}
    assert flagged == ({"u", "v"} if measured > 10 * math.sqrt(2) else set()), measured
    assert _scope(result).unjudged == ()
    meta, _ = _lint(target, "meta")
    assert [f for f in meta.findings if f.code == "BL003"] == []
    assert [why for _, why in _scope(meta).unjudged if "could not be computed" in why]
