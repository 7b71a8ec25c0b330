"""lint_many: targets linted in isolated processes; a crash or a hang costs only its target."""

from __future__ import annotations

import time

from biaslint.engine import lint
from biaslint.run.parallel import lint_many
from biaslint.settings import Settings, TargetConfig

MODELS = """
import os
import time

import torch
import torch.nn as nn


def good():
    torch.manual_seed(0)  # the same model in the worker and in-process
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def zero_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    nn.init.zeros_(model[0].weight)
    return model


def exits():
    os._exit(3)


def segfaults():
    import ctypes

    ctypes.string_at(0)


def hangs():
    time.sleep(120)


def raises():
    raise ValueError("broken build")
"""


def _targets(write_target, *attrs: str) -> list[TargetConfig]:
    path = write_target(MODELS, attr="good").split(":")[0]
    return [TargetConfig(target=f"{path}:{a}") for a in attrs]


def test_results_match_in_process_lint_and_keep_order(write_target):
    configs = _targets(write_target, "zero_weight", "good")
    settings = Settings(select=("BL002",))
    results = lint_many(configs, settings, jobs=2)
    assert [r.target for r in results] == [c.target for c in configs]
    for config, result in zip(configs, results):
        expected = lint(config, settings)
        assert result.error is None
        assert result.findings == expected.findings
        assert result.coverage == expected.coverage
    assert any(f.code == "BL002" for f in results[0].findings)
    assert results[1].findings == ()


def test_settings_reach_the_worker(write_target):
    configs = _targets(write_target, "zero_weight")
    ignored = lint_many(configs, Settings(ignore=("BL002",)), jobs=1)
    assert ignored[0].error is None
    assert not any(f.code == "BL002" for f in ignored[0].findings)


def test_crashing_targets_are_errors_and_the_others_still_run(write_target):
    configs = _targets(write_target, "exits", "good", "segfaults", "raises", "missing", "good")
    results = lint_many(configs, Settings(), jobs=2)
    by_attr = {c.target.rsplit(":", 1)[1]: r for c, r in zip(configs, results)}
    assert "called os._exit(3)" in (by_attr["exits"].error or "")  # caught, not a death
    assert "SIGSEGV" in (results[2].error or "")
    assert "broken build" in (by_attr["raises"].error or "")
    assert "no attribute 'missing'" in (by_attr["missing"].error or "")
    for index in (1, 5):
        assert results[index].error is None and results[index].coverage is not None
        assert results[index].coverage.ratio == 1.0


def test_a_hanging_target_times_out_without_blocking_the_rest(write_target):
    configs = _targets(write_target, "hangs", "good")
    start = time.monotonic()
    results = lint_many(configs, Settings(), jobs=2, timeout=8)
    elapsed = time.monotonic() - start
    assert "timed out after 8 s" in (results[0].error or "")
    assert results[1].error is None
    assert elapsed < 60  # the hang sleeps 120 s: it was killed, not waited for


def test_cli_jobs_and_timeout_report_each_target(write_target):
    """`biaslint -j 2 --timeout S`: findings from the good targets, an error line for the hang,
    exit 2 because one target could not be linted."""
    import subprocess
    import sys

    path = write_target(MODELS, attr="good").split(":")[0]
    proc = subprocess.run(
        [sys.executable, "-m", "biaslint", f"{path}:zero_weight", f"{path}:hangs", f"{path}:good",
         "-j", "2", "--timeout", "8", "--select", "BL002", "--format", "json"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "timed out after 8 s" in proc.stderr
    assert proc.stderr.count("biaslint: error:") == 1
    import json

    report = json.loads(proc.stdout)
    codes = json.dumps(report)
    assert "BL002" in codes


def test_cli_timeout_alone_isolates_and_exit_codes_follow_findings(write_target):
    import subprocess
    import sys

    path = write_target(MODELS, attr="good").split(":")[0]
    run = [sys.executable, "-m", "biaslint", "--timeout", "60", "--select", "BL002", "-q"]
    bad = subprocess.run(run + [f"{path}:zero_weight"], capture_output=True, text=True, timeout=120)
    good = subprocess.run(run + [f"{path}:good"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "BL002" in bad.stdout, bad.stderr
    assert good.returncode == 0 and good.stdout == "", good.stderr
