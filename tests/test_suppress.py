"""Inline suppressions and BL100 (unused-suppression), through the Python API and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from biaslint.engine.suppress import comments_in
from biaslint.rules import REGISTRY
from biaslint.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A registered rule other than BL002 and BL100, which finds nothing in these models.
OTHER = next((r.code for r in sorted(REGISTRY, key=lambda r: r.code)
              if r.code not in ("BL002", "BL100")), None)
needs_other = pytest.mark.skipif(OTHER is None, reason="needs a third registered rule")

# Two zero hidden layers: model[0] gets a BL002 error (clones: its consumer model[2] is constant
# too) and model[2] a BL002 warning (it starves model[0] of gradient). tests/test_bl002.py
# checks both verdicts numerically by training; here only where they are reported matters.
CLONES = """\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(16, 64),{c0}
        nn.Tanh(),
        nn.Linear(64, 64),{c2}
        nn.Tanh(),
        nn.Linear(64, 10),{c4}
    )
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight){cinit}
        nn.init.zeros_(hidden.bias)
    return model
"""


def model(c0: str = "", c2: str = "", c4: str = "", cinit: str = "") -> str:
    return CLONES.format(c0=c0, c2=c2, c4=c4, cinit=cinit)


def codes(result, code: str = "BL002") -> list[str]:
    return sorted(f.module for f in result.findings if f.code == code)


def test_unsuppressed_model_has_both_findings(lint_source):
    result = lint_source(model())
    assert codes(result) == ["0", "2"]
    assert codes(result, "BL100") == []


def test_code_suppression_on_the_construction_line(lint_source):
    result = lint_source(model(c0="  # biaslint: ignore[BL002]"))
    assert codes(result) == ["2"]
    assert codes(result, "BL100") == []


def test_bare_suppression_and_lower_case_code(lint_source):
    result = lint_source(model(c0="  # biaslint: ignore", c2="  # biaslint: ignore[bl002]"))
    assert codes(result) == []
    assert codes(result, "BL100") == []


@needs_other
def test_several_codes_and_the_idle_one_is_named(lint_source):
    result = lint_source(model(c0=f"  # biaslint: ignore[{OTHER}, BL002]"))
    assert codes(result) == ["2"]
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert f"remove {OTHER} from the comment" in meta.message and "BL002," not in meta.message


@needs_other
def test_other_code_does_not_suppress(lint_source):
    result = lint_source(model(c0=f"  # biaslint: ignore[{OTHER}]"))
    assert codes(result) == ["0", "2"]


def test_any_line_of_a_multi_line_call(lint_source):
    source = """\
import torch.nn as nn


def build():
    first = nn.Linear(
        16,
        64,  # biaslint: ignore[BL002]
    )
    second = nn.Linear(64, 64)
    nn.init.zeros_(first.weight)
    nn.init.zeros_(first.bias)
    nn.init.zeros_(second.weight)
    nn.init.zeros_(second.bias)
    return nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(64, 10))
