"""BL005: a classifier head whose starting predictions contradict the known class balance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from biaslint.errors import PriorsError
from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import python_path, set_by
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    import torch

    from biaslint.analysis import AnalysedModel, Layer
    from biaslint.analysis.heads import Head


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
  `--head sigmoid` with K per-label positive rates in [0, 1]): predictions `sigmoid(bias)`; the
  ideal bias is `log(p / (1 - p))`,
  -4.6 for p = 0.01 (Lin et al., 2017). The excess is averaged over labels, like
  `BCEWithLogitsLoss`' default mean.

Logits computed from an `nn.Embedding`'s table (`x @ emb.weight.T`, `F.linear(x, emb.weight,
b)`, an einsum, tied or not) are a head too, when the priors have one value per token: its bias
is the one added to the product (none: the fix adds one).

With example inputs (`--input-shape`) it also measures the excess of the actual initial logits on
those inputs, and how much of it the ideal bias removes (the excess with the current bias minus
the excess of the same logits with the ideal bias). A finding is a warning when the bias-only
excess or the part of the actual excess that the bias is responsible for is above
`max_excess_nats` (0.1). With example inputs the claim is measured before it is reported: the
part the ideal bias removes is computed again with torch's `F.cross_entropy` on what the model
returns; when that does not exceed the limit (the weights already put the logits on the priors,
say) the finding is not reported but counted as a disagreement in the rule's record. The spread
the weights add to the logits is not this rule's business: no bias can remove it. Priors whose
length matches no head are an error (exit 2).
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

    # "output": with example inputs, each claim is checked on the loss of what the model returns
    inputs = ("class_priors", "head")
    reads = frozenset({"graph", "values", "output"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        # Without class priors there is nothing to compare a head with: the rule applies to no
        # layer (it is configured off, not unjudged).
        from biaslint.analysis.heads import find_heads

        if context.inputs["class_priors"] is None:
            return []
        return list({id(h.layer): h.layer for h in find_heads(model, tables=True)}.values())

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        from biaslint.analysis.heads import find_heads

        if context.inputs["class_priors"] is None:
            return [], False
        return [h.layer.name for h in find_heads(model) if h.table is None], False

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.analysis.heads import find_heads, head_logits

        priors = context.inputs["class_priors"]
        if priors is None:
            return
        limit = float(context.option(self, "max_excess_nats"))
        heads = find_heads(model, tables=True)
        matched = [(h, kind) for h in heads
                   if (kind := _head_kind(h, context.inputs["head"]))
                   and fits_priors(h, kind, priors)]
        if heads and not matched:
            sizes = ", ".join(f"{head_name(h)}: {h.outputs}" for h in heads[:4])
            raise PriorsError(
                f"--class-priors has {len(priors)} values but no classifier head matches "
                f"(output layers and their outputs: {sizes}); give one prior per output (a "
                "one-output sigmoid head takes negative,positive or one positive rate)")
        matched = [(h, kind) for h, kind in matched if h.layer.readable()]  # others: not judged
        # on the meta device or without inputs nothing is measured: the bias alone is judged
        logits = head_logits(model, [h for h, _ in matched]) if model.inputs_known else \
            [(None, None)] * len(matched)
        for (head, kind), (rows, _) in zip(matched, logits):
            finding = self._judge(model, head, kind, priors, limit, rows)
            if finding is not None:
                yield finding

    def _judge(self, model: "AnalysedModel", head: "Head", kind: str, priors: Sequence[float],
               limit: float, logits: "torch.Tensor | None") -> Finding | None:
        import torch

        from biaslint.analysis.heads import bias_layer, bias_values
        from biaslint.init import prior_logits

        owner = bias_layer(model, head)
        current = bias_values(model, head)
        if owner is not None and current is None:
            return None  # values it cannot read: not judged
        if current is None:
            current = torch.zeros(head.outputs, dtype=torch.float64)
        target = prior_targets(kind, priors, head.outputs)
        from_bias = excess_loss(current.unsqueeze(0), target, kind)
        ideal = prior_logits(prior_values(kind, priors, head.outputs), kind, head.outputs)
        from_logits = fixable = None
        if logits is not None:
            # What the bias is responsible for on the actual logits: the excess now, minus the
            # excess with the same logits but the ideal bias in place of the current one. The
            # rest comes from the spread the weights add, which no bias can remove (BL009's
            # business), so it is not reported here.
            from_logits = excess_loss(logits, target, kind)
            fixable = from_logits - excess_loss(logits.double() - current + ideal, target, kind)
        if from_bias <= limit and (fixable is None or fixable <= limit):
            return None
        checked = None
        if logits is not None:
            claim = (f"the bias gives an excess initial loss of {from_bias:.3g} nats over the "
                     f"prior entropy" + ("" if fixable is None else
                                         f"; the ideal bias removes {fixable:.3g} of the logits'"))
            checked = self._measured(model, head, kind, logits, (target, current, ideal),
                                     limit, claim)
            if checked is None:
                return None
        call = owner[0].init_of(owner[1]) if owner is not None else None
        set_by_user = (f" (set by {set_by(call)})" if call is not None and call.by_user
                       and call.location is not None else "")
        data: dict[str, Any] = {"head": kind, "excess_from_bias": from_bias,
                                "excess_from_logits": from_logits,
                                "excess_fixable_on_logits": fixable,
                                "excess_fixable_measured": checked, "outputs": head.outputs}
        if head.table is not None:
            data["table"] = head.table
        what = "has no bias" if owner is None else f"bias{set_by_user}"
        actual = ("" if from_logits is None or fixable is None else
                  f"; on the example inputs the actual initial logits give {from_logits:.3g}, "
                  f"of which the ideal bias removes {fixable:.3g}")
        subject = f"{kind} classifier" if head.table is None else \
            f"{kind} logits computed from {head_name(head)}"
        message = (f"{subject} {what} gives an excess initial loss of "
                   f"{from_bias:.3g} nats over the prior entropy (limit {limit:g}){actual}; "
                   f"the ideal bias is {_abbrev(ideal)}")
        layer, parameter = owner if owner is not None else \
            (head.layer, "bias" if head.table is None else "")
        return self.finding(layer, message, parameter=parameter,
                            fix=_prior_fix(head, kind, priors, owner is not None), data=data)

    def _measured(self, model: "AnalysedModel", head: "Head", kind: str, logits: "torch.Tensor",
                  targets: "tuple[torch.Tensor, torch.Tensor, torch.Tensor]", limit: float,
                  claim: str) -> float | None:
        """What the ideal bias removes from the initial loss the model returns (``targets``: the
        prior targets, the current and the ideal bias); None, with the disagreement recorded,
        when that is not above the limit."""
        from biaslint.analysis.heads import returned_rows

        target, current, ideal = targets
        # Measured before it is said: the same quantity from what the model returns, with
        # torch's own loss, must show more than the limit for the ideal bias to remove.
        out = returned_rows(model, head, logits)
        rows = out if out is not None else logits.double()
        total = loss_excess(rows, target, kind)
        checked = total - loss_excess(rows - current + ideal, target, kind)
        if not checked > limit:
            model.disagree(self.code, head.layer.name, claim,
                           f"on the example inputs the initial loss the model returns is "
                           f"{total:.3g} nats over the prior entropy, of which the ideal "
                           f"bias removes {checked:.3g} (limit {limit:g})")
            return None
        return checked


def _prior_fix(head: "Head", kind: str, priors: Sequence[float], has_bias: bool) -> Fix:
    """Set the head's bias to the log priors: a ``biaslint.init`` call on a layer, a line to
    write by hand for the logits computed from a table."""
    head_arg = "" if kind == "softmax" else ", head='sigmoid'"
    literal = _priors_literal(priors)
    if head.table is not None:
        values = f"biaslint.init.prior_logits({literal}{head_arg})"
        if not has_bias:
            return Fix(title="Add a bias to the logits computed from the table, set to the log "
                             "priors", code=f"self.logits_bias = nn.Parameter({values})  # and "
                                            f"add it to the product with {head.table}",
                       safe=False, kind=FixKind.MANUAL)
        return Fix(title="Set the bias to the log class priors",
                   code=f"{python_path(head.bias or '')}.data.copy_({values})", safe=False,
                   kind=FixKind.MANUAL)
    if not has_bias:
        return Fix(title="Build the head with bias=True, then set it to the log priors",
                   code=f"biaslint.init.prior_bias_({python_path(head.layer.name)}, "
                        f"priors{head_arg})", kind=FixKind.INIT_HELPER)
    return Fix(title="Set the bias to the log class priors",
               code=f"biaslint.init.prior_bias_({python_path(head.layer.name)}, {literal}"
                    f"{head_arg})", kind=FixKind.INIT_HELPER)


def head_name(head: Head, detail: str = "") -> str:
    """How a message names the head: the layer, or the embedding table and the op (``detail``
    goes inside the parentheses)."""
    from biaslint.vocabulary import op_name

    if head.table is None:
        return python_path(head.layer.name)
    op = op_name(head.use.node) if head.use is not None else "product"
    return f"the table of Embedding '{head.layer.name}' ({op} with {head.table}{detail})"


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


def loss_excess(logits: "torch.Tensor", target: "torch.Tensor", kind: str) -> float:
    """``excess_loss`` measured with torch's own losses: ``F.cross_entropy`` with the target
    probabilities as soft labels (the expected loss over labels drawn from them, exactly),
    ``F.binary_cross_entropy_with_logits`` with the rates; minus the target's entropy. The check
    on a claim, computed apart from the closed form that made it."""
    import torch
    import torch.nn.functional as F

    z = logits.double().reshape(-1, logits.shape[-1])
    p = target.double()
    if kind == "softmax":
        p = p / p.sum()
        loss = F.cross_entropy(z, p.expand_as(z))
        return float(loss + torch.xlogy(p, p).sum())
    loss = F.binary_cross_entropy_with_logits(z, p.expand_as(z))
    return float(loss + (torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).mean())


def prior_values(kind: str, priors: Sequence[float], outputs: int) -> Sequence[float]:
    if kind == "sigmoid" and not (outputs == 1 and len(priors) == 2):
        return getattr(priors, "raw", priors)  # per-label rates, as the user gave them
    return priors


def prior_targets(kind: str, priors: Sequence[float], outputs: int) -> "torch.Tensor":
    import torch

    if kind == "sigmoid":
        if outputs == 1 and len(priors) == 2:
            return torch.tensor([priors[1] / (priors[0] + priors[1])], dtype=torch.float64)
        return torch.tensor(list(prior_values(kind, priors, outputs)), dtype=torch.float64)
    return torch.tensor(list(priors), dtype=torch.float64)


def fits_priors(head: Head, kind: str, priors: Sequence[float]) -> bool:
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
