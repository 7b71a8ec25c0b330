"""BL001's check: run the bias propagation for every layer with a plain additive bias, then word
the findings and the ``bias=False`` fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from biaslint.analysis import AnalysedModel, Layer
from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.edits import with_bias_false
from biaslint.fix.phrases import python_path
from biaslint.rules.base import RuleContext
from biaslint.rules.bl001_redundant_bias.propagation import analyse_bias

if TYPE_CHECKING:
    from biaslint.analysis.sensitivity import BiasMeasure, Screen
    from biaslint.rules.bl001_redundant_bias import RedundantBias
    from biaslint.rules.bl001_redundant_bias.propagation import Verdict


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
    read_elsewhere, read_directly = _bias_reads(model)
    screen = model.bias_screen(
        [layer.name for layer in model.layers.values() if has_checkable_bias(layer.module)
         or isinstance(layer.module, nn.MultiheadAttention)],
        proven=_proven_spans(rule, model, verdicts, read_elsewhere)) \
        if context.option(rule, "measure") else None
    measured = screen if screen is not None and screen.ran else None
    judge = _Judge(rule, model, verdicts, measured, by_site, _redundant(verdicts, measured),
                   _Locations(measured) if measured is not None else None, read_elsewhere,
                   read_directly, report_partial)
    try:
        for layer in model.layers.values():
            yield from judge.findings(layer)
    finally:
        if screen is not None:
            screen.release()
    _note_measurement(rule, model, screen, judge, bool(verdicts))


def _proven_spans(rule: "RedundantBias", model: AnalysedModel,
                  verdicts: dict[str, "Verdict | None"], read_elsewhere: set[str]
                  ) -> dict[tuple[str, str], tuple[tuple[int, int], ...]]:
    """Per (layer, bias parameter), the elements the walk derived as cancelled: a whole bias, a
    fused projection's key third, ``nn.MultiheadAttention``'s key slice. The measurement
    confirms them in float32 alone (``sensitivity._confirm``). A bias also read outside its
    layer is left out: the walk does not follow it there."""
    spans: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {}
    for name, verdict in verdicts.items():
        if verdict is None or name in read_elsewhere:
            continue
        layer = model.layers[name]
        if verdict.redundant and verdict.cancelled_by:
            spans[(name, "bias")] = ((0, int(layer.module.bias.numel())),)
        elif verdict.crossed:
            claim = _fused_claim(rule, model, layer, int(layer.module.bias.numel()))
            if claim is not None:
                spans[(name, "bias")] = claim.spans
    for layer in model.layers.values():
        if isinstance(layer.module, nn.MultiheadAttention) and layer.name not in read_elsewhere:
            claim = _attention_claim(rule, model, layer)
            if claim is not None:
                spans[(layer.name, "in_proj_bias")] = claim.spans
    return spans


def _redundant(verdicts: dict[str, "Verdict | None"], measured: "Screen | None"
               ) -> dict[str, bool]:
    """Per layer the walk judged, whether its bias is redundant. The measured verdicts decide,
    where there are any; what the walk derived is then only the explanation (and a claim the
    measurement does not bear out is counted, not reported)."""
    redundant = {name: bool(v and v.redundant) for name, v in verdicts.items()}
    if measured is not None:
        for name in verdicts:
            measure = measured.of(name)
            if measure is not None and not measure.no_gradient:
                redundant[name] = measure.whole
    return redundant


@dataclass
class _Judge:
    """What judging one model's layers shares: the walk's verdicts, the measurement (None when
    it did not run), the layers by construction site, which biases are redundant, where
    measured cancellations happen, the biases read outside their layer where the walk does not
    follow them, those read directly by the forward where it does (their fix is a note: the
    read would break without the bias); and, as it goes, the biases found on a dead path."""

    rule: "RedundantBias"
    model: AnalysedModel
    verdicts: dict[str, "Verdict | None"]
    measured: "Screen | None"
    by_site: dict[tuple[str, int, int], list[str]]
    redundant: dict[str, bool]
    located: "_Locations | None"
    read_elsewhere: set[str]
    read_directly: set[str]
    report_partial: bool
    dead: list[str] = field(default_factory=list)

    def findings(self, layer: Layer) -> Iterator[Finding]:
        """BL001's findings for one layer's bias."""
        rule, model = self.rule, self.model
        module = layer.module
        pname = "in_proj_bias" if isinstance(module, nn.MultiheadAttention) else "bias"
        measure = self.measured.of(layer.name, pname) if self.measured is not None else None
        if measure is not None and measure.no_gradient:
            measure = None  # not read where autograd sees it: the walk alone judges
        if layer.name in self.read_elsewhere:
            # Tied, aliased or read directly (WavLM's torch.cat of the q/k/v biases): it also
            # acts outside the layer's calls, where the walk does not follow it. The
            # measurement sees every use at once and alone decides.
            if measure is not None:
                yield from self._noted(layer, pname, measure, self.verdicts.get(layer.name),
                                       None, shared=True)
            return
        if isinstance(module, nn.MultiheadAttention):
            derived = _attention_claim(rule, model, layer)
            if measure is None:
                if derived is not None:
                    yield derived.build(False)
            else:
                yield from self._noted(layer, pname, measure, None, derived)
            return
        verdict = self.verdicts.get(layer.name)
        direct = layer.name in self.read_directly
        if measure is not None:
            yield from self._noted(layer, pname, measure, verdict,
                                   self._claim(layer, verdict), shared=direct)
            if self.report_partial and not measure.cancelled and verdict is not None and \
                    not verdict.redundant:
                yield from _partial(rule, model, layer, verdict)
        elif verdict is not None:
            yield from _derived(rule, model, layer, verdict, self.by_site, self.redundant,
                                self.report_partial, direct)

    def _claim(self, layer: Layer, verdict: "Verdict | None") -> _Claim | None:
        """What the walk derived for a measured layer's bias, to explain the measurement."""
        rule, module = self.rule, layer.module
        if verdict is not None and verdict.redundant and verdict.cancelled_by:
            count = int(module.bias.numel())
            by = verdict.cancelled_by
            by_site, redundant = self.by_site, self.redundant
            shared = layer.name in self.read_directly
            return _Claim(((0, count),), by, lambda measured, by=by, layer=layer:
                          _whole_finding(rule, layer, by, by_site, redundant, measured, shared))
        if verdict is not None and not verdict.redundant and verdict.crossed:
            return _fused_claim(rule, self.model, layer, int(module.bias.numel()))
        return None

    def _noted(self, layer: Layer, pname: str, measure: "BiasMeasure",
               verdict: "Verdict | None", derived: _Claim | None,
               shared: bool = False) -> list[Finding]:
        """The measured findings, and the bias in the dead-path note when none was reported."""
        found = list(_measured(self.rule, self.model, layer, pname, measure, verdict, derived,
                               self.located, self.by_site, self.redundant, shared=shared))
        if not found:
            self.dead.extend(_dead(layer.name, pname, measure))
        return found


