"""BL002: weights initialized to zero or to one constant value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Severity
from biaslint.rules.base import Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


class ZeroConstantWeight(Rule):
    code = "BL002"
    name = "zero-constant-weight"
    severity = Severity.ERROR
    summary = "Weights initialized to zero or one constant, so units stay clones or stay dead"
    what_it_does = """\
Finds weight matrices of `Linear`, `ConvNd`, `ConvTransposeNd`, `Bilinear`, `Embedding`, RNN
input weights and `MultiheadAttention` output projections whose every entry holds the same value
(most often zero), or whose units all have the same weight row (or one row scaled per unit), and
decides from the graph whether training can recover:

* **error** when it cannot: every unit computes the same value and the layer that consumes them
  is constant too, so the units also receive the same gradient and stay clones for good (in a
  grouped conv, the units of each group, which read the same input channels); or the
  weight is zero and every unit's bias is <= 0 in front of a ReLU, so the output and its gradient
  are zero for good (dead units). When only some units have a bias <= 0, those units are dead and
  the finding is a warning. The same holds through a normalization: a zero weight with no (or a
  zero) bias outputs exactly 0, BatchNorm, InstanceNorm, GroupNorm or LayerNorm of 0 is exactly
  their bias (beta), and a ReLU after a beta <= 0 is dead. (A GroupNorm or LayerNorm group with
  one live unit passes gradient back to all of them, so only whole dead groups count.) The
  consumer that keeps clones clones may be reached through activations, pooling, a mean over
  the spatial axes or a flatten.
* **error** too when the units differ only by their biases, or only in the scale of one shared
  weight row (every row parallel), and the next layer weighs them alike: each unit is a function
  of the same weighted sum, their gradients differ only through the activation's slope, and
  trained they stay near-clones. Random biases do not tell such units apart in practice:
  measured on tanh, ReLU and GELU MLPs trained with SGD, the row-centred weight keeps 74-100% of
  its energy in two directions and the loss stays 550-70,000x that of a default-init twin.
  With a default-init next layer the same units are told apart (37-64%, a default layer 25-33%)
  and there is no finding.
* **warning** for zero filters inside a live layer: some units of a `Linear` or conv weight that
  is otherwise drawn have an all-zero row, and nothing brings their gradient back. A zero row
  outputs exactly its bias; in front of a ReLU a bias <= 0 (or none) outputs 0 and passes back
  0; through BatchNorm (training), InstanceNorm or a one-channel-per-group GroupNorm into a ReLU
  an exactly-zero channel (no bias, or a bias of 0) comes out as the norm's shift, dead where it
  is <= 0. The zero rows that do get a gradient (a positive bias, a constant bias the norm leaves
  a rounding residue of, any other consumer) recover and are not reported; the message counts
  them. Measured by training in `tests/test_bl002_rows.py`. On the meta device a drawn bias or
  shift does not say which rows die: the layer is listed as not judged.
* **warning** when learning only stalls: a zero hidden layer whose input comes only from earlier
  layers: those layers get no gradient until the zero weight has moved.
* **no finding** for the deliberate zero-init patterns: the output is summed with another path
  (the last layer of a residual branch, a LoRA up-projection), multiplies or modulates another
  tensor (adaLN-Zero gates), or is the model's output (a classifier head); and for normalization
  weights of any value.
