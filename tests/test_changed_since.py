"""``--changed-since REF``: on a generated repository of 50 targets (10 model files of 5 targets
each, some sharing helper modules, one reading a data file), a change lints exactly the targets
whose build or forward ran the changed file, and reports the others skipped.

The CLI runs in subprocesses (a fresh interpreter per run, as in CI: nothing imported by one run
helps the next). One full run fills the cache once per session; each test works on a copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CACHE = Path(".biaslint_cache") / "sources.json"
FILES = 10
PER_FILE = 5
USES_LAYERS = range(0, 4)  # m0..m3 build from the shared models/layers.py
USES_CONSTS = 4  # m4 reads a constant of models/consts.py (no function of it ever runs)
FINDS = 6  # m6.build0 has a finding (a Linear's bias cancelled by a BatchNorm)
READS_DATA = 7  # m7 reads data/widths.json while building


def _targets(file: int) -> list[str]:
    return [f"models.m{file}:build{k}" for k in range(PER_FILE)]


ALL = [t for f in range(FILES) for t in _targets(f)]


def _model_file(index: int) -> str:
    head = "import torch\nimport torch.nn as nn\n"
    if index in USES_LAYERS:
        head += "from models.layers import mlp\n"
    if index == USES_CONSTS:
        head += "from models.consts import WIDTH\n"
    if index == READS_DATA:
        head += "import json\nimport os\n"
    builds = []
    for k in range(PER_FILE):
        width = 4 + k
        if index in USES_LAYERS:
            body = f"model = nn.Sequential(mlp({width}, 8), nn.Linear(8, 2))"
        elif index == USES_CONSTS:
            body = (f"model = nn.Sequential(nn.Linear({width}, WIDTH), nn.ReLU(), "
                    "nn.Linear(WIDTH, 2))")
        elif index == FINDS and k == 0:
            body = (f"model = nn.Sequential(nn.Linear({width}, 8), nn.BatchNorm1d(8), nn.ReLU(), "
                    "nn.Linear(8, 2))")
        elif index == READS_DATA:
            body = ("with open(os.path.join(os.path.dirname(__file__), '..', 'data', "
                    "'widths.json')) as handle:\n        hidden = json.load(handle)['hidden']\n"
                    f"    model = nn.Sequential(nn.Linear({width}, hidden), nn.ReLU(), "
                    "nn.Linear(hidden, 2))")
        else:
            body = f"model = nn.Sequential(nn.Linear({width}, 8), nn.ReLU(), nn.Linear(8, 2))"
        builds.append(f"def build{k}():\n    {body}\n    return model, torch.randn(4, {width})\n")
    return head + "\n\n" + "\n\n".join(builds)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout


def _generate(repo: Path) -> None:
    (repo / "models").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "models" / "__init__.py").write_text("")
    (repo / "models" / "layers.py").write_text(textwrap.dedent("""\
        import torch.nn as nn


        def mlp(width, hidden):
            return nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        """))
    (repo / "models" / "consts.py").write_text("WIDTH = 8\n")
    (repo / "data" / "widths.json").write_text('{"hidden": 8}\n')
    for index in range(FILES):
        (repo / "models" / f"m{index}.py").write_text(_model_file(index))
    targets = ",\n".join(f'    "{t}"' for t in ALL)
    (repo / "pyproject.toml").write_text(f"[tool.biaslint]\ntargets = [\n{targets},\n]\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "fifty targets")


def _biaslint(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=repo,
                          capture_output=True, text=True, timeout=600)


def _said(proc: subprocess.CompletedProcess[str], verb: str) -> dict[str, str]:
    """Target -> reason, from the ``biaslint: linting T: why`` / ``skipped T: why`` lines."""
    found = re.findall(rf"^biaslint: {verb} (\S+): (.*)$", proc.stderr, flags=re.M)
    return dict(found)


def _reported(proc: subprocess.CompletedProcess[str]) -> set[str]:
    """The targets the text report has a summary line for: those actually linted."""
    return set(re.findall(r"^(models\.m\d:build\d): ", proc.stdout, flags=re.M))


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated repository, committed, after one full run (no --changed-since) filled
    the cache."""
    repo = tmp_path_factory.mktemp("fifty") / "repo"
    _generate(repo)
    proc = _biaslint(repo)
    assert proc.returncode == 1, proc.stderr  # m6.build0's finding
    assert _reported(proc) == set(ALL)
    assert "--changed-since" not in proc.stderr  # a plain run only records, silently
    return repo


