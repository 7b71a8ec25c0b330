"""``--shard K/N`` (``biaslint.run.shard``): every target in exactly one shard, a split that
does not move when targets are added (without times), balanced by recorded lint times (with
them); and the shards' reports merged back (``biaslint merge``) equal the unsharded run's."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biaslint.run.shard import Shard, assign, shard_configs, weights

TARGETS = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=40, unique=True)
TIMES = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(targets=TARGETS, count=st.integers(1, 9), data=st.data())
def test_the_shards_hold_every_target_exactly_once(targets, count, data):
    timed = data.draw(st.lists(st.sampled_from(targets), unique=True) if targets else st.just([]))
    times = {t: data.draw(TIMES) for t in timed}
    configs = [SimpleNamespace(target=t) for t in targets]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "times.json"
        path.write_text(json.dumps({"format": 1, "targets": {
            t: {"seconds": s} for t, s in times.items()}}))
        for times_file in (None, str(path)):
            shards = [shard_configs(configs, Shard(k, count), times_file, quiet=True)
                      for k in range(1, count + 1)]
            held = [id(c) for shard in shards for c in shard]
            assert sorted(held) == sorted(id(c) for c in configs)
            for shard in shards:  # each keeps the configured order
                assert list(shard) == [c for c in configs if c in shard]


@settings(max_examples=200, deadline=None)
@given(targets=TARGETS, new=st.text(min_size=1, max_size=12), count=st.integers(1, 9))
def test_without_times_adding_a_target_moves_no_other(targets, new, count):
    if new in targets:
        return
    before = dict(zip(targets, assign(targets, count)))
    for at in (0, len(targets) // 2, len(targets)):
        grown = [*targets[:at], new, *targets[at:]]
        after = dict(zip(grown, assign(grown, count)))
        assert all(after[t] == before[t] for t in targets)


def test_without_times_going_to_one_more_shard_moves_only_what_the_new_shard_takes():
    targets = [f"models.m{i}:build" for i in range(400)]
    three, four = assign(targets, 3), assign(targets, 4)
    moved = [(a, b) for a, b in zip(three, four) if a != b]
    assert all(b == 4 for _, b in moved)
    assert 60 < len(moved) < 140  # about a quarter of 400


@settings(max_examples=200, deadline=None)
@given(times=st.lists(TIMES, min_size=1, max_size=40), count=st.integers(1, 9))
def test_with_times_the_shards_differ_by_at_most_the_longest_target(times, count):
    targets = [f"t{i}" for i in range(len(times))]
    seconds = dict(zip(targets, times))
    load = [0.0] * count
    for target, k in zip(targets, assign(targets, count, seconds)):
        load[k - 1] += seconds[target]
    # Greedy list scheduling: the last target put on the busiest shard went to the least busy.
    assert max(load) - min(load) <= max(times) + 1e-9


def test_with_times_a_long_target_gets_a_shard_of_its_own():
    targets = [f"zoo.m{i}:build" for i in range(7)]
    seconds = {t: 1.0 for t in targets} | {targets[3]: 6.0}
    shards = assign(targets, 2, seconds)
    assert [t for t, k in zip(targets, shards) if k == shards[3]] == [targets[3]]
    # by the hash alone, the heavy target shares its shard
    hashed = assign(targets, 2)
    assert sum(k == hashed[3] for k in hashed) > 1


def test_a_target_without_a_time_weighs_the_median_of_the_known():
    assert weights(["a", "b", "c", "d"], {"a": 1.0, "b": 8.0, "c": 2.0}) == [1.0, 8.0, 2.0, 2.0]
    assert weights(["a", "b"], {}) == [1.0, 1.0]


def test_the_split_is_the_same_in_every_process():
    """Python's own ``hash`` of a string is salted per process; the split must not be."""
    import os
    import sys

    targets = [f"pkg.m{i}:build" for i in range(30)]
    code = (f"from biaslint.run.shard import assign; targets = {targets!r}; "
            "print(assign(targets, 4), hash(targets[0]))")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root, "PYTHONHASHSEED": "12345"},
                          check=True)
    split, salted = proc.stdout.strip().rsplit(" ", 1)
    assert int(salted) != hash(targets[0])  # another salt there
    assert split == str(assign(targets, 4))


# -- the command line -------------------------------------------------------------------------

MODELS = """
import torch.nn as nn


def good():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())


def bad():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())


def zeros():
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    return model


def head():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))


def plain():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
"""

