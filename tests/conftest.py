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
        return lint(TargetConfig.of(target=target, **config), base)

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


# With BIASLINT_SUITE_LOG=path, every in-process lint of the run appends its findings to ``path``
# (one JSON line per result, tagged with the test that made it), so two commits can be compared
# finding by finding: ``python benchmarks/compare_suite.py BEFORE AFTER``. Lints in child
# processes (-j, the CLI in a subprocess) are not seen here; the zoo sweeps cover those paths.
_SUITE_LOG = os.environ.get("BIASLINT_SUITE_LOG")


@pytest.fixture(autouse=True)
def _suite_log(request: pytest.FixtureRequest):
    if not _SUITE_LOG:
        yield
        return
    import json
    import re

    import torch

    from biaslint.findings import TargetResult

    torch.manual_seed(0)  # tests that draw without a seed of their own draw the same each run

    original = TargetResult.__init__
    test = request.node.nodeid

    def plain(text: str) -> str:  # temp folders and per-process file stems differ between runs
        text = re.sub(r"/[^\s'\"]*pytest-[^\s'\"]*/", "<tmp>/", text)
        return re.sub(r"model_\d+_\d+", "model_N", text)

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        line = {"test": test, "target": plain(self.target),
                "findings": sorted([f.code, f.module, f.parameter, int(f.severity),
                                    plain(f.message)] for f in self.findings),
                "incomplete": len(self.incomplete), "error": bool(self.error)}
        with open(_SUITE_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    TargetResult.__init__ = recording_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        TargetResult.__init__ = original  # type: ignore[method-assign]
