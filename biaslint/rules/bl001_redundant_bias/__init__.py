"""BL001: a bias that a later normalization (or an attention softmax) cancels exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


class RedundantBias(Rule):
    code = "BL001"
    name = "redundant-bias"
    severity = Severity.WARNING
    summary = "Bias cancelled by a later normalization: dead parameters that never train"
    what_it_does = """\
Finds layer biases (`Linear`, `ConvNd`, `ConvTransposeNd`, and custom layers that add a 1-d
`bias` parameter) whose effect on the model is removed exactly, on every path, by a
normalization or an attention softmax further on. It follows the bias through the traced graph,
not through module order, tracking along which axes the bias's contribution is constant:

* **not reached by** `var`/`std` (and `var_mean`'s variance) over axes along which the
  contribution is constant: a shift moves the values and their mean alike;
* **kept by** sums with other tensors (residual connections), scaling by tensors that are
  constant along those axes, concatenation, max/average/adaptive pooling, interpolation,
  reshapes, permutes, flips, rolls, `rot90`, pixel (un)shuffle, channel shuffles, `tile`,
  `repeat_interleave`, `unfold` without padding, indexing, `narrow`, `index_select` and
  `gather`, 1x1 convs, linear layers, convs without zero padding, and the values of `sort`,
  `topk`, `cummax`/`cummin`, `median`, `kthvalue` and `quantile` taken along those axes;
* **broken by** nonlinearities, gates or any product with a tensor that varies along those axes
  (including rotary position embeddings), zero-padded convs (the border sees no bias), dropout
  with p > 0 and anything it does not know;
* **cancelled by** `BatchNorm` (training mode), `InstanceNorm`, `GroupNorm` with one channel
  per group, `LayerNorm`/`F.layer_norm` when the contribution is constant over every
  normalized axis, a hand-written centring `x - x.mean(dims, keepdim=True)` (or the mean of
  `torch.var_mean`, or `x` less its max, min, median, quantile or logsumexp, as a softmax
  written out with `exp` does) over axes along which it is constant, `torch.diff` along such an
  axis, and a softmax (or softmin) over an axis along
  which it is constant: in dot-product attention the key projection's bias shifts every
  score of a query by the same `q . b_k`, also after a causal mask filled with `-inf` (or any
  fill <= -1e9, such as `torch.finfo(dtype).min`), since masked scores weigh nothing either
  way.

A bias whose output also reaches anything un-normalized (a second consumer, a returned feature
map, a tensor it is written into with `out=` or an in-place op) is live and not reported. A bias
that also acts under another name (tied to another layer, aliased as another attribute) is
judged by the measurement alone, where there is one. One the forward reads directly
(`F.linear(x, self.qkv.weight, self.qkv.bias)`, as torchvision's Swin does) is followed from
there like a layer's output, on the meta device too; its fix is a note, since `bias=False`
would break that read. Code that a module handed over in eval mode runs (where
`self.training` was False while tracing) is not followed. `RMSNorm` subtracts no mean and
cancels nothing. A fused
query/key/value bias (`nn.MultiheadAttention.in_proj_bias`, GPT-2's `c_attn`, timm's `qkv`)
gets an **info** finding naming its key slice, since no constructor flag removes only that
slice. torch's own transformer layers (`nn.TransformerEncoderLayer` and its kin) are followed
inside, so the key slices of their attentions are derived too.

With example inputs on real tensors the rule also *measures* (option `measure`, on by default):
with the model in training mode, degenerate parameters re-drawn, it differentiates random
projections of the outputs; a bias element with a zero gradient whose unit's weight still gets
one is shifted by a large random value and is reported only when no output moves. A cancellation
the walk derived is shifted once, on the example batch; one only the measurement found is
shifted with both signs, on the example batch and on a second one drawn like it, and again in
float64; when the training forward draws random masks (dropout, stochastic depth), also under
four more draws of them, since a mask that keeps a channel in every sample of one batch cancels
its bias for that draw alone. So a cancellation written with ops the walk does not know (a
softmax normalised without subtracting its max, a fused projection laid out per head, a softmax
behind an unfamiliar op) is found, the finding names where it was measured to happen and a note
names the op that stopped the walk; and a derived claim the measurement does not bear out is not
reported but counted (`disagreements` in the JSON). A bias whose layer's weight gets no gradient
either (a dead path) is not a cancellation and is listed in a note. The model is judged as it
trains (`BatchNorm` in training mode). Without example inputs only convolutions' outputs have a
known rank, so `Linear` layers are judged only when input shapes are given.
"""
    why_bad = """\
A normalization that subtracts a mean removes any offset that is the same across the axes it
averages over: BatchNorm computes `x + b - mean(x + b) = x - mean(x)` per channel, so a conv's
per-channel bias in front of it changes nothing (Ioffe and Szegedy, 2015, section 3.2). The
bias gets a zero gradient, never trains, and costs memory, compute and optimizer state. The same
holds for the key bias in dot-product attention: it adds one constant to all scores of a query,
which the softmax over the keys removes (Namazifar et al., 2023).

A normalization over axes along which the bias *varies* (a `Linear` followed by `LayerNorm`
over the same features) removes only the bias's mean: that bias still matters and is not
reported (set `report-partial` for an info note).
"""
    fix_text = """\
Construct the layer with `bias=False`; the normalization's own shift (`beta`) already provides
the learnable offset. The fix shows the recorded constructor call rewritten with `bias=False`.
It is marked safe for torch's own layers: in training mode the model computes the same
function, and in eval mode the running mean tracked the bias anyway. It is marked unsafe when
the same source line also builds layers whose bias matters (a loop or helper that adds the
normalization only sometimes, as torchvision's VGG does): pass `bias=False` only where the
normalization follows. Checkpoints saved with the bias need `strict=False` (or dropping the
key) when loaded into the fixed model; and a BatchNorm whose running mean was tracked with the
bias in place (a trained checkpoint) gives other eval-mode outputs without it until the running
statistics are re-estimated, so the fix is safe for the model as built, not for a checkpoint.
Safe means the same function of the parameters kept, not the same numbers: torch draws a bias's
initial values from the global random stream, so once the bias is gone every layer built after
it with a random init starts from other values in a seeded build (the distribution is the same;
a seeded run's weights and losses are not reproduced bit for bit). `--fix` says so when it
removes a bias. `biaslint --fix` applies the safe ones; `--unsafe-fixes` also the others.
"""
    references = (
        "Ioffe and Szegedy, 2015, Batch Normalization, section 3.2, "
        "https://arxiv.org/abs/1502.03167",
        "Namazifar et al., 2023, Role of Bias Terms in Dot-Product Attention, "
        "https://arxiv.org/abs/2302.08626",
        "PyTorch performance tuning guide: disable bias for convolutions directly followed by "
        "a batch norm, https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html",
    )
    options = (
        Option("report-partial", False,
               "Also report, at info level, biases whose mean (but not the rest) a "
               "normalization removes, e.g. Linear followed by LayerNorm over its features."),
        Option("measure", True,
               "With example inputs on real tensors, measure every bias with the bias screen "
               "(a forward, a backward, and a few forwards to confirm): it finds cancellations "
               "the graph walk does not know, and no derived claim is reported unmeasured. "
               "Off, the walk's verdicts stand alone (cheaper on very large models; a note "
               "says so)."),
    )
    bad_example = '''\
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Conv2d(3, 32, kernel_size=3, padding=1),  # bias=True by default
        nn.BatchNorm2d(32),  # subtracts the per-channel batch mean: the bias cancels
        nn.ReLU(),
    )
    return model, torch.randn(2, 3, 32, 32)
'''
    good_example = '''\
import torch
import torch.nn as nn


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, channels-last LayerNorm over the channels: the conv bias varies along
    the normalized axis, so only its mean is removed and the bias is not redundant."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv = nn.Linear(dim, 4 * dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        return self.pwconv(self.norm(y))


def build():
    model = nn.Sequential(
        nn.Conv2d(3, 32, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        ConvNeXtBlock(32),
    )
    return model, torch.randn(2, 3, 32, 32)
'''

    reads = frozenset({"graph"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        import torch.nn as nn

        from biaslint.rules.bl001_redundant_bias.check import has_checkable_bias

        return [layer for layer in model.layers.values()
                if has_checkable_bias(layer.module)
                or (isinstance(layer.module, nn.MultiheadAttention)
                    and getattr(layer.module, "in_proj_bias", None) is not None)]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.rules.bl001_redundant_bias.check import check

        return check(self, model, context)