PYPROJECT = """
[tool.biaslint]
targets = [
    {{target = "{m}.py:good", input-shape = [[4, 3, 8, 8]]}},
    {{target = "{m}.py:bad", input-shape = [[4, 3, 8, 8]]}},
    {{target = "{m}.py:zeros", input-shape = [[8, 16]]}},
    {{target = "{m}.py:head", input-shape = [[8, 16]], class-priors = "0.99,0.01"}},
    {{target = "{m}.py:plain", input-shape = [[8, 16]]}},
]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    import os

    stem = f"shard_models_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{stem}.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT.format(m=stem)))
    (tmp_path / "out").mkdir()
    return tmp_path


def _check(cli, project: Path, *args: str):
    return cli("check", "--config", str(project / "pyproject.toml"), *args)


def _shards(cli, project: Path, count: int, *args: str) -> list[str]:
    """Run each shard; returns each one's stderr line about the split."""
    said = []
    for k in range(1, count + 1):
        result = _check(cli, project, "--shard", f"{k}/{count}", *args)
        assert result.exit_code in (0, 1), result.output
        [line] = [s for s in result.stderr.splitlines() if s.startswith("biaslint: shard")]
        said.append(line)
    return said


def test_three_shards_merge_into_the_unsharded_reports(cli, project):
    from test_formats import validate

    out = project / "out"
    full = _check(cli, project, "--format", "json", "--output", str(out / "full.json"))
    assert full.exit_code == 1, full.output
    _check(cli, project, "--format", "sarif", "--output", str(out / "full.sarif"))
    _check(cli, project, "--write-baseline", str(out / "full-baseline.json"))
    said = []
    for k in range(1, 4):
        shard = _check(cli, project, "--shard", f"{k}/3", "--format", "json",
                       "--output", str(out / f"s{k}.json"))
        said += [s for s in shard.stderr.splitlines() if s.startswith("biaslint: shard")]
        _check(cli, project, "--shard", f"{k}/3", "--format", "sarif",
               "--output", str(out / f"s{k}.sarif"))
        _check(cli, project, "--shard", f"{k}/3", "--write-baseline", str(out / f"b{k}.json"))
    counts = [int(re.search(r"shard \d/3: (\d+) of", line)[1]) for line in said]
    assert sum(counts) == 5 and all(" of 5 targets" in line for line in said), said
    assert len({line.rsplit("assignment ", 1)[1] for line in said}) == 1  # one split

    def merged(kind: str, *names: str) -> dict:
        result = cli("merge", "-o", str(out / f"merged.{kind}"), *(str(out / n) for n in names))
        assert result.exit_code == 0, result.output
        return json.loads((out / f"merged.{kind}").read_text())

    report = merged("json", "s1.json", "s2.json", "s3.json")
    expected = json.loads((out / "full.json").read_text())
    assert {k: v for k, v in report.items() if k != "results"} == \
        {k: v for k, v in expected.items() if k != "results"}
    by_target = sorted(report["results"], key=lambda r: r["target"])
    assert by_target == sorted(expected["results"], key=lambda r: r["target"])
    assert sum(len(r["findings"]) for r in by_target) >= 3  # bad, zeros and head found

    sarif = merged("sarif", "s1.sarif", "s2.sarif", "s3.sarif")
    validate(sarif)
    whole = json.loads((out / "full.sarif").read_text())
    [run], [whole_run] = sarif["runs"], whole["runs"]
    assert run["tool"] == whole_run["tool"]  # every rule once
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert all(rules[r["ruleIndex"]] == r["ruleId"] for r in run["results"])

    def key(result: dict) -> str:
        return result["partialFingerprints"]["biaslintFingerprint/v1"]

    assert sorted(run["results"], key=key) == sorted(whole_run["results"], key=key)
    assert run["invocations"][0]["properties"] == whole_run["invocations"][0]["properties"]

    baseline = merged("baseline", "b1.json", "b2.json", "b3.json")
    assert baseline == json.loads((out / "full-baseline.json").read_text())


def test_the_times_of_a_run_balance_the_next_and_changed_since_still_works(cli, project):
    """In a git work tree a run records each target's lint time in its source cache; merged
    into a file of its own, it balances the shards; --changed-since narrows a shard further."""
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    first = _check(cli, project, "-q")
    assert first.exit_code == 1, first.output
    cache = project / ".biaslint_cache" / "sources.json"
    entries = json.loads(cache.read_text())["targets"]
    assert len(entries) == 5 and all(e["seconds"] > 0 for e in entries.values()), entries
    times = project / "out" / "times.json"
    assert cli("merge", "-q", "-o", str(times), str(cache)).exit_code == 0
    said = _shards(cli, project, 2, "--shard-times", str(times), "--format", "json")
    assert all("balanced by the recorded lint times of 5 of 5" in line for line in said), said
    assert len({line.rsplit("assignment ", 1)[1] for line in said}) == 1
    # The live cache is refused: the runs above rewrote it, so shards would split differently.
    live = _check(cli, project, "--shard", "1/2", "--shard-times", str(cache))
    assert live.exit_code == 2 and "live cache" in live.stderr
    # --changed-since drops the unchanged targets of the shard (all of them: nothing changed).
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"],
                   cwd=project, check=True)
    shard = _check(cli, project, "--shard", "1/2", "--changed-since", "HEAD")
    assert shard.exit_code == 0, shard.output
    mine = int(shard.stderr.split("shard 1/2: ")[1].split(" of ")[0])
    assert f"linted 0 of {mine} target" in shard.stderr, shard.stderr


