"""BL014 measured: the test computes each model's attention scores itself (the model keeps the
scores it fed the softmax, or for ``scaled_dot_product_attention`` the q, k and scale it passed),
trains it, and reads the truth from those numbers:
- uniform at init: on every row with two or more keys of weight above 1e-20 (the others are
  masked), the softmax weights of those keys are equal within a relative 1e-6;
- for good: still uniform after 20 Adam steps on a regression loss (lr 1e-2), with no gradient on
  the query and key projections;
- recovers: no longer uniform after those steps.
The rule must fire exactly on the models uniform at init, as a warning exactly on those uniform
for good and as info on those that recover, and name the reason."""

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
    '''Multi-head attention written out; ``how`` plants one mistake (or a deliberate choice).'''
    def __init__(self, dim=32, heads=4, how="ok", sdpa=False, causal=False, module=False):
        super().__init__()
        self.heads, self.sdpa, self.causal, self.how = heads, sdpa, causal, how
        self.softmax = nn.Softmax(dim=-1) if module else None
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        d_head = dim // heads
        self.scale = 1 // math.sqrt(d_head) if how == "int-scale" else d_head ** -0.5
        if how in ("zero-q", "zero-qk"):
            nn.init.zeros_(self.q.weight)
            nn.init.zeros_(self.q.bias)
        if how in ("zero-k", "zero-qk"):
            nn.init.zeros_(self.k.weight)
            nn.init.zeros_(self.k.bias)
        if how == "same-keys":
            nn.init.zeros_(self.k.weight)  # its bias stays: every key is that bias
        if how == "zero-input":  # no weight inside is zero: the norm before gives zeros
            nn.init.zeros_(self.q.bias)
            nn.init.zeros_(self.k.bias)
        if how == "tiny":
            for proj in (self.q, self.k):
                nn.init.normal_(proj.weight, std=1e-7)
                nn.init.zeros_(proj.bias)
        if how == "learned-zero":
            self.temperature = nn.Parameter(torch.zeros(()))
        self.scores = None

    def split(self, t):
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.how == "zero-query-scale":
            q = q * 0
        if self.sdpa:
            scale = 0.0 if self.how == "sdpa-zero" else None
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=scale)
            used = 0.0 if scale == 0.0 else q.shape[-1] ** -0.5
            self.scores = (q @ k.transpose(-2, -1)).detach() * used
        else:
            scores = q @ k.transpose(-2, -1)
            if self.how == "learned-zero":
                scores = scores * self.temperature
            else:
                scores = scores * self.scale
            if self.causal:
                mask = torch.ones(n, n, dtype=torch.bool).triu(1)
                fill = torch.finfo(scores.dtype).min if self.causal == "finite" else -math.inf
                scores = scores.masked_fill(mask, fill)
            self.scores = scores.detach()
            weights = self.softmax(scores) if self.softmax is not None else \
                torch.softmax(scores, dim=-1)
            out = weights @ v
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.attn = Attention(**kw)
        if kw.get("how") == "zero-input":
            nn.init.zeros_(self.norm.weight)
        if kw.get("how") == "tiny-input":  # the projections are fine; their input is tiny
            nn.init.normal_(self.norm.weight, std=1e-9)

    def forward(self, x):
        return x + self.attn(self.norm(x))
