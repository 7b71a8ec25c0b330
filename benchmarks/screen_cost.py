"""What BL001's bias screen costs, next to the capture and the rules, per model.

Each model is linted with every rule (the default), in its own process, at one torch thread per
core the machine has; the seconds come from ``TargetResult.timings`` (``screen`` is the part of
``rules`` the screen took). Models: the nine of ``overhead_targets`` (eight classifiers at
224 px, batch 2, and a detector in eval mode), a video model (torchvision's r3d_18 on one
2x3x8x112x112 clip), and two transformers tiny configs.

Usage::

    python benchmarks/screen_cost.py                 # table on stdout
    python benchmarks/screen_cost.py --runs 3        # median of three runs per model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

EXTRA = {
    "r3d_18": "torchvision.models.video:r3d_18 --input-shape 2,3,8,112,112",
    "bert_tiny": "screen_cost_targets.py:bert_tiny",
    "gpt2_tiny": "screen_cost_targets.py:gpt2_tiny",
}

IN_PROCESS = r"""
import json, sys
sys.path.insert(0, {here!r})
import torch
from biaslint.engine import lint
from biaslint.settings import Settings, TargetConfig
torch.manual_seed(0)
config = TargetConfig({target!r}, input_shapes={shapes!r})
result = lint(config, Settings())
t = dict(result.timings)
bl001 = [f for f in result.findings if f.code == "BL001"]
print(json.dumps({{"timings": t, "bl001": len(bl001),
                  "measured": sum(bool(f.data.get("measured")) for f in bl001),
                  "notes": [n for n in result.notes if n.startswith("BL001")]}}))
"""


def _targets() -> dict[str, tuple[str, tuple[tuple[int, ...], ...] | None]]:
    sys.path.insert(0, HERE)
    from overhead_targets import NAMES

    found: dict[str, tuple[str, tuple[tuple[int, ...], ...] | None]] = {
        name: (os.path.join(HERE, f"overhead_targets.py:{name}"), None) for name in NAMES}
    for name, spec in EXTRA.items():
        target, _, shape = spec.partition(" --input-shape ")
        if target.startswith("screen_cost_targets.py"):
            target = os.path.join(HERE, target)
        shapes = (tuple(int(x) for x in shape.split(",")),) if shape else None
        found[name] = (target, shapes)
    return found


def run_one(target: str, shapes: tuple[tuple[int, ...], ...] | None) -> dict:
    code = IN_PROCESS.format(here=HERE, target=target, shapes=shapes)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, cwd=HERE)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--match", default="")
    args = parser.parse_args(argv)
    rows = []
    print("| model | capture s | rules s | of which screen s | screen / capture | BL001 "
          "(measured) |")
    print("|---|---|---|---|---|---|")
    for name, (target, shapes) in _targets().items():
        if args.match and args.match not in name:
            continue
        runs = [run_one(target, shapes) for _ in range(args.runs)]
        good = [r for r in runs if "timings" in r]
        if not good:
            print(f"| {name} | error: {runs[0].get('error')} | | | | |")
            continue

        def median(key: str) -> float:
            return statistics.median(r["timings"].get(key, 0.0) for r in good)

        capture, rules, screen = median("capture"), median("rules"), median("screen")
        rows.append((name, capture, screen))
        print(f"| {name} | {capture:.2f} | {rules:.2f} | {screen:.2f} | "
              f"{screen / capture if capture else float('nan'):.2f} | "
              f"{good[0]['bl001']} ({good[0]['measured']}) |", flush=True)
    if rows:
        screens = [s for _, _, s in rows]
        worst = max(rows, key=lambda r: r[2])
        print(f"\nscreen: median {statistics.median(screens):.2f} s, worst {worst[2]:.2f} s "
              f"({worst[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
