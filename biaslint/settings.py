"""Settings that cross stages. No torch import."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from biaslint.findings import Severity

# The project's cache folder (next to the pyproject.toml read, else in the working directory):
# the --changed-since records, the lint cache, the warm server's socket.
CACHE_DIR = ".biaslint_cache"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class TargetConfig:
    """One thing to lint and what it needs: example input shapes, the device to build on, and
    the inputs rules read besides the model (``inputs``, by setting name: ``class_priors``,
    ``head``, ``target_mean``; see ``biaslint.run.schema``)."""

    target: str
    input_shapes: tuple[tuple[int, ...], ...] = ()
    device: str | None = None  # "meta": build on the meta device (init read from its laws)
    inputs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, target: str, **values: Any) -> TargetConfig:
        """``TargetConfig.of("m.py:build", input_shapes=((2, 8),), class_priors=(0.9, 0.1))``:
        the fields by name, every other keyword a rule input."""
        own = {f.name for f in fields(cls)} - {"target", "inputs"}
        return cls(target, **{k: v for k, v in values.items() if k in own},
                   inputs={k: v for k, v in values.items() if k not in own})


class PluginModule(NamedTuple):
    """A module of rules named in ``plugins`` (``biaslint.rules.plugins``), and the folder it
    is importable from besides the path: the config file's folder, or the working directory
    the command line or ``check()`` was given it in."""

    module: str
    folder: str


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
    # Modules of the project's own rules (``[tool.biaslint] plugins``, ``--plugin``); the rules
    # of installed packages' ``biaslint.rules`` entry points take part without being named.
    plugins: tuple[PluginModule, ...] = ()
