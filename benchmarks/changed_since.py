"""``--changed-since``: what a pull request that touches one model file costs, against a full run.

Generates a model repository of 50 targets in a temporary folder: 10 model files of 5 small
convnets each (a stem, two residual blocks, a classifier head; widths vary by target) on 2x3x32x32
inputs; files m0..m4 build from a shared ``models/layers.py``, m5..m9 define their own layers.
The targets are listed in its ``pyproject.toml``; the repository is a git repository with one
commit. Then, each a whole ``biaslint`` process (``import torch`` included), median of 3:

- **full run**: ``biaslint`` (every target; this is also what fills the cache);
- **full run, no recording**: the same repository without ``.git`` (nothing is recorded
  there), for the cost of recording;
- **PR touching one model file**: ``models/m7.py`` edited, ``biaslint --changed-since HEAD``;
- **PR touching the shared helper**: ``models/layers.py`` edited (25 targets run it);
- **PR touching nothing biaslint lints**: a README edited.

Usage::

    python benchmarks/changed_since.py            # the table
    python benchmarks/changed_since.py --jobs 2   # the runs with -j 2
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FILES, PER_FILE, SHARED = 10, 5, range(0, 5)
REPEAT = 3

LAYERS = '''\
import torch
import torch.nn as nn


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a = conv_bn(width, width)
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + x)
'''

OWN = '''\
import torch
import torch.nn as nn


class ConvBN(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def conv_bn(cin, cout, stride=1):
    return ConvBN(cin, cout, stride)


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a = ConvBN(width, width)
        self.b = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.b(self.a(x))) + x)
'''

BUILD = '''

def build{k}():
    width = {width}
    model = nn.Sequential(conv_bn(3, width), Residual(width), conv_bn(width, 2 * width, 2),
                          Residual(2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2 * width, 10))
    return model, torch.randn(2, 3, 32, 32)
'''


def generate(repo: Path) -> None:
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "__init__.py").write_text("")
    (repo / "models" / "layers.py").write_text(LAYERS)
    (repo / "README.md").write_text("# fifty models\n")
    for index in range(FILES):
        head = ("import torch\nimport torch.nn as nn\n\nfrom models.layers import Residual, "
                "conv_bn\n") if index in SHARED else OWN
        builds = "".join(BUILD.format(k=k, width=8 + 4 * k) for k in range(PER_FILE))
        (repo / "models" / f"m{index}.py").write_text(head + builds)
    targets = [f"models.m{i}:build{k}" for i in range(FILES) for k in range(PER_FILE)]
    (repo / "pyproject.toml").write_text(
        "[tool.biaslint]\ntargets = [\n" + "".join(f'    "{t}",\n' for t in targets) + "]\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fifty models")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout


def run(repo: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"biaslint {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return seconds, proc


def linted(proc: subprocess.CompletedProcess[str]) -> int:
    return len(re.findall(r"^models\.m\d:build\d: ", proc.stdout, flags=re.M))


def measure(repo: Path, args: list[str]) -> tuple[float, int, list[float]]:
    times, count = [], 0
    for _ in range(REPEAT):
        seconds, proc = run(repo, *args)
        times.append(seconds)
        count = linted(proc)
    return statistics.median(times), count, times


def touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# changed by a pull request\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1)
    jobs = ["-j", str(parser.parse_args().jobs)]
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    rows = []
    with tempfile.TemporaryDirectory(prefix="biaslint-changed-") as scratch:
        repo = Path(scratch) / "repo"
        generate(repo)
        plain = Path(scratch) / "plain"
        shutil.copytree(repo, plain, ignore=shutil.ignore_patterns(".git"))

        full = measure(repo, jobs)  # also fills the cache
        rows.append(("full run (`biaslint`)", full))
        rows.append(("full run, nothing recorded (no git work tree)", measure(plain, jobs)))
        touch(repo / "models" / "m7.py")
        rows.append(("PR touching one model file (`models/m7.py`)",
                     measure(repo, [*jobs, "--changed-since", "HEAD"])))
        git(repo, "checkout", "--", "models/m7.py")
        touch(repo / "models" / "layers.py")
        rows.append(("PR touching the shared helper (`models/layers.py`)",
                     measure(repo, [*jobs, "--changed-since", "HEAD"])))
        git(repo, "checkout", "--", "models/layers.py")
        touch(repo / "README.md")
        rows.append(("PR touching no model code (`README.md`)",
                     measure(repo, [*jobs, "--changed-since", "HEAD"])))

    print(f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"torch {torch.__version__.split('+')[0]}; {' '.join(jobs)}; median of {REPEAT} "
          "whole processes")
    print()
    print("| run | targets linted | wall (median) | runs | against the full run |")
    print("|---|---|---|---|---|")
    base = full[0]
    for name, (median, count, times) in rows:
        shown = ", ".join(f"{t:.1f}" for t in times)
        print(f"| {name} | {count} of 50 | {median:.1f} s | {shown} | "
              f"{median / base:.0%} ({base / median:.1f}x faster) |"
              if median < base * 0.95 else
              f"| {name} | {count} of 50 | {median:.1f} s | {shown} | {median / base:.0%} |")


if __name__ == "__main__":
    main()
