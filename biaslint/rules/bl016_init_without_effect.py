"""BL016: an init call whose values no parameter keeps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Fix, FixKind, LostInit, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer

NOT_RECORDED = ("the build was not recorded (a model built outside biaslint): which init calls "
                "ran is not known; lint the function that builds it, or build it inside "
                "`with biaslint.recording():`")


class InitWithoutEffect(Rule):
    code = "BL016"
    name = "init-without-effect"
    severity = Severity.WARNING
    summary = "An init call whose values no parameter keeps: overwritten, or written to a " \
              "computed weight"
    what_it_does = """\
Reads the recorded build for init calls that leave nothing behind:

- **overwritten**: an init call of yours (`nn.init.*`, or an in-place draw or fill such as
  `weight.data.normal_()`; not an installed library's, whose dead init code you cannot change)
  whose every entry a later init call writes again before the build ends, typically a
  `model.apply(init_weights)` or a library's `post_init()` after your own init in `__init__`.
  The finding names both calls. A later `copy_` (a checkpoint loaded over the init) is the
  usual way to build a pretrained model and does not count, nor does the same call site
  writing again (`apply` twice, a loop).
- **computed**: an init call that wrote a tensor autograd computes from other parameters: the
  `weight` of a conv under `torch.nn.utils.parametrizations.weight_norm` (or the older
  `weight_norm` hook), or any `parametrize` parametrization. The next forward computes it again
  from the parameters it is made of (`original0`/`original1`, `weight_g`/`weight_v`), so the
  init does nothing. The finding names the call and those parameters. Library calls count
  here too: an init the model's code asks for is lost whoever wrote it.

It reads only what the recorded build saw, on real tensors and on the meta device alike.
"""
    why_bad = """\
The init you wrote is not the init the model trains from. An overwritten one makes the code say
one scale while the model has another (the "config value the init ignores" class of bug); an
init of a weight-normed conv leaves PyTorch's default draw in place, whatever the code asks for
(`normal_(conv.weight, std=5)` changes nothing). Either way the run trains from an init nobody
chose, and reading the code will not tell you.
"""
    fix_text = """\
Overwritten: keep one of the two calls (move your init after the call that overwrites it, or
leave the module out of that call). Computed: initialize the parameters the weight is made of,
e.g. `nn.init.normal_(conv.parametrizations.weight.original1, std=...)` for the direction, or
initialize the conv before applying `weight_norm`.
"""
    references = (
        "PyTorch documentation, torch.nn.utils.parametrizations.weight_norm (the weight is "
        "recomputed from original0 and original1), "
        "https://pytorch.org/docs/stable/generated/torch.nn.utils.parametrizations.weight_norm.html",
    )
    bad_example = '''\
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm


class PositionalConv(nn.Module):
    def __init__(self, dim=32, kernel=16):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(dim, dim, kernel, padding=kernel // 2), dim=2)
        nn.init.normal_(self.conv.weight, std=(1 / (kernel * dim)) ** 0.5)  # lost

    def forward(self, x):
        return self.conv(x.transpose(1, 2))[..., :-1].transpose(1, 2)


def build():
    return PositionalConv(), torch.randn(2, 50, 32)
'''
    good_example = '''\
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm


class PositionalConv(nn.Module):
    def __init__(self, dim=32, kernel=16):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        nn.init.normal_(conv.weight, std=(1 / (kernel * dim)) ** 0.5)  # before weight_norm
        self.conv = weight_norm(conv, dim=2)

    def forward(self, x):
        return self.conv(x.transpose(1, 2))[..., :-1].transpose(1, 2)


def build():
    return PositionalConv(), torch.randn(2, 50, 32)
'''

    reads = frozenset({"build"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return list(model.layers.values())

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        if model.lost_inits is None:
            return {name: NOT_RECORDED for name in model.layers}
        return {}

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        for lost in model.lost_inits or ():
            layer = model.layer_of_parameter(lost.parameters[0])
            if layer is not None:
                yield self._finding(layer, lost)

    def _finding(self, layer: "Layer", lost: LostInit) -> Finding:
        call = lost.call.describe()
        where = f" at {lost.call.location}" if lost.call.location is not None else ""
        names = ", ".join(python_path(p) for p in lost.parameters[:4]) + (
            f" and {len(lost.parameters) - 4} more" if len(lost.parameters) > 4 else "")
        if lost.kind == "computed":
            message = (f"{call}{where} writes {python_path(lost.computed)}, which is computed "
                       f"from {names} and computed again on every forward: the init does "
                       "nothing, and the weight keeps the values it had before it")
            fix = Fix(title="Initialize the parameters the weight is made of, or init the "
                            "layer before the parametrization",
                      code=f"nn.init.normal_({python_path(lost.parameters[-1])}, std=...)",
                      safe=False, kind=FixKind.MANUAL,
                      manual="which original holds the direction depends on the "
                             "parametrization")
        else:
            assert lost.by is not None
            by = lost.by.describe()
            at = f" at {lost.by.location}" if lost.by.location is not None else ""
            message = (f"{call}{where} initializes {names}, but {by}{at} writes every entry "
                       "again before the build ends: the first init does nothing, and the "
                       "model trains from the second")
            fix = Fix(title="Keep one of the two init calls", code=f"remove {lost.call.name}"
                      f"{where}, or run it after {lost.by.name}", safe=False,
                      kind=FixKind.MANUAL)
        parameter = lost.parameters[0].rsplit(".", 1)[-1]
        return self.finding(layer, message, parameter=parameter, fix=fix,
                            location=lost.call.location or layer.site,
                            data={"kind": lost.kind, "call": lost.call.name,
                                  "parameters": list(lost.parameters),
                                  "by": lost.by.name if lost.by else None,
                                  "computed": lost.computed})

