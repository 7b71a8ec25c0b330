"""BL017: a drawn weight whose init scale does not follow the config's, while its siblings do."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

from biaslint.findings import ConfigScale, Finding, Fix, FixedDraw, FixKind, Severity
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer

NOT_COMPARED = ("the build was not compared with one whose config init scale is changed; "
                "select BL017 on a target biaslint builds")

# What a weight that does not follow the config was drawn with, as the survey over every
# transformers architecture sorted them (benchmarks/RESULTS.md, "BL017"):
KINDS = {
    # N(0, v) where v is the config's own value, but written as a literal (or a library
    # layer's constructor draw): a user who changes the config does not change it.
    "literal": "the config's value written as a literal",
    # N(0, 1): normal_() with no std, or nn.Embedding's default left in place.
    "unit": "a standard normal, normal_() with no std",
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's constructor default for Linear and convs,
    # which the model's init never replaced.
    "default": "PyTorch's constructor default, which the model's init never replaced",
    # Anything else: xavier, kaiming, a std computed from the width. Usually a documented
    # scheme of its own; listed only with `report = "all"`.
    "scheme": "a scheme of its own (xavier, kaiming, a std computed from the width)",
}
DEFAULT_KINDS = ("literal", "unit", "default")


class InitIgnoresConfig(Rule):
    code = "BL017"
    name = "init-ignores-config"
    severity = Severity.WARNING
    summary = "A drawn weight whose init scale ignores the config's (initializer_range and " \
              "the like), while the model's other weights follow it"
    what_it_does = """\
For a model whose modules keep a config with an init scale (transformers' `initializer_range`,
`init_std`, `initializer_factor`, or any config object's attribute named like one), builds the
target twice more on the meta device, recording each parameter's init law: as written, and with
every read of those attributes giving ten times the value. A drawn weight whose law is the same
both times does not follow the config. Weights are the parameters of two or more dimensions
(matrices, conv kernels, embedding tables, stacked experts): biases and norm gains are not drawn
from an init scale. When other weights of the model do follow it, the weight
is reported, naming one that follows, the config value and what the weight is drawn with
instead:

- **literal**: drawn with the config's value, but as a literal (`normal_(std=0.02)` in a layer's
  constructor, or a fallback `getattr(config, "initializer_range", 0.02)` on a sub-config that
  lacks it): right until someone changes the config;
- **unit**: a standard normal (`normal_()` with no std);
- **default**: PyTorch's constructor default for a Linear or conv, U(-1/sqrt(fan_in),
  1/sqrt(fan_in)), left in place because the model's init never handles that layer type.

Other draws that do not follow the config (xavier, kaiming, a std computed from the width) are
usually a documented scheme of their own: they are reported, as info, only with
`report = "all"`. Nothing is reported for a model none of whose weights follow the config (its
init reads something else), nor for a model without such a config. Each build runs the
target's build function again, on meta (no values are drawn); a build that fails, or a model
given already built (`check(model)`), leaves the layers not judged, with the reason.
"""
    why_bad = """\
The config's init scale is the one knob a user turns to change how a model starts; a weight
that ignores it keeps the author's literal whatever the config says, "silently ignored". A 2026
transformers fix found exactly this in three architectures: their Conv1D weights were drawn
N(0, 0.02) whatever `initializer_range` said, and the library's own tests only checked that
every weight is touched, not that it follows the config.
"""
    fix_text = """\
