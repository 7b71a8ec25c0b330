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


# -- a fix changes exactly the layers of its finding, checked on a copy before it is written --

def _keyed_build(path: Path):
    """The build with every init call of a parameter drawn from its own seeded generator (as
    the check on a copy does): a fix that draws more or fewer numbers moves no other tensor."""
    from biaslint.run.verify import KeyedDraws

    with KeyedDraws():
        built = _build(path)
    return built if isinstance(built, tuple) else (built, None)


def _tensors(model) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    return {name: tensor.detach().clone() for name, tensor in named.items()}


def _outputs(model, inputs) -> list[torch.Tensor]:
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(inputs) if isinstance(inputs, torch.Tensor) else model(*inputs)
    return [t for t in (out if isinstance(out, (tuple, list)) else [out])
            if isinstance(t, torch.Tensor)]


def _only_these_changed(before: Path, after: Path, changed: set[str], removed: set[str]) -> None:
    """Every parameter and buffer outside ``changed`` and ``removed`` is bit-identical; with the
    changed ones set back to their old values, the training-mode outputs are the same."""
    old, inputs = _keyed_build(before)
    new, _ = _keyed_build(after)
    a, b = _tensors(old), _tensors(new)
    assert set(a) - set(b) == removed, (set(a) - set(b), removed)
    assert set(b) <= set(a)
    for name in b:
        if name not in changed:
            assert torch.equal(a[name], b[name]), f"{name} changed"
    if inputs is None:
        return
    new.load_state_dict({name: a[name] for name in b}, strict=True)
    for x, y in zip(_outputs(old, inputs), _outputs(new, inputs)):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), float((x - y).abs().max())


HELPER = HEADER + textwrap.dedent("""
def conv_nd(dims, *args, **kwargs):
    return nn.Conv2d(*args, **kwargs)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_nd(2, 3, 8, 3, padding=1)  # a BatchNorm follows: the bias cancels
        self.bn = nn.BatchNorm2d(8)
        self.out = conv_nd(2, 8, 4, 1)  # nothing follows: the bias matters

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.conv(x))))


def build():
    return Net(), torch.randn(2, 3, 8, 8)
""")


