"""A differential build: the model built again on the meta device with its config's init scale
changed, to see which drawn weights follow the config and which do not (BL017).

A config object (``model.config``, a transformers ``PreTrainedConfig`` or any Python object a
module keeps as ``config``) that holds a positive float attribute named like an init scale
(``initializer_range``, ``init_std``, ``initializer_factor``, ``embed_init_std``,
``w_init_variance_scale``...) is the config the init should read. The target is built twice
more on meta (once when the lint already built it there), recording each parameter's init law
(``biaslint.laws``): as written, and with every read of those attributes returning
``FACTOR`` times the value. The reads are changed on the config's class (its
``__getattribute__``), so the user's build runs unchanged and whatever it reads the value
through (the library's ``_init_weights``, a module that copied it in ``__init__``, the user's
own init) sees the new value. A drawn parameter whose law is the same both times does not
follow the config; one whose law moved does.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, Mapping

import torch.nn as nn

from biaslint.findings import ConfigScale, FixedDraw, Location
from biaslint.laws import Law, Piece
from biaslint.load.files import is_project_file
from biaslint.load.sites import frame_location

# Each init-scale attribute is read as this many times its value in the second build.
FACTOR = 10.0

# An attribute named like an init scale: it says init and a word for the spread of a draw.
# Probabilities (a prior's bias) are not scales, nor the starting value of a layer scale or a
# logit scale (``layer_scale_init_value``: a constant, not the spread of a draw).
_SCALE_WORDS = ("std", "range", "factor", "gain", "variance", "init_scale", "initializer_scale")


def is_scale_name(name: str) -> bool:
    low = name.lower()
    return "init" in low and any(w in low for w in _SCALE_WORDS) and "prob" not in low


def _scales_of(obj: Any) -> dict[str, float]:
    values = _items(obj)
    if values is None:
        return {}
    return {k: float(v) for k, v in values.items() if isinstance(k, str) and is_scale_name(k)
            and isinstance(v, float) and v > 0}


def _items(obj: Any) -> dict[Any, Any] | None:
    """A config's values: its attributes, or its entries when it is a mapping (a dict, an
    omegaconf ``DictConfig``)."""
    if isinstance(obj, Mapping) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__")
                                    and not hasattr(obj, "__dict__")):
        try:
            return {k: obj[k] for k in obj.keys()}
        except Exception:  # noqa: BLE001  a mapping that will not list itself
            return None
    values = getattr(obj, "__dict__", None)
    return values if isinstance(values, dict) else None


def _mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) or type(obj).__name__ in ("DictConfig", "ConfigDict")


def configs_of(model: nn.Module) -> list[Any]:
    """The config objects the model's modules keep (``module.config``) that hold an init
    scale, and the sub-configs they hold, each once."""
    found: dict[int, Any] = {}

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in found or depth > 3 or isinstance(obj, (nn.Module, type)):
            return
        values = _items(obj)
        if values is None:
            return
        if _scales_of(obj):
            found[id(obj)] = obj
        for value in values.values():
            if (hasattr(value, "__dict__") and type(value).__name__.endswith(("Config", "Cfg"))) \
                    or _mapping(value):
                visit(value, depth + 1)

    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None:
            visit(config, 0)
    return list(found.values())


def scale_attributes(configs: list[Any]) -> dict[str, float]:
    """The init-scale attributes of the configs and their values as built (the first config's
    value when two configs differ)."""
    out: dict[str, float] = {}
    for config in configs:
        for name, value in _scales_of(config).items():
            out.setdefault(name, value)
    return out


@contextmanager
def scaled_reads(classes: list[type], names: frozenset[str], factor: float) -> Iterator[None]:
    """While active, reading one of ``names`` from an instance of ``classes`` (or of their
    subclasses) gives ``factor`` times its value, when that value is a float."""
    # Subclasses first: each wrapper calls the method its class had before any was patched,
    # so an instance of a patched subclass of a patched class is scaled once.
    ordered = sorted({c for c in classes if c.__module__ != "builtins"},
                     key=lambda c: -len(c.__mro__))
    saved: list[tuple[type, Any]] = []
    try:
        for cls in ordered:
            original: Callable[[Any, str], Any] = getattr(cls, "__getattribute__")
            saved.append((cls, cls.__dict__.get("__getattribute__")))
            setattr(cls, "__getattribute__", _scaling(original, names, factor))
        yield
    finally:
        for cls, own in reversed(saved):
            if own is None:
                delattr(cls, "__getattribute__")
            else:
                setattr(cls, "__getattribute__", own)  # put back as it was


@contextmanager
def recorded_sets(classes: list[type], names: frozenset[str]
                  ) -> Iterator[dict[str, Location]]:
    """While active, each assignment of one of ``names`` on an instance of ``classes`` (or of a
    subclass) notes the line of the project's code that led to it: ``LlamaConfig(...,
    initializer_range=1.0)`` or ``config.initializer_range = 1.0``. Yields attribute -> line
    (the last assignment wins)."""
    ordered = sorted({c for c in classes if c.__module__ != "builtins"},
                     key=lambda c: -len(c.__mro__))
    lines: dict[str, Location] = {}
    saved: list[tuple[type, Any]] = []
    try:
        for cls in ordered:
            original: Callable[[Any, str, Any], None] = getattr(cls, "__setattr__")
            saved.append((cls, cls.__dict__.get("__setattr__")))
            setattr(cls, "__setattr__", _noting(original, names, lines))
        yield lines
    finally:
        for cls, own in reversed(saved):
            if own is None:
                delattr(cls, "__setattr__")
            else:
                setattr(cls, "__setattr__", own)


def _noting(original: Callable[[Any, str, Any], None], names: frozenset[str],
            lines: dict[str, Location]) -> Callable[[Any, str, Any], None]:
    def __setattr__(self: Any, key: str, value: Any) -> None:
        original(self, key, value)
        if key in names:
            # Past the config's own methods (its ``__init__`` assigning what it was given) to
            # the line that gave the value: ``Config(init_std=1.0)``.
            frame = sys._getframe(1)
            while frame is not None and (not is_project_file(frame.f_code.co_filename)
                                         or frame.f_locals.get("self") is self):
                frame = frame.f_back  # type: ignore[assignment]
            if frame is not None:
                lines[key] = frame_location(_giver(frame, key))

    return __setattr__


def _giver(frame: Any, key: str) -> Any:
    """The project's frame that gave the value: past helpers of the project that only pass it
    on, as a parameter of that name or in a mapping of keyword arguments
    (``def make_config(**overrides): return LlamaConfig(**overrides)`` called as
    ``make_config(initializer_range=1.0)``)."""
    for _ in range(8):
        caller = frame.f_back
        passed = key in frame.f_code.co_varnames[:frame.f_code.co_argcount
                                                    + frame.f_code.co_kwonlyargcount] \
            or any(isinstance(value, dict) and key in value for value in frame.f_locals.values())
        if not passed or caller is None or not is_project_file(caller.f_code.co_filename):
            return frame
        frame = caller
    return frame


def _patchable(cls: type) -> bool:
    """Whether the class's attribute reads can be wrapped (not a built-in or extension type):
    tried, and put back as it was."""
    own = cls.__dict__.get("__getattribute__")
    try:
        setattr(cls, "__getattribute__", getattr(cls, "__getattribute__"))
    except (TypeError, AttributeError):
        return False
    if own is None:
        delattr(cls, "__getattribute__")
    else:
        setattr(cls, "__getattribute__", own)
    return True


def _scaling(original: Callable[[Any, str], Any], names: frozenset[str],
             factor: float) -> Callable[[Any, str], Any]:
    def __getattribute__(self: Any, key: str) -> Any:
        value = original(self, key)
        if key in names and isinstance(value, float):
            return value * factor
        return value

    return __getattribute__


Laws = dict[str, "list[Piece] | None"]


def compare(base: Laws, scaled: Laws, attributes: dict[str, float], factor: float = FACTOR,
            writers: dict[str, tuple[int | None, int | None]] | None = None,
            model: nn.Module | None = None) -> ConfigScale:
    """Which drawn parameters' laws moved with the config, which did not, and which could not
    be compared (a law not known, a parameter the second build does not have). ``writers``:
    the modules that made each parameter's last write and answer for it (``last_writers``);
    ``model``: the model built, for where each parameter sits (its module's class, whether the
    init that drew it is the config's to set)."""
    modules = dict(model.named_modules()) if model is not None else {}
    governed = governed_by_scale(model, writers or {}) if model is not None \
        else (lambda name: True)
    owners = {name: id(module) for name, module in modules.items()}
    follows: list[str] = []
    ignores: list[FixedDraw] = []
    unknown: list[tuple[str, str]] = []
    for name, pieces in base.items():
        verdict = _verdict(pieces, scaled.get(name), name in scaled)
        if verdict is None:
            continue
        kind, text = verdict
        if kind == "follows":
            follows.append(name)
        elif kind == "ignores":
            assert pieces is not None
            largest = max((p for p in pieces if p.law.is_random), key=lambda p: p.size).law
            ignores.append(FixedDraw(parameter=name, law=text, kind=largest.kind,
                                     loc=largest.loc, scale=largest.scale, high=largest.high,
                                     own_init=_own(name, owners, writers or {}),
                                     how=largest.how,
                                     governed=governed(name),
                                     module_type=type(modules.get(
                                         name.rsplit(".", 1)[0] if "." in name else "",
                                         model)).__name__))
        else:
            unknown.append((name, text))
    return ConfigScale(attributes=tuple(attributes.items()), factor=factor,
                       follows=tuple(follows), ignores=tuple(ignores), unknown=tuple(unknown))


def _verdict(base: list[Piece] | None, scaled: list[Piece] | None,
             present: bool) -> tuple[str, str] | None:
    if base is None:
        return "unknown", "its init was not recorded"
    laws = [p.law for p in base]
    if not any(law.is_random for law in laws):
        unknown_law = next((law for law in laws if not law.known), None)
        if unknown_law is not None and unknown_law.kind == "unknown":
            return "unknown", f"its values are not known from the build ({unknown_law.how})"
        return None  # not drawn: constants, exact tables, never written (BL012's)
    if not present or scaled is None:
        return "unknown", "the build with the config changed did not record it"
    if [(p.start, p.stop) for p in base] != [(p.start, p.stop) for p in scaled]:
        return "follows", ""  # the regions the init wrote moved: it reads the config
    if any(_key(a.law) != _key(b.law) for a, b in zip(base, scaled)):
        return "follows", ""
    return "ignores", "; ".join(_describe(law) for law in laws if law.is_random)


def _key(law: Law) -> tuple[Any, ...]:
    values = None if law.values is None else tuple(law.values.tolist()[:64])
    return (law.kind, law.value, law.loc, law.scale, law.low, law.high, law.m, law.s, values)


def _describe(law: Law) -> str:
    if law.kind == "normal":
        return f"N({law.loc:.3g}, {law.scale:.3g})"
    if law.kind == "trunc_normal":
        return f"N({law.loc:.3g}, {law.scale:.3g}) cut to [{law.low:.3g}, {law.high:.3g}]"
    if law.kind == "uniform":
        return f"U({law.low:.3g}, {law.high:.3g})"
    return f"{law.kind} with std {law.std:.3g}"


def _owner_name(qualified: str) -> str:
    return qualified.rsplit(".", 1)[0] if "." in qualified else ""


def _own(name: str, owners: dict[str, int],
         writers: dict[str, tuple[int | None, int | None]]) -> bool:
    """Whether the parameter's last write was its own module's constructor."""
    writer = writers.get(name, (None, None))[0]
    return writer is not None and writer == owners.get(_owner_name(name))


def _package(cls: type) -> str:
    """The installed library a class comes from; all of the user's own code counts as one."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None) or ""
    if "site-packages" in path or "dist-packages" in path:
        return cls.__module__.split(".", 1)[0]
    return "<user>"


def governed_by_scale(model: nn.Module, writers: dict[str, tuple[int | None, int | None]]
                      ) -> Callable[[str], bool]:
    """For a parameter's qualified name: whether the init that drew it is the config's to set.
    Not when the nearest module up its tree that keeps a ``config`` keeps one with no init
    scale (a sub-model reading a config of its own), nor when the module whose constructor
    drew it comes from another installed library than that config's model, torch aside (a
    timm backbone inside a transformers model, a peft adapter added to one: their init is their
    library's; the user's own code counts as one package)."""
    modules = dict(model.named_modules())
    by_id = {id(module): module for module in modules.values()}

    def holder(qualified: str) -> nn.Module | None:
        """The nearest module up the tree that keeps a config of its own (an attribute, not
        a property that reads another module's, as a peft wrapper's does)."""
        name = _owner_name(qualified)
        while True:
            module = modules.get(name)
            config = vars(module).get("config") if module is not None else None
            if config is not None and not isinstance(config, nn.Module):
                return module
            if not name:
                return None
            name = _owner_name(name)

    def governed(qualified: str) -> bool:
        model_with = holder(qualified)
        if model_with is None:
            return False  # outside every module that keeps the config
        if not _scales_of(getattr(model_with, "config")):
            return False
        writer = by_id.get(writers.get(qualified, (None, None))[1] or 0)
        if writer is None:
            return True
        packages = {_package(type(writer)), _package(type(model_with))}
        return "torch" in packages or len(packages) == 1

    return governed


def config_scale(model: nn.Module, base: Laws | None, build_on_meta: Callable[[], Laws],
                 writers: dict[str, tuple[int | None, int | None]] | None = None
                 ) -> ConfigScale | None:
    """The differential build of ``model``: None when it keeps no config with an init scale.
    ``base``: the laws of the build as written, when the lint built it on meta (else it is
    built once more, on meta). ``build_on_meta`` builds the target on meta and gives each
    parameter's laws; a build that fails gives a ``ConfigScale`` with the error. ``writers``:
    the modules that made each parameter's last write and answer for it (``last_writers``)."""
    configs = configs_of(model)
    attributes = scale_attributes(configs)
    if not attributes:
        return None
    classes = [type(c) for c in configs]
    fixed = [c for c in configs if _mapping(c) or not _patchable(type(c))]
    if fixed:
        kind = type(fixed[0])
        return ConfigScale(attributes=tuple(attributes.items()), factor=FACTOR,
                           error=f"its config is a {kind.__module__}.{kind.__qualname__}, "
                                 "whose reads biaslint cannot change (a mapping, or a built-in "
                                 "type); keep the init scale in a dataclass or a class of your "
                                 "own")
    try:
        if base is None:
            base = build_on_meta()
        with scaled_reads(classes, frozenset(attributes), FACTOR), \
                recorded_sets(classes, frozenset(attributes)) as lines:
            scaled = build_on_meta()
    except Exception as exc:  # noqa: BLE001  the user's build: its error is the reason
        what = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return ConfigScale(attributes=tuple(attributes.items()), factor=FACTOR,
                           error=f"building it again with the config changed failed ({what})")
    found = compare(base, scaled, attributes, writers=writers, model=model)
    return replace(found, set_at=tuple(sorted(lines.items())))


def given_built(model: nn.Module) -> ConfigScale:
    """A model handed over already built (``check(model)``): there is no build to run again.
    Its config's init scale, if any, is named with that reason (BL017 does not judge it)."""
    attributes = scale_attributes(configs_of(model))
    if not attributes:
        return ConfigScale(attributes=(), factor=0.0)
    return ConfigScale(attributes=tuple(attributes.items()), factor=FACTOR,
                       error="the model was given already built, so it cannot be built again "
                             "with the config changed; lint the function that builds it")
