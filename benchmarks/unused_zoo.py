"""BL010 on the zoo, checked against autograd: every parameter it names must get no gradient
from a backward of every output on the same example inputs, and every trainable parameter that
gets none should be named.

For each model (in its own worker): lint with BL010 only; run the model's forward on its example
inputs in training mode, sum every floating output that requires grad, backward; compare.
Detectors in eval mode are run as the zoo builds them (their outputs are boxes and scores).

Usage::

    python benchmarks/unused_zoo.py --family tv-classification --jobs 2

Rows go to ``benchmarks/out/unused_zoo.jsonl``, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from meta_equivalence import Job  # noqa: E402
from zoo_models import FAMILIES, import_library  # noqa: E402


def _leaves(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _leaves(v)]
    if hasattr(value, "__dataclass_fields__") or hasattr(value, "to_tuple"):
        try:
            return _leaves(value.to_tuple() if hasattr(value, "to_tuple") else vars(value))
        except Exception:  # noqa: BLE001
            return []
    return []


def check(job: Job) -> dict[str, Any]:
    import torch

    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    import_library(job.family)
    torch.manual_seed(0)
    loaded = load_target(job.target)
    result = lint_loaded(loaded, TargetConfig(job.target), Settings(select=("BL010",)))
    named = {p for f in result.findings for p in f.data.get("parameters", ())}
    model = loaded.model
    inputs = loaded.inputs
    row: dict[str, Any] = {"family": job.family, "model": job.name,
                           "findings": [(f.module, f.data.get("verdict"), f.data.get("values"))
                                        for f in result.findings],
                           "named": len(named)}
    if inputs is None:
        row["truth"] = "no inputs"
        return row
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        out = model(*inputs.args, **inputs.kwargs)
    leaves = [t for t in _leaves(out) if t.is_floating_point() and t.requires_grad]
    if not leaves:
        row["truth"] = "no differentiable output"
        return row
    sum(t.float().sum() for t in leaves).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reached = {n for n, p in model.named_parameters()
               if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    no_grad = trainable - reached
    # A parameter connected to the loss whose gradient is exactly zero here (a dead ReLU, a
    # zero-init gate) is not unused: only those autograd never reached (grad None) count.
    unreached = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    row.update({
        "truth": "measured",
        "false_claims": sorted(named & reached),
        "missed": sorted(unreached - named)[:20],
        "missed_count": len(unreached - named),
        "zero_gradient_not_named": len(no_grad - unreached - named),
        "unreached": len(unreached),
    })
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=",".join(FAMILIES))
    parser.add_argument("--match", default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    args = parser.parse_args(argv)

    from biaslint.parallel import run_isolated

    import unused_zoo

    pattern = re.compile(args.match) if args.match else None
    jobs = [Job(f, n) for f in args.family.split(",") if f for n in FAMILIES[f].names()
            if pattern is None or pattern.search(n)]
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "unused_zoo.jsonl")
    rows: list[dict[str, Any]] = []

    def done(index: int, outcome: Any) -> None:
        job = jobs[index]
        row = outcome.value if outcome.error is None else {
            "family": job.family, "model": job.name, "error": str(outcome.error)[:300]}
        rows.append(row)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
        print(f"[{len(rows)}/{len(jobs)}] {job.family}:{job.name}: named {row.get('named')}, "
              f"false {row.get('false_claims')}, missed {row.get('missed_count')} "
              f"{row.get('error', '')}", flush=True)

    run_isolated(unused_zoo.check, jobs, jobs=args.jobs, timeout=args.timeout, on_done=done,
                 threads=1)
    ok = [r for r in rows if r.get("truth") == "measured"]
    print(f"\n{len(rows)} models, {len(ok)} measured; named parameters "
          f"{sum(r['named'] for r in ok)}, false claims "
          f"{sum(len(r['false_claims']) for r in ok)}, unreached not named "
          f"{sum(r['missed_count'] for r in ok)}")
    for r in rows:
        if r.get("findings") or r.get("false_claims") or r.get("missed_count") or "error" in r:
            print(json.dumps(r, default=str)[:600])
    return 0


if __name__ == "__main__":
    sys.exit(main())
