"""BL008: a regression head whose initial outputs sit far from the target's mean."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer
    from biaslint.analysis.heads import Head


class RegressionBiasIgnoresTarget(Rule):
    code = "BL008"
    name = "regression-bias-ignores-target"
    severity = Severity.WARNING
    summary = "Regression head starting far from the target's mean: the first steps fit the offset"
    what_it_does = """\
Runs only when the target's mean is given (`--target-mean 3.5`, or one value per output
`--target-mean 1.0,2.0`; `target-mean` in a target's table). Finds the regression head: an
output layer whose output reaches the model's output with no softmax/sigmoid after it, with one
output per given mean (or any number of outputs for one mean). It runs the model once on the
example inputs and compares the head's initial outputs `y` with the means `m`, output by output:
the *excess initial MSE* `(mean(y) - m)^2` is what the offset alone adds to the mean squared error
(in target units squared), and the *ideal bias* `b + m - mean(y)` removes it. It flags an excess
larger than `min_excess` times the larger of the outputs' variance and 1 (the offset dominates the
starting error, and is at least one unit of the target).

It needs a forward with values and does not run on the meta device: the outputs' mean over the
example inputs is `b + w . mean(x)` and their variance is what it is compared with; no init law
gives the mean or the spread of the head's inputs over the examples.
"""
    why_bad = """\
A regression model that starts with outputs around 0 for a target around 100 spends its first
steps (and a large share of its gradient) only moving the bias, with a loss 10,000 times the
target's variance; the weights get gradients dominated by that offset rather than by the data.
Setting the output bias to the target's mean is the regression counterpart of Karpathy's "init
well" advice and of the prior bias for classifiers.
"""
    fix_text = """\
Set the head's bias to the ideal bias the message gives, with
`biaslint.init.regression_bias_(head, ideal)`, or standardize the target (subtract its mean).
"""
    references = (
        "Karpathy, 2019, A Recipe for Training Neural Networks (init well), "
        "https://karpathy.github.io/2019/04/25/recipe/",
    )
    options = (
        Option("min_excess", 1.0, "Flag an offset whose square exceeds this times max(1, the "
                                  "outputs' variance)."),
    )
    bad_example = '''\
import torch
import torch.nn as nn


def build():
    # predicts house prices in k$ (mean 250) with outputs that start around 0
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    return model, torch.randn(32, 8)
'''
    good_example = '''\
import torch
import torch.nn as nn

from biaslint.init import regression_bias_


def build():
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    regression_bias_(model[2], 250.0)
    return model, torch.randn(32, 8)
'''
    example_target = {"target_mean": (250.0,)}

    inputs = ("target_mean",)
    reads = frozenset({"graph", "values", "forward"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        if context.inputs["target_mean"] is None:
            return []  # configured off: nothing to compare with
        return [head.layer for head in regression_heads(model, context)]

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        from biaslint.analysis.heads import find_heads

        if context.inputs["target_mean"] is None:
            return
        limit = float(context.option(self, "min_excess"))
        heads = regression_heads(model, context)
        candidates = [h for h in find_heads(model) if h.squash is None]
        if candidates and not heads:
            from biaslint.errors import ConfigError

            sizes = ", ".join(f"{python_path(h.layer.name)}: {h.outputs}" for h in candidates[:4])
            raise ConfigError(
                f"--target-mean has {len(context.inputs['target_mean'])} values but no "
                f"regression head "
                f"has that many outputs ({sizes}); give one mean, or one per output")
        outputs = model.real_outputs([h.layer.name for h in heads])
        for head in heads:
            out = outputs.get(head.layer.name)
            if out is None or not out.is_floating_point():
                continue
            finding = self._judge(head, out, context.inputs["target_mean"], limit)
            if finding is not None:
                yield finding

    def _judge(self, head: Head, out: Any, means: tuple[float, ...],
               limit: float) -> Finding | None:
        import torch
        import torch.nn as nn

        layer = head.layer
        conv = isinstance(layer.module, nn.modules.conv._ConvNd)
        y = (out.movedim(1, -1) if conv and out.dim() > 2 else out).double()
        y = y.reshape(-1, y.shape[-1]) if y.dim() > 1 else y.reshape(-1, 1)
        target = torch.tensor(means, dtype=torch.float64).expand(y.shape[-1])
        mean = y.mean(dim=0)
        variance = y.var(dim=0, unbiased=False) if y.shape[0] > 1 else torch.zeros_like(mean)
        offset = mean - target
        excess = offset.pow(2)
        flagged = excess > limit * torch.clamp(variance, min=1.0)
        if not bool(flagged.any()):
            return None
        bias = layer.value("bias")
        current = bias.expected() if bias is not None and bias.known else None
        base = current.reshape(-1) if current is not None else torch.zeros_like(mean)
        ideal = base - offset
        worst = int(torch.argmax(excess))
        shown = ", ".join(f"{float(v):.4g}" for v in ideal[:4]) + (
            f", ... ({ideal.numel()} values)" if ideal.numel() > 4 else "")
        outputs_text = "the output starts" if y.shape[-1] == 1 else \
            f"{int(flagged.sum())} of {y.shape[-1]} outputs start (the worst)"
        no_bias = bias is None
        message = (
            f"{outputs_text} at mean {float(mean[worst]):.4g} for a target mean of "
            f"{float(target[worst]):.4g}: the offset alone adds {float(excess.mean()):.4g} "
            f"(target units squared) to the initial MSE, against an output variance of "
            f"{float(variance[worst]):.3g}; "
            + ("the layer has no bias to absorb it (build it with bias=True)" if no_bias else
               f"the ideal bias is [{shown}]"))
        path = python_path(layer.name)
        values = f"{float(ideal[0]):.6g}" if ideal.numel() == 1 else \
            "[" + ", ".join(f"{float(v):.6g}" for v in ideal) + "]"
        fix = Fix(title="Set the head's bias to the ideal bias",
                  code=f"biaslint.init.regression_bias_({path}, {values})", safe=False,
                  kind=FixKind.INIT_HELPER)
        data = {"excess_mse": float(excess.mean()), "ideal_bias": [float(v) for v in ideal],
                "output_mean": [float(v) for v in mean]}
        return self.finding(layer, message, parameter="bias", fix=fix, data=data,
                            location=layer.site_of("bias"))


def regression_heads(model: "AnalysedModel", context: RuleContext) -> list["Head"]:
    from biaslint.analysis.heads import find_heads

    means = context.inputs["target_mean"] or ()
    return [head for head in find_heads(model) if head.squash is None
            and (len(means) == 1 or len(means) == head.outputs)]
