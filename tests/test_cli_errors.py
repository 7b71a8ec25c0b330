"""Every user mistake exits 2 with one clear line and no traceback (unless --debug)."""

from __future__ import annotations

import pytest

GOOD = ("import torch.nn as nn\ndef build():\n"
        "    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))\n")


def _one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.output
    return lines[0]


def test_module_not_found(cli, write_target):
    write_target(GOOD)  # makes a temp dir the cwd
    line = _one_line_error(cli("no_such_module_xyz:build"))
    assert "no module named 'no_such_module_xyz'" in line


def test_missing_dependency_of_the_user_module_names_it(cli, write_target):
    target = write_target("import not_installed_dep_xyz\n")
    line = _one_line_error(cli(target))
    assert "not_installed_dep_xyz" in line and ":1" in line


def test_attribute_not_found(cli, write_target):
    target = write_target(GOOD, attr="nope")
    line = _one_line_error(cli(target))
    assert "no attribute 'nope'" in line


def test_target_raises_shows_the_users_exception_and_line(cli, write_target):
    target = write_target("def build():\n    x = 1\n    raise ValueError('bad width')\n",
                          stem="raiser")
    line = _one_line_error(cli(target))
    assert "ValueError: bad width" in line and "raiser.py:3" in line


def test_target_returns_something_that_is_not_a_module(cli, write_target):
    target = write_target("def build():\n    return 42\n")
    line = _one_line_error(cli(target))
    assert "int" in line and "nn.Module" in line


def test_target_returns_a_torchscript_module(cli, write_target):
    target = write_target("import warnings\nimport torch\nimport torch.nn as nn\n"
                          "def build():\n    warnings.simplefilter('ignore')\n"
                          "    return torch.jit.script(nn.Sequential(nn.Linear(4, 4)))\n")
    line = _one_line_error(cli(target))
    assert "TorchScript" in line and "before torch.jit.script" in line


def test_target_without_attr(cli, write_target):
    write_target(GOOD, stem="plain")
    line = _one_line_error(cli("plain.py"))
    assert "no ':attr'" in line


def test_missing_file(cli, write_target):
    write_target(GOOD)
    line = _one_line_error(cli("does/not/exist.py:build"))
    assert "no file" in line


@pytest.mark.parametrize("shape", ["2,x", "0,3", "", "-1"])
def test_malformed_input_shape(cli, write_target, shape):
    target = write_target(GOOD)
    line = _one_line_error(cli(target, "--input-shape", shape))
    assert "--input-shape" in line


def test_debug_shows_the_traceback(write_target):
    import subprocess
    import sys

    target = write_target("def build():\n    raise ValueError('boom')\n")
    proc = subprocess.run([sys.executable, "-m", "biaslint", target, "--debug"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" in proc.stderr  # still 2, never 1 (findings)
    assert "ValueError: boom" in proc.stderr


def test_a_load_error_is_one_line_and_the_summary_does_not_repeat_it(cli, write_target):
    result = cli("nowhere.py:build")
    line = _one_line_error(result)
    assert "no file" in line
    assert "no file" not in result.stdout and "nowhere.py:build: not linted" in result.stdout


def test_target_names_are_printed_verbatim(cli, write_target):
    """rich would turn ':boom:' into an emoji and '[red]' into markup."""
    path = write_target("def boom():\n    raise ValueError('x')\n", attr="boom").split(":")[0]
    result = cli(f"{path}:boom")
    assert f"{path}:boom" in result.stderr and f"{path}:boom: not linted" in result.stdout


def test_forward_failing_on_inputs_is_exit_2_with_one_line(cli, write_target):
    # A gate must not say "clean" about a model it could not run.
    target = write_target(GOOD)
    result = cli(target, "--input-shape", "2,5")  # Linear(4, ...) cannot take 5 features
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("biaslint: error")]
    assert len(lines) == 1 and "the forward failed on the example inputs" in lines[0]
    assert "mat1 and mat2" in lines[0] and "--input-shape" in lines[0]


def test_a_batch_of_one_before_batch_norm_says_to_give_two(cli, write_target):
    """BatchNorm in training mode, where the rules measure, cannot take a batch of one sample:
    the one line says that and what to give, not only torch's message."""
    target = write_target(
        "import torch\nimport torch.nn as nn\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16)), torch.randn(1, 8)\n")
    result = cli(target)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("biaslint: error")]
    assert len(lines) == 1 and "batch of 2 or more" in lines[0], lines


