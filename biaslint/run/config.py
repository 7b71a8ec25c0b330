"""``[tool.biaslint]`` in pyproject.toml: find it, read it, validate every key. No torch import.

Precedence is defaults < pyproject < command line (deptry's and ruff's order). The file is the
nearest ``pyproject.toml`` upward from the current directory that has a ``[tool.biaslint]`` table,
or the one given with ``--config``. An unknown key or a value of the wrong type is a
``ConfigError`` naming the key and the file: a typo must never silently turn a check off.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from biaslint.errors import ConfigError
from biaslint.findings import Severity
from biaslint.report import FORMATS

if TYPE_CHECKING:
    from biaslint.rules.base import Rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


HEADS = ("softmax", "sigmoid")

_TOP_KEYS = ("targets", "select", "ignore", "fail-on", "format", "per-module-ignores", "severity",
             "rules", "allow-incomplete")
_TARGET_KEYS = ("target", "input-shape", "class-priors", "head", "device", "target-mean")
DEVICES = ("cpu", "meta")


@dataclass(frozen=True)
class ConfiguredTarget:
    """One entry of ``targets``: the target string and what it needs, as written in the file."""

    target: str
    input_shapes: tuple[tuple[int, ...], ...] = ()
    class_priors: str | None = None  # the --class-priors syntax: "0.9,0.1" or "@file"
    head: str | None = None
    device: str | None = None
    target_mean: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FileConfig:
    """The validated ``[tool.biaslint]`` table. ``None`` means the key was not set."""

    path: Path | None = None
    targets: tuple[ConfiguredTarget, ...] = ()
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    fail_on: Severity | None = None
    format: str | None = None
    per_module_ignores: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    severity: Mapping[str, Severity] = field(default_factory=dict)
    rule_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    allow_incomplete: bool | None = None

    @property
    def root(self) -> Path | None:
        """The folder the file is in: configured paths are relative to it."""
        return self.path.parent if self.path is not None else None


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml at or above ``start`` that has a ``[tool.biaslint]`` table."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file() and _has_table(path):
            return path
    return None


def _has_table(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        if "tool.biaslint" in text:
            # Our table is in a file no parser can read: skipping it would drop the user's
            # ignore/fail-on/severity settings without a word.
            raise ConfigError(f"{_shown(path)}: not valid TOML: {exc}; fix the file "
                              "(biaslint reads its [tool.biaslint] table)") from None
        return False  # not ours to judge: the file holds no biaslint settings
    tool = data.get("tool")
    return isinstance(tool, dict) and "biaslint" in tool


def load_config(explicit: str | None = None, start: Path | None = None) -> FileConfig:
    """Read ``explicit`` (``--config``) or the nearest configured pyproject.toml."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"--config {explicit}: no such file")
    else:
        found = find_pyproject(start)
        if found is None:
            return FileConfig()
        path = found
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_shown(path)}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_shown(path)}: cannot read it: {exc}") from None
    tool = data.get("tool", {})
    table = tool.get("biaslint", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{_shown(path)}: [tool.biaslint] must be a table")
    return parse_table(table, path)


def _shown(path: Path) -> str:
    """The file as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_table(table: Mapping[str, Any], path: Path) -> FileConfig:
    """Validate a ``[tool.biaslint]`` table; raise ``ConfigError`` naming the key and the file."""
    reader = _Reader(path)
    reader.check_keys(table, _TOP_KEYS, "tool.biaslint")
    fail_on = table.get("fail-on")
    fmt = table.get("format")
    return FileConfig(
        path=path,
        targets=tuple(reader.target(entry, f"tool.biaslint.targets[{i}]")
                      for i, entry in enumerate(reader.typed(table, "targets", list, []))),
        select=reader.codes(table, "select"),
        ignore=reader.codes(table, "ignore"),
        fail_on=None if fail_on is None else reader.severity(fail_on, "tool.biaslint.fail-on"),
        format=None if fmt is None else reader.choice(fmt, FORMATS, "tool.biaslint.format"),
        per_module_ignores=reader.per_module_ignores(table),
        severity=reader.severity_table(table),
        rule_options=reader.rule_options(table),
        allow_incomplete=(reader.typed(table, "allow-incomplete", bool, False)
                          if "allow-incomplete" in table else None),
    )


class _Reader:
    """Type checks with messages that say which key of which file is wrong and what it wants."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{_shown(self.path)}: {key}: {problem}")

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key.replace("_", "-"), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else \
                    f" (known keys: {', '.join(allowed)})"
                raise self.error(f"{where}.{key}", f"unknown key{hint}")

    def typed(self, table: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
        value = table.get(key, default)
        if not isinstance(value, kind):
            raise self.error(f"tool.biaslint.{key}",
                             f"must be {_KIND_NAMES[kind]}, not {_describe(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_describe(value)}")
        return value

    def choice(self, value: Any, choices: tuple[str, ...], key: str) -> str:
        text = self.string(value, key)
        if text not in choices:
            raise self.error(key, f"{text!r} is not one of {', '.join(choices)}")
        return text

    def severity(self, value: Any, key: str) -> Severity:
        return Severity.parse(self.choice(value, ("error", "warning", "info"), key))

    def code_list(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of rule codes, not {_describe(value)}")
        codes = tuple(c.strip().upper() for v in value for c in v.split(",") if c.strip())
        for code in codes:
            if not known_prefix(code):
                raise self.error(key, f"{code!r} matches no rule (biaslint rules lists them)")
        return codes

    def codes(self, table: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
        return None if key not in table else self.code_list(table[key], f"tool.biaslint.{key}")

    def per_module_ignores(self, table: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        raw = self.typed(table, "per-module-ignores", dict, {})
        return {pattern: self.code_list(codes, f"tool.biaslint.per-module-ignores.{pattern!r}")
                for pattern, codes in raw.items()}

    def severity_table(self, table: Mapping[str, Any]) -> dict[str, Severity]:
        raw = self.typed(table, "severity", dict, {})
        result = {}
        for code, level in raw.items():
            key = f"tool.biaslint.severity.{code}"
            _rule_or_error(self, code, key)
            result[code.upper()] = self.severity(level, key)
        return result

    def rule_options(self, table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        raw = self.typed(table, "rules", dict, {})
        result: dict[str, dict[str, Any]] = {}
        for code, options in raw.items():
            where = f"tool.biaslint.rules.{code}"
            rule = _rule_or_error(self, code, where)
            if not isinstance(options, dict):
                raise self.error(where, f"must be a table of options, not {_describe(options)}")
            known = {o.name: o for o in rule.options}
            if not known and options:
                raise self.error(f"{where}.{next(iter(options))}",
                                 f"unknown option: {rule.code} has no options")
            # TOML style is kebab-case, Python style snake_case: accept either spelling.
            options = {_spelling(key, known): value for key, value in options.items()}
            self.check_keys(options, tuple(known), where)
            values = {}
            for name, value in options.items():
                default = known[name].default
                _check_option_type(self, f"{where}.{name}", default, value)
                values[name] = tuple(value) if isinstance(default, tuple) else value
            result[rule.code] = values
        return result

    def target(self, entry: Any, where: str) -> ConfiguredTarget:
        if isinstance(entry, str):
            return ConfiguredTarget(target=entry)
        if not isinstance(entry, dict):
            raise self.error(where, f"must be a target string or a table, not {_describe(entry)}")
        self.check_keys(entry, _TARGET_KEYS, where)
        if "target" not in entry:
            raise self.error(f"{where}.target", "missing: every target table needs one")
        head = entry.get("head")
        device = entry.get("device")
        return ConfiguredTarget(
            target=self.string(entry["target"], f"{where}.target"),
            input_shapes=self.shapes(entry.get("input-shape"), f"{where}.input-shape"),
            class_priors=self.priors(entry.get("class-priors"), f"{where}.class-priors"),
            head=None if head is None else self.choice(head, HEADS, f"{where}.head"),
            device=None if device is None else self.choice(device, DEVICES, f"{where}.device"),
            target_mean=self.means(entry.get("target-mean"), f"{where}.target-mean"),
        )

    def means(self, value: Any, key: str) -> tuple[float, ...] | None:
        """A number, a list of numbers (one per output), or their ``"1.5,2"`` string form."""
        if value is None:
            return None
        try:
            return parse_means(value)
        except ValueError:
            raise self.error(key, "must be a number, a list of numbers (one per output) or a "
                                  f"string like \"1.5,2.0\", not {_describe(value)}") from None

    def shapes(self, value: Any, key: str) -> tuple[tuple[int, ...], ...]:
        """``"2,3,32,32"``, ``[2, 3, 32, 32]`` (one input) or a list of those (one per input)."""
        from biaslint.errors import InputShapeError
        from biaslint.target import parse_shape

        if value is None:
            return ()
        items = [value] if isinstance(value, str) or _int_list(value) else value
        if not isinstance(items, list) or not items:
            raise self.error(key, "must be a shape like \"2,3,32,32\" or [2, 3, 32, 32], or a "
                                  f"list of those (one per input), not {_describe(value)}")
        shapes = []
        for item in items:
            if isinstance(item, str):
                try:
                    shapes.append(parse_shape(item))
                except InputShapeError:
                    raise self.error(key, f"{item!r} is not a shape of positive integers") \
                        from None
            elif _int_list(item) and item and all(d > 0 for d in item):
                shapes.append(tuple(item))
            else:
                raise self.error(key, f"{_describe(item)} is not a shape of positive integers")
        return tuple(shapes)

    def priors(self, value: Any, key: str) -> str | None:
        """Class priors in the ``--class-priors`` syntax; ``@file`` is relative to the file."""
        if value is None:
            return None
        if isinstance(value, list) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return ",".join(repr(v) for v in value)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if text.startswith("@") and not os.path.isabs(text[1:]):
                text = "@" + str(self.path.parent / text[1:])
            return text
        raise self.error(key, "must be a list of numbers or a string (\"0.9,0.1\" or "
                              f"\"@priors.json\"), not {_describe(value)}")


_KIND_NAMES = {list: "a list", dict: "a table", str: "a string", bool: "true or false"}


def _spelling(key: str, known: Mapping[str, Any]) -> str:
    for candidate in (key, key.replace("-", "_"), key.replace("_", "-")):
        if candidate in known:
            return candidate
    return key


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def known_prefix(code: str) -> bool:
    """Whether a selector (a code or a prefix like ``BL00``) matches at least one rule."""
    from biaslint.rules import REGISTRY

    return any(rule.code.startswith(code.upper()) for rule in REGISTRY)


def _rule_or_error(reader: _Reader, code: Any, key: str) -> type[Rule]:
    from biaslint.rules import rule_by_code

    rule = rule_by_code(str(code))
    if rule is None:
        raise reader.error(key, f"{code!r} is not a rule code (biaslint rules lists them)")
    return rule


def _check_option_type(reader: _Reader, key: str, default: Any, value: Any) -> None:
    """Options take the type of their default; an int is fine where a float is expected."""
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            ok = value.is_integer()
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise reader.error(key, f"must be {_describe(default).split(' (')[0]} like the default "
                                f"{default!r}, not {_describe(value)}")


def parse_means(value: Any) -> tuple[float, ...]:
    """``--target-mean`` / ``target-mean``: one number, or one per output. Raises ValueError."""
    import math

    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [v for v in value.replace(" ", "").split(",")]
        if not all(items):
            raise ValueError(value)
    elif isinstance(value, list) and value:
        items = value
    else:
        raise ValueError(value)
    means = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(item)
        number = float(item)
        if not math.isfinite(number):
            raise ValueError(item)
        means.append(number)
    return tuple(means)
