"""The pytest plugin (``pytest --biaslint``), run as users run it: pytest in a subprocess, in
a scratch project whose pyproject.toml lists the targets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import biaslint

ROOT = Path(biaslint.__file__).resolve().parents[1]

MODELS = """
import torch.nn as nn


def good():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())


def bad():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())


def head():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
"""

# Per-target settings: the input shapes, and class priors only ``head`` is judged against
# (BL005 fires with them, not without).
PYPROJECT = """
[tool.biaslint]
targets = [
    {target = "models:good", input-shape = [[4, 3, 8, 8]]},
    {target = "models:bad", input-shape = [[4, 3, 8, 8]]},
    {target = "models:head", input-shape = [[8, 16]], class-priors = "0.99,0.01"},
]
"""

PLAIN_TEST = """
import sys


def test_plain():
    assert "torch" not in sys.modules, "the biaslint plugin imported torch without --biaslint"
"""


def _entry_point_registered() -> bool:
    return any(ep.name == "biaslint" and ep.value == "biaslint.pytest_plugin"
               for ep in metadata.entry_points(group="pytest11"))


needs_entry_point = pytest.mark.skipif(
    not _entry_point_registered(),
    reason="biaslint is not installed (pip install -e .): its pytest11 entry point is missing")


def test_entry_point_is_declared():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["entry-points"]["pytest11"] == {"biaslint": "biaslint.pytest_plugin"}


def _project(tmp_path: Path, pyproject: str = PYPROJECT) -> Path:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_plain.py").write_text(textwrap.dedent(PLAIN_TEST))
    return tmp_path


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _outcomes(output: str) -> dict[str, str]:
    """nodeid -> PASSED/FAILED/..., from the ``-rA`` short summary."""
    return {m.group(2): m.group(1) for m in
            re.finditer(r"^(PASSED|FAILED|ERROR|SKIPPED) (\S+)", output, re.MULTILINE)}


@needs_entry_point
def test_targets_are_test_items_one_per_target(tmp_path):
    project = _project(tmp_path)
    # Run from a sub-folder: the targets are still imported and linted from the config's.
    (project / "notebooks").mkdir()
    proc = _pytest(project / "notebooks", "--biaslint", "-rA")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    # (pytest shows node ids relative to where it runs: the rootdir is the project's)
    assert _outcomes(out) == {
        "../pyproject.toml::biaslint[models:good]": "PASSED",
        "../pyproject.toml::biaslint[models:bad]": "FAILED",
        "../pyproject.toml::biaslint[models:head]": "FAILED",
    }, out
    assert re.search(r"collected 3 items", out), out
    assert re.search(r"\b2 failed, 1 passed\b", out), out
    # A failure shows the text report (finding, location, source line, fix), no traceback.
    failures = out.split("= FAILURES =")[1].split("short test summary")[0]
    bad = failures.split("biaslint[models:head]")[0]
    assert "biaslint[models:bad]" in bad
    assert "models.py:10:" in bad and "BL001" in bad and "fix:" in bad
    assert "Traceback" not in failures and "runtest" not in failures
    # The class priors of head's own table applied.
    head = failures.split("biaslint[models:head]")[1]
    assert "BL005" in head and "BL001" not in head


@needs_entry_point
def test_keyword_and_deselect_select_targets(tmp_path):
    project = _project(tmp_path)
    proc = _pytest(project, "--biaslint", "-rA", "-k", "bad or plain",
                   "--deselect", "tests/test_plain.py::test_plain")
    assert _outcomes(proc.stdout) == {"pyproject.toml::biaslint[models:bad]": "FAILED"}, \
        proc.stdout + proc.stderr


@needs_entry_point
def test_without_the_option_nothing_is_added_and_torch_is_not_imported(tmp_path):
    project = _project(tmp_path)
    listed = _pytest(project, "--co", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "tests/test_plain.py::test_plain" in listed.stdout
    assert "biaslint[" not in listed.stdout
    # test_plain asserts torch is not imported: plugin load and collection cost nothing.
    ran = _pytest(project, "-rA")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _outcomes(ran.stdout) == {"tests/test_plain.py::test_plain": "PASSED"}, ran.stdout
    # -p no:biaslint turns the plugin off: the option is gone.
    off = _pytest(project, "-p", "no:biaslint", "--biaslint")
    assert off.returncode == 4 and "--biaslint" in off.stderr, off.stdout + off.stderr


@needs_entry_point
@pytest.mark.parametrize("pyproject, says", [
    ("", "no pyproject.toml with a [tool.biaslint] table"),
    ("[tool.biaslint]\nselect = [\"BL001\"]\n", "[tool.biaslint] table without targets"),
    ("[tool.biaslint]\ntargets = [\"models:good\"]\nselectt = [\"BL001\"]\n", "selectt"),
])
def test_nothing_to_lint_is_one_usage_error(tmp_path, pyproject, says):
    project = _project(tmp_path, pyproject)
    proc = _pytest(project, "--biaslint")
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "--biaslint" in errors[0] and says in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugin_import_does_not_import_torch():
    code = ("import sys, biaslint.pytest_plugin; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr


@needs_entry_point
def test_under_xdist_the_same_items_pass_and_fail(tmp_path):
    """``pytest --biaslint -n 2``: every worker collects the same items in the same order (xdist
    refuses otherwise), each target is linted by one worker, and the outcomes are those of the
    run without ``-n``."""
    pytest.importorskip("xdist")
    project = _project(tmp_path)
    alone = _pytest(project, "--biaslint", "-rA", "-p", "no:xdist")
    spread = _pytest(project, "--biaslint", "-rA", "-p", "xdist", "-n", "2")
    assert "2 workers [4 items]" in spread.stdout, spread.stdout + spread.stderr
    assert _outcomes(alone.stdout) == _outcomes(spread.stdout), spread.stdout + spread.stderr
    assert len(_outcomes(spread.stdout)) == 4  # the three targets and test_plain
    assert spread.returncode == alone.returncode == 1
    # A failure still shows the report, from the worker that linted it.
    assert "BL001" in spread.stdout.split("= FAILURES =")[1]