@pytest.fixture
def repo(filled: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(filled, copy, symlinks=True)
    return copy


def _entries(repo: Path) -> dict[str, dict]:
    return json.loads((repo / CACHE).read_text())["targets"]


def test_a_full_run_records_exactly_the_files_each_target_runs(repo: Path):
    entries = _entries(repo)
    assert set(entries) == set(ALL)
    for target, entry in entries.items():
        index = int(target.split(":")[0][len("models.m"):])
        expected = {"models/__init__.py", f"models/m{index}.py"}
        if index in USES_LAYERS:
            expected.add("models/layers.py")
        if index == USES_CONSTS:
            # Only the first of its targets imports consts.py; the others reuse the import, and
            # still depend on it.
            expected.add("models/consts.py")
        if index == READS_DATA:
            expected.add("data/widths.json")
        assert set(entry["files"]) == expected, target
    # The cache keeps out of git's way.
    assert _git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("changed, expected, jobs, code", [
    ("models/m5.py", _targets(5), 1, 0),
    ("models/m6.py", _targets(6), 1, 1),  # its finding counts again once it is linted
    ("models/layers.py", [t for f in USES_LAYERS for t in _targets(f)], 2, 0),  # in workers
    ("models/consts.py", _targets(USES_CONSTS), 1, 0),
    ("data/widths.json", _targets(READS_DATA), 1, 0),
])
def test_a_change_lints_exactly_the_targets_that_run_the_changed_file(
        repo: Path, changed: str, expected: list[str], jobs: int, code: int):
    path = repo / changed
    text = path.read_text()
    path.write_text(text.replace('"hidden": 8', '"hidden": 16') if changed.endswith(".json")
                    else text + "\n# touched by a pull request\n")
    proc = _biaslint(repo, "--changed-since", "HEAD", "-j", str(jobs))
    assert proc.returncode == code, proc.stderr
    linted = _said(proc, "linting")
    skipped = _said(proc, "skipped")
    assert set(linted) == set(expected)
    assert _reported(proc) == set(expected)
    assert set(skipped) == set(ALL) - set(expected)
    assert all(reason == f"{changed} changed since HEAD" for reason in linted.values())
    assert all(re.fullmatch(r"none of its \d source files changed since HEAD \(recorded .*\)",
                            why) for why in skipped.values())
    assert (f"--changed-since HEAD: linted {len(expected)} of 50 targets, skipped "
            f"{50 - len(expected)} whose source files are unchanged") in proc.stderr
    # The targets linted were recorded again, in worker processes too.
    assert {t for t, e in _entries(repo).items() if changed in e["files"]} == set(expected)


def test_nothing_changed_skips_everything_and_a_skipped_finding_does_not_fail(repo: Path):
    proc = _biaslint(repo, "--changed-since", "HEAD", "--format", "json")
    assert proc.returncode == 0, proc.stderr  # m6.build0's finding is in a skipped target
    assert json.loads(proc.stdout)["results"] == []
    assert set(_said(proc, "skipped")) == set(ALL)
    assert _said(proc, "skipped")["models.m0:build0"].startswith(
        "none of its 3 source files changed since HEAD")


def test_another_version_a_missing_entry_or_other_settings_lint_the_target(repo: Path):
    data = json.loads((repo / CACHE).read_text())
    data["targets"]["models.m1:build1"]["versions"]["torch"] = "0.0"
    data["targets"]["models.m2:build2"]["versions"]["biaslint"] = "0.0"
    del data["targets"]["models.m3:build3"]
    data["targets"]["models.m4:build4"]["libraries"]["gone-dist"] = "1.0"
    (repo / CACHE).write_text(json.dumps(data))
    proc = _biaslint(repo, "--changed-since", "HEAD")
    assert proc.returncode == 0, proc.stderr
    linted = _said(proc, "linting")
    assert set(linted) == {"models.m1:build1", "models.m2:build2", "models.m3:build3",
                           "models.m4:build4"}
    assert linted["models.m1:build1"].startswith("its record was made with other versions "
                                                 "(torch 0.0 -> ")
    assert linted["models.m2:build2"].startswith("its record was made with other versions "
                                                 "(biaslint 0.0 -> ")
    assert linted["models.m3:build3"].startswith("no recorded source files")
    assert linted["models.m4:build4"] == ("its record was made with other versions (gone-dist "
                                          "1.0 -> not installed)")
    assert len(_said(proc, "skipped")) == 46
    # Linting refreshed those entries: the next run skips them.
    assert set(_entries(repo)) == set(ALL)

    # Other settings than those of the record: linted; the same settings: skipped.
    proc = _biaslint(repo, "models.m5:build0", "models.m5:build1", "--changed-since", "HEAD",
                     "--select", "BL001")
    assert set(_said(proc, "linting")) == {"models.m5:build0", "models.m5:build1"}
    assert all(r.startswith("its settings changed") for r in _said(proc, "linting").values())


def test_a_cache_from_other_file_contents_is_not_trusted(repo: Path):
    model = repo / "models" / "m8.py"
    original = model.read_text()
    model.write_text(original + "\n# an experiment\n")
    assert _biaslint(repo, "models.m8:build0").returncode == 0  # records the edited file
    model.write_text(original)  # back to HEAD: git sees no change, the cache does
    proc = _biaslint(repo, "--changed-since", "HEAD")
    assert proc.returncode == 0, proc.stderr
    linted = _said(proc, "linting")
    assert set(linted) == {"models.m8:build0"}
    assert linted["models.m8:build0"].startswith("models/m8.py differs from its recorded run")
    assert len(_said(proc, "skipped")) == 49


def test_an_unknown_ref_is_one_line_and_exit_2(repo: Path, cli, monkeypatch):
    monkeypatch.chdir(repo)
    result = cli("--changed-since", "no-such-branch")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("biaslint: error: --changed-since no-such-branch: git knows "
                                    "no commit 'no-such-branch'")


def test_outside_a_git_work_tree_is_one_line_and_exit_2(tmp_path: Path, cli, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.biaslint]\ntargets = ["m:build"]\n')
    monkeypatch.chdir(tmp_path)
    if subprocess.run(["git", "rev-parse"], capture_output=True).returncode == 0:
        pytest.skip("the temporary folder is inside a git work tree")
    result = cli("--changed-since", "main")
    assert result.exit_code == 2
    assert result.stderr == ("biaslint: error: --changed-since main: the current folder is not "
                             "inside a git work tree; run biaslint in your repository's "
                             "checkout, or drop --changed-since\n")


def test_changed_since_refuses_to_write_a_partial_baseline(repo: Path, cli, monkeypatch):
    monkeypatch.chdir(repo)
    result = cli("--changed-since", "HEAD", "--write-baseline", "base.json")
    assert result.exit_code == 2
    assert "--changed-since and --write-baseline do not go together" in result.stderr


def test_recording_follows_imports_made_by_an_earlier_target(tmp_path: Path, monkeypatch):
    """In one process, a module imported by one target is not imported again by the next: the
    second still depends on what ran at that import (here a constant of another module)."""
    from biaslint.load.files import recording_sources

    package = tmp_path / f"pkg_{os.getpid()}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "consts.py").write_text("WIDTH = 3\n")
    (package / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (package / "model.py").write_text(
        f"from {package.name}.consts import WIDTH\nfrom {package.name} import helpers\n"
        "def first():\n    return helpers.double(WIDTH)\n"
        "def second():\n    return WIDTH\n")
    (package / "unused.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    with recording_sources() as one:
        module = importlib.import_module(f"{package.name}.model")
        module.first()
    with recording_sources() as two:
        module.second()
    with recording_sources() as three:
        (package / "unused.py").read_text()
    names = {str(package / n) for n in ("__init__.py", "consts.py", "helpers.py", "model.py")}
    assert set(one.files or ()) == names
    assert "torch" not in one.libraries  # no library code ran
    # helpers.py was imported by model.py: the second call depends on it too.
    assert set(two.files or ()) == names
    assert set(three.files or ()) == {str(package / "unused.py")}  # opened for reading


def test_recording_notes_the_libraries_whose_code_ran():
    """Library code is not a source file, but its version is recorded: a new version of a
    library the build ran (timm, transformers) invalidates the record."""
    from importlib import metadata

    import click

    from biaslint.load.files import recording_sources
    from biaslint.run.libraries import distributions

    with recording_sources() as recording:
        click.style("x", bold=True)
    assert recording.files == ()
    assert "click" in recording.libraries
    assert distributions(["click"]) == {"click": metadata.version("click")}


def test_a_tracer_replaced_by_the_target_makes_the_recording_untrusted():
    from biaslint.load.files import recording_sources

    before = sys.gettrace()
    with recording_sources() as recording:
        sys.settrace(None)
    assert recording.files is None
    assert sys.gettrace() is before


def test_a_library_import_runs_untraced_and_a_project_module_it_imports_is_recorded(
        tmp_path: Path, monkeypatch):
    """A library's first import (torch, torchvision: millions of calls) runs without the call
    tracer; the library still counts as run (its version is kept), and a project module that the
    library imports, or that the build imports after it, is recorded as before."""
    from biaslint.load.files import recording_sources

    tag = os.getpid()
    site = tmp_path / "site-packages"  # a folder named like an installed library's
    lib = site / f"fakelib_{tag}"
    lib.mkdir(parents=True)
    project = tmp_path / "project"
    project.mkdir()
    (lib / "__init__.py").write_text(textwrap.dedent(f"""
        import sys
        TRACED_AT_IMPORT = sys.gettrace() is not None
        import plugin_{tag}  # a project module the library imports (a registered plugin)
        def call(f):
            return f()
        """))
    (project / f"plugin_{tag}.py").write_text(
        "import sys\nTRACED = sys.gettrace() is not None\n")
    (project / f"helper_{tag}.py").write_text("def one():\n    return 1\n")
    (project / f"model_{tag}.py").write_text(textwrap.dedent(f"""
        import fakelib_{tag}
        import helper_{tag}
        def build():
            return fakelib_{tag}.call(helper_{tag}.one)
        """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(project))
    import importlib

    with recording_sources() as recording:
        model = importlib.import_module(f"model_{tag}")
        assert model.build() == 1
    library = sys.modules[f"fakelib_{tag}"]
    assert library.TRACED_AT_IMPORT is False  # the library's import ran untraced
    assert sys.modules[f"plugin_{tag}"].TRACED is True  # the project module it imported: traced
    assert set(recording.files or ()) == {str(project / f"{n}_{tag}.py")
                                         for n in ("model", "helper", "plugin")}
    assert f"fakelib_{tag}" in recording.libraries
    import builtins

    assert not type(builtins.__import__).__name__.startswith("_Library")  # given back


# Run by two processes at once: each records its own targets, one run (read the cache, record,
# write) at a time, as two ``biaslint check`` runs sharing a cache folder do. The pause between
# the read and the write is where the other run writes.
_WRITER = """
import sys, time
from dataclasses import dataclass
from pathlib import Path
from biaslint.load.files import SourceFiles
from biaslint.run.changes import Tracking
from biaslint.settings import Settings, TargetConfig

@dataclass
class Result:
    sources: SourceFiles
    error: str | None = None

root, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
source = root / f"{name}.py"
source.write_text("X = 1\\n")
for index in range(count):
    tracking = Tracking(root, root / ".biaslint_cache" / "sources.json", ".")
    tracking._read()
    time.sleep(0.01)
    config = TargetConfig(target=f"{name}:build{index}")
    assert tracking.record([config], [Result(SourceFiles(files=(str(source),)))], Settings())
    problem = tracking.write()
    assert problem is None, problem
"""


def test_two_processes_writing_the_cache_at_once_lose_no_record(tmp_path: Path):
    """Each run re-reads the cache under a lock and merges its own records into it: a record
    another run wrote since this run read the cache is kept."""
    count = 40
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, str(count)],
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    entries = json.loads((tmp_path / CACHE).read_text())["targets"]
    expected = {f"{name}:build{i}" for name in ("a", "b") for i in range(count)}
    assert set(entries) == expected, sorted(expected - set(entries))


def test_two_concurrent_cli_runs_keep_both_runs_records(tmp_path: Path):
    """Two ``biaslint check`` runs in one repository at once (two terminals, two pre-commit
    hooks): each run's targets are in the cache afterwards."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("first", "second"):
        (repo / f"{name}.py").write_text(
            "import torch.nn as nn\n\n\ndef build():\n"
            "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "two models")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "biaslint", f"{name}.py:build",
                               "--input-shape", "2,4"], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("first", "second")]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
    assert set(_entries(repo)) == {"first.py:build", "second.py:build"}