def _note_measurement(rule: "RedundantBias", model: AnalysedModel, screen: "Screen | None",
                      judge: _Judge, judged: bool) -> None:
    """Say what the measurement added, or why there was none (``judged``: the walk judged some
    layer)."""
    measured, dead = judge.measured, judge.dead
    if measured is not None:
        for text in measured.notes:
            model.note(rule.code, text)
    if judge.located is not None:
        for reason, names in judge.located.stops.items():
            model.note(rule.code, f"measured cancellations the graph walk did not prove "
                       f"(it stopped at: {reason}): {_listed(names)}")
    if measured is not None and dead:
        model.note(rule.code, f"{len(dead)} bias(es) get no gradient on the example inputs and "
                   f"neither do their layers' weights (a dead path: every unit off on these "
                   f"inputs, an unused result, a softmax over one position), which is not a "
                   f"cancellation: {_listed(dead)}")
    elif screen is not None and not screen.ran:
        model.note(rule.code, f"biases not measured ({screen.error}): BL001's verdicts are "
                   "derived from the graph alone")
    elif screen is None and judged:
        why = model.no_forward() or "the option measure is off"
        model.note(rule.code, f"biases not measured ({why}): BL001's verdicts are derived "
                   "from the graph alone")


def _derived(rule: "RedundantBias", model: AnalysedModel, layer: Layer, verdict: "Verdict",
             by_site: dict[tuple[str, int, int], list[str]], redundant: dict[str, bool],
             report_partial: bool, shared: bool = False) -> Iterable[Finding]:
    """The walk's verdict alone (no example inputs, the meta device, or a bias autograd does
    not see). ``shared``: the forward also reads the bias directly."""
    count = int(layer.module.bias.numel())
    if verdict.redundant and verdict.cancelled_by:
        yield _whole_finding(rule, layer, verdict.cancelled_by, by_site, redundant,
                             shared=shared)
        return
    if verdict.redundant:
        return  # nothing cancels it: the output is never used (a dead layer)
    fused = _fused_claim(rule, model, layer, count) if verdict.crossed else None
    if fused is not None:
        yield fused.build(False)
    elif report_partial:
        yield from _partial(rule, model, layer, verdict)


