"""BL013: a normalization whose eps is so large against its input's variance that it damps the
signal instead of normalizing it (``nn.BatchNorm2d(128, 0.8)``: eps where momentum was meant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


class ImplausibleNormEpsilon(Rule):
    code = "BL013"
    name = "implausible-norm-epsilon"
    severity = Severity.WARNING
    summary = "A norm's eps large against its input's variance: it damps instead of normalizing"
    what_it_does = """\
For each normalization layer (`BatchNorm1d/2d/3d`, `SyncBatchNorm`, `InstanceNorm`, `GroupNorm`,
`LayerNorm`, `RMSNorm`), runs the model once on the example inputs and reads the layer's input.
Per group the norm takes its statistics over (a channel over the batch and positions for
BatchNorm, one sample's channel for InstanceNorm, one sample's group for GroupNorm, one row for
LayerNorm and RMSNorm), the variance `v` of the input (the mean square for RMSNorm) gives what
the norm's output std is against a true normalization: `sqrt(v / (v + eps))`. It flags the layer
when the median of that factor over the groups is below `min_factor` (0.9: `eps` above about
0.23 `v`) and `eps` is above `usual_eps` (1e-3), with the factor, `eps` and the variance.
BatchNorm is judged by the batch statistics it uses in training. A usual eps (1e-5, 1e-3) that
damps anyway is not the culprit: the input's variance is tiny at init (a depthwise conv drawn
with `kaiming_normal_(mode="fan_out")`); a note names those norms. A group whose input is
constant (to rounding) is left out: its output is zero whatever eps is.