def test_output_into_a_missing_folder_is_refused_before_linting(cli, write_target):
    target = write_target(GOOD)
    line = _one_line_error(cli(target, "--format", "json", "--output", "out/report.json"))
    assert "--output" in line and "does not exist" in line


def test_a_pyproject_with_our_table_that_is_not_toml_is_an_error(cli, write_target, tmp_path):
    target = write_target(GOOD)
    (tmp_path / "pyproject.toml").write_text('[tool.biaslint]\nfail-on = "warning\n')
    line = _one_line_error(cli(target))
    assert "pyproject.toml: not valid TOML" in line and "line 2" in line


def test_a_broken_pyproject_without_our_table_is_not_ours(cli, write_target, tmp_path):
    target = write_target(GOOD)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x\n')
    assert cli(target).exit_code == 0


@pytest.mark.parametrize(("source", "expected"), [
    ("import torch.nn as nn\ndef build():\n    return nn.Module()\n", "no parameters"),
    ("import torch.nn as nn\nclass Net(nn.Module):\n    def __init__(self):\n"
     "        super().__init__()\n        self.lin = nn.Linear(2, 2)\n"
     "def build():\n    return Net()\n", "without a forward"),
])
def test_a_model_with_nothing_to_lint_is_exit_2(cli, write_target, source, expected):
    line = _one_line_error(cli(write_target(source)))
    assert expected in line


NAN = """
import torch
import torch.nn as nn

def build():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        model[0].weight[3, 3] = float("nan")
        model[2].weight[0, 0] = float("inf")
    return model, torch.randn(2, 64)
"""

DYNAMIC_NO_INPUTS = """
import torch.nn as nn

class Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # symbolic tracing cannot follow this, and there are no inputs
            return self.a(x)
        return x

def build():
    return Dynamic()
"""


@pytest.mark.parametrize(("source", "reason"), [
    (NAN, "NaN or Inf (value rules cannot read them): 0.weight, 2.weight"),
    (DYNAMIC_NO_INPUTS, "outside any graph"),
])
def test_a_part_no_rule_could_judge_is_exit_2_unless_allowed(cli, write_target, tmp_path,
                                                              source, reason):
    import json

    target = write_target(source)
    result = cli(target, "--format", "json")
    assert result.exit_code == 2
    [entry] = json.loads(result.stdout)["results"]
    assert any(reason in part for part in entry["incomplete"]), entry["incomplete"]
    assert "analysis incomplete" in result.stderr and "--allow-incomplete" in result.stderr
    assert "not judged:" in cli(target).stdout
    assert cli(target, "--allow-incomplete").exit_code == 0
    (tmp_path / "pyproject.toml").write_text("[tool.biaslint]\nallow-incomplete = true\n")
    assert cli(target).exit_code == 0


def test_a_rule_that_crashes_is_exit_2(cli, write_target, monkeypatch):
    from biaslint.rules import rule_by_code

    def boom(self, model, context):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(type(rule_by_code("BL002")()), "check", boom)
    result = cli(write_target(GOOD))
    assert result.exit_code == 2
    assert "rule BL002 crashed" in result.stdout and "simulated bug" in result.stderr


FROZEN = """
import torch
import torch.nn as nn

def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
    model[0].requires_grad_(False)  # a frozen stem: fine-tuning trains the rest
    return model, torch.randn(2, 3, 16, 16)
"""


def test_frozen_parameters_get_no_training_claims(cli, write_target):
    import json

    result = cli(write_target(FROZEN), "--format", "json")
    [entry] = json.loads(result.stdout)["results"]
    assert [f["module"] for f in entry["findings"]] == ["3"]  # the trained conv only
    assert any("frozen parameters" in n and "BL001 0.bias" in n for n in entry["notes"])


def test_too_few_input_shapes_is_exit_2_naming_the_missing_input(cli, write_target):
    source = ("import torch\nimport torch.nn as nn\n\nclass Two(nn.Module):\n"
              "    def __init__(self):\n        super().__init__()\n"
              "        self.a = nn.Linear(4, 4)\n\n    def forward(self, x, y):\n"
              "        return self.a(x) + y\n\ndef build():\n    return Two()\n")
    line = _one_line_error(cli(write_target(source), "--input-shape", "2,4"))
    assert "the forward failed on the example inputs" in line and "'y'" in line


TOKENS = """
import torch.nn as nn

class Tok(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.q = nn.Linear(16, 16)
        self.k = nn.Linear(16, 16)

    def forward(self, ids):
        h = self.emb(ids)
        return (self.q(h) @ self.k(h).transpose(1, 2)).softmax(-1)

def build():
    return Tok()
"""


