"""BL005: a classifier head whose starting predictions contradict the known class balance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from biaslint.errors import PriorsError
from biaslint.findings import Finding, Fix, Severity
from biaslint.fix.phrases import python_path, set_by
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    import torch

    from biaslint.analysis import AnalysedModel, Layer, Use


@dataclass(frozen=True)
class Head:
    """A layer whose output reaches the model output, and how it is read."""

    layer: "Layer"
    outputs: int  # number of classes (out_features / out_channels)
    squash: str | None  # "softmax", "log_softmax", "sigmoid" applied in the model, or None


class ClassPriorBias(Rule):
    code = "BL005"
    name = "classifier-bias-ignores-priors"
    severity = Severity.WARNING
    summary = "Classifier bias far from the log class priors, so the first steps only fix the bias"
    what_it_does = """\
Runs only when class priors are given (`--class-priors 0.9,0.09,0.01`, counts or `@file`). Finds
the classifier head: the layer whose output reaches the model's output through shape-only ops and
an optional softmax / log_softmax / sigmoid, with one output per class. Then it measures the
*excess initial loss*: the cross-entropy between the priors and the head's starting predictions
minus the entropy of the priors (the loss of predicting the priors exactly), in nats.

* softmax head (K > 1 outputs): predictions `softmax(bias)`; the ideal bias is `log(prior)` up
  to a constant.
* sigmoid head (K = 1 with two priors `negative,positive` or one positive rate, or
  `--head sigmoid` with K per-label positive rates in [0, 1]): predictions `sigmoid(bias)`; the ideal bias is `log(p / (1 - p))`,
  -4.6 for p = 0.01 (Lin et al., 2017). The excess is averaged over labels, like
  `BCEWithLogitsLoss`' default mean.

With example inputs (`--input-shape`) it also measures the excess of the actual initial logits on
those inputs, and how much of it the ideal bias removes (the excess with the current bias minus
the excess of the same logits with the ideal bias). A finding is a warning when the bias-only
excess or the part of the actual excess that the bias is responsible for is above
`max_excess_nats` (0.1). The spread the weights add to the logits is not this rule's business:
no bias can remove it. Priors whose length matches no head are an error (exit 2).
"""
    why_bad = """\
