"""Every TOML and YAML snippet in the README parses, and the TOML ones are valid biaslint
configuration (the same reader ``pyproject.toml`` goes through)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_readme_has_snippets_to_check():
    assert _blocks("toml") and _blocks("yaml")


@pytest.mark.parametrize("index", range(len(_blocks("toml"))))
def test_toml_snippet_is_valid_configuration(index: int, tmp_path: Path):
    from biaslint.config import load_config

    path = tmp_path / "pyproject.toml"
    path.write_text(_blocks("toml")[index], encoding="utf-8")
    load_config(str(path))  # raises ConfigError on invalid TOML or an unknown key


@pytest.mark.parametrize("index", range(len(_blocks("yaml"))))
def test_yaml_snippet_parses(index: int):
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(_blocks("yaml")[index]) is not None
