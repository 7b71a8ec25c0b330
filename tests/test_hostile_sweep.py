"""Twenty-odd hostile builds in one ``-j 2`` run next to well-behaved ones: every target is
reported, the machine format on stdout stays valid, and the well-behaved targets' findings are
exactly those of a run without the hostile ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODEL = """
import torch
import torch.nn as nn

def model():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 4, 3)), torch.randn(2, 3, 12, 12)
"""

GOOD = {
    "good_plain": "def build():\n    return model()\n",
    "good_deep": ("def build():\n    net, x = model()\n"
                  "    return nn.Sequential(net, nn.Flatten(), nn.Linear(256, 3)), x\n"),
    "good_init": ("def build():\n    net, x = model()\n"
                  "    nn.init.normal_(net[3].weight, 0, 1)\n    return net, x\n"),
}

# kind -> (build body, what the run must say about it: "error" or "result")
HOSTILE = {
    "exit_zero": ("import sys\n    sys.exit(0)", "error"),
    "exit_three": ("import sys\n    sys.exit(3)", "error"),
    "hard_exit": ("import os\n    os._exit(5)", "error"),
    "interrupt": ("raise KeyboardInterrupt", "error"),
    "raises": ("raise ValueError('broken build')", "error"),
    "hangs": ("while True:\n        pass", "error"),
    "sigterm_self": ("import os, signal\n    os.kill(os.getpid(), signal.SIGTERM)", "error"),
    "no_parameters": ("return nn.ReLU()", "error"),
    "returns_none": ("return None", "error"),
    "bad_inputs": ("net, x = model()\n    return net, torch.randn(2, 5, 12, 12)", "error"),
    "prints": ("print('hello from the build')\n    return model()", "result"),
    "prints_a_lot": ("print('x' * 100000)\n    return model()", "result"),
    "float64": ("torch.set_default_dtype(torch.float64)\n    return model()", "result"),
    "no_grad": ("torch.set_grad_enabled(False)\n    return model()", "result"),
    "reseeds": ("torch.manual_seed(123)\n    return model()", "result"),
    "deterministic": ("torch.use_deterministic_algorithms(True)\n    return model()", "result"),
    "one_thread": ("torch.set_num_threads(1)\n    return model()", "result"),
    "nan_weight": ("net, x = model()\n    net[0].weight.data[0, 0, 0, 0] = float('nan')\n"
                   "    return net, x", "result"),
    "inf_weight": ("net, x = model()\n    net[3].weight.data[0, 0, 0, 0] = float('inf')\n"
                   "    return net, x", "result"),
    "exit_in_forward": ("""
    import sys

    class Quits(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            sys.exit(0)

    return Quits(), torch.randn(2, 4)""", "error"),
    "prints_in_forward": ("""
    class Chatty(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model()[0]

        def forward(self, x):
            print("forward", tuple(x.shape))
            return self.net(x)

    return Chatty(), torch.randn(2, 3, 12, 12)""", "result"),
}


def _write(folder: Path) -> tuple[list[str], list[str]]:
    good, hostile = [], []
    for name, body in GOOD.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(MODEL) + "\n\n" + body)
        good.append(f"{name}.py:build")
    for name, (body, _) in HOSTILE.items():
        text = body.strip("\n")
        if not text.startswith(" "):  # a one-liner whose continuation lines are indented
            text = text.replace("\n    ", "\n")
        lines = textwrap.indent(textwrap.dedent(text), "    ")
        source = textwrap.dedent(MODEL) + "\n\ndef build():\n" + lines + "\n"
        (folder / f"hostile_{name}.py").write_text(source)
        hostile.append(f"hostile_{name}.py:build")
    return good, hostile


def _run(folder: Path, targets: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biaslint", *targets, "-j", "2", "--timeout",
                           "30", "--format", "json"], cwd=folder, capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.slow
def test_hostile_builds_in_one_parallel_run(tmp_path: Path):
    assert len(HOSTILE) >= 20
    good, hostile = _write(tmp_path)
    alone = _run(tmp_path, good)
    mixed = _run(tmp_path, good[:2] + hostile + good[2:])
    assert mixed.returncode == 2, mixed.stderr[-2000:]
    report = json.loads(mixed.stdout)  # one valid document, whatever the builds printed
    by_target = {r["target"]: r for r in report["results"]}
    assert set(by_target) == set(good) | set(hostile)  # every target reported
    expected = {r["target"]: r["findings"] for r in json.loads(alone.stdout)["results"]}
    for target in good:
        assert by_target[target]["error"] is None
        assert by_target[target]["findings"] == expected[target], target
    for name, (_, outcome) in HOSTILE.items():
        entry = by_target[f"hostile_{name}.py:build"]
        if outcome == "error":
            assert entry["error"], name
        else:
            assert entry["error"] is None, (name, entry["error"])
    for name in ("nan_weight", "inf_weight"):
        assert by_target[f"hostile_{name}.py:build"]["incomplete"], name
    errors = [line for line in mixed.stderr.splitlines() if line.startswith("biaslint: error")]
    assert "Traceback" not in mixed.stderr
    # One line per failed target, and one for the incomplete analysis.
    failed = [n for n, (_, outcome) in HOSTILE.items() if outcome == "error"]
    assert len(errors) == len(failed) + 1, "\n".join(errors)