def _partial(rule: "RedundantBias", model: AnalysedModel, layer: Layer, verdict: "Verdict"
             ) -> Iterable[Finding]:
    """With ``report-partial``: an info note where only the bias's mean is removed."""
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


def _whole_finding(rule: "RedundantBias", layer: Layer, cancelled_by: list[str],
                   by_site: dict[tuple[str, int, int], list[str]],
                   redundant: dict[str, bool], measured: bool = False,
                   shared: bool = False) -> Finding:
    count = int(layer.module.bias.numel())
    site = layer.site
    siblings = by_site.get((site.file, site.line, site.col), []) if site else []
    live_siblings = sum(1 for other in siblings if not redundant.get(other, False))
    fix = _bias_false_fix(layer, live_siblings) if not shared else Fix(
        title=f"Remove the bias of {python_path(layer.name)} together with the code that "
              "reads it outside the layer",
        manual="the bias is also read outside the layer (tied to another layer, aliased, or "
               "read directly by the forward): bias=False alone would break that read")
    return rule.finding(
        layer,
        f"bias of {layer.type_name} '{layer.name}' is cancelled by {_join(cancelled_by)}: its "
        f"{count} parameters never change the output and never train",
        parameter="bias", fix=fix,
        data={"verdict": "redundant", "cancelled_by": cancelled_by, "parameters": count,
              "measured": measured},
    )


class _Locations:
    """Where measured cancellations happen, asked of the screen's copy a bounded number of
    times per model (each answer is two forwards): the same layer type in the same kind of
    parent is usually cancelled by the same op, and is told once."""

    LIMIT = 8

    def __init__(self, screen: "Screen") -> None:
        self.screen = screen
        self.asked = 0
        # per kind: the parent the answer was asked for, and the answer
        self.known: dict[tuple[str, str], tuple[str, str | None]] = {}
        # Why the walk did not prove a measured cancellation, with the layers: the ops the
        # transfer table should learn next.
        self.stops: dict[str, list[str]] = {}

    def of(self, model: AnalysedModel, layer: Layer, pname: str,
           elements: tuple[tuple[int, int], ...]) -> str | None:
        parent = layer.name.rpartition(".")[0]
        kind = (layer.type_name, type(model.submodule(parent)).__name__ if parent else "",
                layer.name.rpartition(".")[2])
        key = (str(kind), str(elements))
        if key in self.known:
            told = _moved_to(*self.known[key], parent)
            if told is not None:
                return told
        if self.asked >= self.LIMIT:
            return None
        self.asked += 1
        where = self.screen.locate(layer.name, pname, elements)
        self.known.setdefault(key, (parent, where))
        return where


def _moved_to(parent: str, where: str | None, other: str) -> str | None:
    """The op located for a layer under ``parent``, told for the same layer under ``other``
    (block 1.1's softmax, not block 1.0's): the module names under ``parent`` renamed. None
    when the op was a module outside ``parent`` (the next block's norm), which says nothing
    of where ``other``'s layer is cancelled."""
    if where is None or parent == other:
        return where
    if not parent:
        return where if "'" not in where else None
    if f"'{parent}'" not in where and f"'{parent}." not in where:
        return None
    return where.replace(f"'{parent}'", f"'{other}'").replace(f"'{parent}.", f"'{other}.")


