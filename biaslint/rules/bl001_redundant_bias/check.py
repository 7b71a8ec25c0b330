"""BL001's check: run the bias propagation for every layer with a plain additive bias, then word
the findings and the ``bias=False`` fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn as nn

from biaslint.analysis import AnalysedModel, Layer
from biaslint.findings import Finding, Fix, Severity
from biaslint.fix.edits import with_bias_false
from biaslint.fix.phrases import python_path
from biaslint.rules.base import RuleContext
from biaslint.rules.bl001_redundant_bias.propagation import analyse_bias

if TYPE_CHECKING:
    from biaslint.rules.bl001_redundant_bias import RedundantBias


def check(rule: "RedundantBias", model: AnalysedModel, context: RuleContext) -> Iterable[Finding]:
    report_partial = bool(context.option(rule, "report-partial"))
    verdicts = {layer.name: analyse_bias(model, layer.name)
                for layer in model.layers.values() if has_checkable_bias(layer.module)}
    # Layers built by the same source line (a loop, a helper): a fix there changes them all.
    by_site: dict[tuple[str, int, int], list[str]] = {}
    for name in verdicts:
        site = model.layers[name].site
        if site is not None:
            by_site.setdefault((site.file, site.line, site.col), []).append(name)
    read_elsewhere = _biases_read_elsewhere(model)
    for layer in model.layers.values():
        module = layer.module
        if layer.name in read_elsewhere:
            continue  # tied, aliased or read directly: it also acts outside this layer
        if isinstance(module, nn.MultiheadAttention):
            finding = _attention_key_slice(rule, model, layer)
            if finding is not None:
                yield finding
            continue
        verdict = verdicts.get(layer.name)
        if verdict is None:
            continue
        count = int(module.bias.numel())  # type: ignore[union-attr]
        if verdict.redundant and verdict.cancelled_by:
            site = layer.site
            siblings = by_site.get((site.file, site.line, site.col), []) if site else []
            live_siblings = sum(1 for other in siblings
                                if not (verdicts[other] and verdicts[other].redundant))
            by = _join(verdict.cancelled_by)
            yield rule.finding(
                layer,
                f"bias of {layer.type_name} '{layer.name}' is cancelled by {by}: its "
                f"{count} parameters never change the output and never train",
                parameter="bias", fix=_bias_false_fix(layer, live_siblings),
                data={"verdict": "redundant", "cancelled_by": verdict.cancelled_by,
                      "parameters": count},
            )
            continue
        if verdict.redundant:
            continue  # nothing cancels it: the output is never used (a dead layer)
        fused = _fused_slice(rule, model, layer, count) if verdict.crossed else None
        if fused is not None:
            yield fused
        elif report_partial:
            constant = analyse_bias(model, layer.name, channel_varies=False)
            if constant is not None and constant.redundant and constant.cancelled_by:
                yield rule.finding(
                    layer,
                    f"only the mean of the bias of {layer.type_name} '{layer.name}' is "
                    f"removed by {_join(constant.cancelled_by)}; the rest matters "
                    f"({verdict.reason})",
                    parameter="bias", severity=Severity.INFO,
                    data={"verdict": "partial", "cancelled_by": constant.cancelled_by},
                )

def _fused_slice(rule: "RedundantBias", model: AnalysedModel, layer: Layer, count: int) -> Finding | None:
    """A fused projection (query/key/value in one Linear, GPT-2's ``c_attn``): follow each
    third of the bias on its own. A slice that the attention softmax (or a norm) cancels is
    dead weight too, but no constructor flag removes only that slice: info."""
    if count < 3 or count % 3:
        return None
    third = count // 3
    for start in range(0, count, third):
        verdict = analyse_bias(model, layer.name, span=(start, start + third))
        if verdict is None or not verdict.redundant or not verdict.cancelled_by:
            continue
        attention = any("softmax" in c or "attention" in c for c in verdict.cancelled_by)
        what = "key slice" if attention else "slice"
        return rule.finding(
            layer,
            f"{what} bias[{start}:{start + third}] of {layer.type_name} '{layer.name}' is "
            f"cancelled by {_join(verdict.cancelled_by)}: {third} parameters never train "
            "(no constructor flag removes only this slice)",
            parameter="bias", severity=Severity.INFO,
            data={"verdict": "redundant-slice", "slice": [start, start + third],
                  "cancelled_by": verdict.cancelled_by, "parameters": third},
        )
    return None

def _attention_key_slice(rule: "RedundantBias", model: AnalysedModel, layer: Layer) -> Finding | None:
    """``nn.MultiheadAttention`` adds ``in_proj_bias[E:2E]`` to every key, shifting each
    score of a query by the same q . b_k, which the softmax over the keys removes. Extra key
    positions appended after the projection (``add_bias_kv``, ``add_zero_attn``) do not get
    the shift, and then the slice matters."""
    module = layer.module
    bias = getattr(module, "in_proj_bias", None)
    if bias is None or not model.calls_of(layer.name):
        return None
    if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
        return None
    embed = int(module.embed_dim)
    return rule.finding(
        layer,
        f"key slice in_proj_bias[{embed}:{2 * embed}] of MultiheadAttention '{layer.name}' "
        f"is cancelled by the softmax over the keys: {embed} parameters never train "
        "(no constructor flag removes only this slice)",
        parameter="in_proj_bias", severity=Severity.INFO,
        data={"verdict": "redundant-slice", "slice": [embed, 2 * embed],
              "cancelled_by": ["softmax over the keys"], "parameters": embed},
    )


def has_checkable_bias(module: "nn.Module") -> bool:
    """A layer whose 1-d ``bias`` is a plain additive offset on its output. Normalizations'
    shifts and RNN biases are not (they sit after a normalization or inside gates)."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor) or isinstance(bias, nn.parameter.UninitializedParameter):
        return False
    if bias.dim() != 1:
        return False
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                           nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.Embedding,
                           nn.EmbeddingBag)):
        return False
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or \
        not type(module).__module__.startswith("torch.")


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return f"{items[0]}, {items[1]} and {len(items) - 2} more"


