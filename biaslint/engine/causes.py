"""What findings share, so the reports can say it once (``Finding.cause``).

A finding's cause is the first of these that holds (the first two only for a rule whose claim
is about the values an init drew, ``Rule.grouped_by == "init"``):

- **config**: its parameter was drawn by an init that reads a value the model's config holds,
  and the user changed that value from the config class's default (``initializer_range=1.0``
  where ``LlamaConfig`` says 0.02). That the draw follows the value is not guessed from numbers:
  the target is built once more on meta with the value changed (``load.differential``), only
  when some finding could have such a cause. The cause names the attribute, its value, the
  user's line that set it, and the fix is that one number.
- **init**: the init call that last wrote its parameter, with its arguments and its line.
- **line**: the line that constructed its layer.

The reports group the findings of one rule that share a cause (``report.groups``).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from biaslint.findings import Cause, ConfigScale, Finding

if TYPE_CHECKING:
    from biaslint.load.build import LoadedTarget


def with_causes(findings: list[Finding], loaded: LoadedTarget) -> list[Finding]:
    """Each finding with its cause (findings without a place and a parameter keep none)."""
    from biaslint.rules import rule_by_code

    about_init = {code for code in {f.code for f in findings}
                  if getattr(rule_by_code(code), "grouped_by", "line") == "init"}
    configured = _configured([f for f in findings if f.code in about_init], loaded)
    result = []
    for finding in findings:
        cause = None
        if finding.code in about_init:
            cause = configured.get(_qualified(finding)) if finding.parameter else None
            cause = cause or _init_cause(finding, loaded)
        cause = cause or _line_cause(finding)
        result.append(replace(finding, cause=cause) if cause is not None else finding)
    return result


def _qualified(finding: Finding) -> str:
    return f"{finding.module}.{finding.parameter}" if finding.module else finding.parameter


def _init_cause(finding: Finding, loaded: LoadedTarget) -> Cause | None:
    call = loaded.param_inits.get(_qualified(finding)) if finding.parameter else None
    if call is None or call.location is None:
        return None
    loc = call.location
    return Cause(kind="init", key=f"init {call.name}({call.args}) @ {loc.file}:{loc.line}",
                 text=f"{call.describe()} at {loc.shown}", location=loc)


def _line_cause(finding: Finding) -> Cause | None:
    loc = finding.location
    if loc is None:
        return None
    return Cause(kind="line", key=f"line @ {loc.file}:{loc.line}:{loc.col}",
                 text=f"the layers built at {loc.shown}", location=loc)


def _configured(findings: list[Finding], loaded: LoadedTarget) -> dict[str, Cause]:
    """Parameter -> its config cause, for the findings' parameters drawn from a config value
    the user changed. The differential build runs only when such a value exists."""
    from biaslint.load.differential import configs_of, is_scale_name

    params = {_qualified(f) for f in findings if f.parameter}
    if not params:
        return {}
    changed: dict[str, tuple[Any, float, Any]] = {}  # attribute -> (config, value, default)
    for config in configs_of(loaded.model):
        for name, value, default in _changed_scales(config, is_scale_name):
            changed.setdefault(name, (config, value, default))
    if not changed:
        return {}
    scale: ConfigScale | None = loaded.config_compared()
    if scale is None or scale.error:
        return {}
    follows = params & set(scale.follows)
    if not follows:
        return {}
    set_at = dict(scale.set_at)
    causes: dict[str, Cause] = {}
    for param in follows:
        attribute = _attribute_of(param, changed, loaded)
        if attribute is None:
            continue
        name = attribute
        config, value, default = changed[name]
        cls = type(config).__name__
        where = set_at.get(name)
        text = (f"drawn from {cls}.{name} = {_number(value)}" +
                (f" set at {where.shown}" if where is not None else "") +
                f"; {cls}'s default is {_number(default)}")
        fix = (f"set `{name}` near {_number(default)} ({cls}'s default)" +
               (f" at {where.shown}" if where is not None else f" where the {cls} is made"))
        causes[param] = Cause(kind="config", key=f"config {cls}.{name}={value!r}", text=text,
                              location=where, fix=fix)
    return causes


def _number(value: float) -> str:
    text = f"{value:g}"
    return text if any(c in text for c in ".en") else text + ".0"


def _changed_scales(config: Any, is_scale: Any) -> list[tuple[str, float, float]]:
    """The config's init-scale attributes whose value differs from its class's default (the
    default its ``__init__`` signature gives)."""
    found = []
    for name in dir(config) if not isinstance(config, dict) else ():
        if name.startswith("_") or not is_scale(name):
            continue
        try:
            value = getattr(config, name)
        except Exception:  # a property that raises: not a value the init reads
            continue
        if not isinstance(value, float) or isinstance(value, bool) or value <= 0:
            continue
        default = _default_of(type(config), name)
        if isinstance(default, (int, float)) and not isinstance(default, bool) \
                and float(default) != value:
            found.append((name, value, float(default)))
    return found


def _default_of(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameter = inspect.signature(init).parameters.get(name)
        except (TypeError, ValueError):
            continue
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def _attribute_of(param: str, changed: dict[str, tuple[Any, float, Any]],
                  loaded: LoadedTarget) -> str | None:
    """Which changed attribute the parameter's draw follows: the only one, or the one whose
    value is the draw's scale; None when that cannot be told."""
    if len(changed) == 1:
        return next(iter(changed))
    drawn = _drawn_scale(param, loaded)
    if drawn is None:
        return None
    scale, tolerance = drawn
    matching = [name for name, (_, value, _) in changed.items()
                if abs(value - scale) <= tolerance * value]
    return matching[0] if len(matching) == 1 else None


def _drawn_scale(param: str, loaded: LoadedTarget) -> tuple[float, float] | None:
    """The scale of the parameter's draw and how closely it is known: exactly from its law on
    meta, within 10% from its values (a sample's spread) otherwise."""
    laws = loaded.param_laws
    if laws is not None:
        pieces = laws.get(param)
        drawn = [p for p in pieces or () if p.law.is_random]
        return (max(drawn, key=lambda p: p.size).law.scale, 1e-6) if drawn else None
    tensor = dict(loaded.model.named_parameters()).get(param)
    if tensor is None or tensor.numel() < 100 or tensor.is_meta:
        return None
    return float(tensor.detach().float().std()), 0.1
