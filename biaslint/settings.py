"""Settings that cross stages. No torch import."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from biaslint.findings import Severity


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class TargetConfig:
    """One thing to lint and what it needs: example input shapes, class priors, head kind."""

    target: str
    input_shapes: tuple[tuple[int, ...], ...] = ()
    class_priors: tuple[float, ...] | None = None
    head: str | None = None
    device: str | None = None  # "meta": build on the meta device (init read from its laws)
    target_mean: tuple[float, ...] | None = None  # BL008: the regression target's mean(s)


@dataclass(frozen=True)
class Settings:
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: Severity = Severity.WARNING
    severity_overrides: Mapping[str, Severity] = field(default_factory=_frozen)
    rule_options: Mapping[str, Mapping[str, Any]] = field(default_factory=_frozen)
    per_module_ignores: Mapping[str, tuple[str, ...]] = field(default_factory=_frozen)
    debug: bool = False
    # Exit 0/1 even when part of a model went unjudged (``TargetResult.incomplete``).
    allow_incomplete: bool = False
    # Measure signal propagation (``analysis.signal``) for the reports that show it (html,
    # json, the Python API): one more real forward and backward per target.
    signal: bool = False
    # Record the project files each target's build and forward run (``TargetResult.sources``),
    # for ``--changed-since`` (``biaslint.run.changes``).
    record_sources: bool = False
