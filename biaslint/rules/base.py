"""The rule API. A rule is one file: its code, name, docs, examples and ``check``; or, when it
needs more, a package whose ``__init__`` holds the rule class (metadata and docs) and whose
``check.py`` holds the check, its verdicts as small functions, beside the modules they use.

Rule modules must not import torch at module level: ``biaslint rules`` and ``biaslint rule CODE``
read their metadata without paying for torch. Import it inside ``check`` (a package's
``__init__`` imports its ``check.py`` there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping

from biaslint.findings import Finding, Fix, Location, Severity

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


@dataclass(frozen=True)
class Option:
    """A per-rule option, set under ``[tool.biaslint.rules.CODE]`` or its defaults."""

    name: str
    default: Any
    help: str


@dataclass(frozen=True)
class RuleContext:
    """What a rule may read besides the model: its options and target-level settings."""

    options: Mapping[str, Any] = field(default_factory=dict)
    # The target's values of the inputs the rule names in ``Rule.inputs`` (None where not
    # given), and of those only: reading another is a KeyError.
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def option(self, rule: "Rule", name: str) -> Any:
        for opt in rule.options:
            if opt.name == name:
                return self.options.get(name, opt.default)
        raise KeyError(name)


class Rule:
    code: ClassVar[str]
    name: ClassVar[str]  # kebab-case, names the problem
    severity: ClassVar[Severity]
    summary: ClassVar[str]
    # Documentation in ruff's sections; Markdown.
    what_it_does: ClassVar[str]
    why_bad: ClassVar[str]
    fix_text: ClassVar[str] = ""
    references: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[Option, ...]] = ()
    # What the rule reads besides the model, by setting name: rows of ``biaslint.run.schema``
    # of scope "input" (the user gives them per target, on the command line or in Python).
    inputs: ClassVar[tuple[str, ...]] = ()
    # Complete Python modules that define ``build()``; the tests lint both.
    bad_example: ClassVar[str]
    good_example: ClassVar[str]
    # What the examples' target needs besides its source (``TargetConfig.of``'s keywords), e.g.
    # {"class_priors": (0.99, 0.01)} for BL005.
    example_target: ClassVar[Mapping[str, Any]] = {}

    # What the rule reads to judge a layer: "graph" (the captured forward) and "values" (the
    # parameter values at init). The engine records a layer in ``scope`` whose graph or values
    # it could not read as not judged, with the reason, and never as clean.
    # "forward": it judges with a real forward on the example inputs, so without one (no
    # inputs, the meta device) it does not run. "measure": it derives its claims without one,
    # and checks them on a real forward when there is one (a claim the measurement does not
    # show goes to ``AnalysedModel.disagree`` instead of the report); "output": the same, and
    # what it checks them on is what the model returns. All three get the shared forward
    # through ``forward_needs``. "build": it reads only what the recorded build wrote (BL012),
    # so nothing blocks it; the engine still counts its scope and what it ``declined``.
    # "laws": beside "forward", on the meta device (example inputs known, parameters without
    # values) it still runs, and judges from the init laws the layers they settle, declining
    # the others with the reason (``declined``). "config": the load stage builds the target
    # again on meta with its config's init scale changed (``AnalysedModel.config_scale``, BL017).
    # "gradients": it reads the parameter screen (``AnalysedModel.silent_parameters``, BL015),
    # which then shares the bias screen's training-mode forward and backwards.
    reads: ClassVar[frozenset[str]] = frozenset()
    # What the rule's findings account for, so that the engine need not call it unreadable:
    # "unwritten" (BL012) for the NaN or Inf a parameter holds in entries no call of the build
    # wrote (the memory's leftovers, which the finding reports as such).
    explains: ClassVar[frozenset[str]] = frozenset()
    # Whether a finding about a frozen parameter (requires_grad=False) still stands. Most rules
    # claim something about training, which a frozen parameter does not have; a parameter that
    # holds garbage (BL012) is wrong in the forward whether it trains or not.
    frozen_matters: ClassVar[bool] = False
    # What its findings share when the reports group them (``engine.causes``): "init" for a
    # rule whose claim is about the values an init drew (its findings group by the init call
    # and its arguments, or by the config value the init read), "line" for one about how the
    # layer was built (they group by the constructor line).
    grouped_by: ClassVar[str] = "line"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        """The layers this rule applies to (the ones it must judge for a pass to be true)."""
        return []

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        """Layers of ``scope`` the rule does not judge, by name, with why (an output layer it
        cannot tell is a classifier). The engine records them as not judged, with the reason,
        and says so in a note; unlike a graph or values it could not read, they do not make the
        analysis incomplete: the reason names what would have them judged. A reason that starts
        with ``NOT_MEASURED`` is a measurement the rule needed and could not make: that does make
        the analysis incomplete."""
        return {}

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        """For a rule that reads a real forward ("forward" or "measure"): the layers whose
        outputs (and first inputs) it will read, and whether it reads the attention measure.
        The engine runs one forward for all rules; a layer left out here is still measured when
        asked for, in a forward of its own."""
        return [layer.name for layer in self.scope(model, context)], False

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        raise NotImplementedError

    def at_module(self, finding: Finding, model: "AnalysedModel", name: str) -> Finding:
        """A finding judged at a layer inside module ``name`` (``layer_within``), put back on
        that module: its name, type and construction site."""
        if name == finding.module:
            return finding
        module = model.submodule(name)
        site = model.construction_site(name)
        return replace(finding, module=name, module_type=type(module).__name__,
                       location=site or finding.location)

    # Helpers so every rule builds findings the same way.
    def finding(
        self,
        layer: "Layer",
        message: str,
        *,
        parameter: str = "",
        severity: Severity | None = None,
        fix: Fix | None = None,
        location: Location | None = None,
        data: dict[str, Any] | None = None,
    ) -> Finding:
        return Finding(
            code=self.code,
            name=self.name,
            severity=severity or self.severity,
            module=layer.name,
            module_type=layer.type_name,
            message=message,
            location=location or layer.site,
            fix=fix,
            parameter=parameter,
            data=data or {},
        )