def test_a_shared_helper_is_never_edited_the_call_that_passes_bias_is(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(HELPER)
    original = tmp_path / "original.py"
    shutil.copy(path, original)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "fixed 1, 0 remaining" in proc.stderr
    text = path.read_text()
    assert "    return nn.Conv2d(*args, **kwargs)\n" in text  # the helper as it was
    assert "self.conv = conv_nd(2, 3, 8, 3, padding=1, bias=False)" in text
    assert "self.out = conv_nd(2, 8, 4, 1)  #" in text
    _only_these_changed(original, path, changed=set(), removed={"conv.bias"})


def test_a_helper_that_cannot_pass_bias_on_gets_a_note_and_no_edit(tmp_path):
    source = HELPER.replace("def conv_nd(dims, *args, **kwargs):\n    return nn.Conv2d(*args, "
                            "**kwargs)", "def conv_nd(dims, cin, cout, k, padding=0):\n    "
                            "return nn.Conv2d(cin, cout, k, padding=padding)")
    assert source != HELPER
    path = tmp_path / "model.py"
    path.write_text(source)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    assert path.read_text() == source
    assert "fixed 0, 1 remaining" in proc.stderr
    assert "by hand: BL001 conv: it is built inside conv_nd() at model.py:7, a function other " \
        "layers and other models can call" in proc.stderr, proc.stderr
    assert "conv_nd() has no bias parameter and no **kwargs" in proc.stderr


RNN_VARIANTS = {
    "class_in_a_variable": """
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn_cls(8, 16, batch_first=True)
""",
    "if_else": """
        if kind == "lstm":
            self.rnn = nn.LSTM(8, 16, batch_first=True)
        else:
            self.rnn = nn.GRU(8, 16, batch_first=True)
""",
}


@pytest.mark.parametrize("variant", sorted(RNN_VARIANTS))
def test_a_branch_shared_by_lstm_and_gru_keeps_the_gru_building(tmp_path, variant):
    from biaslint.rules.bl004_lstm_forget_bias import forget_biases

    source = HEADER + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self, kind="lstm"):
            super().__init__()
    """) + textwrap.indent(textwrap.dedent(RNN_VARIANTS[variant]), " " * 8) + textwrap.dedent("""
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])


    def build():
        return Net("lstm"), torch.randn(2, 5, 8)


    def build_gru():
        return Net("gru"), torch.randn(2, 5, 8)
    """)
    path = tmp_path / "model.py"
    path.write_text(source)
    original = tmp_path / "original.py"
    shutil.copy(path, original)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(f"gru_{variant}", path))
    module.__spec__.loader.exec_module(module)
    model, x = module.build_gru()  # the GRU variant still builds and runs
    model(x)
    lstm, _ = _build(path)
    before, _ = _build(original)
    if variant == "if_else":  # the line goes inside the LSTM's branch: fixed, and measured so
        assert "fixed 1, 0 remaining" in proc.stderr, proc.stderr
        assert min(forget_biases(lstm.rnn).values()) == pytest.approx(1.0)
        assert min(forget_biases(before.rnn).values()) < 0.5
        _only_these_changed(original, path, changed={"rnn.bias_ih_l0", "rnn.bias_hh_l0"},
                            removed=set())
    else:
        assert path.read_text() == source
        assert "fixed 0, 1 remaining" in proc.stderr
        assert "builds a class held in rnn_cls" in proc.stderr, proc.stderr


def test_an_edit_that_changes_another_target_is_not_written(tmp_path):
    """A class shared by two targets: its conv's bias cancels in one (a BatchNorm follows), not
    in the other. Linting both, the edit is built for both and refused; the other fix of the
    run (in a file only the first target imports) is found good by bisection and written."""
    (tmp_path / "blocks.py").write_text(HEADER + textwrap.dedent("""
    class Block(nn.Module):
        def __init__(self, c, norm):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.norm = nn.BatchNorm2d(c) if norm else nn.Identity()

        def forward(self, x):
            return torch.relu(self.norm(self.conv(x)))
    """))
    (tmp_path / "a.py").write_text(HEADER + "from blocks import Block\n\n\ndef build():\n"
                                   "    model = nn.Sequential(Block(4, norm=True), "
                                   "nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))\n"
                                   "    return model, torch.randn(2, 4, 6, 6)\n")
    (tmp_path / "b.py").write_text(HEADER + "from blocks import Block\n\n\ndef build():\n"
                                   "    return Block(4, norm=False), torch.randn(2, 4, 6, 6)\n")
    before = (tmp_path / "blocks.py").read_text()
    alone = _cli(tmp_path, "a.py:build", "--diff")  # a alone cannot see b: the edit passes
    assert "+        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)" in alone.stdout
    proc = _cli(tmp_path, "a.py:build", "b.py:build", "--fix")
    assert (tmp_path / "blocks.py").read_text() == before
    assert "nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))" in (tmp_path / "a.py").read_text()
    assert "fixed 1, 1 remaining" in proc.stderr, proc.stderr
    assert "not fixed: BL001 0.conv: the check on a copy failed: b.py:build: it also removes " \
        "conv.bias" in proc.stderr, proc.stderr


def _dead_fraction(module, model, inputs) -> float:
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        _outputs(model, inputs)
    finally:
        handle.remove()
    return float((seen[0] <= 0).all(0).float().mean())


# Per rule, the quantity its fix makes better (lower), measured on the built model.
QUANTITY = {
    # the bias parameters that never train
    "BL001": lambda module, name, model, inputs: float(
        getattr(module, "bias").numel() if getattr(module, "bias", None) is not None else 0),
    # rows of the weight that are copies of another row (symmetric units)
    "BL002": lambda module, name, model, inputs: float(
        getattr(module, name).shape[0] - torch.unique(getattr(module, name), dim=0).shape[0]),
    # units dead on the example inputs
    "BL007": lambda module, name, model, inputs: _dead_fraction(module, model, inputs),
}


@pytest.mark.parametrize("code", [r.code for r in __import__("biaslint.rules").rules.all_rules()])
def test_every_rules_bad_example_is_fixed_only_where_it_is_wrong(tmp_path, code):
    """Every rule's bad example through --fix --unsafe-fixes: each fix that is written removes
    its finding, makes the quantity it names better and changes no other layer; a fix that is
    not written says why."""
    from biaslint.rules import all_rules

    [rule] = [r for r in all_rules() if r.code == code]
    options = dict(rule.example_target)
    flags = []
    if "class_priors" in options:
        flags += ["--class-priors", ",".join(map(str, options["class_priors"]))]
    if "target_mean" in options:
        flags += ["--target-mean", ",".join(map(str, options["target_mean"]))]
    path = tmp_path / "model.py"
    path.write_text(rule.bad_example)
    original = tmp_path / "original.py"
    shutil.copy(path, original)
    first = json.loads(_cli(tmp_path, "model.py:build", "--format", "json", *flags).stdout)
    before = first["results"][0]["findings"]
    assert any(f["code"] == code for f in before)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes", "--format", "json",
                *flags)
    after = json.loads(proc.stdout)["results"][0]["findings"]  # the lint of the fixed file
    left = {(f["code"], f["module"]) for f in after}
    # "  not fixed: BL001 proj: why" -> ("BL001", "proj")
    refused = {tuple(line.split(": ", 2)[1].split(" ", 1)) for line in
               proc.stderr.splitlines() if line.startswith("  not fixed: ")}
    fixed = [f for f in before if f["fix"] and f["fix"]["edits"]
             and (f["code"], f["module"]) not in refused]
    assert f"fixed {len(fixed)}," in proc.stderr, proc.stderr
    for finding in before:
        if finding["fix"] and finding not in fixed:  # every fix left alone says why
            assert f"{finding['code']} {finding['module'] or '<root>'}: " in proc.stderr
    if not fixed:
        assert path.read_text() == rule.bad_example
        return
    old, inputs = _keyed_build(original)
    new, _ = _keyed_build(path)
    changed, removed = set(), set()
    for finding in fixed:
        assert (finding["code"], finding["module"]) not in left, finding
        name = finding["parameter"]
        full = f"{finding['module']}.{name}" if finding["module"] else name
        (removed if finding["code"] == "BL001" else changed).add(full)
        measure = QUANTITY[finding["code"]]  # a rule whose fixes are written names a quantity
        was = measure(old.get_submodule(finding["module"]), name, old, inputs)
        now = measure(new.get_submodule(finding["module"]), name, new, inputs)
        assert now < was, (finding["code"], finding["module"], was, now)
    _only_these_changed(original, path, changed, removed)


def test_an_init_fix_keeps_the_users_tensor_expression(tmp_path):
    """BL007 names the bias by its model path (model.fc.bias); the edit writes the call on
    the user's own expression, so the fixed file builds (the check on a copy refused it
    when it did not)."""
    path = tmp_path / "model.py"
    path.write_text(HEADER + textwrap.dedent("""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 64)
            nn.init.constant_(self.fc.bias, -3.0)  # every unit dead
            self.out = nn.Linear(64, 4)

        def forward(self, x):
            return self.out(torch.relu(self.fc(x)))


    def build():
        return Net(), torch.randn(64, 32)
    """))
    original = tmp_path / "original.py"
    shutil.copy(path, original)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    assert "fixed 1, 0 remaining" in proc.stderr, proc.stderr
    assert "nn.init.constant_(self.fc.bias, 0.01)  # every unit dead" in path.read_text()
    _only_these_changed(original, path, changed={"fc.bias"}, removed=set())


# -- issue 27: --fix writes only what it computed against the text it writes into ------------

# Five Conv+BatchNorm pairs (safe BL001 fixes) and an LSTM (the unsafe BL004 line), built by a
# function that, like an editor saving the file during the build, puts one line more at the
# top: every line the build recorded is now one line too early in the file.
SAVED_DURING_THE_BUILD = HEADER + textwrap.dedent("""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.b3 = nn.BatchNorm2d(8)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.b4 = nn.BatchNorm2d(8)
        self.c5 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn5 = nn.BatchNorm2d(8)
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        x = self.b1(self.c1(x))
        x = self.b2(self.c2(x))
        x = self.b3(self.c3(x))
        x = self.b4(self.c4(x))
        x = torch.relu(self.bn5(self.c5(x)))
        out, _ = self.rnn(x.mean(-1).transpose(1, 2))
        return self.head(out[:, -1])