@pytest.mark.parametrize("args, says", [
    (("--shard", "0/3"), "--shard 0/3: K must be between 1 and N (3)"),
    (("--shard", "4/3"), "--shard 4/3: K must be between 1 and N (3)"),
    (("--shard", "2"), "--shard 2: must be K/N"),
    (("--shard", "a/b"), "--shard a/b: must be K/N"),
    (("--shard", "1/0"), "--shard 1/0: N must be at least 1"),
    (("--shard-times", "t.json"), "--shard-times goes with --shard"),
    (("--shard", "1/2", "--shard-times", "missing.json"), "--shard-times missing.json: no such"),
])
def test_a_bad_shard_is_one_line_and_exit_2(cli, project, args, says):
    result = _check(cli, project, *args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr


def test_quiet_says_nothing_about_the_split(cli, project):
    result = _check(cli, project, "-q", "--shard", "3/3", "--select", "BL002")
    assert "shard" not in result.stderr, result.stderr


# -- biaslint merge: what it refuses ----------------------------------------------------------

def _report(*targets: str, version: int = 1) -> dict:
    return {"schema_version": version, "tool": {"name": "biaslint", "version": "0.1.0"},
            "results": [{"target": t, "findings": []} for t in targets]}


BASELINE = {"version": 1, "tool": {"name": "biaslint", "version": "0.1.0"}, "findings": [
    {"target": "m:a", "code": "BL001", "module": "0", "parameter": "bias", "message": "x"}]}


SARIF = {"version": "2.1.0", "runs": [{
    "tool": {"driver": {"name": "biaslint", "version": "0.1.0", "rules": [{"id": "BL001"}]}},
    "results": [{"ruleId": "BL001", "ruleIndex": 0, "properties": {"target": "m:a"}}]}]}


@pytest.mark.parametrize("files, says", [
    ({"a.sarif": SARIF, "b.sarif": SARIF}, "target m:a is in both a.sarif and b.sarif"),
    ({"a.json": _report("m:a"), "b.json": BASELINE},
     "b.json is a baseline but a.json is a JSON report: merge files of one kind at a time"),
    ({"a.json": _report("m:a"), "b.json": _report("m:b", version=2)},
     "b.json has schema_version 2 but a.json has 1"),
    ({"a.json": _report("m:a", "m:b"), "b.json": _report("m:c", "m:b")},
     "target m:b is in both a.json and b.json: shards never overlap"),
    ({"a.json": BASELINE, "b.json": BASELINE}, "target m:a is in both a.json and b.json"),
    ({"a.json": _report("m:a"), "b.jsonl": '{"target": "m:b"}\n{"target": "m:c"}\n'},
     "b.jsonl: not JSON"),
    ({"a.json": {"hello": 1}}, "a.json: not a biaslint JSON report, SARIF log, baseline"),
])
def test_merge_refuses_with_one_line(cli, tmp_path, monkeypatch, files, says):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        Path(name).write_text(content if isinstance(content, str) else json.dumps(content))
    result = cli("merge", "-o", "merged.json", *files)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert not Path("merged.json").exists()


def test_merge_keeps_a_target_one_report_lists_twice_and_writes_to_stdout(cli, tmp_path):
    """A config may list one target twice (with other input shapes): within one input that is
    no overlap."""
    (tmp_path / "a.json").write_text(json.dumps(_report("m:a", "m:a")))
    (tmp_path / "b.json").write_text(json.dumps(_report("m:b")))
    result = cli("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert [r["target"] for r in json.loads(result.stdout)["results"]] == ["m:a", "m:a", "m:b"]
    assert "merged 2 JSON reports: 3 targets" in result.stderr


def test_merge_does_not_import_torch(tmp_path):
    import os
    import sys

    (tmp_path / "a.json").write_text(json.dumps(_report("m:a")))
    (tmp_path / "b.json").write_text(json.dumps(_report("m:b")))
    code = ("import sys; from biaslint.cli import main\n"
            "try:\n    main(['merge', '-q', '-o', 'm.json', 'a.json', 'b.json'])\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "assert 'torch' not in sys.modules\n")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "m.json").read_text())["results"]) == 2