It reads the constructor call where the layer was built: when `eps` was passed by position, the
finding says so. The signature is `BatchNorm2d(num_features, eps=1e-05, momentum=0.1, ...)`,
so `nn.BatchNorm2d(128, 0.8)` sets `eps=0.8` and leaves the momentum at 0.1. Without a forward
with values (no example inputs, `--device meta`) a BatchNorm or InstanceNorm given an eps of at
least `positional_eps` (0.1) by position is flagged from the call alone (a momentum's value in
eps's place); the other norms are listed as not judged, with the reason.
"""
    why_bad = """\
The norm is there to give its output unit variance whatever the scale of its input. With `eps`
comparable to the input's variance it divides by `sqrt(v + eps)` instead of `sqrt(v)`: the
output shrinks by `sqrt(v / (v + eps))`, and the shrinking depends on the input's scale, which
is what the norm was meant to remove. The layer is a damped scale, the layers after it start
with a smaller signal than their init assumes, and the gradient through the norm shrinks with
it. A mistyped momentum also leaves the running statistics' momentum at its default.
"""
    fix_text = """\
Pass momentum by keyword and leave eps at its default: `nn.BatchNorm2d(128, momentum=0.8)`. If
the value comes from Keras (`BatchNormalization(momentum=0.8)`), PyTorch's momentum is the
weight of the new batch, so Keras' 0.8 is PyTorch's `momentum=0.2`. For a large eps given on
purpose, give it against the input's scale (1e-5 is PyTorch's default; 1e-3 to 1e-6 are usual).
"""
    references = (
        "PyTorch documentation, torch.nn.BatchNorm2d: BatchNorm2d(num_features, eps=1e-05, "
        "momentum=0.1, affine=True, track_running_stats=True), "
        "https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html",
        "Ioffe and Szegedy, 2015, Batch Normalization: Accelerating Deep Network Training by "
        "Reducing Internal Covariate Shift, https://arxiv.org/abs/1502.03167",
        "Keras documentation, BatchNormalization: momentum is the weight of the moving average "
        "(PyTorch's momentum is 1 minus it), "
        "https://keras.io/api/layers/normalization_layers/batch_normalization/",
    )
    options = (
        Option("min_factor", 0.9,
               "Flag a norm whose output std, against a true normalization's, is below this "
               "(sqrt(v / (v + eps)), median over its groups)."),
        Option("usual_eps", 1e-3,
               "An eps at or below this is a usual one (PyTorch's 1e-5, Keras' 1e-3): never "
               "flagged; a norm it damps gets a note (its input's variance is what is small)."),
        Option("positional_eps", 0.1,
               "Without a forward, flag a BatchNorm or InstanceNorm given at least this eps "
               "by position (a momentum's value in eps's place)."),
    )
    bad_example = '''\
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1),
        nn.BatchNorm2d(128, 0.8),  # the second positional argument is eps, not momentum
        nn.LeakyReLU(0.2),
        nn.Conv2d(128, 3, 3, padding=1),
    )
    return model, torch.randn(8, 3, 16, 16)
'''
    good_example = '''\
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1),
        nn.BatchNorm2d(128, momentum=0.8),
        nn.LeakyReLU(0.2),
        nn.Conv2d(128, 3, 3, padding=1),
    )
    return model, torch.randn(8, 3, 16, 16)
'''

    # Judged on the real forward when there is one; from the constructor call alone when not
    # (a positional eps of a momentum's size), with the others said as not judged.
    reads = frozenset({"measure"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        from biaslint.vocabulary import EPS_NORM_MODULES

        not_called = set(model.not_called)
        return [layer for layer in model.modules_of_type(*EPS_NORM_MODULES)
                if layer.name not in not_called]

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        return {v.layer.name: v.unjudged for v in _verdicts(self, model, context) if v.unjudged}

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        verdicts = _verdicts(self, model, context)
        _note_small_inputs(model, [v for v in verdicts if v.usual and v.factor is not None
                                   and v.factor < v.minimum])
        for verdict in verdicts:
            if verdict.flagged:
                yield _finding(self, verdict)
            elif verdict.static_claim and verdict.factor is not None:
                model.disagree(self.code, verdict.layer.name, _static_phrase(verdict),
                               f"measured: {_measured_phrase(verdict)}")


# -- what the rule reads of each norm ------------------------------------------------------------

# A group of the input whose std is below this many units of its dtype's epsilon times its
# largest magnitude is constant: float32 rounding after a few ops, not a signal. In bfloat16
# and float16 that many units would be 78% and 10% of the magnitude, which a signal drawn at
# init has (a conv's output: std about a third of its largest value): there the bar is at most
# SPREAD_CAP of the largest magnitude, above the rounding a few bfloat16 ops leave.
RESOLUTION = 100
SPREAD_CAP = 0.02


@dataclass
class _Verdict:
    layer: "Layer"
    eps: float
    passed: str | None = None  # how eps was passed: "position", "keyword", "default" (None: unread)
    call: tuple[str, Any] | None = None  # (source, ast.Call) of the constructor call
    static_claim: bool = False  # a momentum's value given in eps's place
    factor: float | None = None  # median sqrt(v / (v + eps)) over the groups (None: not measured)
    variance: float = 0.0  # median v over the groups
    groups: int = 0
    below: int = 0  # groups whose factor is below min_factor
    minimum: float = 0.9  # min_factor
    usual: bool = False  # eps at or below usual_eps: never the culprit
    flagged: bool = False
    unjudged: str = ""  # why the layer was not judged
    not_measured: str = ""  # why a static claim was not measured


_VERDICTS_KEY = "_bl013_verdicts"


def _verdicts(rule: ImplausibleNormEpsilon, model: "AnalysedModel",
              context: RuleContext) -> list[_Verdict]:
    """Per norm in scope, its verdict; worked out once per model (``declined`` and ``check``
    both read them)."""
    found = model.__dict__.get(_VERDICTS_KEY)
    if found is None:
        found = model.__dict__[_VERDICTS_KEY] = _judged(rule, model, context)
    return found


def _judged(rule: ImplausibleNormEpsilon, model: "AnalysedModel",
            context: RuleContext) -> list[_Verdict]:
    minimum = float(context.option(rule, "min_factor"))
    usual = float(context.option(rule, "usual_eps"))
    positional = float(context.option(rule, "positional_eps"))
    missing = model.no_forward()
    result = []
    for layer in rule.scope(model, context):
        verdict = _read_call(layer)
        verdict.static_claim = verdict.passed == "position" and _takes_momentum(layer) and \
            verdict.eps >= positional
        if missing is not None:
            verdict.flagged, verdict.not_measured = verdict.static_claim, f"no forward: {missing}"
            if not verdict.flagged:
                verdict.unjudged = (f"eps={verdict.eps:g} is judged against the variance of the "
                                    f"layer's input on a real forward, and there is none "
                                    f"({missing})")
        else:
            _measure(model, verdict, minimum)
            verdict.usual = verdict.eps <= usual
            verdict.flagged = verdict.flagged and not verdict.usual
            if verdict.unjudged and verdict.static_claim:  # the call alone says it
                verdict.flagged, verdict.not_measured = True, verdict.unjudged
                verdict.unjudged = ""
        result.append(verdict)
    return result


def _eps(module: Any) -> float:
    """The eps the norm adds; RMSNorm's None is the machine epsilon of its input's dtype."""
    import torch

    eps = getattr(module, "eps", None)
    return float(eps) if eps is not None else float(torch.finfo(torch.float32).eps)


def _takes_momentum(layer: "Layer") -> bool:
    import torch.nn as nn

    return isinstance(layer.module, (nn.modules.batchnorm._BatchNorm,
                                     nn.modules.instancenorm._InstanceNorm))


def _read_call(layer: "Layer") -> _Verdict:
    """The norm's eps, and how its constructor call passed it (read from the source)."""
    from biaslint.fix.edits import passed_how, recorded_call
    from biaslint.vocabulary import NORM_EPS_POSITION

    verdict = _Verdict(layer, _eps(layer.module))
    position = NORM_EPS_POSITION.get(layer.type_name)
    torch_own = type(layer.module).__module__.startswith("torch.")
    if position is None or not torch_own or layer.site is None:
        return verdict
    found = recorded_call(layer.site, layer.type_name)
    if found is not None:
        verdict.call = found
        verdict.passed = passed_how(found[1], position, "eps")
    return verdict


