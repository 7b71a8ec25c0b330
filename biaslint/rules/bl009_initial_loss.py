"""BL009: the initial loss is far above chance, because the logits start too large."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Option, Rule, RuleContext
from biaslint.rules.bl005_class_prior_bias import (
    excess_loss,
    fits_priors,
    head_name,
    loss_excess,
    prior_targets,
    prior_values,
)

if TYPE_CHECKING:
    import torch

    from biaslint.analysis import AnalysedModel, Layer
    from biaslint.analysis.heads import Head

# Output layers named like these (last name component, indices of a container skipped) are read
# as classifiers.
CLASSIFIER_NAMES = frozenset({"fc", "classifier", "head", "lm_head", "cls", "logits", "score",
                              "classification_head", "output_layer", "decoder"})


class InitialLossAboveChance(Rule):
    code = "BL009"
    name = "initial-loss-above-chance"
    severity = Severity.WARNING
    summary = "Initial cross-entropy far above log(C): the logits start too large"
    what_it_does = """\
Runs the model once on the example inputs and reads the classifier's (or language model's)
actual initial logits `z`. Before it has looked at the input, the best a model can do is predict
the distribution its labels are drawn from; the rule measures, exactly, the expected
cross-entropy with labels drawn from that distribution `r`, minus its entropy `H(r)` (the loss
of predicting `r` exactly): the mean over rows of `KL(r || softmax(z))`, or the mean over labels
of the binary cross-entropy minus `H(r)` for sigmoid heads. It flags an excess above
`max_excess_nats`. Which `r`:

* `--class-priors` given: the priors. BL005 owns the bias, so the ideal bias `log(prior)` is put
  in place of the head's own before measuring: what is left is what the weights' spread adds,
  and one mistake is reported once.
* no priors, and a bias someone chose (set by `biaslint.init.prior_bias_`, `copy_`, an
  assignment; not drawn at random, not constant): the distribution that bias encodes,
  `softmax(bias)` (`sigmoid(bias)` per label). A bias that carries priors is not "confidently
  wrong"; the excess is what the weights add to the loss the bias alone gives.
* otherwise (a drawn, default or constant bias, or none): uniform labels, against `log C`.

It reports the loss, the baseline, the logits' standard deviation, and what sets their scale:
the head weight's gain `rms(W)*sqrt(fan_in)` and its input's rms, naming the embedding when the
head's weight is tied to one. Before reporting, it computes the same loss again with torch's
`F.cross_entropy` (soft labels `r`) on what the model *returns* (the graph's output that holds
the logits, the model's softmax or sigmoid undone); an excess that measurement does not show is
not reported but counted as a disagreement in the rule's record. The fix is measured too: the
suggested draw is applied to a copy of the weight on the head's recorded input, and when it
would not lower the excess the fix is `zeros_` instead.

A classifier is an output layer followed by a softmax/log_softmax/sigmoid in the model, one whose
width is an embedding's vocabulary (a language-model head), one named like a head (`fc`,
`classifier`, `head`, `lm_head`, ...), or any output layer with two or more outputs when
`--class-priors` or `--head` is given (pass `--head softmax` for a classifier named otherwise).
Logits computed from an `nn.Embedding`'s table, tied or not (`x @ emb.weight.T`,
`F.linear(x, emb.weight)`, `torch.matmul(x, emb.weight.t())`, an einsum), are found in the
graph and judged too, naming the embedding. An output layer it cannot tell is a classifier is
listed in the rule's record as not judged, with what would have it judged. Without example
inputs there is no forward to measure and the rule does not run.