def build():
    with open(__file__) as handle:
        text = handle.read()
    if not text.startswith("# saved"):
        with open(__file__, "w") as handle:
            handle.write("# saved by an editor during the build\\n" + text)
    return Net(), torch.randn(2, 3, 8, 8)
""")
SAVED_FINDINGS = [("BL001", f"c{i}") for i in range(1, 6)] + [("BL004", "rnn")]


def test_a_file_saved_during_the_build_is_left_alone_and_every_fix_says_so(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(SAVED_DURING_THE_BUILD)
    proc = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    saved = "# saved by an editor during the build\n" + SAVED_DURING_THE_BUILD
    assert path.read_text() == saved  # the editor's text, not a fix aimed at the old lines
    assert "fixed 0, 6 remaining" in proc.stderr, proc.stderr
    for code, module in SAVED_FINDINGS:  # every fix left alone is named, with why
        assert f"  not fixed: {code} {module}: the file changed since the build: run again" \
            in proc.stderr, proc.stderr
    assert proc.returncode == 1  # the findings remain
    # The report read the text the build ran: the fix code shown is the conv's own call.
    assert "nn.BatchNorm2d(8, bias=False)" not in proc.stdout
    again = _cli(tmp_path, "model.py:build", "--fix", "--unsafe-fixes")
    assert "fixed 6, 0 remaining" in again.stderr, again.stderr
    model, x = _build(path)  # the file as fixed builds and runs
    model(x)
    assert all(getattr(model, f"c{i}").bias is None for i in range(1, 6))


def _lint_in_process(tmp_path: Path, monkeypatch, source: str):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"inproc_{tmp_path.name}.py"
    path.write_text(source)
    return path, lint(TargetConfig(f"{path.name}:build"), Settings())


def test_a_file_changed_after_planning_is_not_written(tmp_path, monkeypatch):
    """The write reads the file again: a save between planning (and the check on a copy) and
    the write keeps the user's text, and the fix says why it was not written."""
    from biaslint.fix.apply import plan_fixes, summary

    path, result = _lint_in_process(tmp_path, monkeypatch,
                                    HEADER + textwrap.dedent(SAFE_CASES["one_line"][0]))
    plan = plan_fixes([result], unsafe=False, root=str(tmp_path))
    assert plan.texts and len(plan.applied) == 1
    edited = path.read_text() + "# saved meanwhile\n"
    path.write_text(edited)
    written = plan.write()
    assert path.read_text() == edited
    assert written == []
    text = summary(plan, result.findings, wrote=True)
    assert text.startswith("fixed 0, 1 remaining"), text
    assert "not fixed: BL001 0: the file changed since the build: run again" in text, text


