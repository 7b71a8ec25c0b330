"""BL009: the initial loss is far above chance, because the logits start too large."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Option, Rule, RuleContext
from biaslint.rules.bl005_class_prior_bias import Head, find_heads

if TYPE_CHECKING:
    import torch

    from biaslint.analysis import AnalysedModel, Layer

# Output layers named like these (last name component) are read as classifiers.
CLASSIFIER_NAMES = frozenset({"fc", "classifier", "head", "lm_head", "cls", "logits", "score",
                              "classification_head", "output_layer", "decoder"})


class InitialLossAboveChance(Rule):
    code = "BL009"
    name = "initial-loss-above-chance"
    severity = Severity.WARNING
    summary = "Initial cross-entropy far above log(C): the logits start too large"
    what_it_does = """\
Runs the model once on the example inputs and reads the classifier's (or language model's)
actual initial logits. With uniform labels (no priors) the expected cross-entropy of a model is
at least `log C`, reached when its logits are equal; the rule measures it exactly, as the mean
over rows of `logsumexp(z) - mean(z)` (softmax heads; `mean(softplus(z)/2 + softplus(-z)/2)`
against `log 2` for sigmoid heads), and flags an excess over `log C` above `max_excess_nats`. It
reports the loss, `log C`, the logits' standard deviation, and what sets their scale: the head
weight's gain `rms(W)*sqrt(fan_in)` and its input's rms, naming the embedding when the head's
weight is tied to one.

