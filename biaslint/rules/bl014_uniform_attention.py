"""BL014: attention whose every row is uniform at init, because the scores do not vary along the
keys (a zero scale, a zeroed projection)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


class UniformAttention(Rule):
    code = "BL014"
    name = "attention-uniform"
    severity = Severity.WARNING
    summary = "Attention uniform at init: the scores do not vary along the keys"
    what_it_does = """\
Runs the model once on the example inputs and measures every softmax over attention scores (the
ones BL006 follows, scaled or not, and every `F.scaled_dot_product_attention` call, whose scores
are rebuilt in float64 from its query, key, mask and scale): the largest range of a row's scores
along the keys, masked entries left out. When that range is at most `max_spread` (1e-6) on every
row, every query averages the values with equal weights: attention ignores what it attends to.

The finding names why, from what the measurement saw between the score product and the softmax:
- a **fixed scale of 0** multiplied the scores, a query or a key (`scale = 1 // math.sqrt(d)` is
  0): the scores are 0 on every step, and no gradient reaches the queries or the keys. For good:
  a warning.
- the **queries and the keys are both all zero** and a weight inside the attention is zero (both
  projections zeroed): the gradient of each is proportional to the other, so both stay zero. For
  good: a warning. When no weight inside is zero, what feeds them is zero on these inputs; that
  is said, as `info`, with no claim about training.
- only the **queries** (or only the **keys**) are zero, the keys are **the same at every
  position**, or a **learnable scale starts at 0**: the first step's gradient makes the scores
  vary. The finding is then `info`: a zero query projection is μP's deliberate choice (Yang et
  al., 2022) and recovers; elsewhere it is worth a look, and it never fails a gate by default.