def _measured(rule: "RedundantBias", model: AnalysedModel, layer: Layer, pname: str,
              measure: "BiasMeasure", verdict: "Verdict | None", derived: _Claim | None,
              located: "_Locations | None", by_site: dict[tuple[str, int, int], list[str]],
              redundant: dict[str, bool], shared: bool = False) -> Iterable[Finding]:
    """The screen's measurement decides; the walk's derivation explains it where it can. A
    derived claim the measurement does not bear out is counted as a disagreement. ``shared``:
    the bias is also read outside its layer, so ``bias=False`` alone would break that read."""
    if _dead(layer.name, pname, measure) and derived is None:
        # The layer's weight learns nothing either on these inputs: a dead path (noted), not
        # BL001's. A cancellation the walk proved from the graph still holds whatever the
        # inputs (a conv before BatchNorm fed a spatially constant map): measured below.
        return
    if derived is not None:
        missing = [i for a, b in derived.spans for i in range(a, b)
                   if not any(x <= i < y for x, y in measure.cancelled)]
        # The gradient did not propose them (a gradient that is flat everywhere behind a
        # LayerNorm over two features, say): the perturbation itself decides.
        if missing and located is not None and \
                located.screen.holds(layer.name, pname, derived.spans):
            yield derived.build(True)
            return
        if missing:
            model.disagree(rule.code, layer.name, derived.build(False).message,
                           f"measured: shifting the {sum(b - a for a, b in derived.spans)} "
                           "elements claimed moves the outputs")
    if not measure.cancelled:
        return
    proved = derived is not None and all(
        any(a <= start and stop <= b for a, b in derived.spans)
        for start, stop in measure.cancelled)
    if proved and derived is not None and derived.spans == measure.cancelled:
        yield derived.build(True)
        return
    cause = list(derived.cancelled_by) if proved and derived is not None else \
        [_measured_cause(model, layer, pname, measure, verdict, located)]
    if measure.whole and pname == "bias":
        yield _whole_finding(rule, layer, cause, by_site, redundant, measured=True,
                             shared=shared)
    else:
        yield _slice_finding(rule, layer, pname, measure.cancelled, cause, measured=True)


def _measured_cause(model: AnalysedModel, layer: Layer, pname: str, measure: "BiasMeasure",
                    verdict: "Verdict | None", located: "_Locations | None") -> str:
    """Name what cancels a measured cancellation the walk did not prove, and what stopped the
    walk (so the transfer table can grow from real misses)."""
    where = located.of(model, layer, pname, measure.cancelled) if located is not None else None
    text = f"{where} (measured)" if where else "a later op (measured; not located)"
    if located is not None and verdict is not None and not verdict.redundant and verdict.reason:
        located.stops.setdefault(verdict.reason, []).append(layer.name)
    return text


def _attention(cause: list[str]) -> bool:
    return any("softmax" in c or "attention" in c.lower() for c in cause)


def _runs_text(spans: tuple[tuple[int, int], ...], limit: int = 4) -> str:
    text = ", ".join(f"{a}:{b}" for a, b in spans[:limit])
    return text + (f" and {len(spans) - limit} more" if len(spans) > limit else "")


def _dead(layer: str, pname: str, measure: "BiasMeasure") -> list[str]:
    """The bias, when no element of it nor any unit's weight gets a gradient: a dead path.
    (Single units off on the example inputs are BL007's, and too common to list.)"""
    if measure.dead == ((0, measure.numel),):
        return [f"{layer}.{pname}" if layer else pname]
    return []


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@dataclass(frozen=True)
class _Claim:
    """What the walk derived for one bias: the elements it calls cancelled, by what, and how
    the finding reads (built once it is known whether the measurement bore the claim out)."""

    spans: tuple[tuple[int, int], ...]
    cancelled_by: list[str]
    build: Callable[[bool], Finding]  # measured -> the finding


def _slice_finding(rule: "RedundantBias", layer: Layer, pname: str,
                   spans: tuple[tuple[int, int], ...], cancelled_by: list[str],
                   measured: bool) -> Finding:
    """The info finding for cancelled elements short of the whole bias: no constructor flag
    removes only them."""
    count = sum(b - a for a, b in spans)
    first = spans[0]
    if len(spans) == 1:
        what = "key slice" if _attention(cancelled_by) else "slice"
        shown, verb, tail = f"{what} {pname}[{first[0]}:{first[1]}]", "is", "this slice"
    else:
        shown = f"{count} elements of {pname} in {len(spans)} runs ({_runs_text(spans)})"
        verb, tail = "are", "these"
    return rule.finding(
        layer,
        f"{shown} of {layer.type_name} '{layer.name}' {verb} cancelled by "
        f"{_join(cancelled_by)}: {count} parameters never train (no constructor flag removes "
        f"only {tail})",
        parameter=pname, severity=Severity.INFO,
        data={"verdict": "redundant-slice", "slice": list(first),
              "slices": [list(r) for r in spans], "cancelled_by": cancelled_by,
              "parameters": count, "measured": measured},
    )


