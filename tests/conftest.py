"""Shared test helpers: write a model file, lint it through the Python API or the CLI."""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

_counter = itertools.count()


@pytest.fixture
def write_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write ``source`` to a fresh .py file in a temp dir (made the cwd) and return
    ``file.py:attr``. Each file gets a unique stem so imports never collide."""
    monkeypatch.chdir(tmp_path)

    def write(source: str, attr: str = "build", stem: str | None = None) -> str:
        stem = stem or f"model_{os.getpid()}_{next(_counter)}"
        path = tmp_path / f"{stem}.py"
        path.write_text(textwrap.dedent(source))
        return f"{path.name}:{attr}"

    return write


@pytest.fixture
def lint_source(write_target):
    """Lint source text through the Python API; returns the TargetResult."""
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    def run(source: str, *, select: tuple[str, ...] = (), attr: str = "build",
            settings: Settings | None = None, **config: Any):
        target = write_target(source, attr=attr)
        base = settings or Settings()
        if select:
            from dataclasses import replace
            base = replace(base, select=select)
        return lint(TargetConfig(target=target, **config), base)

    return run


@pytest.fixture
def cli():
    """Run the CLI in-process; returns a click Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from biaslint.cli import main

    def run(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run


@pytest.fixture
def judge(write_target):
    """Lint ``source`` with BL001; return (findings by module, oracle over the built model)."""

    from dataclasses import replace

    import torch

    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    from oracle import Oracle, split_inputs

    def run(source: str, report_partial: bool = False, oracle_inputs=None, **config):
        target = write_target(source)
        torch.manual_seed(0)
        loaded = load_target(target, **config)
        settings = Settings(select=("BL001",), debug=True)
        if report_partial:
            settings = replace(settings, rule_options={"BL001": {"report-partial": True}})
        result = lint_loaded(loaded, TargetConfig(target), settings)
        assert not [n for n in result.notes if "crashed" in n], result.notes
        findings = {f.module: f for f in result.findings}
        inputs = loaded.inputs if loaded.inputs is not None else oracle_inputs
        oracle = Oracle(loaded.model, *split_inputs(inputs))
        return findings, oracle

    return run