- otherwise the scores are only tiny: `info`, with the range, naming the projections whose
  weight RMS is under 1% of `1/sqrt(fan_in)`, or, when none is, saying that what feeds the
  queries and keys is tiny (a norm's gain drawn near 0 upstream).

A softmax over one key is left to BL010/BL001 (its output is the constant 1). Softmaxes inside
`nn.MultiheadAttention` are not measured.
"""
    why_bad = """\
A uniform row is `1/keys` everywhere: the layer's output is the mean of the values, the same for
every query, whatever the input says. Softmax's Jacobian `diag(p) - p p^T` is not small there, but
what it multiplies is the gradient of the scores with respect to q and k, which a zero scale or a
pair of zero projections makes exactly zero: the attention pattern then never learns, and the block
is a fixed average pool that trains only through its value and output projections. No error is
raised and the output shapes look right.
"""
    fix_text = """\
Give the scores a non-zero scale (`d_head ** -0.5`, computed as a float), and draw at least one of
the query and key projections at its usual scale (`nn.init.normal_(q.weight, std=d ** -0.5)` or
the default init). A zero query projection on purpose (μP) needs no fix.
"""
    references = (
        "Vaswani et al., 2017, Attention Is All You Need (scaled dot-product attention), "
        "https://arxiv.org/abs/1706.03762",
        "Yang et al., 2022, Tensor Programs V (μP; zero-initialized query projection), "
        "https://arxiv.org/abs/2203.03466",
    )
    options = (
        Option("max_spread", 1e-6, "Flag a softmax whose scores vary along the keys by at most "
                                   "this on every row."),
    )
    bad_example = '''\
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.scale = 1 // math.sqrt(dim // heads)  # integer division: the scale is 0

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        out = F.softmax(scores, dim=-1) @ v
        return self.out(out.transpose(1, 2).reshape(b, n, d))


def build():
    return Attention(), torch.randn(2, 16, 64)
'''
    good_example = '''\
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.scale = 1 / math.sqrt(dim // heads)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        out = F.softmax(scores, dim=-1) @ v
        return self.out(out.transpose(1, 2).reshape(b, n, d))


def build():
    return Attention(), torch.randn(2, 16, 64)
'''

    reads = frozenset({"graph", "forward"})
    grouped_by = "init"

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        return [], True

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        limit = float(context.option(self, "max_spread"))
        reported: set[str] = set()
        for softmax in model.attention:
            if softmax.keys < 2 or not softmax.spread <= limit or softmax.module in reported:
                continue  # NaN spread (no row with two keys) is not uniform
            reported.add(softmax.module)  # one finding per attention module
            layer = model.layer_within(model.scores_module(softmax.module))
            if layer is not None:
                yield self._finding(model, layer, softmax)

    def _finding(self, model: "AnalysedModel", layer: "Layer", softmax: Any) -> Finding:
        owner = model.scores_module(softmax.module)
        reason, for_good = _reason(softmax, _zero_layers(model, owner),
                                   _small_layers(model, owner))
        where = "scaled_dot_product_attention" if softmax.sdpa else "softmax over attention scores"
        message = (
            f"{where} is uniform at init on the example inputs: on every row the scores vary by "
            f"at most {softmax.spread:.3g} along the {softmax.keys} keys, so each query weights "
            f"every key 1/{softmax.keys} = {1 / softmax.keys:.3g} and the output is the values' "
            f"mean whatever the input; {reason}")
        fix = Fix(title="Give the scores a non-zero scale and the query/key projections a drawn "
                        "init",
                  code=f"scale = {softmax.head_dim} ** -0.5  # a float, not 1 // math.sqrt(d)",
                  safe=False, kind=FixKind.MANUAL)
        finding = self.finding(
            layer, message, fix=fix, severity=None if for_good else Severity.INFO,
            data={"spread": softmax.spread, "keys": softmax.keys, "for_good": for_good,
                  "zero_scale": softmax.zero_scale, "zero_queries": softmax.zero_queries,
                  "zero_keys": softmax.zero_keys, "same_keys": softmax.same_keys,
                  "sdpa": softmax.sdpa, "log_keys": math.log(softmax.keys)})
        return self.at_module(finding, model, owner)


def _reason(softmax: Any, zero_layers: list[str], small: list[str]) -> tuple[str, bool]:
    """Why the rows are uniform, and whether they stay so (no gradient reaches q or k). Each
    cause is said only as far as it was seen: a projection is blamed only when its weight is
    zero (``zero_layers``) or drawn far below its fan-in's scale (``small``)."""
    zeros = f" ({', '.join(zero_layers)} all zero)" if zero_layers else ""
    if softmax.zero_scale == "fixed":
        return ("a constant scale of 0 multiplies the scores (or a query or key) between the "
                "product and the softmax: the scores are 0 on every step and no gradient reaches "
                "the queries or the keys, so it stays uniform for good"), True
    if softmax.zero_queries and softmax.zero_keys and zero_layers:
        return ("the queries and the keys are both all zero" + zeros + ": the gradient of each "
                "is proportional to the other, so both stay zero and it stays uniform for "
                "good"), True
    if softmax.zero_queries and softmax.zero_keys:
        return ("the queries and the keys are both all zero, though no weight inside the "
                "attention is: what feeds them is zero on these inputs (a norm over a single "
                "channel, a gate upstream that starts at 0); whether training moves them depends "
                "on that input, so look there"), False
    if softmax.zero_scale == "learned":
        return ("a learnable scale starts at 0: its first gradient moves it, so this is where "
                "training starts, not where it stays"), False
    if softmax.zero_queries or softmax.zero_keys:
        which = "queries" if softmax.zero_queries else "keys"
        why = zeros or " (no weight inside the attention is zero: a scale or gate on them starts " \
                       "at 0, or their input is zero)"
        mu_p = " (a zero query projection is muP's deliberate choice)" \
            if softmax.zero_queries and zero_layers else ""
        return (f"the {which} are all zero{why}: their first gradient is not, so it recovers "
                f"after the first step{mu_p}"), False
    if softmax.same_keys:
        return ("the keys are the same at every position (a key projection whose weight is "
                "zero, leaving its bias): the keys' first gradient makes them differ"), False
    if small:
        return (f"the scores are tiny: {', '.join(small)} drawn far smaller than its fan-in "
                "asks"), False
    return ("the scores are tiny, though the projections inside the attention are drawn at a "
            "usual scale: what feeds the queries and keys is tiny on these inputs (look upstream, "
            "e.g. a norm's gain drawn near 0)"), False


def _small_layers(model: "AnalysedModel", module: str) -> list[str]:
    """Weights inside ``module`` drawn far below the scale their fan-in asks: an RMS under 1%
    of ``1/sqrt(fan_in)``."""
    names = []
    for name, layer in model.layers.items():
        if module and not name.startswith(module + "."):
            continue
        stats = layer.stats("weight")
        if stats is None or not stats.fan_in or stats.numel == stats.fan_in:
            continue  # unknown, or a 1-d weight (a norm's gain)
        rms = math.sqrt(stats.std ** 2 + stats.mean ** 2)
        if rms < 0.01 / math.sqrt(stats.fan_in):
            names.append(f"{name}.weight (RMS {rms:.3g}, where 1/sqrt(fan-in) is "
                         f"{1 / math.sqrt(stats.fan_in):.3g})")
    return names[:4]


def _zero_layers(model: "AnalysedModel", module: str) -> list[str]:
    """Layers inside ``module`` whose weight is all zero (what made a projection zero)."""
    names = []
    for name, layer in model.layers.items():
        if module and not name.startswith(module + "."):
            continue
        value = layer.value("weight")
        if value is not None and value.known and value.numel and value.constant() == 0.0:
            names.append(f"{name}.weight")
    return names[:4]