* **error** when the other factor of that product is zero too: a zero layer (zero or no bias)
  whose output is only multiplied by the output of another such layer (SwiGLU's gate and up
  projections, attention's queries and keys, both zero). Each factor is exactly 0 and passes
  the other a gradient of 0, so neither ever moves. One zero factor alone trains.

Expert weights stored as 3-d parameters (a mixture of experts' `gate_up_proj` / `down_proj`, or
a hand-written `(experts, in, out)` tensor) are judged too, expert by expert: which axis holds
the experts and which the units is read from the products the forward contracts them with
(`F.linear` of `w[e]`, `torch.bmm`, `torch.matmul`, a grouped matmul, an einsum). An all-zero
expert weight whose every product goes straight into a ReLU is an **error** (each expert's units
output 0 and pass back 0); a drawn one, whose units differ within every expert, passes. Another
constant one, or units alike within an expert, depends on the routed path around it, which the
rule does not follow there: it is listed as not judged, with the reason, as is an expert weight
whose products the graph does not show.

Raw 2-d weights the forward contracts itself (`F.linear(x, self.w)`, `x @ self.w`, an einsum,
`F.conv2d(x, self.kernel)`) are judged from those products: an all-zero one whose product (plus
a bias <= 0, or none) goes straight into a ReLU is an **error**; one whose product reaches the
output or a sum or product with another tensor is the deliberate pattern; another constant one
is listed as not judged, with the reason.
"""
    why_bad = """\
Gradient descent can only make two units different if something treats them differently. Units
with identical weights and biases compute the same value; if whatever consumes them weighs them
equally, their gradients are equal too, and every update keeps them equal. A 512-unit layer then
has the capacity of one unit. A zero weight in front of a ReLU with a non-positive bias is worse:
the ReLU outputs zero and passes back zero, so the layer never learns at all.
"""
    fix_text = """\
Initialize the weight with a random, fan-in-scaled init: `nn.init.kaiming_normal_` (He et al.,
2015) in front of ReLU-family activations, `nn.init.xavier_normal_` (Glorot and Bengio, 2010) in
front of tanh or sigmoid, or simply keep PyTorch's default. Keep zero init only where the output
is added to another path or is the model's output.
"""
    references = (
        "He et al., 2015, Delving Deep into Rectifiers, https://arxiv.org/abs/1502.01852",
        "Goyal et al., 2017, zero-init of the last BN gamma in each residual block, "
        "https://arxiv.org/abs/1706.02677",
        "Peebles and Xie, 2023, adaLN-Zero in DiT, https://arxiv.org/abs/2212.09748",
        "Hu et al., 2021, LoRA, https://arxiv.org/abs/2106.09685",
    )
    bad_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(),
        nn.Linear(64, 64), nn.Tanh(),
        nn.Linear(64, 10),
    )
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)  # every hidden unit starts, and stays, the same
        nn.init.zeros_(hidden.bias)
    return model
'''
    good_example = '''\
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)  # last layer of a residual branch: deliberate

    def forward(self, x):
        return x + self.fc2(self.fc1(x).relu())


def build():
    head = nn.Linear(64, 10)
    nn.init.zeros_(head.weight)  # classifier head: deliberate
    return nn.Sequential(nn.Linear(16, 64), Block(64), head)
'''

    reads = frozenset({"graph", "values"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        from biaslint.analysis.experts import expert_weights
        from biaslint.analysis.matrices import matrix_weights
        from biaslint.rules.bl002_zero_constant_weight.symmetry import weights_to_check

        experts = {w.layer.name for w in expert_weights(model)} | {
            w.layer.name for w in matrix_weights(model)}
        return [layer for layer in model.layers.values()
                if layer.name in experts or any(True for _ in weights_to_check(layer.module))]

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        from biaslint.rules.bl002_zero_constant_weight.check import (
            expert_verdicts,
            matrix_verdicts,
        )
        from biaslint.rules.bl002_zero_constant_weight.rows import dead_rows

        found = {v.layer.name: f"{v.pname} has {len(v.zero)} all-zero rows in front of a ReLU "
                               f"path, but {v.unjudged}" for v in dead_rows(model) if v.unjudged}
        for (name, _), verdict in [*expert_verdicts(self, model).items(),
                                   *matrix_verdicts(self, model).items()]:
            if isinstance(verdict, str):
                found.setdefault(name, verdict)
        return found

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.rules.bl002_zero_constant_weight.check import check

        return check(self, model, context)
