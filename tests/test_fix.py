"""--fix, --unsafe-fixes and --diff on real files in a temporary project: each fixed file builds,
re-lints clean for the fixed code, and (safe fixes) computes the same training-mode outputs as
before; a second --fix changes nothing; files outside the project are never edited."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

HEADER = "import torch\nimport torch.nn as nn\n\n\n"


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _build(path: Path):
    spec = importlib.util.spec_from_file_location(f"fixed_{path.stem}_{id(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.build()


def _same_training_outputs(before: Path, after: Path) -> None:
    """The fixed model, given the original's parameters (the removed biases dropped), computes
    the same training-mode outputs: the fix changed no function."""
    old, x = _build(before)
    new, _ = _build(after)
    state = {k: v for k, v in old.state_dict().items() if k in new.state_dict()}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    old.train()
    new.train()
    torch.manual_seed(1)
    a = old(x)
    torch.manual_seed(1)
    b = new(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


# (source, the line after the fix must contain, codes the fixed file must no longer report)
SAFE_CASES = {
    "one_line": ("""
def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)
""", "nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)"),
    "multi_line_with_comment": ("""
def build():
    conv = nn.Conv2d(
        3,
        8,
        kernel_size=3,  # keep this comment
    )
    return nn.Sequential(conv, nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)
""", "        kernel_size=3, bias=False,  # keep this comment"),
    "positional_bias": ("""
def build():
    return nn.Sequential(nn.Linear(8, 8, True), nn.BatchNorm1d(8)), torch.randn(4, 8)
""", "nn.Linear(8, 8, False)"),
    "keyword_bias": ("""
def build():
    return nn.Sequential(nn.Linear(8, 8, bias=True), nn.BatchNorm1d(8)), torch.randn(4, 8)
""", "nn.Linear(8, 8, bias=False)"),
    "sequential_with_others": ("""
def build():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.randn(4, 8)
""", "nn.Sequential(nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))"),
}


@pytest.mark.parametrize("case", sorted(SAFE_CASES))
def test_safe_fix_rewrites_the_constructor_and_keeps_the_function(tmp_path, case):
    source, expected = SAFE_CASES[case]
    path = tmp_path / "model.py"
    path.write_text(HEADER + textwrap.dedent(source))
    original = tmp_path / "original.py"
    shutil.copy(path, original)
    proc = _cli(tmp_path, "model.py:build", "--fix")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "fixed 1, 0 remaining" in proc.stderr
    text = path.read_text()
    assert expected in text, text
    assert text.count("bias=False") + text.count(", False)") == 1  # nothing else touched
    _same_training_outputs(original, path)
    again = _cli(tmp_path, "model.py:build", "--fix")
    assert again.returncode == 0 and "fixed 0" in again.stderr
    assert path.read_text() == text  # a second --fix is a no-op


def test_diff_shows_the_change_and_writes_nothing(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(HEADER + textwrap.dedent(SAFE_CASES["one_line"][0]))
    before = path.read_text()
    proc = _cli(tmp_path, "model.py:build", "--diff")
    assert proc.returncode == 1
    assert "+++ b/model.py" in proc.stdout and "+    return nn.Sequential(nn.Conv2d(3, 8, 3, " \
        "bias=False)" in proc.stdout
    assert path.read_text() == before
    clean = tmp_path / "clean.py"
    clean.write_text(HEADER + "def build():\n    return nn.Linear(4, 4), torch.randn(2, 4)\n")
    assert _cli(tmp_path, "clean.py:build", "--diff").returncode == 0


UNSAFE = HEADER + textwrap.dedent("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 256), nn.Tanh())
        for hidden in (self.mlp[0], self.mlp[2]):
            nn.init.zeros_(hidden.weight)  # one line inits both layers
        self.fc = nn.Linear(256, 256); nn.init.normal_(self.fc.weight, 0, 1)
        self.out = nn.Linear(256, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.mlp(x))))


def build():
    return Net(), torch.randn(8, 16)
""")


