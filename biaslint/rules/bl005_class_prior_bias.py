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
    """Where a model's logits are computed, and how they reach its output: a layer whose output
    reaches the model output, or a product with an embedding's table (``table`` set: ``layer`` is
    the embedding)."""

    layer: "Layer"
    outputs: int  # number of classes (out_features / out_channels / the table's vocabulary)
    squash: str | None  # "softmax", "log_softmax", "sigmoid" applied in the model, or None
    use: "Use | None" = None  # the node that computes the logits (None: the model is the layer)
    end: "Use | None" = None  # the node whose value the model's output holds
    table: str | None = None  # the embedding table's qualified name, for a product with it
    bias: str | None = None  # a table product's bias (``F.linear``'s, ``+ b``): qualified name
    order: int = 0  # which of the table's products (graph order) this is


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

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        # Without class priors there is nothing to compare a head with: the rule applies to no
        # layer (it is configured off, not unjudged).
        if context.inputs["class_priors"] is None:
            return []
        return list({id(h.layer): h.layer for h in find_heads(model, tables=True)}.values())

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        if context.inputs["class_priors"] is None:
            return [], False
        return [h.layer.name for h in find_heads(model) if h.table is None], False

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
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

    def _judge(self, model: "AnalysedModel", head: Head, kind: str, priors: Sequence[float],
               limit: float, logits: "torch.Tensor | None") -> Finding | None:
        import torch

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
        claim = (f"the bias gives an excess initial loss of {from_bias:.3g} nats over the prior "
                 f"entropy" + ("" if fixable is None else
                               f"; the ideal bias removes {fixable:.3g} of the logits'"))
        checked = None
        if logits is not None:
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
        head_arg = "" if kind == "softmax" else ", head='sigmoid'"
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
        literal = _priors_literal(priors)
        if head.table is not None:
            values = f"biaslint.init.prior_logits({literal}{head_arg})"
            if owner is None:
                fix = Fix(title="Add a bias to the logits computed from the table, set to the log "
                                "priors", code=f"self.logits_bias = nn.Parameter({values})  # and "
                                               f"add it to the product with {head.table}",
                          safe=False)
            else:
                fix = Fix(title="Set the bias to the log class priors",
                          code=f"{python_path(head.bias or '')}.data.copy_({values})", safe=False)
        elif owner is None:
            fix = Fix(title="Build the head with bias=True, then set it to the log priors",
                      code=f"biaslint.init.prior_bias_({python_path(head.layer.name)}, "
                           f"priors{head_arg})")
        else:
            fix = Fix(title="Set the bias to the log class priors",
                      code=f"biaslint.init.prior_bias_({python_path(head.layer.name)}, {literal}"
                           f"{head_arg})")
        layer, parameter = owner if owner is not None else \
            (head.layer, "bias" if head.table is None else "")
        return self.finding(layer, message, parameter=parameter, fix=fix, data=data)


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


# -- finding the head ----------------------------------------------------------------------------

def find_heads(model: "AnalysedModel", tables: bool = False) -> list[Head]:
    """Layers (Linear, ConvNd, Bilinear) whose output reaches the root graph's output through
    shape-only ops and at most one softmax / log_softmax / sigmoid. With ``tables``, also the
    logits computed from an embedding table (``find_table_heads``)."""
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
            reach = _reaches_output(model, use)
            if reach is not None:
                heads.append(Head(layer, outputs, reach[0], use=use, end=reach[1] or use))
                break
    return heads + (find_table_heads(model) if tables else [])


def find_table_heads(model: "AnalysedModel") -> list[Head]:
    """Logits computed from an ``nn.Embedding``'s table, tied or not: a product node (``x @
    emb.weight.T``, ``F.linear(x, emb.weight)``, ``torch.matmul(x, emb.weight.t())``, an einsum)
    one of whose operands reads the table, whose last axis is the vocabulary, and whose value
    reaches the root graph's output as ``find_heads`` requires (a bias added right after it,
    ``+ self.bias``, is the head's bias)."""
    import torch.nn as nn

    from biaslint.analysis import argument
    from biaslint.vocabulary import op_name

    heads: list[Head] = []
    for layer in model.layers_of_type(nn.Embedding):
        table = f"{layer.name}.weight" if layer.name else "weight"
        vocab = layer.module.num_embeddings
        for order, use in enumerate(model.table_products(table)):
            shape = use.shape()
            if use.part.qualname != "" or (shape is not None and (not shape or
                                                                  shape[-1] != vocab)):
                continue  # a sub-graph's value, or the vocabulary is not the last axis
            end, bias = use, None
            if op_name(use.node) == "linear":
                bias = _parameter_read(model, use, argument(use.node, 2, "bias"), vocab)
            else:
                consumers = model.consumers_of(use)
                if len(consumers) == 1 and op_name(consumers[0].node) in ("add", "__add__"):
                    others = [a for a in consumers[0].node.args if a is not use.node]
                    if len(others) == 1:
                        bias = _parameter_read(model, use, others[0], vocab)
                        end = consumers[0] if bias is not None else end
            reach = _reaches_output(model, end)
            if reach is not None:
                heads.append(Head(layer, vocab, reach[0], use=use, end=reach[1] or end,
                                  table=table, bias=bias, order=order))
    return heads


