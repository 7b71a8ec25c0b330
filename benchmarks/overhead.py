"""Whole-process overhead of ``biaslint TARGET`` against a process that only builds the model.

A pre-commit hook or CI gate pays for the whole process: Python start, imports, building the
model, and biaslint's own work. The floor is a bare process that imports torch and torchvision
and builds the model; this script measures both for the nine models of
``overhead_targets.py`` and prints their ratio.

- bare: ``python -c "import torch, torchvision; <build X>"``
- lint: ``python -m biaslint benchmarks/overhead_targets.py:X`` (default rules, text report)
- bare, ended as biaslint ends: the bare process, then ``atexit`` handlers and ``os._exit``.
  ``biaslint`` ends its own process without the interpreter's teardown (0.5-0.8 s once torch is
  loaded), so against the plain bare process its ratio also counts that saving; against this
  one it counts only what biaslint adds (the like-for-like ratio).

Runs are interleaved (bare X, bare-ended X, lint X, bare Y, ..., then again) so that the load of
a shared machine weighs on every side; each figure is the median of ``--repeat`` runs. Then, in a
fresh process per model, the in-process figures: build (plain constructor), own (recording
during the build + capture + analysis + rules, ``TargetResult.timings``) and own/build.

    python benchmarks/overhead.py [--repeat 3] [--match REGEX]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

BARE = ("import sys; sys.path.insert(0, {here!r}); import torch, torchvision; "
        "import overhead_targets; overhead_targets.{name}()")
BARE_ENDED = BARE + "; import atexit, os; atexit._run_exitfuncs(); os._exit(0)"

IN_PROCESS = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import torch
import overhead_targets
torch.manual_seed(0)
start = time.perf_counter()
model, inputs = overhead_targets.{name}()
build = time.perf_counter() - start
del model, inputs
from biaslint.engine import lint
from biaslint.settings import Settings, TargetConfig
torch.manual_seed(0)
result = lint(TargetConfig({target!r}), Settings())
t = result.timings
record = max(0.0, t["build"] - build)
print(json.dumps({{"build": build, "record": record, "capture": t["capture"],
                  "analysis": t["analysis"], "rules": t["rules"],
                  "findings": sorted(f.code for f in result.findings)}}))
"""


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stderr


def target(name: str) -> str:
    return f"benchmarks/overhead_targets.py:{name}"


def machine() -> str:
    import torch
    import torchvision

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from zoo import machine as zoo_machine  # cores, CPU model, RAM, Python

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{zoo_machine()}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, load average at start {load[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    import overhead_targets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per side and model [3]")
    parser.add_argument("--match", default=None, help="regex on model names")
    parser.add_argument("--no-in-process", action="store_true",
                        help="skip the in-process own/build figures")
    args = parser.parse_args(argv)
    names = [n for n in overhead_targets.NAMES if args.match is None or re.search(args.match, n)]
    header = machine()
    wall = time.perf_counter()
    bare: dict[str, list[float]] = {n: [] for n in names}
    ended: dict[str, list[float]] = {n: [] for n in names}
    lint: dict[str, list[float]] = {n: [] for n in names}
    codes: dict[str, set[int]] = {n: set() for n in names}
    # One untimed run of each side first: byte-compiles what a fresh checkout has not yet.
    _timed([sys.executable, "-c", BARE.format(here=HERE, name=names[0])])
    _timed([sys.executable, "-m", "biaslint", target(names[0])])
    for rep in range(args.repeat):
        for name in names:
            seconds, rc, err = _timed([sys.executable, "-c", BARE.format(here=HERE, name=name)])
            if rc != 0:
                raise SystemExit(f"bare build of {name} failed:\n{err}")
            bare[name].append(seconds)
            seconds, rc, err = _timed([sys.executable, "-c",
                                       BARE_ENDED.format(here=HERE, name=name)])
            if rc != 0:
                raise SystemExit(f"bare build of {name} (ended) failed:\n{err}")
            ended[name].append(seconds)
            seconds, rc, err = _timed([sys.executable, "-m", "biaslint", target(name)])
            if rc not in (0, 1):  # 1: findings at the failing severity; anything else: broken
                raise SystemExit(f"biaslint {target(name)} exited {rc}:\n{err}")
            lint[name].append(seconds)
            codes[name].add(rc)
            print(f"[{rep + 1}/{args.repeat}] {name}: bare {bare[name][-1]:.2f} s, "
                  f"bare ended {ended[name][-1]:.2f} s, lint {lint[name][-1]:.2f} s",
                  file=sys.stderr, flush=True)
    rows = []
    for name in names:
        b, e, li = (statistics.median(bare[name]), statistics.median(ended[name]),
                    statistics.median(lint[name]))
        rows.append((name, b, e, li, li / b, li / e))
    lines = [f"Machine: {header}", "",
             f"Whole process, median of {args.repeat}, interleaved:", "",
             "| model | bare s | bare ended s | lint s | ratio | like-for-like ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {b:.2f} | {e:.2f} | {li:.2f} | {r:.2f} | {r2:.2f} |"
              for n, b, e, li, r, r2 in rows]
    ratios = [r for *_, r, _ in rows]
    like = [r2 for *_, r2 in rows]
    lines += ["", f"Against the bare process: worst ratio **{max(ratios):.2f}**, median "
                  f"**{statistics.median(ratios):.2f}**. Like for like (the bare process "
                  f"ended as biaslint ends): worst **{max(like):.2f}**, median "
                  f"**{statistics.median(like):.2f}**."]
    if not args.no_in_process:
        lines += ["", "In process (one run each, a fresh process per model):", "",
                  "| model | build s | record s | capture s | analysis s | rules s | own s "
                  "| own/build | findings |", "|---|---|---|---|---|---|---|---|---|"]
        for name in names:
            code = IN_PROCESS.format(here=HERE, name=name, target=target(name))
            done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise SystemExit(f"in-process lint of {name} failed:\n{done.stderr}")
            t = json.loads(done.stdout.strip().splitlines()[-1])
            own = t["record"] + t["capture"] + t["analysis"] + t["rules"]
            found = {c: t["findings"].count(c) for c in sorted(set(t["findings"]))}
            found_text = ", ".join(f"{c} {k}" for c, k in found.items()) or "none"
            lines.append(f"| {name} | {t['build']:.2f} | {t['record']:.2f} | {t['capture']:.2f} "
                         f"| {t['analysis']:.2f} | {t['rules']:.2f} | {own:.2f} "
                         f"| {own / t['build']:.0%} | {found_text} |")
    lines += ["", f"Benchmark wall time {time.perf_counter() - wall:.0f} s."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