def test_a_write_that_fails_is_one_line_and_the_rest_goes_on(tmp_path, monkeypatch):
    import tempfile

    from biaslint.fix.apply import plan_fixes, summary

    path, result = _lint_in_process(tmp_path, monkeypatch,
                                    HEADER + textwrap.dedent(SAFE_CASES["one_line"][0]))
    before = path.read_text()
    plan = plan_fixes([result], unsafe=False, root=str(tmp_path))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # a folder the user may not write in
    assert plan.write() == []
    assert path.read_text() == before
    lines = [line for line in summary(plan, result.findings, wrote=True).splitlines()
             if "not fixed" in line]
    assert lines == [f"  not fixed: {path.name}: cannot write it (Permission denied): make it "
                     "writable, then run --fix again (BL001 0)"], lines


def test_a_symbolic_link_stays_a_link_and_its_target_is_fixed(tmp_path):
    real = tmp_path / "models" / "real.py"
    real.parent.mkdir()
    real.write_text(HEADER + textwrap.dedent(SAFE_CASES["one_line"][0]))
    real.chmod(0o640)
    link = tmp_path / "model.py"
    link.symlink_to(Path("models") / "real.py")
    proc = _cli(tmp_path, "model.py:build", "--fix")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "fixed 1, 0 remaining" in proc.stderr, proc.stderr
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert "nn.Conv2d(3, 8, 3, bias=False)" in real.read_text()
    assert real.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.rglob(".biaslint-*")]  # no temporary file left