"""
    result = lint_source(source)
    assert codes(result) == ["2"], [f.message for f in result.findings]


def test_unused_code_on_a_construction_line_is_reported(lint_source):
    result = lint_source(model(c4="  # biaslint: ignore[BL002]"))
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert meta.location is not None and meta.location.line == 10
    assert "BL002" in meta.message and "suppresses nothing" in meta.message
    assert codes(result) == ["0", "2"]  # the comment changed nothing


def test_comment_on_the_init_line_is_reported_as_misplaced(lint_source):
    result = lint_source(model(cinit="  # biaslint: ignore[BL002]"))
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert meta.location.line == 13 and "not on a line that constructs a layer" in meta.message
    assert codes(result) == ["0", "2"]


def test_unknown_code_is_reported(lint_source):
    result = lint_source(model(c0="  # biaslint: ignore[BL002, XY123]"))
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert "XY123" in meta.message
    assert codes(result) == ["2"]


def test_bl100_off_when_select_excludes_it(lint_source):
    result = lint_source(model(c4="  # biaslint: ignore[BL002]"), select=("BL002",))
    assert codes(result, "BL100") == []


def test_code_that_did_not_run_is_not_judged(lint_source):
    # BL002 did not run, so nobody knows whether its suppression is needed.
    result = lint_source(model(c4="  # biaslint: ignore[BL002]"), select=("BL100",))
    assert result.findings == ()


@needs_other
def test_bare_comment_judged_only_when_every_rule_ran(lint_source):
    from biaslint.settings import Settings

    everything = lint_source(model(c4="  # biaslint: ignore"))
    assert [f.location.line for f in everything.findings if f.code == "BL100"] == [10]
    partial = lint_source(model(c4="  # biaslint: ignore"),
                          settings=Settings(ignore=(OTHER,)))
    assert [f for f in partial.findings if f.code == "BL100"] == []


def test_naming_bl100_vouches_for_the_comment(lint_source):
    result = lint_source(model(c4="  # biaslint: ignore[BL002, BL100]"))
    assert codes(result, "BL100") == []


def test_comments_in_other_functions_are_left_alone(lint_source):
    source = model() + textwrap.dedent("""

        def other():
            return nn.Linear(3, 3)  # biaslint: ignore[BL002]
        """)
    result = lint_source(source)
    assert codes(result, "BL100") == []


def test_crashed_rule_does_not_make_its_suppressions_unused(lint_source, monkeypatch):
    from biaslint.rules.bl002_zero_constant_weight import ZeroConstantWeight

    def boom(self, model, context):
        raise RuntimeError("boom")

    monkeypatch.setattr(ZeroConstantWeight, "check", boom)
    result = lint_source(model(c4="  # biaslint: ignore[BL002]"))
    assert [f for f in result.findings if f.code == "BL100"] == []
    assert any("BL002 crashed" in n for n in result.notes)


def test_strings_are_not_comments(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('x = "# biaslint: ignore[BL002]"\ny = 1  # biaslint: ignore[BL001,BL002]\n'
                    "z = 2  # noqa: E501  # biaslint: ignore\n")
    found = comments_in(str(path))
    assert [(c.line, c.codes) for c in found] == [(2, ("BL001", "BL002")), (3, ())]


def test_cli_suppression_changes_the_exit_code(cli, write_target):
    bad = write_target(model())
    assert cli(bad).exit_code == 1
    quiet = write_target(model(c0="  # biaslint: ignore[BL002]", c2="  # biaslint: ignore"))
    result = cli(quiet)
    assert result.exit_code == 0, result.output
    assert "no findings" in result.output


def test_no_bl100_on_a_layer_line_this_target_did_not_run(lint_source):
    result = lint_source("""
        import torch
        import torch.nn as nn

        def build(wide=False):
            if wide:
                layer = nn.Linear(8, 64)  # biaslint: ignore[BL002]
            else:
                layer = nn.Linear(8, 8)
            nn.init.zeros_(layer.weight)  # biaslint: ignore[BL002]
            return nn.Sequential(layer, nn.ReLU(), nn.Linear(layer.out_features, 2))
        """, settings=Settings(ignore=("BL002",)))
    lines = sorted(f.location.line for f in result.findings if f.code == "BL100")
    # The comment on the init line is misplaced (said); the one on the branch not taken
    # is on a line that builds a layer when that branch runs (not said).
    assert lines == [10]


# The noqa comment ruff and flake8 users already write: only its BL codes are biaslint's, and a
# bare noqa (no codes) is not a biaslint suppression.

def test_noqa_codes_suppress_like_the_own_comment(lint_source):
    result = lint_source(model(c0="  # noqa: BL002", c2="  # noqa:E501,BL002"))
    assert codes(result) == []
    assert codes(result, "BL100") == []


@pytest.mark.parametrize("comment", ["  # noqa", "  # NOQA", "  # noqa: E501", "  # noqa BL002",
                                     "  # noqa: BLE001"])
def test_noqa_without_a_bl_code_is_not_a_suppression(lint_source, comment):
    # A bare noqa (or one with no colon: ruff reads it as bare) quiets ruff and flake8 on the
    # line; BLE001 is flake8-blind-except's. Neither suppresses nor is reported as unused.
    result = lint_source(model(c0=comment, c4=comment))
    assert codes(result) == ["0", "2"]
    assert codes(result, "BL100") == []


def test_unused_noqa_code_is_reported_and_other_codes_kept(lint_source):
    result = lint_source(model(c0="  # noqa: BL002", c4="  # noqa: E501, BL002"))
    assert codes(result) == ["2"]
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert meta.location.line == 10 and meta.data == {"codes": ["BL002"], "form": "noqa"}
    assert "BL002 in `# noqa: E501, BL002` suppresses nothing" in meta.message
    assert "remove BL002 from it, keeping `# noqa: E501`" in meta.message


def test_unused_noqa_with_only_bl_codes_is_removed_whole(lint_source):
    result = lint_source(model(c4="  # noqa: BL002"))
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert meta.message.endswith("remove the comment"), meta.message


def test_misplaced_noqa_code_is_reported(lint_source):
    result = lint_source(model(cinit="  # noqa: BL002, E501"))
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert meta.location.line == 13 and "does not construct a layer" in meta.message
    assert "move BL002" in meta.message and "keeping `# noqa: E501`" in meta.message
    assert codes(result) == ["0", "2"]


def test_unknown_bl_code_in_noqa_is_reported_other_tools_codes_are_not(lint_source):
    result = lint_source(model(c0="  # noqa: E999, BL002, BL999"))
    [meta] = [f for f in result.findings if f.code == "BL100"]
    assert "BL999" in meta.message and "E999" not in meta.message.split("names")[1]
    assert codes(result) == ["2"]


def test_noqa_naming_bl100_vouches_for_the_comment(lint_source):
    result = lint_source(model(c4="  # noqa: BL002, BL100"))
    assert codes(result, "BL100") == []


def test_noqa_forms_parsed_as_ruff_reads_them(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("a = 1  # NOQA:BL001,BL002\n"
                    "b = 2  # noqa: E501 BL003 some words\n"
                    "c = 3  # type: ignore  # noqa: BL004\n"
                    "d = 4  # noqa: E501  # biaslint: ignore[BL005]\n"
                    "# ruff: noqa: BL006\n"
                    's = "# noqa: BL007"\n')
    found = [(c.line, c.col, c.form, c.codes, c.noqa_codes) for c in comments_in(str(path))]
    assert found == [
        (1, 8, "noqa", ("BL001", "BL002"), ("BL001", "BL002")),
        (2, 8, "noqa", ("BL003",), ("E501", "BL003")),
        (3, 24, "noqa", ("BL004",), ("BL004",)),
        (4, 22, "biaslint", ("BL005",), ()),
    ]


def _ruff_on(folder, config: str) -> str:
    ruff = pytest.importorskip("ruff")
    assert ruff
    (folder / "pyproject.toml").write_text(config)
    (folder / "model.py").write_text("import torch.nn as nn\n\n"
                                     "layer = nn.Linear(2, 2)  # noqa: BL002\n")
    # RUF102 (invalid code) and RUF100 (unused noqa: older ruff reported unknown codes there)
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                           "--select", "RUF100,RUF102", "--output-format", "concise",
                           "model.py"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def test_ruff_keeps_bl_codes_with_the_documented_external_setting(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [documented] = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S)
                    if "external" in b]
    assert tomllib.loads(documented)["tool"]["ruff"]["lint"]["external"] == ["BL"]
    without = _ruff_on(tmp_path, "[tool.ruff]\n")
    assert "model.py:3:" in without and "BL002" in without, without
    with_external = _ruff_on(tmp_path, documented)
    assert "BL002" not in with_external and "model.py:3:" not in with_external, with_external