def test_unsafe_fixes_replace_the_init_calls_in_place(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(UNSAFE)
    first = _cli(tmp_path, "model.py:build", "--format", "json")
    codes = {f["code"] for f in json.loads(first.stdout)["results"][0]["findings"]}
    assert {"BL002", "BL003"} <= codes, first.stdout
    safe_only = _cli(tmp_path, "model.py:build", "--fix")
    assert path.read_text() == UNSAFE and "pass --unsafe-fixes" in safe_only.stderr
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    text = path.read_text()
    assert "nn.init.xavier_normal_(hidden.weight, gain=nn.init.calculate_gain('tanh'))" \
        "  # one line inits both layers" in text, text
    assert "self.fc = nn.Linear(256, 256); nn.init.kaiming_normal_(self.fc.weight" in text, text
    assert proc.returncode == 0, (proc.stdout, proc.stderr)  # re-linted clean
    _build(path)  # still builds
    assert _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes").returncode == 0
    assert path.read_text() == text


def test_a_loop_that_also_inits_a_deliberate_zero_layer_is_left_for_the_user(tmp_path):
    source = HEADER + textwrap.dedent("""
    def build():
        model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                              nn.Linear(64, 4))
        for layer in (model[0], model[2], model[4]):
            nn.init.zeros_(layer.weight)  # the head's zero init is deliberate, the others not
        return model, torch.randn(8, 16)
    """)
    path = tmp_path / "model.py"
    path.write_text(source)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    assert path.read_text() == source
    assert "also initializes parameters that need another init or none" in proc.stderr


def test_examples_mistakes_is_fixed_clean(tmp_path):
    shutil.copy(ROOT / "examples" / "mistakes.py", tmp_path / "mistakes.py")
    args = ("mistakes.py:build", "--class-priors", "0.9,0.05,0.03,0.02")
    proc = _cli(tmp_path, *args, "--fix", "--unsafe-fixes")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "0 remaining" in proc.stderr
    assert _cli(tmp_path, *args).returncode == 0  # and it lints clean afterwards


def test_files_outside_the_project_are_never_edited(tmp_path):
    import torchvision

    files = sorted(Path(torchvision.__file__).parent.rglob("*.py"))
    before = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    (tmp_path / "tv.py").write_text(
        "import torch\nimport torchvision\n\n\ndef build():\n"
        "    return torchvision.models.vgg11_bn(weights=None), torch.randn(2, 3, 64, 64)\n")
    proc = _cli(tmp_path, "tv.py:build", "--fix", "--unsafe-fixes")
    after = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert before == after
    assert "outside the project: fix it in your code" in proc.stderr, proc.stderr
    assert proc.returncode == 1  # the findings remain


def test_a_file_changed_since_the_build_is_not_touched(tmp_path, monkeypatch):
    from biaslint.engine import lint
    from biaslint.fix.apply import plan_fixes
    from biaslint.settings import Settings, TargetConfig

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "changed.py"
    path.write_text(HEADER + textwrap.dedent(SAFE_CASES["one_line"][0]))
    result = lint(TargetConfig("changed.py:build"), Settings())
    path.write_text(path.read_text() + "\n# edited after the build\n")
    plan = plan_fixes([result], unsafe=False, root=str(tmp_path))
    assert not plan.texts and not plan.applied
    assert any("changed since the build" in why for _, why in plan.skipped)


def test_json_and_sarif_carry_the_edits(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(HEADER + textwrap.dedent(SAFE_CASES["one_line"][0]))
    report = json.loads(_cli(tmp_path, "model.py:build", "--format", "json").stdout)
    [finding] = report["results"][0]["findings"]
    assert finding["fix"]["applicability"] == "safe"
    [edit] = finding["fix"]["edits"]
    assert edit["file"] == "model.py" and "bias=False" in edit["content"]
    sarif = json.loads(_cli(tmp_path, "model.py:build", "--format", "sarif").stdout)
    [result] = sarif["runs"][0]["results"]
    [change] = result["fixes"][0]["artifactChanges"]
    [replacement] = change["replacements"]
    assert replacement["deletedRegion"]["startLine"] == edit["start"]["line"]
    assert "bias=False" in replacement["insertedContent"]["text"]
