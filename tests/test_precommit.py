"""The pre-commit hook, driven by the real ``pre-commit`` tool on a throwaway git repository.

The hook configuration is taken verbatim from README.md (the ``repo: local`` /
``language: system`` form), so the documented setup is what gets tested, with the
``files:`` filter that ``.pre-commit-hooks.yaml`` declares. Offline: ``language: system`` installs
nothing; biaslint comes from this test's own environment, put first on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BAD = """\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(),
        nn.Linear(64, 64), nn.Tanh(),
        nn.Linear(64, 10),
    )
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        nn.init.zeros_(hidden.bias)
    return model
"""
FIXED = BAD.replace("""    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        nn.init.zeros_(hidden.bias)
""", "")


def manifest() -> list[dict]:
    return yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())


def documented_local_config() -> dict:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    [local] = [b for b in blocks if "repo: local" in b]
    return yaml.safe_load(local)


def test_manifest_is_valid_for_pre_commit():
    from pre_commit.clientlib import load_manifest

    [hook] = load_manifest(str(ROOT / ".pre-commit-hooks.yaml"))
    assert hook["id"] == "biaslint" and hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    for name in ("model.py", "pkg/types.pyi", "pyproject.toml", "sub/pyproject.toml"):
        assert files.search(name), name
    for name in ("README.md", "data.csv", "setup.cfg", "notpyproject.toml", "x.pyc"):
        assert not files.search(name), name


def test_documented_local_hook_matches_the_manifest():
    config = documented_local_config()
    [hook] = config["repos"][0]["hooks"]
    [published] = manifest()
    for key in ("id", "entry", "pass_filenames", "require_serial", "files"):
        assert hook[key] == published[key], key
    assert hook["language"] == "system"


def _git(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # ~10 s of CPU (three commits, two of them import torch); 25 s on a busy box
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_hook_blocks_a_bad_model_and_allows_the_fix(tmp_path):
    if not (BIN / "pre-commit").exists() or not (BIN / "biaslint").exists():
        pytest.skip("pre-commit and biaslint must be installed in the test environment")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path),
               PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1")
    env.pop("PYTHONPATH", None)
    assert _git(repo, env, "init", "-q").returncode == 0
    _git(repo, env, "config", "commit.gpgsign", "false")
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(documented_local_config()))
    (repo / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "scratch"
        version = "0"

        [tool.biaslint]
        targets = ["model.py:build"]
        """))
    (repo / "README.md").write_text("scratch\n")
    install = subprocess.run([str(BIN / "pre-commit"), "install"], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    # 1. No Python or pyproject.toml staged: the hook's files filter skips it.
    _git(repo, env, "add", "README.md", ".pre-commit-config.yaml")
    skipped = _git(repo, env, "commit", "-m", "docs")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "(no files to check)Skipped" in skipped.stdout + skipped.stderr

    # 2. A model with a finding: blocked, with the finding shown.
    (repo / "model.py").write_text(BAD)
    _git(repo, env, "add", "model.py", "pyproject.toml")
    blocked = _git(repo, env, "commit", "-m", "add model")
    output = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0, output
    assert "biaslint" in output and "Failed" in output
    assert "model.py:6:9: BL002 [error]" in output, output
    assert _git(repo, env, "log", "--oneline").stdout.count("\n") == 1  # nothing committed

    # 3. The fix: allowed.
    (repo / "model.py").write_text(FIXED)
    _git(repo, env, "add", "model.py")
    allowed = _git(repo, env, "commit", "-m", "add model, fixed")
    output = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, output
    assert re.search(r"biaslint\.+Passed", output), output
    assert _git(repo, env, "log", "--oneline").stdout.count("\n") == 2
