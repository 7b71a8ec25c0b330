"""The project's own code checked: ruff (lint and import order) and mypy, configured in
pyproject.toml, run here so CI's ``python -m pytest`` runs them too."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> None:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e \".[dev]\" installs it)")
    proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"{tool} {' '.join(args)} reports:\n{proc.stdout}{proc.stderr}"


def test_ruff_finds_nothing() -> None:
    _run("ruff", "check", "biaslint", "tests", "benchmarks")


def test_mypy_finds_nothing() -> None:
    _run("mypy", "biaslint")



def test_the_version_has_one_source() -> None:
    # pyproject.toml reads it from biaslint/version.py: a literal in both places would drift
    import re

    from biaslint.version import __version__

    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = project.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", table, re.M), "pyproject.toml states a version"
    assert 'dynamic = ["version"]' in table
    assert 'version = { attr = "biaslint.version.__version__" }' in project
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{__version__}]" in changelog, "CHANGELOG.md has no entry for the version"