def _measure(model: "AnalysedModel", verdict: _Verdict, minimum: float) -> None:
    """The damping factor sqrt(v / (v + eps)) per group of the norm's input in the forward."""
    import torch

    from biaslint.vocabulary import MEAN_NORM_MODULES

    name = verdict.layer.name
    groups = model.norm_inputs([name]).get(name)
    if groups is None:
        verdict.unjudged = ("its input in the real forward was not a tensor of a shape the norm "
                            "takes, so its variance was not measured")
        return
    # A group whose spread is at the rounding level of its dtype, or whose variance vanishes
    # next to eps in that dtype (v + eps == eps), is constant to the norm: its output is
    # rounding noise (or zero) whatever eps is.
    resolution = torch.finfo(groups.dtype).eps
    groups = groups.double()
    if isinstance(verdict.layer.module, MEAN_NORM_MODULES):
        v = groups.var(dim=1, unbiased=False)
    else:  # RMSNorm divides by the root mean square
        v = groups.pow(2).mean(dim=1)
    v = v[(v.sqrt() > min(RESOLUTION * resolution, SPREAD_CAP) * groups.abs().amax(dim=1))
          & (v > resolution * verdict.eps)]
    if not v.numel():
        verdict.unjudged = ("its input is constant (to rounding) in every group it normalizes "
                            "over at init, so its output is zero whatever eps is")
        return
    factor = torch.sqrt(v / (v + verdict.eps))
    verdict.factor = float(factor.median())
    verdict.variance = float(v.median())
    verdict.groups = int(v.numel())
    verdict.below = int((factor < minimum).sum())
    verdict.minimum = minimum
    verdict.flagged = verdict.factor < minimum


