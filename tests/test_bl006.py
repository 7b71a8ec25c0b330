"""BL006 measured: the attention weights each model stores while it runs are nearly one-hot
(mean largest weight >= 0.9) exactly where the rule fires, and the softmax's Jacobian
(diag(p) - p p^T, per row) is then much smaller than with the scores scaled by 1/sqrt(d_head),
as the message says."""

from __future__ import annotations

import textwrap

import pytest
import torch

HEAD = """
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim=128, std=None, scale="none", form="matmul", mask=False):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        if std is not None:
            for proj in (self.q, self.k):
                nn.init.normal_(proj.weight, std=std)
        self.scale, self.form, self.mask = scale, form, mask
        self.probs = None

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        d = q.shape[-1]
        if self.scale == "query":
            q = q * d ** -0.5
        if self.form == "einsum":
            scores = torch.einsum("bqd,bkd->bqk", q, k)
        elif self.form == "bmm":
            scores = torch.bmm(q, k.transpose(1, 2))
        else:
            scores = q @ k.transpose(-2, -1)
        if self.scale == "scores":
            scores = scores / math.sqrt(d)
        if self.mask:
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        probs = nn.Softmax(dim=-1)(scores) if self.form == "module" else torch.softmax(scores, -1)
        self.probs = probs
        return probs @ v


class Mha(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(128, 4, batch_first=True)
        nn.init.normal_(self.attn.in_proj_weight, std=1.0)

    def forward(self, x):
        return self.attn(x, x, x)[0]


class Sdpa(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(128, 384)
        nn.init.normal_(self.qkv.weight, std=1.0)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(128, 10) * 5)

    def forward(self, x):
        return torch.softmax(x @ self.w, dim=-1)


def x():
    return torch.randn(2, 24, 128)
"""

BIG = "2 / 128 ** 0.5"  # q and k of rms 2: unscaled scores with std ~45
# name -> (build, fires)
CASES = {
    "unscaled, large q/k": (f"Attention(std={BIG})", True),
    "unscaled, default init: measured fine": ("Attention()", False),
    "scores scaled after the product": (f"Attention(std={BIG}, scale='scores')", False),
    "query scaled before the product": (f"Attention(std={BIG}, scale='query')", False),
    "einsum, unscaled, large": (f"Attention(std={BIG}, form='einsum')", True),
    "bmm, unscaled, large": (f"Attention(std={BIG}, form='bmm')", True),
    "nn.Softmax module, unscaled, large": (f"Attention(std={BIG}, form='module')", True),
    "causal mask, unscaled, large": (f"Attention(std={BIG}, mask=True)", True),
    "nn.MultiheadAttention scales itself": ("Mha()", False),
    "scaled_dot_product_attention scales itself": ("Sdpa()", False),
    "softmax over a layer's output is not attention": ("Classifier()", False),
    "unscaled and too large even when scaled": ("Attention(std=1.0)", True),
}


def _source(build: str) -> str:
    return textwrap.dedent(HEAD) + f"\n\ndef build():\n    return {build}, x()\n"


def _lint(target: str):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    torch.manual_seed(0)
    loaded = load_target(target)
    return lint_loaded(loaded, TargetConfig(target), Settings(select=("BL006",))), loaded


def _jacobian(model, inputs) -> float:
    """Mean over rows of the softmax Jacobian's Frobenius norm, by autograd on the stored rows."""
    with torch.no_grad():
        model(inputs)
    rows = model.probs.reshape(-1, model.probs.shape[-1]).double()[:64]
    norms = []
    for p in rows:
        logits = torch.log(p.clamp_min(1e-300)).requires_grad_(True)
        jac = torch.autograd.functional.jacobian(lambda z: torch.softmax(z, -1), logits)
        norms.append(float(jac.norm()))
    return sum(norms) / len(norms)


@pytest.mark.parametrize("name", list(CASES))
def test_fires_exactly_where_the_stored_attention_is_nearly_one_hot(name, write_target):
    build, fires = CASES[name]
    result, loaded = _lint(write_target(_source(build)))
    assert bool(result.findings) == fires, [f.message for f in result.findings]
    model, inputs = loaded.model, loaded.inputs.args[0]
    if not hasattr(model, "probs"):
        return
    with torch.no_grad():
        model(inputs)
    mean_max = float(model.probs.amax(-1).mean())
    if model.scale == "none":
        assert (mean_max >= 0.9) == fires, mean_max
    if fires:
        [finding] = result.findings
        assert finding.data["mean_max"] == pytest.approx(mean_max, abs=1e-6)
        saturated = _jacobian(model, inputs)
        keys = model.probs.shape[-1]
        uniform = (1 / keys - 1 / keys ** 2) ** 0.5  # the Jacobian's norm on a uniform row
        assert saturated < 0.25 * uniform
        model.scale = "scores"
        scaled = _jacobian(model, inputs)
        if "even when scaled" not in name:
            assert saturated < 0.5 * scaled  # much less passes back than with the scale
        if "even when scaled" in name:
            assert "too large as well" in finding.message
        else:
            assert "too large as well" not in finding.message
