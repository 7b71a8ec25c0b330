"""Nothing of one target reaches the next in a run (issue 27, item 5): the working directory,
environment variables, sys.path, torch's default device and the warning filters a build sets
are put back after its target."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = """
    import os, sys, warnings, torch, torch.nn as nn

    def build():
        os.makedirs("data", exist_ok=True)
        os.chdir("data")
        os.environ["BIASLINT_LEAK"] = "1"
        sys.path.insert(0, "/nonexistent-leak")
        warnings.simplefilter("error")
        torch.set_default_device("meta")
        return nn.Sequential(nn.Linear(4, 4, device="cpu")), (torch.randn(2, 4, device="cpu"),)
"""

GOOD = """
    import os, sys, warnings, torch, torch.nn as nn

    def build():
        leaks = []
        if os.environ.get("BIASLINT_LEAK"):
            leaks.append("environment")
        if "/nonexistent-leak" in sys.path:
            leaks.append("sys.path")
        if str(torch.get_default_device()) != "cpu":
            leaks.append("default device")
        if any(f[0] == "error" for f in warnings.filters):
            leaks.append("warning filters")
        if leaks:
            raise RuntimeError("leaked from the target before: " + ", ".join(leaks))
        return nn.Sequential(nn.Linear(4, 4)), (torch.randn(2, 4),)
"""


def _run(tmp_path, *extra):
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    return subprocess.run([sys.executable, "-m", "biaslint", "bad.py:build", "good.py:build",
                           "--select", "BL001", *extra], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


def test_a_build_that_changes_the_process_does_not_reach_the_next_target(tmp_path):
    proc = _run(tmp_path)
    out = proc.stdout + proc.stderr
    assert "good.py:build: no findings" in out, out
    assert "leaked" not in out and "no file" not in out
    assert proc.returncode == 0, out
