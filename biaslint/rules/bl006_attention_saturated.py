"""BL006: attention softmax rows nearly one-hot at init, because the scores are not scaled."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel


class AttentionSoftmaxSaturated(Rule):
    code = "BL006"
    name = "attention-softmax-saturated"
    severity = Severity.WARNING
    summary = "Attention softmax nearly one-hot at init: unscaled q.k scores, almost no gradient"
    what_it_does = """\
Runs the model once on the example inputs and measures every softmax over attention scores: a
product of two activations (`q @ k.transpose(-2, -1)`, `torch.matmul`, `torch.bmm`,
`torch.einsum`, `torch.baddbmm`), followed through views, masks, position biases and casts to the
softmax. It flags a softmax whose rows are nearly one-hot (the mean of each row's largest weight
at least `max_weight`, 0.9) when nothing scaled the scores by a number anywhere between the
product and the softmax (before it, on q or k, or after it). It reports the mean largest weight,
the mean entropy against `log(keys)`, the scores' spread, and what the largest weight would be
with the `1/sqrt(d_head)` scale: if that is still saturated, the q/k projections' init is too large
as well.

Measured, not pattern-matched: an unscaled product of small projections can be fine, and is not
flagged. `scaled_dot_product_attention` and `nn.MultiheadAttention` scale their scores and are not
measured; nor is a softmax over a layer's output (a classifier).

It needs a forward with values and does not run on the meta device: how close a row is to
one-hot depends on how the scores differ between keys, that is on how the example inputs'
positions differ (identical positions give uniform rows at any score scale), which no init law
gives; the bound the laws alone give (`|q.k| <= ||q|| ||k||`, with the projections' operator
norms) is too loose to pass a usual attention, so it would judge nothing.
"""
    why_bad = """\
Softmax's Jacobian is `diag(p) - p p^T`: on a row with one weight near 1 and the rest near 0
every entry is near 0, so that query and its keys get almost no gradient through it, and attention
starts as a hard argmax that learns where to look only from the rows that are not saturated.
Without the `1/sqrt(d_head)` scale of Vaswani et al. (2017), q.k scores of unit-scale
queries and keys have a standard deviation of `sqrt(d_head)` (8 for d_head = 64), which is what
saturates it.
"""
    fix_text = """\
Divide the scores by `sqrt(d_head)` (`scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)`),
or use `torch.nn.functional.scaled_dot_product_attention`, which does; if the message says the
scaled scores would still saturate, draw the q/k projections smaller too.
"""
    references = (
        "Vaswani et al., 2017, Attention Is All You Need (scaled dot-product attention), "
        "https://arxiv.org/abs/1706.03762",
    )
    options = (
        Option("max_weight", 0.9, "Flag a softmax whose rows' largest weight averages at least "
                                  "this."),
    )
    bad_example = '''\
import torch
import torch.nn as nn


class Attention(nn.Module):
    def __init__(self, dim=256):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        for proj in (self.q, self.k):
            nn.init.normal_(proj.weight, std=2 * dim ** -0.5)  # queries and keys of rms 2

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-2, -1)  # no 1/sqrt(d): std ~64
        return torch.softmax(scores, dim=-1) @ self.v(x)


def build():
    return Attention(), torch.randn(2, 32, 256)
'''
    good_example = '''\
import math

import torch
import torch.nn as nn


class Attention(nn.Module):
    def __init__(self, dim=256):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        for proj in (self.q, self.k):
            nn.init.normal_(proj.weight, std=2 * dim ** -0.5)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-2, -1) / math.sqrt(x.shape[-1])
        return torch.softmax(scores, dim=-1) @ self.v(x)


def build():
    return Attention(), torch.randn(2, 32, 256)
'''

    reads = frozenset({"graph", "forward"})
    grouped_by = "init"

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        return [], True

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        limit = float(context.option(self, "max_weight"))
        reported: set[str] = set()
        for softmax in model.attention:
            if softmax.scaled or softmax.keys < 2 or softmax.mean_max < limit:
                continue
            if softmax.module in reported:
                continue  # one finding per attention module (it runs per head and per call)
            reported.add(softmax.module)
            layer = model.layer_within(softmax.module)
            if layer is None:
                continue
            still = softmax.mean_max_if_scaled >= limit
            message = (
                f"softmax over attention scores is saturated at init on the example inputs: each "
                f"row's largest weight averages {softmax.mean_max:.3g} (uniform would be "
                f"{1 / softmax.keys:.3g}), entropy {softmax.entropy:.3g} against log("
                f"{softmax.keys}) = {math.log(softmax.keys):.3g}; its Jacobian diag(p) - p p^T, "
                f"what it passes back to the queries and keys, averages {softmax.jacobian:.3g} "
                f"per row against {softmax.jacobian_if_scaled:.3g} with scaled scores, so they "
                f"learn mostly from the few rows that are not saturated; the scores (std "
                f"{softmax.score_std:.3g}) are "
                f"not scaled by 1/sqrt(d_head) = 1/sqrt({softmax.head_dim}) anywhere between q.k "
                f"and the softmax; with that scale the largest weight would average "
                f"{softmax.mean_max_if_scaled:.3g}"
                + (", still saturated: the q/k projections' init is too large as well"
                   if still else ""))
            fix = Fix(title="Scale the scores by 1/sqrt(d_head), or use "
                            "F.scaled_dot_product_attention",
                      code=f"scores = q @ k.transpose(-2, -1) / math.sqrt({softmax.head_dim})",
                      safe=False, kind=FixKind.MANUAL)
            finding = self.finding(layer, message, fix=fix,
                                   data={"mean_max": softmax.mean_max,
                                         "entropy": softmax.entropy, "keys": softmax.keys,
                                         "head_dim": softmax.head_dim,
                                         "mean_max_if_scaled": softmax.mean_max_if_scaled,
                                         "jacobian": softmax.jacobian,
                                         "jacobian_if_scaled": softmax.jacobian_if_scaled})
            finding = self.at_module(finding, model, softmax.module)
            yield finding