A classifier is an output layer followed by a softmax/log_softmax/sigmoid in the model, one whose
width is an embedding's vocabulary (a language-model head), one named like a head (`fc`,
`classifier`, `head`, `lm_head`, ...), or any output layer with two or more outputs when
`--class-priors` or `--head` is given (pass `--head softmax` for a classifier named otherwise).
Without example inputs there is no forward to measure and the rule does not run. With class priors, BL005 owns the bias: BL009 then measures only what the logits' spread
adds (each class's mean offset over the rows removed), so one mistake is reported once.
"""
    why_bad = """\
"Verify loss @ init" (Karpathy, 2019): a freshly initialized classifier should score about
`log C`. Far above it, the logits are large and confidently wrong: the first hundreds of steps
only shrink them (the "hockey stick" loss curve), softmax gradients are saturated, and with a
learning rate tuned for a sane init the run can diverge. Common causes: head weights drawn with
std 1 instead of ~1/sqrt(fan_in), an N(0, 1) embedding (`nn.Embedding`'s default) tied to the
output head, a missing final normalization before the head.
"""
    fix_text = """\
Draw the head's weight small (std ~ 1/sqrt(fan_in) times 1/rms of its input, or zero it as many
classifiers do), initialize a tied embedding with std ~0.02, or normalize the head's input.
"""
    references = (
        "Karpathy, 2019, A Recipe for Training Neural Networks (verify loss @ init), "
        "https://karpathy.github.io/2019/04/25/recipe/",
    )
    options = (
        Option("max_excess_nats", 0.5, "Flag an initial loss more than this above log(C)."),
    )
    bad_example = '''\
import torch
import torch.nn as nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU())
        self.head = nn.Linear(256, 10)
        nn.init.normal_(self.head.weight, std=1.0)  # logits with std ~10: loss ~20 nats, not 2.3

    def forward(self, x):
        return self.head(self.body(x))


def build():
    return Classifier(), torch.randn(32, 64)
'''
    good_example = '''\
import torch
import torch.nn as nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU())
        self.head = nn.Linear(256, 10)  # PyTorch's default init: loss ~log(10) at the start

    def forward(self, x):
        return self.head(self.body(x))


def build():
    return Classifier(), torch.randn(32, 64)
'''

    reads = frozenset({"graph", "values", "forward"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        if not model.inputs_known:
            return []  # no forward to measure: the rule needs example inputs (README)
        return [head.layer for head in classifier_heads(model, context)]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        if not model.inputs_known:
            return
        limit = float(context.option(self, "max_excess_nats"))
        heads = classifier_heads(model, context)
        outputs = model.real_outputs([h.layer.name for h in heads])
        inputs = model.real_inputs([h.layer.name for h in heads])
        for head in heads:
            logits = outputs.get(head.layer.name)
            if logits is None or not logits.is_floating_point():
                continue
            finding = self._judge(model, head, _rows(head, logits), inputs.get(head.layer.name),
                                  context, limit)
            if finding is not None:
                yield finding

    def _judge(self, model: "AnalysedModel", head: Head, logits: "torch.Tensor",
               fed: "torch.Tensor | None", context: RuleContext, limit: float) -> Finding | None:
        kind = _kind(head, context)
        classes = 2 if kind == "sigmoid" else head.outputs
        chance = math.log(classes)
        z = logits.double()
        if context.class_priors is not None and z.shape[0] > 1:
            z = z - z.mean(dim=0, keepdim=True)  # BL005 owns the per-class offsets (the bias)
        loss = uniform_label_loss(z, kind)
        excess = loss - chance
        if not excess > limit:
            return None
        layer = head.layer
        std = float(logits.double().std()) if logits.numel() > 1 else 0.0
        weight = layer.value("weight")
        tensor = layer.param("weight")
        gain = None
        if weight is not None and weight.known and tensor is not None and tensor.dim() >= 2:
            from biaslint.analysis import fan_in_out

            fan_in, _ = fan_in_out(layer.module, "weight", tensor)
            gain = math.sqrt(weight.mean_square(sample=1 << 14)) * math.sqrt(fan_in)
        else:
            fan_in = 0
        rms = float(fed.double().pow(2).mean().sqrt()) if fed is not None and fed.numel() else None
        parts = []
        if gain is not None:
            parts.append(f"the head weight's gain rms(W)*sqrt(fan_in) = {gain:.3g}")
        tied = [n for n in model.tied_names(layer.name, "weight")
                if n != (f"{layer.name}.weight" if layer.name else "weight")]
        if tied:
            parts[-1:] = [(parts[-1] if parts else "the head weight") +
                          f" (tied to {tied[0]}: that embedding's init sets it)"]
        if rms is not None:
            hint = " (not normalized: a final norm before the head would bring it to ~1)" \
                if rms > 3 else ""
            parts.append(f"its input's rms {rms:.3g}{hint}")
        scale = " times ".join(parts) if parts else "the head"
        part = "the logits' spread (BL005 owns the bias) adds" if context.class_priors is not None \
            else "is"
        message = (
            f"initial cross-entropy with uniform labels {part} {loss:.3g} nats, {excess:.3g} above "
            f"log({classes}) = {chance:.3g} (limit {limit:g}): the logits start with std "
            f"{std:.3g}, confidently wrong, and the first steps are spent shrinking them; their "
            f"scale is {scale}")
        path = python_path(layer.name)
        if tied:
            code = f"nn.init.normal_({python_path(tied[0].rsplit('.', 1)[0])}.weight, std=0.02)"
            title = "Initialize the tied embedding small"
        elif fan_in and rms:
            target = 1.0 / (rms * math.sqrt(fan_in))
            code = f"nn.init.normal_({path}.weight, std={target:.3g})  # or nn.init.zeros_"
            title = "Draw the head's weight so the logits start near std 1"
        else:
            code = f"nn.init.zeros_({path}.weight)"
            title = "Start the head at zero logits"
        data: dict[str, Any] = {"loss": loss, "chance": chance, "excess": excess,
                                "logit_std": std, "gain": gain, "input_rms": rms,
                                "classes": classes}
        return self.finding(layer, message, parameter="weight", data=data,
                            fix=Fix(title=title, code=code, safe=False))


def uniform_label_loss(z: "torch.Tensor", kind: str) -> float:
    """The expected cross-entropy over uniformly drawn labels, exactly, averaged over rows."""
    import torch
    import torch.nn.functional as F

    if kind == "sigmoid":
        return float((0.5 * (F.softplus(z) + F.softplus(-z))).mean())
    return float((torch.logsumexp(z, dim=-1) - z.mean(dim=-1)).mean())


def classifier_heads(model: "AnalysedModel", context: RuleContext) -> list[Head]:
    import torch.nn as nn

    vocab = {m.num_embeddings for m in model.model.modules() if isinstance(m, nn.Embedding)}
    heads = []
    for head in find_heads(model):
        last = head.layer.name.rsplit(".", 1)[-1]
        if head.outputs < 2 and head.squash != "sigmoid" and context.head != "sigmoid":
            continue
        if context.class_priors is not None or context.head is not None or head.squash or (
                isinstance(head.layer.module, nn.Linear) and head.outputs in vocab) or \
                last in CLASSIFIER_NAMES:
            heads.append(head)
    return heads


def _kind(head: Head, context: RuleContext) -> str:
    if context.head in ("softmax", "sigmoid"):
        return context.head
    return "sigmoid" if head.squash == "sigmoid" or head.outputs == 1 else "softmax"


def _rows(head: Head, out: "torch.Tensor") -> "torch.Tensor":
    """(rows, classes): a Linear's classes are its last axis, a conv's its channel axis."""
    import torch.nn as nn

    if isinstance(head.layer.module, nn.modules.conv._ConvNd) and out.dim() > 2:
        out = out.movedim(1, -1)
    return out.reshape(-1, out.shape[-1]) if out.dim() > 1 else out.reshape(1, -1)