"""

# name -> (constructor arguments, uniform at init, uniform for good, words the reason names)
CASES = {
    "scale 1 // sqrt(d) == 0": ("how='int-scale'", True, True, "constant scale of 0"),
    "scale 0, causal mask": ("how='int-scale', causal=True", True, True, "constant scale of 0"),
    "scale 0, causal mask of finfo.min": ("how='int-scale', causal='finite'", True, True,
                                          "constant scale of 0"),
    "q and k zeroed, causal mask of finfo.min": ("how='zero-qk', causal='finite'", True, True,
                                             "both all zero"),
    "query multiplied by 0": ("how='zero-query-scale'", True, True, "constant scale of 0"),
    "sdpa, scale=0.0": ("how='sdpa-zero', sdpa=True", True, True, "constant scale of 0"),
    "query and key projections zeroed": ("how='zero-qk'", True, True, "both all zero"),
    "sdpa, query and key zeroed": ("how='zero-qk', sdpa=True", True, True, "both all zero"),
    "query projection zeroed (muP)": ("how='zero-q'", True, False, "queries are all zero"),
    "query zeroed, an nn.Softmax module": ("how='zero-q', module=True", True, False,
                                           "queries are all zero"),
    "default init, an nn.Softmax module": ("module=True", False, False, ""),
    "key projection zeroed": ("how='zero-k'", True, False, "keys are all zero"),
    "sdpa, query zeroed": ("how='zero-q', sdpa=True", True, False, "queries are all zero"),
    "key weight zeroed, bias kept": ("how='same-keys'", True, False, "same at every position"),
    "learnable temperature at 0": ("how='learned-zero'", True, False, "learnable scale"),
    "q/k drawn with std 1e-7": ("how='tiny'", True, False,
                                "attn.q.weight (RMS"),
    "q and k zero from a zeroed norm before them": ("how='zero-input'", True, False,
                                                    "no weight inside the attention is"),
    "a norm gain drawn near 0 before the attention": ("how='tiny-input'", True, False,
                                                      "projections inside the attention are "
                                                      "drawn at a usual scale"),
    "default init": ("", False, False, ""),
    "default init, causal": ("causal=True", False, False, ""),
    "default init, causal mask of finfo.min": ("causal='finite'", False, False, ""),
    "default init, sdpa causal": ("sdpa=True, causal=True", False, False, ""),
}


def _uniform(scores: torch.Tensor) -> bool:
    p = torch.softmax(scores.double(), dim=-1)
    attended = p > 1e-20
    high = torch.where(attended, p, 0.0).amax(-1)
    low = torch.where(attended, p, 1.0).amin(-1)
    rows = attended.sum(-1) >= 2
    return bool((high[rows] <= low[rows] * (1 + 1e-6)).all())


def _truth(namespace: dict, args: str) -> tuple[bool, bool]:
    """(uniform at init, uniform after 20 Adam steps), from the scores the model kept."""
    torch.manual_seed(0)
    model = eval(f"Block({args})", namespace)
    x, target = torch.randn(4, 12, 32), torch.randn(4, 12, 32)
    model(x)
    at_init = _uniform(model.attn.scores)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    model(x)
    return at_init, _uniform(model.attn.scores)


@pytest.mark.parametrize("name", list(CASES))
def test_bl014_fires_exactly_where_training_says(name, lint_source):
    args, uniform, for_good, words = CASES[name]
    namespace: dict = {}
    exec(compile(HEAD, "<bl014>", "exec"), namespace)
    at_init, after = _truth(namespace, args)
    assert (at_init, at_init and after) == (uniform, for_good), "the case is not what it says"

    source = HEAD + textwrap.dedent(f"""
        def build():
            torch.manual_seed(0)
            return Block({args}), torch.randn(4, 12, 32)
        """)
    result = lint_source(source, select=("BL014",))
    assert not result.error, result.error
    findings = [f for f in result.findings if f.code == "BL014"]
    if not at_init:
        assert findings == [], [f.message for f in findings]
        return
    assert len(findings) == 1, [f.message for f in findings]
    finding = findings[0]
    assert finding.module == "attn"
    assert words in finding.message, finding.message
    assert finding.data["for_good"] is after
    assert str(finding.severity) == ("warning" if after else "info")


def test_one_key_is_not_uniform_attention(lint_source):
    """A softmax over one key is the constant 1: nothing to weigh, not this rule's."""
    source = HEAD + textwrap.dedent("""
        def build():
            return Block(how='int-scale'), torch.randn(4, 1, 32)
        """)
    result = lint_source(source, select=("BL014",))
    assert [f for f in result.findings if f.code == "BL014"] == []


def test_bl006_still_reads_only_unscaled_scores(lint_source):
    """The measure now sees scaled softmaxes and sdpa too; BL006 must still judge only
    softmaxes over unscaled scores (a zero-scale model's rows are uniform, not saturated)."""
    source = HEAD + textwrap.dedent("""
        def build():
            return Block(how='int-scale'), torch.randn(4, 12, 32)
        """)
    result = lint_source(source, select=("BL006", "BL014"))
    assert [f.code for f in result.findings] == ["BL014"]