Draw the weight from the config: handle its layer type in the model's init (for
transformers, in `_init_weights`:
`init.normal_(module.weight, std=self.config.initializer_range)`), pass the config's value
where the literal is, or give the sub-config the attribute its fallback reads.
"""
    references = (
        "transformers pull request 48152, 'Respect config.initializer_range for Conv1D "
        "weights in DecisionTransformer, ImageGPT and OpenAI GPT' (2026), "
        "https://github.com/huggingface/transformers/pull/48152",
        "torchtitan issue 1257, a fixed std=0.02 beside a configurable init_std (2025), "
        "https://github.com/pytorch/torchtitan/issues/1257",
    )
    options = (
        Option("report", "mistakes",
               "\"mistakes\": the literal, unit and default kinds (warning); \"all\": also "
               "the weights drawn with a scheme of their own (info)."),
    )
    bad_example = '''\
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Config:
    width: int = 64
    init_std: float = 0.02


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(16, config.width)
        self.mlp = nn.Linear(config.width, config.width)
        nn.init.normal_(self.embed.weight, std=config.init_std)
        nn.init.normal_(self.mlp.weight, std=0.02)  # a literal: ignores init_std

    def forward(self, x):
        return self.mlp(torch.relu(self.embed(x)))


def build():
    return Block(Config()), torch.randn(8, 16)
'''
    good_example = '''\
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Config:
    width: int = 64
    init_std: float = 0.02


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(16, config.width)
        self.mlp = nn.Linear(config.width, config.width)
        nn.init.normal_(self.embed.weight, std=config.init_std)
        nn.init.normal_(self.mlp.weight, std=config.init_std)

    def forward(self, x):
        return self.mlp(torch.relu(self.embed(x)))


def build():
    return Block(Config()), torch.randn(8, 16)
'''

    reads = frozenset({"build", "config"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        scale = model.config_scale
        if scale is None:
            return list(model.layers.values())
        if not scale.attributes:
            return []
        if scale.error:  # nothing compared: every weight's layer is left not judged
            return _layers(model, [n for n, p in model.root.named_parameters() if p.dim() >= 2])
        names = [*scale.follows, *(f.parameter for f in scale.ignores),
                 *(name for name, _ in scale.unknown)]
        return _layers(model, [n for n in names if _is_weight(model, n)])

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        scale = model.config_scale
        if scale is None:
            return {name: NOT_COMPARED for name in model.layers}
        if scale.error:
            why = f"building it again with the config changed failed ({scale.error})" \
                if not scale.error.startswith("the model was given") else scale.error
            return {layer.name: why for layer in self.scope(model, context)}
        out: dict[str, str] = {}
        for name, why in scale.unknown:
            if not _is_weight(model, name):
                continue
            layer = model.layer_of_parameter(name)
            if layer is not None:
                out.setdefault(layer.name, f"{python_path(name)}: {why}")
        return out

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        scale = model.config_scale
        if scale is None or scale.error or not scale.follows:
            return
        wanted = DEFAULT_KINDS if context.option(self, "report") != "all" else tuple(KINDS)
        follows = tuple(n for n in scale.follows if _is_weight(model, n))
        if not follows:
            return
        for fixed in scale.ignores:
            layer = model.layer_of_parameter(fixed.parameter)
            if layer is None or not _is_weight(model, fixed.parameter):
                continue
            kind = kind_of(fixed, scale, _shape(model, fixed.parameter))
            if kind in wanted:
                yield self._finding(layer, fixed, kind, scale, follows)

    def _finding(self, layer: "Layer", fixed: FixedDraw, kind: str, scale: ConfigScale,
                 follows: tuple[str, ...]) -> Finding:
        sibling = nearest(fixed.parameter, follows)
        values = ", ".join(f"`{name}` = {value:g}" for name, value in scale.attributes)
        changed = ", ".join(f"{value * scale.factor:g}" for _, value in scale.attributes)
        message = (f"{python_path(fixed.parameter)} is drawn {fixed.law} whatever the config "
                   f"says ({values}): built again with {changed}, it is drawn the same, while "
                   f"{python_path(sibling)} follows the config: it is drawn with {KINDS[kind]}")
        first = scale.attributes[0][0]
        fix = Fix(title=f"Draw it from the config's `{first}`",
                  code=f"nn.init.normal_({python_path(fixed.parameter)}, "
                       f"std=config.{first})",
                  safe=False, kind=FixKind.MANUAL,
                  manual="which init routine should handle this layer is the model's choice")
        return self.finding(layer, message, parameter=fixed.parameter.rsplit(".", 1)[-1],
                            severity=Severity.INFO if kind == "scheme" else None, fix=fix,
                            data={"kind": kind, "law": fixed.law, "parameter": fixed.parameter,
                                  "follows": sibling,
                                  "config": {name: value for name, value in scale.attributes}})


def kind_of(fixed: FixedDraw, scale: ConfigScale, shape: tuple[int, ...] | None) -> str:
    """Which of ``KINDS`` a draw that does not follow the config is."""
    if fixed.kind in ("normal", "trunc_normal") and fixed.loc == 0:
        if math.isclose(fixed.scale, 1.0, rel_tol=1e-9):
            return "unit"
        if any(math.isclose(fixed.scale, value, rel_tol=1e-9) for _, value in scale.attributes):
            return "literal"
    if fixed.kind == "uniform" and shape is not None and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        if fan_in and math.isclose(fixed.high, 1 / math.sqrt(fan_in), rel_tol=1e-6):
            return "default"
    return "scheme"


def nearest(parameter: str, others: tuple[str, ...]) -> str:
    """The parameter of ``others`` whose qualified name shares the longest prefix of module
    names with ``parameter`` (the first such, in model order)."""
    parts = parameter.split(".")

    def shared(name: str) -> int:
        count = 0
        for a, b in zip(parts, name.split(".")):
            if a != b:
                break
            count += 1
        return count

    return max(others, key=shared)


def _shape(model: "AnalysedModel", qualified: str) -> tuple[int, ...] | None:
    name, _, pname = qualified.rpartition(".")
    try:
        module = model.submodule(name)
    except (AttributeError, KeyError):
        return None
    tensor = getattr(module, pname, None)
    return tuple(tensor.shape) if tensor is not None and hasattr(tensor, "shape") else None


def _is_weight(model: "AnalysedModel", qualified: str) -> bool:
    """A weight matrix, conv kernel, embedding table or stack of experts: what an init scale
    is for (biases and gains are not drawn from it)."""
    shape = _shape(model, qualified)
    return shape is not None and len(shape) >= 2


def _layers(model: "AnalysedModel", names: Iterable[str]) -> list["Layer"]:
    out: dict[str, "Layer"] = {}
    for name in names:
        layer = model.layer_of_parameter(name)
        if layer is not None:
            out.setdefault(layer.name, layer)
    return list(out.values())
