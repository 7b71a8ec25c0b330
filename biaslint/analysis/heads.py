"""The heads of a model: where its logits are computed, how they reach its output, and what
they hold on the example inputs. Shared by the rules that judge a classifier's or a regressor's
starting point (BL005, BL008, BL009)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn

from biaslint.analysis.model import AnalysedModel, Layer, Use
from biaslint.analysis.ops import activation_kind, softmax_kind
from biaslint.vocabulary import argument, op_name


@dataclass(frozen=True)
class Head:
    """Where a model's logits are computed, and how they reach its output: a layer whose output
    reaches the model output, or a product with an embedding's table (``table`` set: ``layer`` is
    the embedding)."""

    layer: Layer
    outputs: int  # number of classes (out_features / out_channels / the table's vocabulary)
    squash: str | None  # "softmax", "log_softmax", "sigmoid" applied in the model, or None
    use: Use | None = None  # the node that computes the logits (None: the model is the layer)
    end: Use | None = None  # the node whose value the model's output holds
    table: str | None = None  # the embedding table's qualified name, for a product with it
    bias: str | None = None  # a table product's bias (``F.linear``'s, ``+ b``): qualified name
    order: int = 0  # which of the table's products (graph order) this is


# -- finding the head ----------------------------------------------------------------------------

def find_heads(model: AnalysedModel, tables: bool = False) -> list[Head]:
    """Layers (Linear, ConvNd, Bilinear) whose output reaches the root graph's output through
    shape-only ops and at most one softmax / log_softmax / sigmoid. With ``tables``, also the
    logits computed from an embedding table (``find_table_heads``)."""
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


def find_table_heads(model: AnalysedModel) -> list[Head]:
    """Logits computed from an ``nn.Embedding``'s table, tied or not: a product node (``x @
    emb.weight.T``, ``F.linear(x, emb.weight)``, ``torch.matmul(x, emb.weight.t())``, an einsum)
    one of whose operands reads the table, whose last axis is the vocabulary, and whose value
    reaches the root graph's output as ``find_heads`` requires (a bias added right after it,
    ``+ self.bias``, is the head's bias)."""
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


def _parameter_read(model: AnalysedModel, use: Use, node: Any, size: int) -> str | None:
    """The qualified name of the 1-D parameter of ``size`` entries that ``node`` reads
    (``get_attr``), or None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    qualified = use.part.full_name(str(node.target))
    owner, _, pname = qualified.rpartition(".")
    layer = model.layers.get(owner)
    tensor = layer.param(pname) if layer is not None else None
    return qualified if tensor is not None and tuple(tensor.shape) == (size,) else None


def _reaches_output(model: AnalysedModel, use: Use) -> tuple[str | None, Use | None] | None:
    """(None, None) when the value reaches the output directly, (the squash's name, its node)
    when through one, None when it does not reach the output."""
    for consumer in model.consumers_of(use):
        if consumer.node.op == "output":
            return None, None
        squash = softmax_kind(consumer) or (
            "sigmoid" if activation_kind(consumer) == "sigmoid" else None)
        if squash and any(c.node.op == "output" for c in model.consumers_of(consumer)):
            return squash, consumer
    return None


# -- what the head outputs, at the layer and at the model's output ---------------------------------

def head_logits(model: AnalysedModel, heads: Sequence[Head]
                ) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Per head, its actual initial logits on the example inputs as (rows, classes), and the
    features it was applied to (the layer's input, the table product's other operand); (None,
    None) when not measured."""
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


def returned_rows(model: AnalysedModel, head: Head, rows: torch.Tensor
                  ) -> torch.Tensor | None:
    """The head's logits as the model returns them, as (rows, classes) in float64: read from
    the forward's return value where the graph's output holds them, the squash the model
    applies undone (log for softmax, logit for sigmoid). The class axis is the one whose rows
    are the layer's rows; when no axis gives them (the output is not what the layer computed,
    as the graph said), the last axis of that size. None when the return value does not hold
    them."""
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


def _as_rows(out: torch.Tensor, axis: int) -> torch.Tensor:
    if out.dim() <= 1:
        return out.reshape(1, -1)
    return out.movedim(axis, -1).reshape(-1, out.shape[axis])


def _same_rows(a: torch.Tensor, b: torch.Tensor, centred: bool) -> bool:
    """``a`` and ``b`` hold the same rows in some order (each row up to a constant when
    ``centred``: a softmax's log differs from its logits by one per row)."""
    if a.shape != b.shape:
        return False
    if centred:
        a, b = a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True)
    key = torch.linspace(1.0, 2.0, a.shape[-1], dtype=torch.float64)
    a, b = a[torch.argsort(a @ key)], b[torch.argsort(b @ key)]
    scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale))


def bias_values(model: AnalysedModel, head: Head) -> torch.Tensor | None:
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


def bias_layer(model: AnalysedModel, head: Head) -> tuple[Layer, str] | None:
    """The layer that owns the head's bias, and the bias's name in it."""
    if head.table is None:
        return (head.layer, "bias") if head.layer.param("bias") is not None else None
    if head.bias is None:
        return None
    owner, _, pname = head.bias.rpartition(".")
    layer = model.layers.get(owner)
    return (layer, pname) if layer is not None else None
