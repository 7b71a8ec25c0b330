"""Whole-process overhead of ``biaslint TARGET`` against a process that only builds the model.

A pre-commit hook or CI gate pays for the whole process: Python start, imports, building the
model, and biaslint's own work. The floor is a bare process that imports torch and torchvision
and builds the model; this script measures both for the nine models of
``overhead_targets.py`` and prints their ratio.

- bare: ``python -c "import torch, torchvision; <build X>"``
- lint: ``python -m biaslint benchmarks/overhead_targets.py:X --cold`` (default rules, text
  report); lint json: the same with ``--format json``, as CI runs it
- warm: the same lint with ``--warm`` (the server already up); warm json; warm edited: the first
  warm lint after the target's source file changed (a copy of ``overhead_targets.py`` that gets
  a line appended before each such run: the child imports it anew)
- bare, ended as biaslint ends: the bare process, then ``atexit`` handlers and ``os._exit``.
  ``biaslint`` ends its own process without the interpreter's teardown (0.5-0.8 s once torch is
  loaded), so against the plain bare process its ratio also counts that saving; against this
  one it counts only what biaslint adds (the like-for-like ratio).

Runs are interleaved (every side of X, then every side of Y, ..., then again) so that the load of
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
                  "screen": t.get("screen", 0.0), "gradients": t.get("gradients", 0.0),
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
    bytecode = "not written (PYTHONDONTWRITEBYTECODE)" if os.environ.get(
        "PYTHONDONTWRITEBYTECODE") else "written"
    return (f"{zoo_machine()}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, load average at start {load[0]:.2f}, "
            f"bytecode {bytecode}, biaslint's compiled before the runs")


SIDES = ("bare", "bare ended", "lint", "lint json", "warm", "warm json", "warm edited")


# The detector runs in eval mode (its training-mode forward needs targets), so the training-mode
# measurements cannot run on it and its analysis is incomplete: exit 2 without this flag.
ALLOW = "--allow-incomplete"


def _commands(name: str, edited: str) -> dict[str, list[str]]:
    lint = [sys.executable, "-m", "biaslint", target(name), ALLOW]
    return {
        "bare": [sys.executable, "-c", BARE.format(here=HERE, name=name)],
        "bare ended": [sys.executable, "-c", BARE_ENDED.format(here=HERE, name=name)],
        "lint": [*lint, "--cold"],
        "lint json": [*lint, "--cold", "--format", "json"],
        "warm": [*lint, "--warm"],
        "warm json": [*lint, "--warm", "--format", "json"],
        # the first warm lint after the target's source file changed (a child imports it anew)
        "warm edited": [sys.executable, "-m", "biaslint", f"{edited}:{name}", ALLOW, "--warm"],
    }


def _edit(path: str, rep: int) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"# edit {rep}\n")


def main(argv: list[str] | None = None) -> int:
    import shutil
    import tempfile

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
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in SIDES} for n in names}
    codes: dict[str, dict[str, set[int]]] = {n: {s: set() for s in SIDES} for n in names}
    scratch = tempfile.mkdtemp(prefix="biaslint-overhead-")
    os.environ["BIASLINT_SERVER_DIR"] = os.path.join(scratch, "servers")
    edited = os.path.join(scratch, "edited_targets.py")
    shutil.copy(os.path.join(HERE, "overhead_targets.py"), edited)
    try:
        # Untimed: byte-compile biaslint as installing it does (pip compiles an installed
        # package; with PYTHONDONTWRITEBYTECODE set an editable checkout would otherwise be
        # compiled from source by every run, 0.2-0.3 s that torch, installed, never pays), what
        # else a fresh checkout has not compiled yet, and start the warm server.
        _timed([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "biaslint")])
        _timed([sys.executable, "-c", BARE.format(here=HERE, name=names[0])])
        _timed([sys.executable, "-m", "biaslint", target(names[0]), "--cold"])
        _timed([sys.executable, "-m", "biaslint", "server", "start"])
        for rep in range(args.repeat):
            for name in names:
                commands = _commands(name, edited)
                for side in SIDES:
                    if side == "warm edited":
                        _edit(edited, rep)
                    seconds, rc, err = _timed(commands[side])
                    if rc != 0 and not (side.startswith(("lint", "warm")) and rc == 1):
                        raise SystemExit(f"{side} {name} exited {rc}:\n{err}")
                    times[name][side].append(seconds)
                    codes[name][side].add(rc)
                print(f"[{rep + 1}/{args.repeat}] {name}: " + ", ".join(
                    f"{side} {times[name][side][-1]:.2f} s" for side in SIDES),
                    file=sys.stderr, flush=True)
    finally:
        _timed([sys.executable, "-m", "biaslint", "server", "stop"])
        shutil.rmtree(scratch, ignore_errors=True)
    lines = [f"Machine: {header}", "", f"Whole process, median of {args.repeat}, interleaved "
             "(every side of a model, then the next model, then again):", ""]
    lines += _table(names, times, codes)
    if not args.no_in_process:
        lines += _in_process(names)
    lines += ["", f"Benchmark wall time {time.perf_counter() - wall:.0f} s."]
    print("\n".join(lines))
    return 0


def _table(names: list[str], times: dict[str, dict[str, list[float]]],
           codes: dict[str, dict[str, set[int]]]) -> list[str]:
    med = {n: {s: statistics.median(times[n][s]) for s in SIDES} for n in names}
    lines = ["| model | " + " | ".join(f"{s} s" for s in SIDES)
             + " | lint / bare ended | json / bare ended | warm / bare ended "
               "| warm edited / bare ended | exit codes cold = warm |",
             "|---|" + "---|" * (len(SIDES) + 5)]
    ratios: dict[str, list[float]] = {"lint": [], "lint json": [], "warm": [], "warm edited": []}
    for n in names:
        for side in ratios:
            ratios[side].append(med[n][side] / med[n]["bare ended"])
        same = codes[n]["lint"] == codes[n]["warm"] == codes[n]["warm edited"] \
            and codes[n]["lint json"] == codes[n]["warm json"]
        lines.append(f"| {n} | " + " | ".join(f"{med[n][s]:.2f}" for s in SIDES) + " | "
                     + " | ".join(f"{ratios[s][-1]:.2f}" for s in ratios)
                     + f" | {'yes' if same else 'NO'} |")
    lines.append("")
    for side, label in (("lint", "cold text"), ("lint json", "cold json"), ("warm", "warm text"),
                        ("warm edited", "warm, first run after an edit")):
        lines.append(f"- {label} against the bare process ended as biaslint ends (like for "
                     f"like): median **{statistics.median(ratios[side]):.2f}**, worst "
                     f"**{max(ratios[side]):.2f}**")
    plain = [med[n]["lint"] / med[n]["bare"] for n in names]
    lines.append(f"- cold text against the plain bare process: median "
                 f"{statistics.median(plain):.2f}, worst {max(plain):.2f}")
    return lines


def _in_process(names: list[str]) -> list[str]:
    lines = ["", "In process (one run each, a fresh process per model):", "",
             "| model | build s | record s | capture s | analysis s | rules s | of which BL001's "
             "screen s | of which BL015's gradients s | own s | own/build | findings |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
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
                     f"| {t['analysis']:.2f} | {t['rules']:.2f} | {t['screen']:.2f} "
                     f"| {t['gradients']:.2f} | {own:.2f} | {own / t['build']:.0%} "
                     f"| {found_text} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
