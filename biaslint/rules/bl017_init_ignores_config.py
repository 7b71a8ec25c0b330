"""BL017: a drawn weight whose init scale does not follow the config's, while its siblings do."""

from __future__ import annotations

import math
import os
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
    # N(0, v) where v is the value the config holds, written as a literal (in a layer's
    # constructor or the model's init) under a config that has the attribute: a user who
    # changes the config does not change this weight.
    "literal": "the config's value written as a literal",
    # N(0, 1) on the weight of a linear map (a Linear, a conv): normal_() with no std.
    "unit": "a standard normal, normal_() with no std",
    # The layer's own constructor draw (its __init__ or reset_parameters), which no init call
    # of the model replaced: the model's init never handles that layer type.
    "default": "its layer's constructor default, which the model's init never replaced",
    # Inside a sub-model whose own config has no init scale (each sub-model reads its own
    # config; a generic init falls back to a literal): the top config's value does not reach it.
    "fallback": "the init of a sub-model whose own config has no init scale",
    # Anything else: xavier, kaiming, a std computed from the width, an explicit restatement of
    # PyTorch's default, a standard-normal table or query. Usually a documented scheme.
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

- **literal**: drawn with the config's value, but as a literal (`normal_(std=0.02)` in a
  layer's constructor or the model's init), where the config holds the attribute;
- **default**: the layer's own constructor draw (its `__init__` or `reset_parameters`) that no
  init call of the model replaced: the model's init never handles that layer type;
- **unit**: a standard normal on the weight of a linear map (`normal_()` with no std).

Two more kinds are reported, as info, only with `report = "all"`: **fallback**, a weight of a
sub-model whose own config has no init scale (each sub-model reads its own config, and a generic
init falls back to a literal, so the top config's value does not reach it), and **scheme**,
any other draw (xavier, kaiming, a std computed from the width, an explicit restatement of
PyTorch's default, a standard-normal table or query), usually a documented scheme of its own.
The survey over every transformers architecture that set these defaults is in
`benchmarks/RESULTS.md`.

A weight behind an init call that BL016 reports as written to a computed weight (a
weight-normed conv) is left to BL016, which names the cause.

Nothing is reported for a model none of whose weights follow the config (its init reads
something else), nor for a model without such a config. Each build runs the
target's build function again, on meta (no values are drawn); a build that fails, or a model
given already built (`check(model)`), leaves the layers not judged, with the reason. So does a
config whose reads cannot be changed: a mapping (a dict, an omegaconf `DictConfig`) or a
built-in type such as `types.SimpleNamespace`; keep the init scale in a dataclass or a class of
your own.
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
               "the fallback and scheme kinds (info)."),
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
            return {layer.name: scale.error for layer in self.scope(model, context)}
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
        # An init written to a computed weight (BL016) is why the parameters behind it keep
        # their draw: that finding names the cause, this one would repeat it.
        lost = {p for call in model.lost_inits or () if call.kind == "computed"
                for p in call.parameters}
        for fixed in scale.ignores:
            layer = model.layer_of_parameter(fixed.parameter)
            if layer is None or not _is_weight(model, fixed.parameter) \
                    or fixed.parameter in lost:
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
                            severity=Severity.INFO if kind not in DEFAULT_KINDS else None, fix=fix,
                            data={"kind": kind, "law": fixed.law, "parameter": fixed.parameter,
                                  "follows": sibling,
                                  "config": {name: value for name, value in scale.attributes}})


def kind_of(fixed: FixedDraw, scale: ConfigScale, shape: tuple[int, ...] | None) -> str:
    """Which of ``KINDS`` a draw that does not follow the config is."""
    # A fan-based scheme can land on 1 or on the config's value by its shape alone
    # (kaiming_normal_ with fan_out 2 draws N(0, 1)): only a plain normal draw is a literal.
    normal = fixed.kind in ("normal", "trunc_normal") and fixed.loc == 0 \
        and not any(word in fixed.how for word in _FAN_BASED)
    pname = fixed.parameter.rsplit(".", 1)[-1]
    linear_map = pname.endswith("weight") and shape is not None and len(shape) >= 2 \
        and not _table(fixed)
    if normal and linear_map and math.isclose(fixed.scale, 1.0, rel_tol=1e-9) \
            and not fixed.own_init:
        return "unit"  # wrong whatever the config: its own config or none
    if not fixed.governed:
        return "fallback"
    # A config value of 1 is a gain or factor (init_xavier_std, initializer_factor): a unit
    # normal matching it is not a literal of it.
    if normal and any(math.isclose(fixed.scale, value, rel_tol=1e-9) and value != 1.0
                      for _, value in scale.attributes):
        return "literal"
    if fixed.own_init:
        return "default"
    return "scheme"


_FAN_BASED = ("kaiming", "xavier", "orthogonal")


def _table(fixed: FixedDraw) -> bool:
    """An embedding table (rows looked up, not a linear map)."""
    return fixed.module_type in ("Embedding", "EmbeddingBag")


def nearest(parameter: str, others: tuple[str, ...]) -> str:
    """The parameter of ``others`` whose qualified name shares the longest prefix of module
    names with ``parameter`` (the first such, in model order)."""
    parts = parameter.split(".")
    return max(others, key=lambda name: len(os.path.commonprefix([parts, name.split(".")])))


def _shape(model: "AnalysedModel", qualified: str) -> tuple[int, ...] | None:
    try:
        return tuple(model.root.get_parameter(qualified).shape)
    except AttributeError:
        return None


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