def _fused_claim(rule: "RedundantBias", model: AnalysedModel, layer: Layer, count: int
                 ) -> _Claim | None:
    """A fused projection (query/key/value in one Linear, GPT-2's ``c_attn``): follow each
    third of the bias on its own. A slice that the attention softmax (or a norm) cancels is
    dead weight too, but no constructor flag removes only that slice: info."""
    if count < 3 or count % 3:
        return None
    memo = model.__dict__.setdefault(_FUSED_KEY, {})
    if layer.name not in memo:
        memo[layer.name] = _fused_third(rule, model, layer, count)
    return memo[layer.name]


_FUSED_KEY = "_bl001_fused_claims"


def _fused_third(rule: "RedundantBias", model: AnalysedModel, layer: Layer, count: int
                 ) -> _Claim | None:
    third = count // 3
    for start in range(0, count, third):
        verdict = analyse_bias(model, layer.name, span=(start, start + third))
        if verdict is None or not verdict.redundant or not verdict.cancelled_by:
            continue
        spans, by = ((start, start + third),), verdict.cancelled_by
        return _Claim(spans, by, lambda measured: _slice_finding(rule, layer, "bias", spans,
                                                                 by, measured))
    return None


def _attention_claim(rule: "RedundantBias", model: AnalysedModel, layer: Layer
                     ) -> _Claim | None:
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
    spans, by = ((embed, 2 * embed),), ["softmax over the keys"]
    return _Claim(spans, by, lambda measured: _slice_finding(rule, layer, "in_proj_bias", spans,
                                                             by, measured))


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
        # No code to show, so no edit either: say why, or --fix passes over it in silence.
        return Fix(title=f"Construct {python_path(layer.name)} with bias=False{where}",
                   safe=False, manual=(f"the constructor call{where} was not found in its "
                                       "source" if layer.site is not None else
                                       "the construction site is unknown")
                   + ": build it with bias=False by hand")
    code, _ = rewritten
    if live_siblings:
        return Fix(title=f"Construct the layer with bias=False{where}, only where a "
                   f"normalization follows (this line also builds {live_siblings} layer(s) "
                   "whose bias matters)", code=code, safe=False, kind=FixKind.BIAS_FALSE)
    return Fix(title=f"Construct the layer with bias=False{where}", code=code, safe=is_torch,
               kind=FixKind.BIAS_FALSE)


def _bias_reads(model: "AnalysedModel") -> tuple[set[str], set[str]]:
    """Layers whose bias also acts outside the layer's own calls, in two kinds:

    - where the walk does not follow it: the same tensor registered under another name (tied
      to another layer, aliased as another attribute), and ``nn.MultiheadAttention``'s
      ``in_proj_bias`` read directly (``mha.in_proj_bias[6:12]`` added to an output). The
      measurement alone judges them;
    - read directly by the forward under its own name (``F.linear(x, self.qkv.weight,
      self.qkv.bias)``, ``torch.cat`` of the q/k/v biases): the walk follows every such read
      (``layer_sources``), so its derivation stands, but ``bias=False`` alone would break the
      read, and the fix is a note.

    A read of a layer's weight is neither: it carries nothing of the bias."""
    elsewhere = {layer.name for layer in model.layers.values() if model.is_shared(
        layer.name, "in_proj_bias" if isinstance(layer.module, nn.MultiheadAttention) else "bias")}
    directly: set[str] = set()
    for read in model.graph_nodes():
        part, node = read.part, read.node
        if node.op != "get_attr":
            continue
        full = part.full_name(str(node.target))
        owner, _, pname = full.rpartition(".")
        # A custom layer's own forward reads its bias this way (GPT-2's Conv1D): that is the
        # layer's own use. A read from anywhere else is not.
        if all(owner in {part.full_name(str(path)) for path in user.meta.get("nn_module_stack")
                         or {}} for user in node.users):
            continue
        layer = model.layers.get(owner)
        if layer is None or not has_checkable_bias(layer.module):
            elsewhere.add(owner)
        elif pname == "bias":
            directly.add(owner)
    return elsewhere, directly - elsewhere