# -- the fix: the recorded constructor call with bias=False --------------------------------------

def _bias_false_fix(layer: "Layer", live_siblings: int = 0) -> Fix:
    """The constructor call with ``bias=False``. Safe (the model computes the same function) for
    torch's own layers, unless the same line also builds layers whose bias matters."""
    is_torch = type(layer.module).__module__.startswith("torch.nn")
    rewritten = with_bias_false(layer.site, type(layer.module).__name__) \
        if layer.site is not None else None
    where = f" at {layer.site.file}:{layer.site.line}" if layer.site else ""
    if rewritten is None:
        return Fix(title=f"Construct {python_path(layer.name)} with bias=False{where}",
                   safe=False)
    code, _ = rewritten
    if live_siblings:
        return Fix(title=f"Construct the layer with bias=False{where}, only where a "
                   f"normalization follows (this line also builds {live_siblings} layer(s) "
                   "whose bias matters)", code=code, safe=False)
    return Fix(title=f"Construct the layer with bias=False{where}", code=code, safe=is_torch)


def _biases_read_elsewhere(model: "AnalysedModel") -> set[str]:
    """Layers whose bias also acts outside the layer's own calls: the same tensor registered
    under another name (tied to another layer, aliased as another attribute), or read directly by
    the graph (``get_attr``), e.g. ``mha.in_proj_bias[6:12]`` added to an output."""
    result = {layer.name for layer in model.layers.values() if model.is_shared(
        layer.name, "in_proj_bias" if isinstance(layer.module, nn.MultiheadAttention) else "bias")}
    for read in model.graph_nodes():
        part, node = read.part, read.node
        if node.op != "get_attr":
            continue
        full = part.full_name(str(node.target))
        owner = full.rsplit(".", 1)[0] if "." in full else ""
        # A custom layer's own forward reads its bias this way (GPT-2's Conv1D): that is the
        # layer's own use. A read from anywhere else is not.
        for user in node.users:
            stack = user.meta.get("nn_module_stack") or {}
            if owner not in {part.full_name(str(path)) for path in stack}:
                result.add(owner)
                break
    return result