def _parameter_read(model: "AnalysedModel", use: "Use", node: Any, size: int) -> str | None:
    """The qualified name of the 1-D parameter of ``size`` entries that ``node`` reads
    (``get_attr``), or None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    qualified = use.part.full_name(str(node.target))
    owner, _, pname = qualified.rpartition(".")
    layer = model.layers.get(owner)
    tensor = layer.param(pname) if layer is not None else None
    return qualified if tensor is not None and tuple(tensor.shape) == (size,) else None


def _reaches_output(model: "AnalysedModel", use: "Use") -> tuple[str | None, "Use | None"] | None:
    """(None, None) when the value reaches the output directly, (the squash's name, its node)
    when through one, None when it does not reach the output."""
    from biaslint.analysis.ops import activation_kind, softmax_kind

    for consumer in model.consumers_of(use):
        if consumer.node.op == "output":
            return None, None
        squash = softmax_kind(consumer) or (
            "sigmoid" if activation_kind(consumer) == "sigmoid" else None)
        if squash and any(c.node.op == "output" for c in model.consumers_of(consumer)):
            return squash, consumer
    return None


# -- what the head outputs, at the layer and at the model's output ---------------------------------

def head_logits(model: "AnalysedModel", heads: Sequence[Head]
                ) -> list[tuple["torch.Tensor | None", "torch.Tensor | None"]]:
    """Per head, its actual initial logits on the example inputs as (rows, classes), and the
    features it was applied to (the layer's input, the table product's other operand); (None,
    None) when not measured."""
    import torch.nn as nn

    modules = [h.layer.name for h in heads if h.table is None]
    outputs = model.real_outputs(modules)
    inputs = model.real_inputs(modules)
    products = model.real_products(h.table for h in heads if h.table is not None)
    result: list[tuple[Any, Any]] = []
    for head in heads:
        if head.table is None:
            out = outputs.get(head.layer.name)
            if out is None or not out.is_floating_point():
                result.append((None, None))
                continue
            # a conv's classes are its channel axis; a Linear's are already last ((B, T, V))
            conv = isinstance(head.layer.module, nn.modules.conv._ConvNd)
            result.append((_as_rows(out, 1 if conv and out.dim() > 2 else -1),
                           inputs.get(head.layer.name)))
            continue
        found = products.get(head.table, [])
        # graph and forward are paired by order; a different count means they cannot be
        if len(found) != len(model.table_products(head.table)) or head.order >= len(found):
            result.append((None, None))
            continue
        product = found[head.order]
        rows = _as_rows(product.output, -1)
        bias = bias_values(model, head)
        if head.bias is not None and head.end is not None and head.end.node is not head.use.node \
                and bias is not None:
            rows = rows + bias.to(rows.dtype)  # ``x @ W.T + b``: the add after the product
        result.append((rows, product.operand))
    return result


def returned_rows(model: "AnalysedModel", head: Head, rows: "torch.Tensor"
                  ) -> "torch.Tensor | None":
    """The head's logits as the model returns them, as (rows, classes) in float64: read from
    the forward's return value where the graph's output holds them, the squash the model
    applies undone (log for softmax, logit for sigmoid). The class axis is the one whose rows
    are the layer's rows; when no axis gives them (the output is not what the layer computed,
    as the graph said), the last axis of that size. None when the return value does not hold
    them."""
    import torch

    if head.layer.name == "" and head.table is None:
        value = model.real_return()
        out = value if isinstance(value, torch.Tensor) else None
    elif head.end is not None:
        out = model.returned(head.end)
    else:
        out = None
    if out is None or not out.is_floating_point():
        return None
    z = out.double()
    if head.squash == "softmax":
        z = z.clamp_min(torch.finfo(out.dtype).tiny).log()
    elif head.squash == "sigmoid":
        z = torch.logit(z, eps=torch.finfo(out.dtype).eps)
    classes = rows.shape[-1]
    axes = [a for a in range(z.dim()) if z.shape[a] == classes]
    if not axes:
        return None
    for axis in sorted(axes, key=lambda a: (a != z.dim() - 1, a != 1)):
        candidate = _as_rows(z, axis)
        if _same_rows(candidate, rows.double(), centred=head.squash != "sigmoid"):
            return candidate
    return _as_rows(z, axes[-1])


def _as_rows(out: "torch.Tensor", axis: int) -> "torch.Tensor":
    if out.dim() <= 1:
        return out.reshape(1, -1)
    return out.movedim(axis, -1).reshape(-1, out.shape[axis])


def _same_rows(a: "torch.Tensor", b: "torch.Tensor", centred: bool) -> bool:
    """``a`` and ``b`` hold the same rows in some order (each row up to a constant when
    ``centred``: a softmax's log differs from its logits by one per row)."""
    import torch

    if a.shape != b.shape:
        return False
    if centred:
        a, b = a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True)
    key = torch.linspace(1.0, 2.0, a.shape[-1], dtype=torch.float64)
    a, b = a[torch.argsort(a @ key)], b[torch.argsort(b @ key)]
    scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale))


def bias_values(model: "AnalysedModel", head: Head) -> "torch.Tensor | None":
    """The head's bias (float64), or None when it has none or its values cannot be read."""
    if head.table is None:
        value = head.layer.value("bias")
    elif head.bias is not None:
        owner, _, pname = head.bias.rpartition(".")
        layer = model.layers.get(owner)
        value = layer.value(pname) if layer is not None else None
    else:
        value = None
    return value.expected().reshape(-1) if value is not None and value.known and \
        value.expected() is not None else None


def bias_layer(model: "AnalysedModel", head: Head) -> tuple["Layer", str] | None:
    """The layer that owns the head's bias, and the bias's name in it."""
    if head.table is None:
        return (head.layer, "bias") if head.layer.param("bias") is not None else None
    if head.bias is None:
        return None
    owner, _, pname = head.bias.rpartition(".")
    layer = model.layers.get(owner)
    return (layer, pname) if layer is not None else None
