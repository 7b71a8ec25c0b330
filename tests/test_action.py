"""The GitHub Action (action.yml), tested without GitHub.

* ``action.yml`` and the README's workflows against the schemas of GitHub Actions metadata and
  workflows that check-jsonschema vendors (SchemaStore's).
* A dry run of its steps: each ``run:`` step goes through bash as the runner starts it
  (``bash --noprofile --norc -eo pipefail``), with the ``env:`` it declares filled from the inputs
  (defaults and given) and the ``${{ ... }}`` expressions it uses; a ``uses:`` step is recorded
  with its ``with:`` when its ``if:`` holds. The ``python`` the action calls is a stand-in: ``-m
  pip`` is logged and does nothing (no network); anything else runs this checkout's biaslint on
  this test's interpreter. What the test checks is what the runner would see: exit codes,
  workflow commands on stdout, the step outputs, the SARIF file and whether it is uploaded.

actionlint (which would also check the shell scripts) is not used: its PyPI package downloads a
binary when it is built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def vendored_schema(name: str) -> dict:
    check_jsonschema = pytest.importorskip("check_jsonschema")
    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def schema_errors(document: Any, name: str) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(vendored_schema(name))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def readme_yaml(containing: str) -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", README, re.S)
    documents = [yaml.safe_load(b) for b in blocks if containing in b]
    for document in documents:
        if True in document:  # YAML 1.1 reads the key `on` as true; GitHub reads it as "on"
            document["on"] = document.pop(True)
    return documents


# --- the metadata and the README's workflows ------------------------------------------------


def test_action_yml_is_valid_action_metadata():
    assert schema_errors(ACTION, "github-actions") == []
    assert ACTION["runs"]["using"] == "composite"
    broken = json.loads(json.dumps(ACTION))
    del broken["inputs"]["args"]["description"]  # GitHub requires an input's description
    assert schema_errors(broken, "github-actions")


def test_readme_workflows_are_valid_workflows():
    workflows = readme_yaml("jobs:")
    assert any("biaslint@" in json.dumps(w) for w in workflows), "the README shows the action"
    for workflow in workflows:
        assert schema_errors(workflow, "github-workflows") == [], workflow["name"]


def test_readme_uses_only_declared_inputs_and_documents_each_one():
    used = [step for workflow in readme_yaml("jobs:") for job in workflow["jobs"].values()
            for step in job.get("steps", ()) if "/biaslint@" in step.get("uses", "")]
    assert used
    for step in used:
        assert set(step.get("with", {})) <= set(ACTION["inputs"]), step
    section = README.split("## GitHub Actions", 1)[1].split("\n## ", 1)[0]
    for name in list(ACTION["inputs"]) + list(ACTION["outputs"]):
        assert f"`{name}`" in section, f"the README's GitHub Actions section does not show {name}"


def test_inputs_reach_the_shell_only_through_env():
    # An expression spliced into a script is code: `args: $(curl ...)` would run. In env: it is
    # data (GitHub's guidance on script injection).
    steps = ACTION["runs"]["steps"]
    scripts = [step["run"] for step in steps if "run" in step]
    assert scripts and all("${{" not in script for script in scripts)
    text = (ROOT / "action.yml").read_text(encoding="utf-8")
    referenced = set(re.findall(r"inputs\.([\w-]+)", text))
    assert referenced == set(ACTION["inputs"]), "every input used, and only declared ones"


# --- the dry run ----------------------------------------------------------------------------


@dataclass
class DryRun:
    codes: dict[str, int] = field(default_factory=dict)  # step name -> exit code, steps that ran
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # step id -> outputs
    uploads: list[dict[str, str]] = field(default_factory=list)  # `uses:` steps that would run
    pip: list[str] = field(default_factory=list)  # the arguments of each `python -m pip`

    @property
    def exit_code(self) -> int:
        """The action's: the first failing step's code, else 0."""
        return next((code for code in self.codes.values() if code), 0)

    def output(self, name: str) -> str:
        """An output of the action, by its declared ``value:``."""
        return _evaluate(ACTION["outputs"][name]["value"], {}, self)


def _evaluate(text: str, inputs: dict[str, str], run: DryRun) -> str:
    def one(match: re.Match) -> str:
        expr = match.group(1)
        if expr == "github.action_path":
            return str(ROOT)
        if m := re.fullmatch(r"inputs\.([\w-]+)", expr):
            return inputs[m.group(1)]
        if m := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr):
            return run.outputs.get(m.group(1), {}).get(m.group(2), "")
        raise AssertionError(f"the dry run does not know the expression {expr!r}")

    return EXPRESSION.sub(one, text)


def _condition(expr: str, inputs: dict[str, str], run: DryRun) -> bool:
    """The ``if:`` forms action.yml uses: ``&&`` of always()/success()/failure() and ``==`` or
    ``!=`` between contexts and quoted strings. No status function means success()."""
    failed = any(run.codes.values())
    status, terms = None, []
    for term in (t.strip() for t in expr.split("&&")):
        if term in ("always()", "success()", "failure()"):
            status = {"always()": True, "success()": not failed, "failure()": failed}[term]
            continue
        m = re.fullmatch(r"(\S+)\s*(==|!=)\s*'([^']*)'", term)
        assert m, f"the dry run does not know the condition {term!r}"
        value = _evaluate("${{ " + m.group(1) + " }}", inputs, run)
        terms.append((value == m.group(3)) == (m.group(2) == "=="))
    return (not failed if status is None else status) and all(terms)


def dry_run(project: Path, tools: Path, stop_before: str = "", **given: str) -> DryRun:
    """Run the action's steps in ``project`` with the inputs ``given`` (up to the step named
    ``stop_before``, when the test is about the ones before it)."""
    inputs = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
    unknown = set(given) - set(inputs)
    assert not unknown, f"not inputs of the action: {unknown}"
    inputs.update(given)
    run = DryRun()
    pip_log = tools / "pip.log"
    pip_log.write_text("")
    for number, step in enumerate(ACTION["runs"]["steps"]):
        name = step.get("name", f"step {number}")
        if name == stop_before:
            break
        if not _condition(step.get("if", "success()"), inputs, run):
            continue
        if "uses" in step:
            run.uploads.append({k: _evaluate(str(v), inputs, run)
                                for k, v in step.get("with", {}).items()})
            continue
        assert step["shell"] == "bash"
        outputs = tools / f"output-{number}"
        outputs.write_text("")
        script = tools / f"step-{number}.sh"
        script.write_text(step["run"])
        env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
               "GITHUB_OUTPUT": str(outputs), "PIP_LOG": str(pip_log),
               "RUNNER_TEMP": str(tools)}
        env.pop("PYTHONPATH", None)
        env.update({k: _evaluate(str(v), inputs, run) for k, v in step.get("env", {}).items()})
        cwd = project / _evaluate(step.get("working-directory", "."), inputs, run)
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        run.codes[name] = proc.returncode
        run.stdout += proc.stdout
        run.stderr += proc.stderr
        if "id" in step:
            run.outputs[step["id"]] = dict(line.split("=", 1) for line in
                                           outputs.read_text().splitlines() if "=" in line)
    run.pip = [line for line in pip_log.read_text().splitlines() if line]
    return run


MODEL = """\
import torch.nn as nn