@pytest.mark.parametrize("shape", ["2,8:int", "2,8:int<50"])
@pytest.mark.parametrize("isolated", [False, True])
def test_integer_inputs_from_the_command_line(cli, write_target, shape, isolated):
    extra = ("--timeout", "120") if isolated else ()
    result = cli(write_target(TOKENS), "--input-shape", shape, "-q", *extra)
    assert result.exit_code == 1, result.output + result.stderr
    assert "bias of Linear 'k'" in result.stdout  # the key bias before the softmax over keys


def test_integer_inputs_from_the_config(cli, write_target, tmp_path):
    target = write_target(TOKENS)
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.biaslint]\ntargets = [{{target = "{target}", input-shape = "2,8:int<50"}}]\n')
    assert cli().exit_code == 1


def test_a_bad_integer_input_spec_is_one_line(cli, write_target):
    line = _one_line_error(cli(write_target(TOKENS), "--input-shape", "2,8:float"))
    assert "int<N" in line


META = """
import torch
import torch.nn as nn

def build():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.LSTM(16, 4))
    return model
"""
# Built on meta at import time: no builder to run again while recording its init laws.
META_INSTANCE = """
import torch
import torch.nn as nn

with torch.device("meta"):
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.LSTM(16, 4))
"""


def test_each_rule_records_what_it_judged(cli, write_target):
    import json

    result = cli(write_target(GOOD), "--format", "json")
    assert result.exit_code == 0
    [entry] = json.loads(result.stdout)["results"]
    rules = entry["rules"]
    from biaslint.rules import all_rules

    # every rule that reads the model has a record; BL100 judges comments
    assert set(rules) == {r.code for r in all_rules() if r.reads} >= {"BL001", "BL005", "BL010"}
    for code, scope in rules.items():
        assert scope["unjudged"] == [] and scope["judged"] == scope["total"], code
    assert rules["BL001"]["judged"] >= 1 and rules["BL004"]["total"] == 0


def test_a_builder_on_the_meta_device_is_judged_from_its_init_laws(cli, write_target):
    """Built on meta by the target itself: built again while recording the init laws, and
    judged as on the CPU (the LSTM's default forget gate)."""
    import json

    meta = json.loads(cli(write_target(META), "--format", "json").stdout)["results"][0]
    cpu = json.loads(cli(write_target(META.replace('torch.device("meta")', 'torch.device("cpu")')),
                         "--format", "json").stdout)["results"][0]
    assert sorted((f["code"], f["module"]) for f in meta["findings"]) == \
        sorted((f["code"], f["module"]) for f in cpu["findings"]) == [("BL004", "3")]
    # Every rule judged what it applies to; BL013 measures a real forward, which a lint
    # without example inputs has not, and says so (declined, a note, not an incomplete lint).
    assert all(r["unjudged"] == [] for code, r in meta["rules"].items() if code != "BL013")
    assert [u["layer"] for u in meta["rules"]["BL013"]["unjudged"]] == ["1"]
    assert meta["rules"]["BL013"]["unjudged"][0]["reason"].startswith("declined: ")
    assert meta["incomplete"] == []


def test_a_model_on_the_meta_device_is_not_judged_by_the_value_rules(cli, write_target):
    import json

    target = write_target(META_INSTANCE, attr="model")
    result = cli(target, "--format", "json")
    assert result.exit_code == 2
    [entry] = json.loads(result.stdout)["results"]
    rules = entry["rules"]
    assert rules["BL001"] == {"judged": 1, "total": 1, "unjudged": [],
                              "disagreements": []}  # the graph is enough
    for code, layers in (("BL002", {"0", "3"}), ("BL004", {"3"})):
        assert rules[code]["judged"] == 0
        assert {u["layer"] for u in rules[code]["unjudged"]} == layers
        assert all("meta device" in u["reason"] for u in rules[code]["unjudged"])
    assert not any("crashed" in part for part in entry["incomplete"])  # not an internal error
    text = cli(target).stdout
    assert "judged only: BL002 0 of 2 layers" in text and "meta device" in text
    sarif = json.loads(cli(target, "--format", "sarif").stdout)
    notes = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    # BL013 declines the norm without a forward (said, not incomplete)
    assert {n["associatedRule"]["id"] for n in notes} == {"BL002", "BL003", "BL004", "BL013"}


def test_a_value_problem_does_not_block_a_rule_that_reads_only_the_graph(cli, write_target):
    target = write_target(NAN)
    assert cli(target, "--select", "BL001").exit_code == 0
    assert cli(target).exit_code == 2


