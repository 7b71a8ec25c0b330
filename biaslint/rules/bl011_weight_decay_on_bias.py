"""BL011: an optimizer that weight-decays biases, normalization parameters and embeddings."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Fix, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer
    from biaslint.analysis.optimizers import ParamGroup

# How each kind of parameter is named in a message, one and many.
_KINDS = {"bias": ("bias", "biases"), "norm": ("norm parameter", "norm parameters"),
          "embedding": ("embedding table", "embedding tables"),
          "1-d": ("other 1-d parameter (a gain or scale)", "other 1-d parameters (gains, scales)")}


class WeightDecayOnBias(Rule):
    code = "BL011"
    name = "weight-decay-on-bias-and-norm"
    severity = Severity.WARNING
    summary = "The optimizer weight-decays biases, norm parameters or embeddings"
    what_it_does = """\
Reads the optimizer the target gives with the model (a build that returns
`(model, example_inputs, optimizer)`, `biaslint.check(model, inputs, optimizer=opt)`, or the
trainer's optimizers in the Lightning callback) and, for every parameter group with a weight
decay above `min_weight_decay`, lists the parameters in it that the usual convention keeps out
of weight decay: biases, the gains and shifts of normalization layers, embedding tables (unless
`embeddings` is false) and other 1-d parameters (gains, scales). One finding per parameter
group, naming how many of each kind it decays. Without an optimizer the rule applies to
nothing.

This is a convention with a known effect, not a failure the rule measures: it does not train
the model. What it checks is exact: which parameters the group's decay acts on.
"""
    why_bad = """\
Weight decay pulls every parameter it acts on toward zero at every step, whatever the loss
says (`p -= lr * wd * p` in AdamW, the same through the gradient in SGD and Adam). On weight
matrices that is the intended regularization. On the rest it only removes what the model
learned: a normalization layer's gain decays toward 0 and shrinks the layer's output, a bias
loses the offset it fit, an embedding row of a rare token shrinks between its few updates.
Leaving biases and normalization parameters out of weight decay ("no bias decay") is a
standard part of training recipes (He et al., 2019, section 3.1; minGPT's and timm's optimizer
set-up), and it is easy to lose: `AdamW(model.parameters())` decays everything.
"""
    fix_text = """\
Give the optimizer two parameter groups, the weight matrices and kernels with the decay and the
rest without: `torch.optim.AdamW(biaslint.init.decay_groups(model, weight_decay=0.01), lr=...)`
(`decay_groups` splits them the way this rule does), or write the two groups yourself.
"""
    references = (
        "He, Zhang, Zhang, Zhang, Xie and Li, 2019, Bag of Tricks for Image Classification with "
        "Convolutional Neural Networks (section 3.1, no bias decay), "
        "https://arxiv.org/abs/1812.01187",
        "Loshchilov and Hutter, 2019, Decoupled Weight Decay Regularization, "
        "https://arxiv.org/abs/1711.05101",
        "minGPT's configure_optimizers (no decay for biases, LayerNorm and Embedding weights), "
        "https://github.com/karpathy/minGPT/blob/master/mingpt/model.py",
    )
    options = (
        Option("min_weight_decay", 0.0, "Judge the groups whose weight decay is above this."),
        Option("embeddings", True, "Count embedding tables among the parameters not to decay."),
    )
    bad_example = """\
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    return model, torch.randn(8, 16), optimizer
"""
    good_example = """\
import torch
import torch.nn as nn

import biaslint.init


def build():
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    groups = biaslint.init.decay_groups(model, weight_decay=0.05)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    return model, torch.randn(8, 16), optimizer
"""

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return []  # what it judges is the optimizer's groups, which it always reads whole

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        if not model.has_optimizer:
            return
        least = float(context.option(self, "min_weight_decay"))
        embeddings = bool(context.option(self, "embeddings"))
        for group in model.param_groups(embeddings):
            if group.weight_decay > least and group.kept:
                yield self._finding(model, group, embeddings)

    def _finding(self, model: "AnalysedModel", group: ParamGroup, embeddings: bool) -> Finding:
        first = group.kept[0][0]
        layer = model.layers[first.rpartition(".")[0]]
        how = "decoupled, as AdamW" if group.decoupled else "through the gradient"
        finding = self.finding(
            layer,
            f"{_group_name(group)} decays {_counted(group.kept)} with weight_decay="
            f"{group.weight_decay:g} ({how}): each is pulled toward zero every step, which no "
            f"loss asks for ({_some(group.kept)}); keep them out of weight decay (no bias "
            "decay, He et al., 2019)",
            fix=_fix(group, embeddings),
            data={"optimizer": group.optimizer, "param_group": group.index,
                  "weight_decay": group.weight_decay,
                  "parameters": [name for name, _ in group.kept]})
        return replace(finding, module="", module_type=group.optimizer,
                       location=model.construction_site("") or finding.location)


def _group_name(group: ParamGroup) -> str:
    which = f" #{group.position}" if group.position else ""
    return f"{group.optimizer}{which} param group {group.index}"


def _counted(kept: tuple[tuple[str, str], ...]) -> str:
    counts: dict[str, int] = {}
    for _, kind in kept:
        counts[kind] = counts.get(kind, 0) + 1
    parts = [f"{n} {_KINDS[kind][0 if n == 1 else 1]}" for kind, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _some(kept: tuple[tuple[str, str], ...], limit: int = 4) -> str:
    more = f" and {len(kept) - limit} more" if len(kept) > limit else ""
    return ", ".join(name for name, _ in kept[:limit]) + more


def _fix(group: ParamGroup, embeddings: bool) -> Fix:
    lr = f", lr={group.lr:g}" if group.lr is not None else ""
    extra = "" if embeddings else ", embeddings=False"
    return Fix(title="Split the parameters into a group with weight decay and one without",
               code=f"torch.optim.{group.optimizer}(biaslint.init.decay_groups(model, "
                    f"weight_decay={group.weight_decay:g}{extra}){lr})",
               manual="build the optimizer from these two groups (other settings as before)")