def build():
    return nn.Sequential(
        nn.Linear(8, 16, bias={bias}),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )
"""


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A folder put first on PATH with the stand-in ``python``."""
    folder = tmp_path / "tools"
    folder.mkdir()
    python = folder / "python"
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = -m ] && [ "$2" = pip ]; then shift 2; echo "$*" >> "$PIP_LOG"; exit 0; fi
        PYTHONPATH='{ROOT}' exec '{sys.executable}' "$@"
        """))
    python.chmod(0o755)
    return folder


@pytest.fixture
def project(tmp_path: Path):
    """A scratch project: ``mymodel.py`` (a Linear with or without a bias, then BatchNorm1d)
    and its ``[tool.biaslint]`` target."""

    def make(bias: bool) -> Path:
        folder = tmp_path / "project"
        folder.mkdir(exist_ok=True)
        (folder / "mymodel.py").write_text(MODEL.format(bias=bias))
        (folder / "pyproject.toml").write_text(
            '[tool.biaslint]\ntargets = [{ target = "mymodel:build", input-shape = "4,8" }]\n')
        return folder

    return make


def test_clean_model_with_the_defaults(project, tools):
    run = dry_run(project(bias=False), tools)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.pip == [f"install --disable-pip-version-check {ROOT}"]  # the action's own code
    assert not re.search(r"^::(error|warning)", run.stdout, re.M), run.stdout
    assert run.output("exit-code") == "0" and run.output("sarif-file") == ""
    assert run.uploads == []


def test_planted_bl001_fails_the_step_annotates_and_uploads_sarif(project, tools):
    folder = project(bias=True)
    run = dry_run(folder, tools, sarif="true", category="models")
    assert run.codes["biaslint"] == 1 and run.exit_code == 1, run.stdout + run.stderr
    [annotation] = [line for line in run.stdout.splitlines() if line.startswith("::")]
    assert annotation.startswith("::warning file=mymodel.py,line=6,")
    assert "title=BL001 redundant-bias::" in annotation
    sarif = folder / "biaslint.sarif"
    assert run.output("exit-code") == "1" and run.output("sarif-file") == str(sarif)
    report = json.loads(sarif.read_text())
    assert report["version"] == "2.1.0"
    assert [r["ruleId"] for r in report["runs"][0]["results"]] == ["BL001"]
    # the lint failed, the upload still happens, of this run's file
    assert run.uploads == [{"sarif_file": str(sarif), "category": "models"}]


def test_args_are_split_like_a_shell_and_never_run(project, tools, tmp_path):
    folder = project(bias=True)
    run = dry_run(folder, tools, args="--select 'BL002'  --fail-on error")
    assert run.exit_code == 0, run.stdout + run.stderr  # BL001 not selected
    hostile = dry_run(folder, tools, args=f"$(touch {tmp_path}/pwned) `touch {tmp_path}/p2`")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "p2").exists()
    assert hostile.exit_code == 2  # two odd target strings, not commands
    unbalanced = dry_run(folder, tools, args="--select 'BL001")
    assert unbalanced.exit_code == 2
    assert "::error title=biaslint action::args:" in unbalanced.stdout


def test_working_directory_and_a_relative_python(project, tools, tmp_path):
    folder = project(bias=True)
    (folder / "env").mkdir()
    (folder / "env" / "python").symlink_to(tools / "python")
    run = dry_run(tmp_path, tools, **{"working-directory": "project", "python": "env/python"})
    assert run.exit_code == 1, run.stdout + run.stderr
    assert "title=BL001" in run.stdout and len(run.pip) == 1


@pytest.mark.parametrize("version, installed", [
    ("", "biaslint=={own}"),
    ("0.3.1", "biaslint==0.3.1"),
    (">=0.2,<0.4", "biaslint>=0.2,<0.4"),
    ("latest", "biaslint"),
])
def test_pypi_source_installs_the_version_asked_for(project, tools, version, installed):
    from biaslint.version import __version__

    run = dry_run(project(bias=False), tools, stop_before="biaslint", source="pypi",
                  version=version)
    assert run.pip == [f"install --disable-pip-version-check {installed.format(own=__version__)}"]
    assert run.exit_code == 0, run.stdout + run.stderr


@pytest.mark.parametrize("given, message", [
    ({"version": "0.3.1"}, "version applies to source: pypi"),
    ({"source": "conda"}, "source must be action, pypi or installed"),
    ({"sarif": "yes"}, "sarif must be true or false"),
    ({"python": "no-such-python"}, "python: no interpreter"),
])
def test_bad_inputs_are_one_clear_error(project, tools, given, message):
    run = dry_run(project(bias=True), tools, **given)
    assert run.exit_code == 2
    assert f"::error title=biaslint action::{message}" in run.stdout
    assert "Traceback" not in run.stderr


def test_installed_source_installs_nothing(project, tools):
    run = dry_run(project(bias=False), tools, stop_before="biaslint", source="installed")
    assert run.pip == [] and run.exit_code == 0, run.stdout + run.stderr
    assert "biaslint" in run.stdout  # its --version, the check that it is there
