"""BL001: a bias that a later normalization (or an attention softmax) cancels exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, Location, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    import torch.nn as nn

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

* **kept by** sums with other tensors (residual connections), scaling by tensors that are
  constant along those axes, concatenation, max/average/adaptive pooling, interpolation,
  reshapes, permutes and indexing, 1x1 convs, linear layers, and convs without zero padding;
* **broken by** nonlinearities, gates or any product with a tensor that varies along those axes
  (including rotary position embeddings), zero-padded convs (the border sees no bias), dropout
  with p > 0 and anything it does not know;
* **cancelled by** `BatchNorm` (training mode), `InstanceNorm`, `GroupNorm` with one channel
  per group, `LayerNorm`/`F.layer_norm` when the contribution is constant over every
  normalized axis, a hand-written centring `x - x.mean(dims, keepdim=True)` over axes along
  which it is constant, and a softmax over an axis along which it is constant: in dot-product
  attention the key projection's bias shifts every score of a query by the same `q . b_k`,
  also after a causal mask filled with `-inf` (or any fill <= -1e9, such as
  `torch.finfo(dtype).min`), since masked scores weigh nothing either way.

A bias whose output also reaches anything un-normalized (a second consumer, a returned feature
map, a tensor it is written into with `out=` or an in-place op) is live and not reported, and so
is a bias that also acts elsewhere (tied to another layer, aliased as another attribute, or read
directly by the forward). Code that a module handed over in eval mode runs (where
`self.training` was False while tracing) is not followed. `RMSNorm` subtracts no mean and
cancels nothing. A fused
query/key/value bias (`nn.MultiheadAttention.in_proj_bias`, GPT-2's `c_attn`, timm's `qkv`)
gets an **info** finding naming its key slice, since no constructor flag removes only that
slice. The model is judged as it trains (`BatchNorm` in training mode). Without example inputs
only convolutions' outputs have a known rank, so `Linear` layers are judged only when input
shapes are given.
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
key) when loaded into the fixed model.
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

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        import torch.nn as nn

        from biaslint.rules.bl001_redundant_bias.propagation import analyse_bias

        report_partial = bool(context.option(self, "report-partial"))
        verdicts = {layer.name: analyse_bias(model, layer.name)
                    for layer in model.layers.values() if _has_checkable_bias(layer.module)}
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
                finding = self._attention_key_slice(model, layer)
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
                yield self.finding(
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
            fused = self._fused_slice(model, layer, count) if verdict.crossed else None
            if fused is not None:
                yield fused
            elif report_partial:
                constant = analyse_bias(model, layer.name, channel_varies=False)
                if constant is not None and constant.redundant and constant.cancelled_by:
                    yield self.finding(
                        layer,
                        f"only the mean of the bias of {layer.type_name} '{layer.name}' is "
                        f"removed by {_join(constant.cancelled_by)}; the rest matters "
                        f"({verdict.reason})",
                        parameter="bias", severity=Severity.INFO,
                        data={"verdict": "partial", "cancelled_by": constant.cancelled_by},
                    )

    def _fused_slice(self, model: "AnalysedModel", layer: "Layer", count: int) -> Finding | None:
        """A fused projection (query/key/value in one Linear, GPT-2's ``c_attn``): follow each
        third of the bias on its own. A slice that the attention softmax (or a norm) cancels is
        dead weight too, but no constructor flag removes only that slice: info."""
        from biaslint.rules.bl001_redundant_bias.propagation import analyse_bias

        if count < 3 or count % 3:
            return None
        third = count // 3
        for start in range(0, count, third):
            verdict = analyse_bias(model, layer.name, span=(start, start + third))
            if verdict is None or not verdict.redundant or not verdict.cancelled_by:
                continue
            attention = any("softmax" in c or "attention" in c for c in verdict.cancelled_by)
            what = "key slice" if attention else "slice"
            return self.finding(
                layer,
                f"{what} bias[{start}:{start + third}] of {layer.type_name} '{layer.name}' is "
                f"cancelled by {_join(verdict.cancelled_by)}: {third} parameters never train "
                "(no constructor flag removes only this slice)",
                parameter="bias", severity=Severity.INFO,
                data={"verdict": "redundant-slice", "slice": [start, start + third],
                      "cancelled_by": verdict.cancelled_by, "parameters": third},
            )
        return None

    def _attention_key_slice(self, model: "AnalysedModel", layer: "Layer") -> Finding | None:
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
        return self.finding(
            layer,
            f"key slice in_proj_bias[{embed}:{2 * embed}] of MultiheadAttention '{layer.name}' "
            f"is cancelled by the softmax over the keys: {embed} parameters never train "
            "(no constructor flag removes only this slice)",
            parameter="in_proj_bias", severity=Severity.INFO,
            data={"verdict": "redundant-slice", "slice": [embed, 2 * embed],
                  "cancelled_by": ["softmax over the keys"], "parameters": embed},
        )


def _has_checkable_bias(module: "nn.Module") -> bool:
    """A layer whose 1-d ``bias`` is a plain additive offset on its output. Normalizations'
    shifts and RNN biases are not (they sit after a normalization or inside gates)."""
    import torch
    import torch.nn as nn

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

# Position of ``bias`` among the positional parameters of each torch constructor.
_BIAS_POSITION = {"Linear": 2, "Bilinear": 3, "Conv1d": 7, "Conv2d": 7, "Conv3d": 7,
                  "ConvTranspose1d": 7, "ConvTranspose2d": 7, "ConvTranspose3d": 7}


def _bias_false_fix(layer: "Layer", live_siblings: int = 0) -> Fix:
    """The constructor call with ``bias=False``. Safe (the model computes the same function) for
    torch's own layers, unless the same line also builds layers whose bias matters."""
    from biaslint.fix.phrases import python_path

    is_torch = type(layer.module).__module__.startswith("torch.nn")
    rewritten = rewrite_with_bias_false(layer.site, type(layer.module).__name__) \
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


def rewrite_with_bias_false(site: Location, class_name: str) -> tuple[str, bool] | None:
    """The constructor call at ``site`` with ``bias=False`` (replacing any bias argument).
    Returns (code, whether an existing bias argument was replaced), None when the call cannot be
    found in the source."""
    import ast
    import linecache

    source = "".join(linecache.getlines(site.file))
    if not source:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    candidates = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.lineno == site.line]
    exact = [n for n in candidates if n.col_offset == site.col - 1]
    named = [n for n in candidates if _callee(n).split(".")[-1] == class_name]
    call = (exact or named or [None])[0]
    if call is None:
        return None
    segment = ast.get_source_segment(source, call)
    if segment is None:
        return None
    base = _offset(source, call.lineno, call.col_offset)

    def span(node: Any) -> tuple[int, int]:
        return (_offset(source, node.lineno, node.col_offset) - base,
                _offset(source, node.end_lineno, node.end_col_offset) - base)

    for kw in call.keywords:
        if kw.arg == "bias":
            start, end = span(kw.value)
            return segment[:start] + "False" + segment[end:], True
    position = _BIAS_POSITION.get(class_name)
    if position is not None and len(call.args) > position and not any(
            isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        start, end = span(call.args[position])
        return segment[:start] + "False" + segment[end:], True
    last = [*call.args, *call.keywords]
    if last:
        end = max(span(node)[1] for node in last)
        return segment[:end] + ", bias=False" + segment[end:], False
    close = segment.rstrip().rfind(")")
    return segment[:close] + "bias=False" + segment[close:], False


def _callee(call: "object") -> str:
    import ast

    assert isinstance(call, ast.Call)
    try:
        return ast.unparse(call.func)
    except Exception:  # noqa: BLE001
        return ""


def _offset(source: str, line: int | None, col: int | None) -> int:
    """Character offset of an AST (line, UTF-8 byte column) position."""
    lines = source.splitlines(keepends=True)
    line = line or 1
    prefix = sum(len(text) for text in lines[:line - 1])
    text = lines[line - 1] if line - 1 < len(lines) else ""
    return prefix + len(text.encode("utf-8")[:col or 0].decode("utf-8", errors="ignore"))


def _biases_read_elsewhere(model: "AnalysedModel") -> set[str]:
    """Layers whose bias also acts outside the layer's own calls: the same tensor registered
    under another name (tied to another layer, aliased as another attribute), or read directly by
    the graph (``get_attr``), e.g. ``mha.in_proj_bias[6:12]`` added to an output."""
    import torch.nn as nn

    result = {layer.name for layer in model.layers.values() if model.is_shared(
        layer.name, "in_proj_bias" if isinstance(layer.module, nn.MultiheadAttention) else "bias")}
    for part in model.capture.parts:
        for node in part.gm.graph.nodes:
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