# A file the model imports that --fix may not edit, next to one it may.
BLOCK = HEADER + textwrap.dedent("""
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))
""")
UNEDITABLE = {
    "read_only": (BLOCK, "it is read-only: make it writable"),
    # 0xe9 (é in latin-1) is byte 31: after the 26 of the coding line and "# caf"
    "not_utf8": ("# -*- coding: latin-1 -*-\n# caf\xe9\n" + BLOCK,
                 "it is not UTF-8 (byte 0xe9 at offset 31): save it as UTF-8"),
}


@pytest.mark.parametrize("case", sorted(UNEDITABLE))
def test_a_file_fix_cannot_edit_is_one_line_and_the_rest_is_fixed(tmp_path, case):
    source, why = UNEDITABLE[case]
    blocks = tmp_path / "blocks.py"
    blocks.write_bytes(source.encode("latin-1"))
    if case == "read_only":
        blocks.chmod(0o444)
    before = blocks.read_bytes()
    model = tmp_path / "model.py"
    model.write_text(HEADER + "from blocks import Block\n\n\ndef build():\n    return "
                     "nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Block()), "
                     "torch.randn(2, 3, 8, 8)\n")
    proc = _cli(tmp_path, "model.py:build", "--fix")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert blocks.read_bytes() == before
    assert "nn.Conv2d(3, 8, 3, bias=False)" in model.read_text()  # the other file is fixed
    lines = [line for line in proc.stderr.splitlines() if "blocks.py" in line]
    assert len(lines) == 1 and why in lines[0] and "(BL001 2.conv)" in lines[0], proc.stderr
    assert "fixed 1, 1 remaining" in proc.stderr, proc.stderr
    assert "BL001" in proc.stdout and "2.conv" in proc.stdout  # the report went out
    assert proc.returncode == 1  # by the finding that remains


def test_a_removed_bias_says_a_seeded_build_draws_other_weights(tmp_path):
    """BL001's fix is safe: the same function of the parameters kept. It also draws fewer
    random numbers, so with a fixed seed the layers built after it start elsewhere: --fix says
    so (and it is so)."""
    path = tmp_path / "model.py"
    path.write_text(HEADER + textwrap.dedent("""
    def build():
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 4, 1))
        return model, torch.randn(2, 3, 8, 8)
    """))
    original = tmp_path / "original.py"
    shutil.copy(path, original)
    proc = _cli(tmp_path, "model.py:build", "--fix")
    assert "fixed 1, 0 remaining" in proc.stderr, proc.stderr
    assert "note: 1 fix removes a bias: a seeded build no longer draws it, so the layers " \
        "built after it with a random init start from other values" in proc.stderr, proc.stderr
    old, _ = _build(original)  # both seeded alike
    new, _ = _build(path)
    assert torch.equal(old[0].weight, new[0].weight)  # drawn before the bias
    assert not torch.equal(old[3].weight, new[3].weight)  # drawn after it
    _same_training_outputs(original, path)


def test_a_file_is_parsed_once_until_its_text_changes(tmp_path):
    """Rules read many constructor calls of one file (every norm of a ResNet): the syntax tree
    is kept while the file's text is the same, and parsed anew when it changes."""
    import ast
    import linecache

    from biaslint.findings import Location
    from biaslint.fix import edits

    path = tmp_path / "layers.py"
    path.write_text("import torch.nn as nn\nlayer = nn.Linear(2, 3)\n")
    first = edits.parsed(str(path))
    assert first is not None and edits.parsed(str(path))[1] is first[1]
    call = edits.call_at(first[1], Location(str(path), 2, 9), "Linear")
    assert call is not None and ast.unparse(call) == "nn.Linear(2, 3)"
    path.write_text("import torch.nn as nn\nlayer = nn.Conv2d(2, 3, 1)\n")
    linecache.checkcache(str(path))
    changed = edits.parsed(str(path))
    assert changed is not None and changed[1] is not first[1]
    call = edits.call_at(changed[1], Location(str(path), 2, 9), "Conv2d")
    assert call is not None and ast.unparse(call) == "nn.Conv2d(2, 3, 1)"
