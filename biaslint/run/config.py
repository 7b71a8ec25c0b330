"""``[tool.biaslint]`` in pyproject.toml: find it, read it, validate every key. No torch import.

Precedence is defaults < pyproject < command line (deptry's and ruff's order). The file is the
nearest ``pyproject.toml`` upward from the current directory that has a ``[tool.biaslint]`` table,
or the one given with ``--config``. An unknown key or a value of the wrong type is a
``ConfigError`` naming the key and the file: a typo must never silently turn a check off. The
keys, and how each value is read, are the rows of ``biaslint.run.schema``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from biaslint.errors import ConfigError
from biaslint.run.schema import Source, describe, parse, parse_values, rows, unknown_key
from biaslint.settings import PluginModule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib



def _keys(first: str, *scopes: Any) -> tuple[str, ...]:
    """The keys of the table (``targets`` and the run's settings) or of a target's table."""
    return (first, *(row.key for row in rows(*scopes) if row.key))


@dataclass(frozen=True)
class FileConfig:
    """The validated ``[tool.biaslint]`` table: ``values``, by setting name, the keys the file
    set; ``targets``, each a mapping with its ``target`` and its own settings by name."""

    path: Path | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    targets: tuple[Mapping[str, Any], ...] = ()

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
    found = _read(explicit, start)
    if found is None:
        return FileConfig()
    return parse_table(found[1], found[0])


def configured_plugins(explicit: str | None = None) -> tuple[PluginModule, ...]:
    """The ``plugins`` of the file ``load_config`` reads, alone: the command line's values that
    name rule codes are read with them taking part, before the rest of the file is read."""
    found = _read(explicit, None)
    if found is None or "plugins" not in found[1]:
        return ()
    path, table = found
    value = table["plugins"]
    return tuple(parse("plugins", value, Source(f"{_shown(path)}: tool.biaslint.plugins",
                                                base=path.parent)))


def _read(explicit: str | None, start: Path | None) -> tuple[Path, dict[str, Any]] | None:
    """The file and its ``[tool.biaslint]`` table, or None when no file has one."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"--config {explicit}: no such file")
    else:
        found = find_pyproject(start)
        if found is None:
            return None
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
    return path, table


def _shown(path: Path) -> str:
    """The file as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_table(table: Mapping[str, Any], path: Path) -> FileConfig:
    """Validate a ``[tool.biaslint]`` table; raise ``ConfigError`` naming the key and the file."""
    where = f"{_shown(path)}: tool.biaslint"
    _check_keys(table, _keys("targets", "run", "command"), where)
    values = _values(table, rows("run", "command"), where, path)
    entries = table.get("targets", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.targets: must be a list, not {describe(entries)}")
    targets = tuple(_target(entry, f"{where}.targets[{i}]", path)
                    for i, entry in enumerate(entries))
    return FileConfig(path=path, values=values, targets=targets)


def _values(table: Mapping[str, Any], settings: Any, where: str, path: Path) -> dict[str, Any]:
    keys = {row.name: row.key for row in settings if row.key in table}
    return parse_values({name: table[key] for name, key in keys.items()},
                        lambda name, value: Source(f"{where}.{keys[name]}", base=path.parent))


def _target(entry: Any, where: str, path: Path) -> Mapping[str, Any]:
    if isinstance(entry, str):
        return {"target": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a target string or a table, not {describe(entry)}")
    _check_keys(entry, _keys("target", "target", "input"), where)
    if "target" not in entry:
        raise ConfigError(f"{where}.target: missing: every target table needs one")
    if not isinstance(entry["target"], str):
        raise ConfigError(f"{where}.target: must be a string, not {describe(entry['target'])}")
    return {"target": entry["target"], **_values(entry, rows("target", "input"), where, path)}


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: {unknown_key(key, allowed)}")