On the meta device (`--device meta`: no values, the init laws instead) it judges a head from
the laws where they settle the loss: a `Linear` head (or an output table) whose weight is drawn
independently entry by entry around 0 (`normal`, `uniform`, `trunc_normal`), not tied to a
table its input is looked up in, and whose input comes straight from a `LayerNorm`, `RMSNorm`
or a written-out RMS norm (`weight * x * rsqrt(mean(x**2) + eps)`, as transformers' Llama-style
models write it) with a constant weight and bias. Each row of such an input has rms at most
`sqrt(weight**2 + bias**2)`, exactly, and at least `sqrt(weight**2 / 2 + bias**2)` when the
norm's input variance is at least its eps; a row of logits is then drawn
`N(b_k, std(W)**2 * fan_in * rms**2)`. The excess is computed over 256 draws of one row (48
for a vocabulary above 4096): the head passes when 95% of the draws at the highest rms are
within the limit, and is flagged when 95% at the lowest are above it, with the expected figures
(`measured_excess` and `excess_after_fix` are None: nothing is measured). Any other head is
listed as not judged, with what is missing: an input not straight from a norm, a tied weight,
a drawn weight of another law, an excess whose draws straddle the limit.
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
Draw the head's weight small (std ~ 1/sqrt(3 fan_in) times 1/rms of its input, the logit scale
PyTorch's default `nn.Linear` init gives a unit-scale input, or zero it as many classifiers do),
initialize a tied embedding with std ~0.02 (GPT-2's and BERT's
`initializer_range`), or normalize the head's input.
"""
    references = (
        "Karpathy, 2019, A Recipe for Training Neural Networks (verify loss @ init), "
        "https://karpathy.github.io/2019/04/25/recipe/",
        "Radford et al., 2019, GPT-2 (weights drawn with std 0.02), "
        "https://github.com/openai/gpt-2/blob/master/src/model.py",
    )
    # 0.5 nats: logits drawn i.i.d. with std s over many classes cost about s**2 / 2 above
    # log C (the second-order expansion of E[logsumexp(z)] - log C), so the limit sits at logits
    # of std ~1, the scale a fan-in-scaled head gives a unit-scale input.
    options = (
        Option("max_excess_nats", 0.5, "Flag an initial loss more than this above its baseline "
                                       "(log(C) for uniform labels)."),
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

    inputs = ("class_priors", "head", "target_mean")
    reads = frozenset({"graph", "values", "forward", "output", "laws"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        if not model.inputs_known:
            return []  # no forward to measure: the rule needs example inputs (README)
        heads, declined = candidate_heads(model, context)
        layers = {id(h.layer): h.layer for h in heads}
        layers.update({id(h.layer): h.layer for h, _ in declined})
        return list(layers.values())

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        from biaslint.analysis.heads import head_logits

        if not model.inputs_known:
            return {}
        heads, declined = candidate_heads(model, context)
        if model.on_meta():  # no forward: what the init laws do not settle is declined
            laws = law_verdicts(self, model, context)
            reasons = {h.layer.name: why for h, why in declined}
            reasons.update({name: f"on the meta device, {why}" for name, why in laws.items()
                            if isinstance(why, str)})
            return reasons
        # a table's products are paired with the graph's by order: when the forward's differ,
        # its logits are not known (the values are cached: no forward runs again here)
        tables = [h for h in heads if h.table is not None]
        unmeasured = {h.layer.name for h, (rows, _) in zip(tables, head_logits(model, tables))
                      if rows is None and model.forward_failure is None}
        judged = {h.layer.name for h in heads} - unmeasured
        reasons = {name: "its logits are a product with the embedding's table that the real "
                         "forward did not run as the graph records it, so they were not measured"
                   for name in unmeasured}
        reasons.update({h.layer.name: why for h, why in declined if h.layer.name not in judged})
        return reasons

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        if not model.inputs_known:
            return [], False
        heads, _ = candidate_heads(model, context)
        return [h.layer.name for h in heads if h.table is None], False

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.analysis.heads import head_logits

        if not model.inputs_known:
            return
        if model.on_meta():
            yield from (v for v in law_verdicts(self, model, context).values()
                        if isinstance(v, Finding))
            return
        limit = float(context.option(self, "max_excess_nats"))
        heads, _ = candidate_heads(model, context)
        for head, (logits, fed) in zip(heads, head_logits(model, heads)):
            if logits is None:
                continue
            finding = self._judge(model, head, logits, fed, context, limit)
            if finding is not None:
                yield finding

    def _judge(self, model: "AnalysedModel", head: Head, logits: "torch.Tensor",
               fed: "torch.Tensor | None", context: RuleContext, limit: float) -> Finding | None:
        from biaslint.analysis.heads import bias_values, returned_rows

        kind = _kind(head, context)
        ref = reference(model, head, kind, context)
        z = logits.double()
        excess = excess_loss(z + ref.shift, ref.target, kind)
        if not excess > limit:
            return None
        baseline = ref.entropy
        loss = excess + baseline
        versus = f"log({ref.classes}) = {baseline:.3g}" if ref.uniform else \
            f"the priors' entropy {baseline:.3g}" if ref.priors else \
            f"the entropy {baseline:.3g} of {kind}(bias), the loss of predicting it exactly"
        if ref.priors:
            claim = f"with labels drawn from the class priors and the ideal bias in place " \
                f"(BL005 owns the bias), the logits' spread gives an initial cross-entropy of " \
                f"{loss:.3g} nats, {excess:.3g} above {versus}"
        else:
            claim = f"initial cross-entropy with {ref.labels} is {loss:.3g} nats, " \
                f"{excess:.3g} above {versus}"
        # Measured before it is said: the same loss, computed with torch's cross-entropy on
        # what the model returns, must show the excess too.
        out = returned_rows(model, head, logits)
        rows = out if out is not None else z
        measured = loss_excess(rows + ref.shift, ref.target, kind)
        if not measured > limit:
            model.disagree(self.code, head.layer.name, claim,
                           f"the cross-entropy of what the model returns on the example inputs "
                           f"is {measured + baseline:.3g} nats, {measured:.3g} above (limit "
                           f"{limit:g})")
            return None
        layer = head.layer
        # With a bias that states the labels, what is judged is the spread around it
        bias = bias_values(model, head) if not ref.uniform else None
        spread = z - bias if bias is not None else z
        std = float(spread.std()) if spread.numel() > 1 else 0.0
        around = " around their bias" if bias is not None else ""
        rms = float(fed.double().pow(2).mean().sqrt()) if fed is not None and fed.numel() else None
        scale, tied, fan_in = _scale(model, head, rms)
        message = (
            f"{claim} (limit {limit:g}): the logits start with std {std:.3g}{around}, "
            f"confidently wrong, and the first steps are spent shrinking them; their scale is "
            f"{scale}")
        title, code, after = _fix(model, head, tied, fan_in, rms, ref, kind, excess, fed)
        data: dict[str, Any] = {"loss": loss, "chance": baseline, "excess": excess,
                                "measured_excess": measured, "reference": ref.name,
                                "logit_std": std, "input_rms": rms, "classes": ref.classes,
                                "excess_after_fix": after}
        if head.table is not None:
            data["table"] = head.table
        return self.finding(layer, message, parameter="weight", data=data,
                            fix=Fix(title=title, code=code, safe=False,
                                    kind=FixKind.REPLACE_INIT))


@dataclass(frozen=True)
class Reference:
    """The labels the initial loss is judged against, and the loss of predicting them exactly.

    ``target``: the class probabilities (softmax) or per-label rates (sigmoid) labels are
    drawn from; ``shift``: added to the logits before judging (with class priors, it puts the
    ideal bias in place of the current one: the bias is BL005's)."""

    name: str  # "uniform", "bias" or "priors"
    labels: str  # how the message says it
    target: "torch.Tensor"
    shift: "torch.Tensor | float"
    entropy: float
    classes: int

    @property
    def uniform(self) -> bool:
        return self.name == "uniform"

    @property
    def priors(self) -> bool:
        return self.name == "priors"


def reference(model: "AnalysedModel", head: Head, kind: str, context: RuleContext) -> Reference:
    """What the initial loss is compared with: the loss of a model that predicts the label
    distribution before it has looked at the input (Karpathy's "verify loss @ init": log C for
    C balanced classes, the priors' entropy otherwise).

    * ``--class-priors`` given (and fitting the head): labels drawn from the priors. The bias is
      BL005's, so the ideal bias is put in place of the current one: what is left is what the
      weights' spread adds.
    * A bias someone chose (not drawn at random: ``prior_bias_``, ``copy_``, an assignment) that
      is not constant: labels drawn from the distribution it encodes, ``softmax(bias)`` (a
      sigmoid head: ``sigmoid(bias)`` per label). Such a bias states the priors; the loss above
      its own entropy is what the weights add to it.
    * Otherwise (a drawn or constant bias, or none): uniform labels, against ``log C``.
    """
    import torch

    from biaslint.analysis.heads import bias_layer, bias_values
    from biaslint.init import prior_logits

    classes = 2 if kind == "sigmoid" and head.outputs == 1 else head.outputs
    current = bias_values(model, head)
    zero = torch.zeros(head.outputs, dtype=torch.float64)
    priors = context.inputs["class_priors"]
    if priors is not None and fits_priors(head, kind, priors):
        target = prior_targets(kind, priors, head.outputs)
        ideal = prior_logits(prior_values(kind, priors, head.outputs), kind, head.outputs)
        shift = ideal - (current if current is not None else zero)
        return Reference("priors", "labels drawn from the class priors", target, shift,
                         _entropy(target, kind), classes)
    owner = bias_layer(model, head)
    chosen = owner is not None and current is not None and not owner[0].drawn(owner[1]) and \
        bool(current.max() > current.min())
    if chosen:
        target = torch.softmax(current, 0) if kind == "softmax" else torch.sigmoid(current)
        return Reference("bias", f"labels drawn from {kind}(bias) (the distribution its bias "
                                 "encodes)", target, 0.0, _entropy(target, kind), classes)
    target = torch.full((head.outputs,), 1.0 / head.outputs if kind == "softmax" else 0.5,
                        dtype=torch.float64)
    return Reference("uniform", "uniform labels", target, 0.0, _entropy(target, kind), classes)


def _entropy(target: "torch.Tensor", kind: str) -> float:
    import torch

    p = target.double()
    if kind == "softmax":
        return float(-torch.xlogy(p, p).sum())
    return float(-(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).mean())


def _scale(model: "AnalysedModel", head: Head, rms: float | None
           ) -> tuple[str, list[str], int]:
    """What sets the logits' scale, as the message says it; the other names of a tied weight;
    the weight's fan-in."""
    layer = head.layer
    weight = layer.value("weight")
    tensor = layer.param("weight")
    gain = None
    fan_in = 0
    if head.table is not None and tensor is not None:
        fan_in = int(tensor.shape[-1])  # the table's rows are the classes: (vocab, dim)
    elif weight is not None and weight.known and tensor is not None and tensor.dim() >= 2:
        from biaslint.analysis import fan_in_out

        fan_in, _ = fan_in_out(layer.module, "weight", tensor)
    if weight is not None and weight.known and fan_in:
        gain = math.sqrt(weight.mean_square(sample=1 << 14)) * math.sqrt(fan_in)
    parts = []
    if head.table is not None:
        lookup = "; tied: also its input lookup" if model.calls_of(layer.name) else ""
        parts.append((f"the gain rms(W)*sqrt(dim) = {gain:.3g} of " if gain is not None else "")
                     + head_name(head, lookup))
    elif gain is not None:
        parts.append(f"the head weight's gain rms(W)*sqrt(fan_in) = {gain:.3g}")
    tied = [n for n in model.tied_names(layer.name, "weight")
            if n != (f"{layer.name}.weight" if layer.name else "weight")]
    if tied and head.table is None:
        parts[-1:] = [(parts[-1] if parts else "the head weight") +
                      f" (tied to {tied[0]}: that embedding's init sets it)"]
    if head.table is not None and model.calls_of(layer.name):
        tied = tied or [f"{layer.name}.weight" if layer.name else "weight"]
    if rms is not None:
        hint = " (not normalized: a final norm before the head would bring it to ~1)" \
            if rms > 3 else ""
        parts.append(f"its input's rms {rms:.3g}{hint}")
    return (" times ".join(parts) if parts else "the head"), tied, fan_in


def _fix(model: "AnalysedModel", head: Head, tied: list[str], fan_in: int, rms: float | None,
         ref: Reference, kind: str, excess: float, fed: "torch.Tensor | None"
         ) -> tuple[str, str, float | None]:
    """The fix (title, code) and the excess it leaves, measured on the same input with the new
    weight drawn, where that can be done without running the model again (None otherwise). A
    drawn weight that would not lower the excess gives way to zeros, which start the logits at
    the bias: the reference's own loss, or (a drawn bias) close to it."""
    import torch

    layer = head.layer
    path = python_path(layer.name)
    tensor = layer.param("weight")
    # The logits' target std: 1/sqrt(3), what PyTorch's default nn.Linear init (uniform with
    # bound 1/sqrt(fan_in)) gives an input of rms 1. Over many classes that costs about
    # 1/6 nats above the baseline (s**2 / 2), a third of the default limit: logits of std 1
    # would land on the limit itself, and the re-lint could fire again.
    target = 1.0 / math.sqrt(3.0)
    if tied:
        # GPT-2's and BERT's initializer_range (std 0.02), or less when even that gives logits
        # above the target std at this width
        std = 0.02 if not (fan_in and rms) else \
            min(0.02, target / (rms * math.sqrt(fan_in)))
        code = f"nn.init.normal_({python_path(tied[0].rsplit('.', 1)[0])}.weight, std={std:.3g})"
        return "Initialize the tied embedding small", code, None
    if not (fan_in and rms) or tensor is None:
        return "Start the head at zero logits", f"nn.init.zeros_({path}.weight)", None
    std = target / (rms * math.sqrt(fan_in))
    after_logits = None
    if not model.on_meta():  # on meta nothing runs: a drawn weight (GBs for an LLM) is waste
        drawn = torch.randn(tuple(tensor.shape), generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64) * std
        if head.table is not None:
            after_logits = _table_logits(model, head, fed, drawn) if fed is not None else None
        else:
            after_logits = model.rerun(layer.name, {"weight": drawn.to(tensor.dtype)})
    after = None
    if after_logits is not None:
        rows = _rows(head, after_logits)
        after = excess_loss(rows.double() + ref.shift, ref.target, kind)
    if after is not None and not after < excess:
        # zero weights leave the bias alone: the logits are the bias on every row
        return "Start the head at zero logits", f"nn.init.zeros_({path}.weight)", None
    code = f"nn.init.normal_({path}.weight, std={std:.3g})  # or nn.init.zeros_"
    what = "the head's weight" if head.table is None else "the output table"
    return f"Draw {what} so the logits start at the scale of PyTorch's default init", code, after


def _table_logits(model: "AnalysedModel", head: Head, fed: "torch.Tensor",
                  table: "torch.Tensor") -> "torch.Tensor | None":
    """The logits a different table would give on the same features (``x @ table.T``, plus the
    head's bias), or None when the features do not match the table's width."""
    from biaslint.analysis.heads import bias_values

    if fed.shape[-1] != table.shape[-1]:
        return None
    logits = fed.double() @ table.T
    bias = bias_values(model, head)
    return logits + bias if bias is not None else logits


def candidate_heads(model: "AnalysedModel", context: RuleContext
                    ) -> tuple[list[Head], list[tuple[Head, str]]]:
    """The heads BL009 judges as classifiers, and the output layers it cannot tell are one, each
    with why (said in the rule's record, never skipped silently). A regression head (``--target-
    mean``: BL008's) is neither."""
    import torch.nn as nn

    from biaslint.analysis.heads import find_heads

    vocab = model.embedding_sizes()
    heads: list[Head] = []
    declined: list[tuple[Head, str]] = []
    for head in find_heads(model, tables=True):
        if head.table is not None:
            heads.append(head)  # a product with a vocabulary's table computes its logits
            continue
        # the layer's name, or the container's it is indexed in (mobilenet's classifier.3)
        named = [part for part in head.layer.name.split(".") if not part.isdigit()]
        last = named[-1] if named else ""
        given = context.inputs
        if head.squash is None and given["target_mean"] is not None and given["head"] is None:
            continue  # a regression head, judged by BL008
        if head.outputs < 2 and head.squash != "sigmoid" and given["head"] != "sigmoid":
            declined.append((head, "one output and no sigmoid in the model: a regression "
                                   "output or a binary logit; pass --head sigmoid to judge it "
                                   "as a binary classifier"))
            continue
        if given["class_priors"] is not None or given["head"] is not None or head.squash or (
                isinstance(head.layer.module, nn.Linear) and head.outputs in vocab) or \
                last in CLASSIFIER_NAMES or _given_priors(head):
            heads.append(head)
        else:
            declined.append((head, f"an output layer with {head.outputs} outputs, no softmax or "
                                   "sigmoid in the model and a name not read as a classifier's "
                                   f"({', '.join(sorted(CLASSIFIER_NAMES)[:4])}...); pass "
                                   "--head softmax (or sigmoid) to judge it as a classifier"))
    return heads, declined


def _given_priors(head: Head) -> bool:
    """The head's bias was set by ``biaslint.init.prior_bias_``: its author says it classifies."""
    call = head.layer.init_of("bias")
    return call is not None and call.location is not None and \
        call.location.function == "prior_bias_"


def _kind(head: Head, context: RuleContext) -> str:
    if context.inputs["head"] in ("softmax", "sigmoid"):
        return context.inputs["head"]
    return "sigmoid" if head.squash == "sigmoid" or head.outputs == 1 else "softmax"


def _rows(head: Head, out: "torch.Tensor") -> "torch.Tensor":
    """(rows, classes): a Linear's classes are its last axis, a conv's its channel axis."""
    import torch.nn as nn

    if isinstance(head.layer.module, nn.modules.conv._ConvNd) and out.dim() > 2:
        out = out.movedim(1, -1)
    return out.reshape(-1, out.shape[-1]) if out.dim() > 1 else out.reshape(1, -1)


# -- on the meta device: the initial loss from the init laws --------------------------------------

# The verdicts of one analysed model, kept in its ``__dict__``: ``declined`` and ``check`` read
# the same ones.
_LAWS_KEY = "_bl009_laws"
# Weight draws the excess is computed over (fewer for a wide vocabulary: each is one row).
_DRAWS = 256
_WIDE_DRAWS = 48


def law_verdicts(rule: InitialLossAboveChance, model: "AnalysedModel", context: RuleContext
                 ) -> dict[str, Finding | str | None]:
    """Per head (by layer name) on the meta device: its finding, None when the laws show the
    initial loss within the limit, or why the laws do not settle it."""
    found = model.__dict__.get(_LAWS_KEY)
    if found is None:
        limit = float(context.option(rule, "max_excess_nats"))
        heads, _ = candidate_heads(model, context)
        found = {}
        for head in heads:
            if head.layer.unreadable():
                continue  # an unknown law: the engine says it is not judged, and why
            if head.layer.name not in found:
                found[head.layer.name] = _from_laws(rule, model, head, context, limit)
        model.__dict__[_LAWS_KEY] = found
    return found


def _law_source(model: "AnalysedModel", head: Head) -> tuple[Any, Any, int] | str:
    """(the weight's value, the norm feeding the head, the contracted width), or why the laws do
    not give the logits' scale."""
    import torch.nn as nn

    from biaslint.rules.from_laws import normed

    module = head.layer.module
    if head.use is None:
        return "the model is the head itself: its input is the example input, not a norm's output"
    if head.table is not None:
        width = int(module.embedding_dim)
        operand = _table_operand(model, head)
        if operand is None:
            return "its logits' product with the embedding's table has no other operand read"
    elif isinstance(module, nn.Linear):
        width, operand = int(module.in_features), 0
    else:
        return (f"a {type(module).__name__} head: the scale of what it contracts is not known "
                "from the init laws")
    own = f"{head.layer.name}.weight" if head.layer.name else "weight"
    tied = [n for n in model.tied_names(head.layer.name, "weight") if n != own]
    if tied or (head.table is not None and model.calls_of(head.layer.name)):
        return (f"its weight {tied[0] if tied else own} is also read before the head (tied, "
                "or looked up), so its input need not be independent of it (an input token's "
                "own logit is larger): the laws do not give the logits' spread")
    source = normed(model, head.use, width, operand)
    if isinstance(source, str):
        return source
    return head.layer.value("weight"), source, width


def _table_operand(model: "AnalysedModel", head: Head) -> int | None:
    """Which tensor argument of the table product is the features (the one not reading the
    table)."""
    import torch.fx as fx

    from biaslint.analysis import Use, is_shape_only

    assert head.use is not None
    nodes = [a for a in head.use.node.args if isinstance(a, fx.Node)]
    for index, node in enumerate(nodes):
        current = node
        while is_shape_only(Use(head.use.part, current)) and current.args and \
                isinstance(current.args[0], fx.Node):
            current = current.args[0]
        if not (current.op == "get_attr" and head.use.part.full_name(str(current.target))
                == head.table):
            return index
    return None


def _offsets(model: "AnalysedModel", head: Head, ref: "Reference"
             ) -> "Callable[[int, torch.Generator], torch.Tensor | float] | str":
    """What is added to ``W x`` per draw of the weights: the ideal bias with priors (BL005
    owns the bias), the head's bias (exact, or drawn from its law each time), or 0."""
    import torch

    from biaslint.analysis.heads import bias_layer, bias_values

    if ref.priors:
        current = bias_values(model, head)
        ideal = ref.shift + (current if current is not None else 0.0)
        return lambda n, g: ideal
    owner = bias_layer(model, head)
    value = owner[0].value(owner[1]) if owner is not None else None
    if value is None:
        return lambda n, g: 0.0
    exact = value.exact()
    if exact is not None:
        fixed = exact.reshape(-1)
        return lambda n, g: fixed
    pieces = getattr(value, "pieces", None) or []
    if len(pieces) != 1 or not pieces[0].law.is_random:
        return "its bias is made of several init laws"
    law = pieces[0].law
    return lambda n, g: law.sample(n * head.outputs, g).reshape(n, head.outputs).to(torch.float64)


def _excesses(scale: float, classes: int, offsets: "Callable[..., Any]", ref: "Reference",
              kind: str) -> "torch.Tensor":
    """The excess loss of one row of logits ``N(0, scale**2) + offsets`` per draw."""
    import torch

    from biaslint.rules.bl005_class_prior_bias import excess_loss

    draws = _DRAWS if classes <= 4096 else _WIDE_DRAWS
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(draws, classes, generator=generator, dtype=torch.float64) * scale
    z = z + offsets(draws, generator)
    return torch.tensor([excess_loss(z[i:i + 1], ref.target, kind) for i in range(draws)],
                        dtype=torch.float64)


def _from_laws(rule: InitialLossAboveChance, model: "AnalysedModel", head: Head,
               context: RuleContext, limit: float) -> Finding | str | None:
    """The verdict on one head from the init laws: each logit is ``w_k . x + b_k`` with ``w_k``
    drawn i.i.d. around 0 and ``x`` a norm's output of known rms, so a row of logits is drawn
    ``N(b_k, std(W)**2 * width * rms**2)``. The excess over a row is computed over many draws;
    the finding needs it above the limit at the norm's lowest output (its input's variance at
    least its eps) in 95% of the draws, a pass below it at the highest (exact) in 95%."""
    from biaslint.rules.from_laws import drawn_weight

    source = _law_source(model, head)
    if isinstance(source, str):
        return source
    value, norm, width = source
    drawn = drawn_weight(value, width)
    if isinstance(drawn, str):
        return drawn
    if drawn.mean != 0:
        return f"its weight is drawn around {drawn.mean:g}, not 0: the logits share an offset"
    kind = _kind(head, context)
    ref = reference(model, head, kind, context)
    offsets = _offsets(model, head, ref)
    if isinstance(offsets, str):
        return offsets
    gain = drawn.std * math.sqrt(width)
    high = _excesses(gain * norm.high, head.outputs, offsets, ref, kind)
    low = _excesses(gain * norm.low, head.outputs, offsets, ref, kind)
    if float(high.quantile(0.95)) <= limit:
        return None
    if not float(low.quantile(0.05)) > limit:
        return (f"from the init laws its initial loss is {float(low.quantile(0.05)):.3g} to "
                f"{float(high.quantile(0.95)):.3g} nats above its baseline over draws of the "
                f"weights (the norm {norm.norm}'s output rms between {norm.low:.3g} and "
                f"{norm.high:.3g}), on both sides of the limit {limit:g}: build with values to "
                "measure it")
    return _law_finding(rule, model, head, context, ref, kind, float(high.mean()),
                        gain * norm.high, norm, width)


def _law_finding(rule: InitialLossAboveChance, model: "AnalysedModel", head: Head,
                 context: RuleContext, ref: "Reference", kind: str, excess: float,
                 std: float, norm: Any, width: int) -> Finding:
    """The finding the laws give, in the real forward's shape: the same keys, what is not
    measured None."""
    from biaslint.analysis.heads import bias_values
    from biaslint.rules.from_laws import LAWS_NOTE

    limit = float(context.option(rule, "max_excess_nats"))
    baseline = ref.entropy
    loss = excess + baseline
    versus = f"log({ref.classes}) = {baseline:.3g}" if ref.uniform else \
        f"the priors' entropy {baseline:.3g}" if ref.priors else \
        f"the entropy {baseline:.3g} of {kind}(bias), the loss of predicting it exactly"
    labels = "labels drawn from the class priors, the ideal bias in place (BL005 owns the " \
        "bias)" if ref.priors else ref.labels
    bias = bias_values(model, head)
    if ref.uniform and bias is not None and bias.numel() > 1:
        std = math.sqrt(std * std + float(bias.var(unbiased=False)))
    scale, tied, fan_in = _scale(model, head, norm.high)
    message = (
        f"expected initial cross-entropy with {labels} is {loss:.3g} nats, {excess:.3g} above "
        f"{versus} (limit {limit:g}; {LAWS_NOTE} {norm.describe()}, whose output rows have rms "
        f"{norm.high:.3g} when its input's variance is well above its eps, and the finding "
        f"holds down to rms {norm.low:.3g}): the logits start with std {std:.3g}"
        f"{' around their bias' if not ref.uniform else ''}, confidently wrong, and the first "
        f"steps are spent shrinking them; their scale is {scale}")
    title, code, _ = _fix(model, head, tied, fan_in, norm.high, ref, kind, excess, None)
    data: dict[str, Any] = {"loss": loss, "chance": baseline, "excess": excess,
                            "measured_excess": None, "reference": ref.name, "logit_std": std,
                            "input_rms": norm.high, "classes": ref.classes,
                            "excess_after_fix": None}
    if head.table is not None:
        data["table"] = head.table
    return rule.finding(head.layer, message, parameter="weight", data=data,
                        fix=Fix(title=title, code=code, safe=False, kind=FixKind.REPLACE_INIT))
