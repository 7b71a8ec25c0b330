"""Every TOML and YAML snippet in the README parses, and the TOML ones are valid biaslint
configuration (the same reader ``pyproject.toml`` goes through)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_readme_has_snippets_to_check():
    assert _blocks("toml") and _blocks("yaml")


@pytest.mark.parametrize("index", range(len(_blocks("toml"))))
def test_toml_snippet_is_valid_configuration(index: int, tmp_path: Path, monkeypatch):
    import shutil
    import sys

    from biaslint.run.config import load_config

    path = tmp_path / "pyproject.toml"
    path.write_text(_blocks("toml")[index], encoding="utf-8")
    if "plugins = " in _blocks("toml")[index]:
        # "Rules of your own": the module it names is the one the README shows, beside the file.
        shutil.copy(Path(__file__).parent / "fixtures" / "plugin" / "acme_rules.py", tmp_path)
        monkeypatch.delitem(sys.modules, "acme_rules", raising=False)
    load_config(str(path))  # raises ConfigError on invalid TOML or an unknown key
    sys.modules.pop("acme_rules", None)


@pytest.mark.parametrize("index", range(len(_blocks("yaml"))))
def test_yaml_snippet_parses(index: int):
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(_blocks("yaml")[index]) is not None


def _python_block(containing: str) -> str:
    [block] = [b for b in _blocks("python") if containing in b]
    return block


def test_the_lint_many_snippet_runs_as_a_script_without_a_main_guard(tmp_path: Path):
    """Issue 27: run as a script, the README's lint_many snippet (which has no
    ``if __name__ == "__main__":``) printed 110 lines of tracebacks: every worker re-ran the
    script. The snippet, verbatim, with the model files it names."""
    import subprocess
    import sys

    snippet = _python_block("lint_many(")
    assert "__main__" not in snippet
    model = ("import torch.nn as nn\n\n\ndef build():\n"
             "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))\n")
    targets = re.findall(r'TargetConfig\("([^"]+?)\.py:build"', snippet)
    assert len(targets) == 2
    for target in targets:
        (tmp_path / f"{target}.py").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{target}.py").write_text(model)
    (tmp_path / "script.py").write_text(snippet)
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [f"{t}.py:build 1 findings" for t in targets]