# -- through the real CLI, in a subprocess -------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PRE_COMMIT"}
    full.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=600)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _git_repo(path: Path) -> Path:
    """A git work tree: there biaslint records each target's sources (``biaslint.run.changes``)."""
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


@pytest.mark.parametrize("when", ["import", "build"])
def test_a_package_the_model_imports_that_is_not_installed_is_named_with_what_to_do(
        tmp_path, when):
    """In pre-commit's isolated environment a package the model imports may be missing: the
    error names it, the user's line, and the ``additional_dependencies`` entry that adds it
    (``pip install`` outside pre-commit), not a frame of biaslint's import recording."""
    repo = _git_repo(tmp_path / "repo")
    body = "    import not_installed_pkg_xyz.sub\n" if when == "build" else ""
    head = "import not_installed_pkg_xyz.sub\n" if when == "import" else ""
    (repo / "model.py").write_text(
        f"import torch.nn as nn\n{head}\n\ndef build():\n{body}    return nn.Linear(4, 2)\n")
    line = _one_line(_run_cli(repo, "model.py:build", "--input-shape", "2,4", PRE_COMMIT="1"))
    assert "biaslint/" not in line and "changes.py" not in line, line
    assert "'not_installed_pkg_xyz'" in line and "not installed" in line, line
    assert f"model.py:{2 if when == 'import' else 5}" in line, line
    assert "additional_dependencies: [not_installed_pkg_xyz]" in line, line
    line = _one_line(_run_cli(repo, "model.py:build", "--input-shape", "2,4"))
    assert "pip install not_installed_pkg_xyz" in line and "pre-commit" not in line, line


@pytest.mark.parametrize("target", ["model.pt", "model.pth:model", "ckpt.ckpt", "weights.pkl",
                                    "out/model.safetensors:state", "pytorch_model.bin:model",
                                    "model.onnx", "missing_dir/never.pt:model"])
def test_a_saved_model_file_as_the_target_says_what_biaslint_lints(tmp_path, target):
    """A checkpoint, pickle or exported file is not code: biaslint builds the model from the
    code that builds it, so it says so, whether the file is there or not, with or without
    ``:attr``."""
    for name in ("model.pt", "model.pth", "weights.pkl", "pytorch_model.bin", "model.onnx"):
        (tmp_path / name).write_bytes(b"\x80\x04not code")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"{}")
    line = _one_line(_run_cli(tmp_path, target))
    assert "biaslint lints the code that builds a model, not a saved file" in line, line
    assert "(e.g. mymodel.py:build)" in line, line


def test_a_module_named_like_a_saved_file_is_still_a_module(tmp_path, monkeypatch):
    """``tools.bin:build`` is a module ``bin`` of a package ``tools``, not a file."""
    from biaslint.target import parse_target

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "bin.py").write_text("def build(): pass\n")
    monkeypatch.chdir(tmp_path)
    assert parse_target("tools.bin:build").module == "tools.bin"
    assert parse_target("os.pt:x").module == "os.pt"  # an importable package: its import decides


LATIN1_COMMENT = (b"import torch.nn as nn\n# caf\xe9 au lait\n\n\n"
                  b"def build():\n    return nn.Linear(4, 2)\n")


@pytest.mark.parametrize("target", ["model.py:build", "model:build", "uses_helper.py:build"])
def test_a_source_file_that_is_not_utf8_and_declares_no_encoding_is_an_error(tmp_path, target):
    """Python refuses a source file that is not UTF-8 without an encoding declaration (PEP 263;
    ``python model.py`` is a SyntaxError), though an import may let bytes in a comment through:
    the target is an error, naming the file and line, not linted."""
    (tmp_path / "model.py").write_bytes(LATIN1_COMMENT)
    (tmp_path / "uses_helper.py").write_text(
        "import torch.nn as nn\nimport model\n\n\ndef build():\n    return model.build()\n")
    line = _one_line(_run_cli(tmp_path, target, "--input-shape", "2,4"))
    assert "model.py is not valid UTF-8 (line 2)" in line, line
    assert "coding" in line, line  # what to do: save as UTF-8 or declare the encoding


def test_a_source_file_that_declares_its_encoding_is_linted(tmp_path):
    (tmp_path / "model.py").write_bytes(b"# -*- coding: latin-1 -*-\n" + LATIN1_COMMENT)
    proc = _run_cli(tmp_path, "model.py:build", "--input-shape", "2,4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