Before it has learned anything, a classifier can at best predict the class frequencies. A zero
or random bias predicts uniform classes instead, and the first hundreds of steps are spent
learning the priors through the bias; with rare classes the large loss from the frequent class
also swamps the signal (Lin et al., 2017, set the bias so the rare class starts at p = 0.01 for
exactly this reason; Karpathy's "Recipe for Training Neural Networks" calls it "init well"). The
excess in nats is exactly the part of the initial loss that the right bias removes.
"""
    fix_text = """\
Call `biaslint.init.prior_bias_(head, priors)` after building the model (`head="sigmoid"` for a
sigmoid head).
"""
    references = (
        "Lin et al., 2017, Focal Loss for Dense Object Detection, section 3.3 (prior init), "
        "https://arxiv.org/abs/1708.02002",
        "Karpathy, 2019, A Recipe for Training Neural Networks ('init well'), "
        "https://karpathy.github.io/2019/04/25/recipe/",
    )
    options = (
        # 0.1 nats is ~2% of log(100): small next to the loss changes of the first steps, but
        # a head 3x off a 0.9/0.1 prior already costs 0.37 nats, well above it.
        Option("max_excess_nats", 0.1, "Warn when the excess initial loss is above this (nats)."),
    )
    example_target = {"class_priors": (0.9, 0.09, 0.01)}
    bad_example = '''\
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
'''
    good_example = '''\
import torch.nn as nn

from biaslint.init import prior_bias_


def build():
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    prior_bias_(model[2], (0.9, 0.09, 0.01))
    return model
'''

    reads = frozenset({"graph", "values"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        # Without class priors there is nothing to compare a head with: the rule applies to no
        # layer (it is configured off, not unjudged).
        if context.class_priors is None:
            return []
        return [head.layer for head in find_heads(model)]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        priors = context.class_priors
        if priors is None:
            return
        limit = float(context.option(self, "max_excess_nats"))
        heads = find_heads(model)
        matched = [(h, kind) for h in heads
                   if (kind := _head_kind(h, context.head)) and _fits(h, kind, priors)]
        if heads and not matched:
            sizes = ", ".join(f"{python_path(h.layer.name)}: {h.outputs}" for h in heads[:4])
            raise PriorsError(
                f"--class-priors has {len(priors)} values but no classifier head matches "
                f"(output layers and their outputs: {sizes}); give one prior per output (a "
                "one-output sigmoid head takes negative,positive or one positive rate)")
        matched = [(h, kind) for h, kind in matched if h.layer.readable()]  # others: not judged
        logits = _actual_logits(model, [h for h, _ in matched]) if model.inputs_known else {}
        for head, kind in matched:
            finding = self._judge(head, kind, priors, limit, logits.get(head.layer.name))
            if finding is not None:
                yield finding

    def _judge(self, head: Head, kind: str, priors: Sequence[float], limit: float,
               logits: "torch.Tensor | None") -> Finding | None:
        import torch

        from biaslint.init import prior_logits

        layer = head.layer
        target = _targets(kind, priors, head.outputs)
        bias = layer.value("bias")
        expected = bias.expected() if bias is not None else None
        if bias is not None and expected is None:
            return None
        current = (expected.reshape(-1) if expected is not None
                   else torch.zeros(head.outputs, dtype=torch.float64))
        from_bias = excess_loss(current.unsqueeze(0), target, kind)
        ideal = prior_logits(_prior_values(kind, priors, head.outputs), kind, head.outputs)
        from_logits = fixable = None
        if logits is not None:
            # What the bias is responsible for on the actual logits: the excess now, minus the
            # excess with the same logits but the ideal bias in place of the current one. The
            # rest comes from the spread the weights add, which no bias can remove (BL003's
            # business), so it is not reported here.
            from_logits = excess_loss(logits, target, kind)
            swapped = logits.double() - current + ideal
            fixable = from_logits - excess_loss(swapped, target, kind)
        if from_bias <= limit and (fixable is None or fixable <= limit):
            return None
        path = python_path(layer.name)
        head_arg = "" if kind == "softmax" else ", head='sigmoid'"
        call = layer.init_of("bias")
        set_by_user = (f" (set by {set_by(call)})" if call is not None and call.by_user
                       and call.location is not None else "")
        data: dict[str, Any] = {"head": kind, "excess_from_bias": from_bias,
                                "excess_from_logits": from_logits,
                                "excess_fixable_on_logits": fixable, "outputs": head.outputs}
        what = "has no bias" if bias is None else f"bias{set_by_user}"
        actual = ("" if from_logits is None or fixable is None else
                  f"; on the example inputs the actual initial logits give {from_logits:.3g}, "
                  f"of which the ideal bias removes {fixable:.3g}")
        message = (f"{kind} classifier {what} gives an excess initial loss of "
                   f"{from_bias:.3g} nats over the prior entropy (limit {limit:g}){actual}; "
                   f"the ideal bias is {_abbrev(ideal)}")
        if bias is None:
            fix = Fix(title="Build the head with bias=True, then set it to the log priors",
                      code=f"biaslint.init.prior_bias_({path}, priors{head_arg})")
        else:
            fix = Fix(title="Set the bias to the log class priors",
                      code=f"biaslint.init.prior_bias_({path}, {_priors_literal(priors)}"
                           f"{head_arg})")
        return self.finding(layer, message, parameter="bias", fix=fix, data=data)


# -- the quantities --------------------------------------------------------------------------

def excess_loss(logits: "torch.Tensor", target: "torch.Tensor", kind: str) -> float:
    """Mean cross-entropy(prior, prediction) minus entropy(prior), in nats, over rows of logits.

    ``logits`` is (N, K); ``target`` is the K prior probabilities (softmax) or the K positive
    rates (sigmoid, averaged over labels).
    """
    import torch
    import torch.nn.functional as F

    z = logits.double().reshape(-1, logits.shape[-1])
    p = target.double()
    if kind == "softmax":
        logq = F.log_softmax(z, dim=-1)
        mask = p > 0
        cross = -(p[mask] * logq[:, mask]).sum(dim=-1).mean()
        entropy = -(p[mask] * p[mask].log()).sum()
        return max(0.0, float(cross - entropy))
    rates = p.clamp(0.0, 1.0)
    cross = -(rates * F.logsigmoid(z) + (1 - rates) * F.logsigmoid(-z)).mean()
    entropy = -(torch.xlogy(rates, rates) + torch.xlogy(1 - rates, 1 - rates)).mean()
    return max(0.0, float(cross - entropy))


def _prior_values(kind: str, priors: Sequence[float], outputs: int) -> Sequence[float]:
    if kind == "sigmoid" and not (outputs == 1 and len(priors) == 2):
        return getattr(priors, "raw", priors)  # per-label rates, as the user gave them
    return priors


def _targets(kind: str, priors: Sequence[float], outputs: int) -> "torch.Tensor":
    import torch

    if kind == "sigmoid":
        if outputs == 1 and len(priors) == 2:
            return torch.tensor([priors[1] / (priors[0] + priors[1])], dtype=torch.float64)
        return torch.tensor(list(_prior_values(kind, priors, outputs)), dtype=torch.float64)
    return torch.tensor(list(priors), dtype=torch.float64)


def _fits(head: Head, kind: str, priors: Sequence[float]) -> bool:
    if kind == "sigmoid" and head.outputs == 1:
        raw = getattr(priors, "raw", priors)
        return len(priors) == 2 or (len(raw) == 1 and 0 <= raw[0] <= 1)
    if kind == "sigmoid":
        raw = getattr(priors, "raw", priors)
        if len(raw) == head.outputs and any(v > 1 for v in raw):
            raise PriorsError(f"--class-priors: a multi-label sigmoid head ({head.layer.name}, "
                              f"{head.outputs} outputs) needs per-label positive rates in [0, 1], "
                              "not counts")
        return len(raw) == head.outputs
    return len(priors) == head.outputs


def _head_kind(head: Head, requested: str | None) -> str | None:
    if requested in ("softmax", "sigmoid"):
        return requested
    if head.squash == "sigmoid":
        return "sigmoid"
    if head.squash in ("softmax", "log_softmax"):
        return "softmax"
    return "softmax" if head.outputs > 1 else "sigmoid"


def _abbrev(values: "torch.Tensor", shown: int = 4) -> str:
    items = [f"{float(v):.2f}" for v in values[:shown]]
    more = f", ... ({len(values)} values)" if len(values) > shown else ""
    return "[" + ", ".join(items) + more + "]"


def _priors_literal(priors: Sequence[float]) -> str:
    values = list(getattr(priors, "raw", priors))
    if len(values) > 6:
        return "priors"
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ("," if len(values) == 1 else "") + ")"


# -- finding the head ----------------------------------------------------------------------------

def find_heads(model: "AnalysedModel") -> list[Head]:
    """Layers (Linear, ConvNd, Bilinear) whose output reaches the root graph's output through
    shape-only ops and at most one softmax / log_softmax / sigmoid."""
    import torch.nn as nn

    heads: list[Head] = []
    for layer in model.layers.values():
        module = layer.module
        if isinstance(module, (nn.Linear, nn.Bilinear)):
            outputs = module.out_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            outputs = module.out_channels
        else:
            continue
        if layer.name == "":
            heads.append(Head(layer, outputs, None))  # the model is the head itself
            continue
        for use in model.calls_of(layer.name):
            if use.part.qualname != "":
                continue  # the output of a sub-graph is not the model's output
            squash = _reaches_output(model, use)
            if squash is not False:
                heads.append(Head(layer, outputs, squash or None))
                break
    return heads


def _reaches_output(model: "AnalysedModel", use: "Use") -> str | bool | None:
    """None when the value reaches the output directly, the squash name when through one, False
    when it does not reach the output."""
    from biaslint.analysis.ops import activation_kind, softmax_kind

    for consumer in model.consumers_of(use):
        if consumer.node.op == "output":
            return None
        squash = softmax_kind(consumer) or (
            "sigmoid" if activation_kind(consumer) == "sigmoid" else None)
        if squash and any(c.node.op == "output" for c in model.consumers_of(consumer)):
            return squash
    return False


def _actual_logits(model: "AnalysedModel", heads: list[Head]) -> dict[str, "torch.Tensor"]:
    """Each head's actual initial output on the example inputs, flattened to (rows, classes)."""
    import torch.nn as nn

    outputs = model.real_outputs([head.layer.name for head in heads])
    logits = {}
    for name, out in outputs.items():
        # a conv's classes are its channel axis; a Linear's are already last ((B, T, V))
        conv = isinstance(model.layers[name].module, nn.modules.conv._ConvNd)
        out = out.movedim(1, -1) if out.dim() > 2 and conv else out
        logits[name] = out.reshape(-1, out.shape[-1]) if out.dim() > 1 else out.reshape(1, -1)
    return logits
