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
