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


def hooks_by_id() -> dict[str, dict]:
    from pre_commit.clientlib import load_manifest

    return {hook["id"]: hook for hook in load_manifest(str(ROOT / ".pre-commit-hooks.yaml"))}


def test_manifest_is_valid_for_pre_commit():
    hooks = hooks_by_id()
    assert set(hooks) == {"biaslint", "biaslint-pre-push", "biaslint-manual"}
    hook = hooks["biaslint"]
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    for name in ("model.py", "pkg/types.pyi", "pyproject.toml", "sub/pyproject.toml"):
        assert files.search(name), name
    for name in ("README.md", "data.csv", "setup.cfg", "notpyproject.toml", "x.pyc"):
        assert not files.search(name), name


def test_the_three_hooks_differ_only_in_when_they_run():
    hooks = hooks_by_id()
    # biaslint keeps no stages of its own: it follows the user's default_stages, as before
    assert hooks["biaslint"]["stages"] == []
    assert hooks["biaslint-pre-push"]["stages"] == ["pre-push"]
    assert hooks["biaslint-manual"]["stages"] == ["manual"]
    assert hooks["biaslint-manual"]["always_run"] is True
    for key in ("entry", "language", "pass_filenames", "require_serial"):
        assert len({str(hook[key]) for hook in hooks.values()}) == 1, key
    assert hooks["biaslint-pre-push"]["files"] == hooks["biaslint"]["files"]


def test_pre_commit_validates_the_manifest_and_rejects_a_broken_one(tmp_path):
    if not (BIN / "pre-commit").exists():
        pytest.skip("pre-commit must be installed in the test environment")

    def validate(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "pre-commit"), "validate-manifest", str(path)],
                              capture_output=True, text=True, timeout=120)

    ours = validate(ROOT / ".pre-commit-hooks.yaml")
    assert ours.returncode == 0, ours.stdout + ours.stderr
    broken = tmp_path / ".pre-commit-hooks.yaml"
    broken.write_text((ROOT / ".pre-commit-hooks.yaml").read_text()
                      .replace("stages: [pre-push]", "stages: [on-push]"))
    assert validate(broken).returncode != 0


def test_documented_local_hook_matches_the_manifest():
    config = documented_local_config()
    [hook] = config["repos"][0]["hooks"]
    published = hooks_by_id()["biaslint"]
    for key in ("id", "entry", "pass_filenames", "require_serial", "files"):
        assert hook[key] == published[key], key
    assert hook["language"] == "system"


def test_documented_remote_form_names_a_published_hook():
    text = (ROOT / "README.md").read_text()
    remote = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)
              if "rev:" in b and "biaslint" in b]
    assert remote
    ids = {hook["id"] for config in remote for repo in config["repos"] for hook in repo["hooks"]}
    assert ids and ids <= set(hooks_by_id())


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
    # both zeroed layers: one init call in a loop, so one group at that call
    assert "model.py:11:9: BL002 [error] 2 layers" in output, output
    assert _git(repo, env, "log", "--oneline").stdout.count("\n") == 1  # nothing committed

    # 3. The fix: allowed.
    (repo / "model.py").write_text(FIXED)
    _git(repo, env, "add", "model.py")
    allowed = _git(repo, env, "commit", "-m", "add model, fixed")
    output = allowed.stdout + allowed.stderr
    assert allowed.returncode == 0, output
    assert re.search(r"biaslint\.+Passed", output), output
    assert _git(repo, env, "log", "--oneline").stdout.count("\n") == 2


def _ran(output: str) -> dict[str, str]:
    """Hook id -> Passed / Failed / Skipped, from ``pre-commit run -v``."""
    return {hook: status for status, hook in
            re.findall(r"(Passed|Failed|Skipped)\n- hook id: (\S+)", output)}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_each_hook_runs_at_its_stage_only(tmp_path):
    """The three published hooks as the README's local form, with a stand-in ``biaslint`` on
    PATH (this test is about when pre-commit calls it, not about linting: no torch imported)."""
    if not (BIN / "pre-commit").exists():
        pytest.skip("pre-commit must be installed in the test environment")
    shim = tmp_path / "bin" / "biaslint"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho biaslint stand-in\nexit 1\n")
    shim.chmod(0o755)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(PATH=f"{shim.parent}{os.pathsep}{BIN}{os.pathsep}{env.get('PATH', '')}",
               HOME=str(tmp_path), PRE_COMMIT_HOME=str(tmp_path / "pre-commit-cache"),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1")
    [documented] = documented_local_config()["repos"][0]["hooks"]
    hooks = []
    for published in hooks_by_id().values():
        hook = dict(documented, id=published["id"])
        for key in ("stages", "always_run"):
            if published[key]:
                hook[key] = published[key]
        hooks.append(hook)
    config = {"repos": [{"repo": "local", "hooks": hooks}]}
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
    (repo / "README.md").write_text("scratch\n")
    assert _git(repo, env, "init", "-q").returncode == 0
    _git(repo, env, "config", "commit.gpgsign", "false")
    _git(repo, env, "add", "-A")
    assert _git(repo, env, "commit", "-qm", "docs").returncode == 0
    (repo / "model.py").write_text(FIXED)
    _git(repo, env, "add", "model.py")

    def run(*args: str) -> dict[str, str]:
        proc = subprocess.run([str(BIN / "pre-commit"), "run", "-v", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        return _ran(proc.stdout + proc.stderr)

    # a commit: only `biaslint` (no stages of its own: every stage by default)
    assert run() == {"biaslint": "Failed"}
    assert run("--hook-stage", "pre-push") == {"biaslint": "Failed",
                                               "biaslint-pre-push": "Failed"}
    # on push the files are those the pushed commits change: README.md only, skipped
    base = _git(repo, env, "rev-parse", "HEAD").stdout.strip()
    _git(repo, env, "commit", "-qm", "model")
    (repo / "README.md").write_text("scratch, again\n")
    _git(repo, env, "commit", "-qam", "docs again")
    head = _git(repo, env, "rev-parse", "HEAD").stdout.strip()
    assert run("--hook-stage", "pre-push", "--from-ref", f"{head}~1",
               "--to-ref", head)["biaslint-pre-push"] == "Skipped"
    assert run("--hook-stage", "pre-push", "--from-ref", base,
               "--to-ref", head)["biaslint-pre-push"] == "Failed"
    # manual: asked for by name, run whatever is staged (nothing is)
    assert run("biaslint-manual", "--hook-stage", "manual") == {"biaslint-manual": "Failed"}
    assert "biaslint-manual" not in run("--all-files")