def _note_small_inputs(model: "AnalysedModel", damped: list[_Verdict]) -> None:
    """Norms a usual eps damps: their input's variance is what is small (an init that shrinks
    the signal), said in a note rather than blamed on eps."""
    if not damped:
        return
    worst = min(damped, key=lambda v: v.factor or 0.0)
    names = ", ".join(v.layer.name for v in damped[:5]) + \
        (f" and {len(damped) - 5} more" if len(damped) > 5 else "")
    model.note("BL013", f"{len(damped)} norm(s) with a usual eps damp their input at init "
                        f"because its variance is small, not the eps (e.g. {worst.layer.name}: "
                        f"eps={worst.eps:g}, input variance {worst.variance:.3g}, output std "
                        f"{worst.factor:.3g} of a true normalization's): {names}")


# -- the finding ---------------------------------------------------------------------------------

_ORDINALS = ("first", "second", "third")


def _group_word(layer: "Layer") -> str:
    import torch.nn as nn

    if isinstance(layer.module, nn.modules.batchnorm._BatchNorm):
        return "channel"
    if isinstance(layer.module, nn.modules.instancenorm._InstanceNorm):
        return "sample's channel"
    return "sample's group" if isinstance(layer.module, nn.GroupNorm) else "row"


def _positional_phrase(verdict: _Verdict) -> str:
    from biaslint.vocabulary import NORM_EPS_POSITION

    position = NORM_EPS_POSITION[verdict.layer.type_name]
    instead = ", not momentum" if _takes_momentum(verdict.layer) else ""
    return (f"the {_ORDINALS[position]} positional argument of {verdict.layer.type_name} is "
            f"eps{instead}: eps={verdict.eps:g}")


def _static_phrase(verdict: _Verdict) -> str:
    return (f"{_positional_phrase(verdict)}, a momentum's value in eps's place (a usual eps "
            "is 1e-3 to 1e-6)")


def _measured_phrase(verdict: _Verdict) -> str:
    word = _group_word(verdict.layer)
    return (f"the input's variance at init is {verdict.variance:.3g} (median per {word}), so "
            f"the norm's output std is sqrt(v / (v + eps)) = {verdict.factor:.3g} of a true "
            f"normalization's (median over {verdict.groups} {word}s; {verdict.below} below "
            f"{verdict.minimum:g})")


def _finding(rule: ImplausibleNormEpsilon, verdict: _Verdict) -> Finding:
    positional = verdict.passed == "position"
    head = _positional_phrase(verdict) if positional else f"eps={verdict.eps:g}"
    if verdict.factor is None:
        message = (f"{_static_phrase(verdict)}; judged from the constructor call, not "
                   f"measured against the input's variance ({verdict.not_measured})")
    else:
        message = (f"{head} is implausibly large: {_measured_phrase(verdict)}; the layer is a "
                   "damped scale instead of a normalization")
    data: dict[str, Any] = {"eps": verdict.eps, "positional": positional,
                            "measured": verdict.factor is not None}
    if verdict.factor is not None:
        data.update(factor=verdict.factor, variance=verdict.variance, groups=verdict.groups,
                    below=verdict.below)
    return rule.finding(verdict.layer, message, fix=_fix(verdict), data=data)


def _fix(verdict: _Verdict) -> Fix:
    from biaslint.fix.edits import with_keyword
    from biaslint.vocabulary import NORM_EPS_POSITION

    value = verdict.eps
    if verdict.passed == "position" and _takes_momentum(verdict.layer) and verdict.call:
        source, call = verdict.call
        code = with_keyword(source, call, NORM_EPS_POSITION[verdict.layer.type_name],
                            "momentum") or ""
        keras = f"; if {value:g} is Keras' momentum, PyTorch's is momentum={1 - value:g}" \
            if 0 < value < 1 else ""
        return Fix(title=f"Pass {value:g} as momentum= and leave eps at its default{keras}",
                   code=code, safe=False, kind=FixKind.MANUAL)
    return Fix(title="Give eps a value small against the input's variance (PyTorch's default "
                     "is 1e-5)", safe=False, kind=FixKind.MANUAL)
