"""A project's own rules: plugin modules and installed packages' entry points.

Two ways in, both resolved to ``Rule`` subclasses that go through the same checks:

* a module named in ``[tool.biaslint] plugins`` (or ``--plugin``, or ``check(plugins=...)``),
  imported with the config file's folder (or the working directory) importable;
* an installed package's entry point in the group ``biaslint.rules``, which names a ``Rule``
  subclass (``acme = "acme_rules:AlignedLinear"``) or a module (``acme = "acme_rules"``).

A module contributes every ``Rule`` subclass it defines (not those it imports), except those
whose name starts with an underscore (a shared base class). Each rule must carry the metadata
of a built-in one (``code``, ``name``, ``severity``, ``summary``, ``what_it_does``, ``why_bad``,
``bad_example``, ``good_example``) and a ``check``; its code is 2-4 capital letters then 3
digits (``ACME001``), never with the ``BL`` prefix (biaslint's own), and no other rule's.
Anything else is a ``ConfigError``: one line saying what, where and what to do.

The loader imports the plugins' modules and nothing else of the user's; it never prints.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import types
from typing import Any, Iterable, Sequence

from biaslint.errors import ConfigError
from biaslint.findings import Severity
from biaslint.rules import REGISTRY, Option, Rule
from biaslint.settings import PluginModule

GROUP = "biaslint.rules"
CODE = re.compile(r"[A-Z]{2,4}[0-9]{3}")
RESERVED = "BL"
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
TEXTS = ("name", "summary", "what_it_does", "why_bad", "bad_example", "good_example")
READS = frozenset({"graph", "values", "forward", "measure", "output", "build", "laws",
                   "config"})


def load_plugins(modules: Sequence[PluginModule] = (), *,
                 entry_points: bool = True) -> tuple[type[Rule], ...]:
    """The rules of ``modules`` and (with ``entry_points``) of the installed packages' entry
    points in ``biaslint.rules``, each checked; a ``ConfigError`` for the first problem."""
    found: list[tuple[type[Rule], str]] = []
    for plugin in modules:
        where = f"plugin module {plugin.module!r}"
        found += [(rule, where) for rule in module_rules(_import(plugin), where)]
    if entry_points:
        found += entry_point_rules()
    return checked(found)


def _import(plugin: PluginModule) -> types.ModuleType:
    """The module, imported with its folder importable (last, so it cannot stand in for an
    installed module) while the import runs."""
    added = plugin.folder not in sys.path
    if added:
        sys.path.append(plugin.folder)
    try:
        return importlib.import_module(plugin.module)
    except Exception as exc:
        raise ConfigError(f"plugin module {plugin.module!r} cannot be imported "
                          f"({_failure(exc)}); install it, or put it in {plugin.folder}, and "
                          "make it import without error") from exc
    finally:
        if added and plugin.folder in sys.path:
            sys.path.remove(plugin.folder)


def _failure(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def module_rules(module: types.ModuleType, where: str) -> list[type[Rule]]:
    """The ``Rule`` subclasses ``module`` defines, public ones only, in the order written."""
    rules = [value for name, value in vars(module).items()
             if inspect.isclass(value) and issubclass(value, Rule) and value is not Rule
             and value.__module__ == module.__name__ and not name.startswith("_")]
    if not rules:
        raise ConfigError(f"{where} defines no Rule subclass; define one there (class "
                          "MyRule(biaslint.rules.Rule) with code, name, ... and check), or name "
                          "the module that does")
    return rules


def entry_point_rules() -> list[tuple[type[Rule], str]]:
    """The rules of every installed entry point in ``biaslint.rules``, with where each is.

    A lint asks three times (the configuration, the rules, the report), and reading every
    installed distribution's metadata costs 10 ms each time: the answer is kept while no folder
    on ``sys.path`` changed (installing or removing a distribution changes its folder's
    listing, so a notebook that installs a plugin sees it on its next lint)."""
    key = _path_stamp()
    if _FOUND and _FOUND[0] == key:
        return list(_FOUND[1])
    found = _entry_point_rules()
    _FOUND[:] = [key, list(found)]
    return found


_FOUND: list[Any] = []  # [the sys.path stamp, the rules found then]


def _path_stamp() -> tuple[tuple[str, int], ...]:
    """Each folder on ``sys.path`` with the time its listing last changed."""
    stamp = []
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")  # "" is the working folder, wherever it is now
        try:
            stamp.append((folder, os.stat(folder).st_mtime_ns))
        except OSError:
            stamp.append((folder, -1))
    return tuple(stamp)


def _entry_point_rules() -> list[tuple[type[Rule], str]]:
    from importlib.metadata import entry_points

    found: list[tuple[type[Rule], str]] = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: (p.name, p.value)):
        dist = getattr(point, "dist", None)
        owner = f" of {dist.name} {dist.version}" if dist is not None else ""
        where = f"entry point {point.name} = {point.value!r}{owner} (group {GROUP})"
        try:
            loaded = point.load()
        except Exception as exc:
            raise ConfigError(f"{where} cannot be loaded ({_failure(exc)}); reinstall the "
                              "package or uninstall it") from exc
        if isinstance(loaded, types.ModuleType):
            found += [(rule, where) for rule in module_rules(loaded, where)]
        elif inspect.isclass(loaded) and issubclass(loaded, Rule):
            found.append((loaded, where))
        else:
            raise ConfigError(f"{where} names {type(loaded).__name__} {loaded!r}, not a Rule "
                              "subclass or a module; point it at one")
    return found


def checked(found: Iterable[tuple[type[Rule], str]]) -> tuple[type[Rule], ...]:
    """Each rule once (a module named in ``plugins`` may also be installed), each checked."""
    taken = {rule.code: "biaslint" for rule in REGISTRY}
    rules: list[type[Rule]] = []
    for rule, where in found:
        if rule in rules:
            continue
        label = f"rule {rule.__module__}.{rule.__qualname__} ({where})"
        check_rule(rule, label)
        if rule.code in taken:
            raise ConfigError(f"{label}: code {rule.code} is taken by {taken[rule.code]}; give "
                              "it a code of its own")
        taken[rule.code] = f"{rule.__module__}.{rule.__qualname__}"
        rules.append(rule)
    return tuple(rules)


def check_rule(rule: type[Rule], label: str) -> None:
    """A ``ConfigError`` naming the first thing ``rule`` lacks to be a rule like the built-in
    ones."""
    code = getattr(rule, "code", None)
    if not isinstance(code, str):
        raise ConfigError(f"{label}: no code; set code = \"ACME001\" (2-4 capital letters "
                          "then 3 digits)")
    if not CODE.fullmatch(code):
        raise ConfigError(f"{label}: code {code!r} does not look like a rule code; use 2-4 "
                          "capital letters then 3 digits, like ACME001")
    if code.startswith(RESERVED):
        raise ConfigError(f"{label}: code {code} has the prefix {RESERVED}, which is "
                          "biaslint's own; use your team's prefix, like ACME001")
    for attribute in TEXTS:
        value = getattr(rule, attribute, None)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{label}: {attribute} is missing or empty; every rule has a "
                              f"name, a summary, docs and examples ({', '.join(TEXTS)})")
    if not NAME.fullmatch(rule.name):
        raise ConfigError(f"{label}: name {rule.name!r} is not kebab-case; name the problem "
                          "like \"linear-width-unaligned\"")
    if not isinstance(getattr(rule, "severity", None), Severity):
        raise ConfigError(f"{label}: severity must be a biaslint.findings.Severity (ERROR, "
                          f"WARNING or INFO), not {getattr(rule, 'severity', None)!r}")
    if rule.check is Rule.check:
        raise ConfigError(f"{label}: no check(self, model, context); define it, yielding "
                          "Findings (self.finding(layer, message, fix=...))")
    _check_tables(rule, label)


def _check_tables(rule: type[Rule], label: str) -> None:
    problems: list[tuple[str, Any]] = [
        ("options", None if _all(rule.options, Option) else "a tuple of biaslint.rules.Option"),
        ("inputs", None if _all(rule.inputs, str) else "a tuple of setting names"),
        ("references", None if _all(rule.references, str) else "a tuple of strings"),
        ("reads", None if isinstance(rule.reads, frozenset) and rule.reads <= READS
         else f"a frozenset of {', '.join(sorted(READS))}"),
    ]
    for attribute, wanted in problems:
        if wanted is not None:
            raise ConfigError(f"{label}: {attribute} must be {wanted}, not "
                              f"{getattr(rule, attribute)!r}")


def _all(values: Any, kind: type) -> bool:
    return isinstance(values, tuple) and all(isinstance(v, kind) for v in values)
