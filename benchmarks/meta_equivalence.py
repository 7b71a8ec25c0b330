"""Meta-device equivalence: every zoo model linted twice, built for real and with ``--device
meta``; the findings must agree on (code, module, parameter, verdict), or the meta run must say
that it did not judge that layer ("not judged"), never give a different verdict.

For each model, in its own worker process:

1. ``load_target(target)`` and lint: the real findings (values measured);
2. ``load_target(target, device="meta")`` and lint: the meta findings (values from the init
   laws the build recorded, never materialized);
3. compare. A real finding missing on meta is *unjudged* when meta's rule records list that
   layer as not judged, else a *miss*; a meta finding the real run does not have is *extra*.
   For findings in both, the numbers in ``data`` (gains, ratios, excess losses) are compared:
   the largest relative difference is reported (the real tensor is one draw of the law, so
   they differ by its sampling error).

Usage::

    python benchmarks/meta_equivalence.py --family tv-classification --jobs 2
    python benchmarks/meta_equivalence.py --family hf,timm --match 'bert|vit_tiny'

Rows go to ``benchmarks/out/meta_equivalence.jsonl``; the table to stdout and
``benchmarks/out/meta_equivalence.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from zoo import Job  # noqa: E402  (the zoo sweep's job: a family and a model name)
from zoo_models import FAMILIES, import_library  # noqa: E402


def _key(finding: Any) -> tuple[str, str, str, str]:
    verdict = ""
    if isinstance(finding.data, dict):
        verdict = str(finding.data.get("verdict", ""))
    return (finding.code, finding.module, finding.parameter or "", verdict or str(finding.severity))


def _numbers(finding: Any) -> dict[str, float]:
    data = finding.data if isinstance(finding.data, dict) else {}
    return {k: float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def lint(target: str, device: str | None, keep: list | None = None) -> tuple[Any, float]:
    import torch

    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    torch.manual_seed(0)
    start = time.perf_counter()
    config = TargetConfig(target=target, device=device)
    loaded = load_target(target, device=device)
    result = lint_loaded(loaded, config, Settings(), {"build": time.perf_counter() - start})
    if keep is not None:
        keep.append(loaded)
    return result, time.perf_counter() - start


def compare(job: Job) -> dict[str, Any]:
    """Both runs and their comparison, for one model, and the real run's findings of the rules
    that measure a forward checked independently (``verify``). In a worker."""
    import_library(job.family)
    kept: list[Any] = []
    real, real_s = lint(job.target, None, kept)
    checks = verify(kept[0], real.findings)
    del kept
    meta, meta_s = lint(job.target, "meta")
    row = compare_results(job.family, job.name, real, meta, real_s, meta_s)
    row["new_rule_findings"] = checks
    return row


NEW_RULES = ("BL006", "BL007", "BL009", "BL010")


def _leaves(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _leaves(v)]
    if hasattr(value, "to_tuple"):
        return _leaves(value.to_tuple())
    return []


def verify(loaded: Any, findings: Any) -> list[dict[str, Any]]:
    """Each finding of BL006/BL007/BL009/BL010 with its figure, checked on the real model by a
    computation of its own: BL010 by autograd (the named parameters get no gradient from a
    backward of every output), BL009 by drawing labels (Monte Carlo cross-entropy of the head's
    logits), BL007 by re-reading the layer's pre-activations (units <= 0 on every row, > 0
    without the bias)."""
    import torch

    model, inputs = loaded.model, loaded.inputs
    rows: list[dict[str, Any]] = []
    wanted = [f for f in findings if f.code in NEW_RULES]
    if not wanted or inputs is None:
        return rows
    captured: dict[str, Any] = {}
    hooks = []
    for f in wanted:
        if f.code in ("BL007", "BL009") and f.module:
            def hook(_m: Any, _a: Any, out: Any, _name: str = f.module) -> None:
                # a copy: an in-place activation after the layer would rewrite it
                captured.setdefault(_name, out.detach().clone() if isinstance(out, torch.Tensor)
                                    else None)
            hooks.append(model.get_submodule(f.module).register_forward_hook(hook))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    try:
        out = model(*inputs.args, **inputs.kwargs)
        leaves = [t for t in _leaves(out) if t.is_floating_point() and t.requires_grad]
        if leaves:
            sum(t.float().sum() for t in leaves).backward()
    finally:
        for h in hooks:
            h.remove()
    params = dict(model.named_parameters())
    for f in wanted:
        try:
            rows.append(_check(f, model, params, captured))
        except Exception as exc:  # noqa: BLE001 - a check that cannot run says so
            rows.append({"code": f.code, "module": f.module, "true": None,
                         "note": f"check failed: {type(exc).__name__}: {exc}"[:200]})
    model.zero_grad(set_to_none=True)
    return rows


def _check(f: Any, model: Any, params: dict[str, Any], captured: dict[str, Any]) -> dict[str, Any]:
    import math

    import torch
    import torch.nn.functional as F

    row: dict[str, Any] = {"code": f.code, "module": f.module,
                           "figure": {k: v for k, v in f.data.items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    if f.code == "BL010":
        names = f.data.get("parameters", [])
        row["true"] = all(params[n].grad is None or not bool(params[n].grad.abs().sum() > 0)
                          for n in names if n in params)
    elif f.code == "BL009":
        z = captured.get(f.module)
        if z is not None:
            conv = isinstance(model.get_submodule(f.module), torch.nn.modules.conv._ConvNd)
            z = z.movedim(1, -1) if conv and z.dim() > 2 else z
            z = z.reshape(-1, z.shape[-1])
            z = z.double()
            g = torch.Generator().manual_seed(1)
            if f.data.get("classes") == 2 and z.shape[-1] != 2:
                labels = torch.randint(0, 2, (200,) + tuple(z.shape), generator=g).double()
                loss = float(F.binary_cross_entropy_with_logits(
                    z.expand_as(labels), labels))
                chance = math.log(2)
            else:
                labels = torch.randint(0, z.shape[-1], (200, z.shape[0]), generator=g)
                loss = float(torch.stack([F.cross_entropy(z, labels[i])
                                          for i in range(200)]).mean())
                chance = math.log(z.shape[-1])
            row["measured_excess"] = loss - chance
            row["true"] = loss - chance > 0.5
    elif f.code == "BL007":
        z = captured.get(f.module)
        module = model.get_submodule(f.module)
        if z is not None and getattr(module, "bias", None) is not None:
            conv = isinstance(module, torch.nn.modules.conv._ConvNd)
            z = z.movedim(1, -1) if conv and z.dim() > 2 else z
            z = z.reshape(-1, z.shape[-1])
            z = z.double()
            bias = module.bias.detach().double()
            if f.data.get("activation") == "relu":
                killed = int(((z <= 0).all(0) & ((z - bias) > 0).any(0)).sum())
            else:
                killed = int((((z.abs() > 3).double().mean(0) >= 0.95)
                              & ((z - bias).abs() > 3).double().mean(0).lt(0.5)).sum())
            row["measured_killed"] = killed
            # every unit it names is dead (or saturated) on these inputs, and alive without
            # its bias: at least as many as it claims
            row["true"] = killed >= int(f.data.get("killed", 0)) > 0
    else:  # BL006: the rule's own measurement; its figures are listed
        row["true"] = None
    return row


def not_run(notes: Any) -> set[str]:
    """Rules the run says it did not run (they measure a real forward; none on meta)."""
    return {note.split(" ", 1)[0] for note in notes if " not run: " in note}


def reclassify(row: dict[str, Any]) -> dict[str, Any]:
    """A row from an older run: findings of rules its meta notes say did not run count as not
    judged on meta, not as differences."""
    from biaslint.rules import all_rules

    # rows of runs whose notes were cut: the rules that measure a forward never run on meta
    skipped = not_run(row.get("meta_notes", [])) | {r.code for r in all_rules()
                                                    if "forward" in r.reads
                                                    and "laws" not in r.reads}
    # a BL010 "not called" is not given on meta (the branches there are decided by no values)
    moved = [k for k in row.get("misses", []) if k[0] in skipped
             or (k[0] == "BL010" and k[3] == "not called")]
    if moved:
        row = dict(row)
        row["misses"] = [k for k in row["misses"] if k not in moved]
        row["not_judged"] = row.get("not_judged", []) + moved
        row["not_judged_on_meta"] = row.get("not_judged_on_meta", 0) + len(moved)
    return row


def compare_results(family: str, name: str, real: Any, meta: Any, real_s: float = 0.0,
                    meta_s: float = 0.0) -> dict[str, Any]:
    real_keys = {_key(f): f for f in real.findings}
    meta_keys = {_key(f): f for f in meta.findings}
    unjudged = {(scope.code, layer) for scope in meta.rules for layer, _ in scope.unjudged}
    unjudged_all = {scope.code for scope in meta.rules
                    for layer, _ in scope.unjudged if layer == "<all>"} | not_run(meta.notes)
    both = sorted(set(real_keys) & set(meta_keys))
    missing = sorted(set(real_keys) - set(meta_keys))
    extra = sorted(set(meta_keys) - set(real_keys))
    # On meta the analysis stands alone; on real tensors a claim the measurement did not bear
    # out is counted as a disagreement instead of reported: not an extra finding of meta's.
    disagreed = {(scope.code, d.layer) for scope in real.rules for d in scope.disagreements}
    overruled = [k for k in extra if (k[0], k[1]) in disagreed]
    extra = [k for k in extra if (k[0], k[1]) not in disagreed]
    not_judged = [k for k in missing if (k[0], k[1]) in unjudged or k[0] in unjudged_all]
    misses = [k for k in missing if k not in not_judged]
    worst = 0.0
    for key in both:
        a, b = _numbers(real_keys[key]), _numbers(meta_keys[key])
        for field, value in a.items():
            if field in b and value:
                worst = max(worst, abs(b[field] - value) / abs(value))
    # A rule's own "declined" (it needs a real forward the meta build has not) is said in a
    # note, like a rule not run: counted apart from what the meta build could not read.
    meta_unjudged = sum(1 for scope in meta.rules for _, why in scope.unjudged
                        if not why.startswith("declined: "))
    meta_declined = sum(1 for scope in meta.rules for _, why in scope.unjudged
                        if why.startswith("declined: "))
    return {
        "family": family, "model": name, "real": len(real.findings),
        "meta": len(meta.findings), "agree": len(both), "not_judged_on_meta": len(not_judged),
        "misses": [list(k) for k in misses], "extra": [list(k) for k in extra],
        "overruled_on_real": [list(k) for k in overruled],
        "not_judged": [list(k) for k in not_judged], "meta_unjudged_layers": meta_unjudged,
        "meta_declined_layers": meta_declined,
        "meta_unjudged_reasons": sorted({why for scope in meta.rules for _, why in scope.unjudged
                                         if not why.startswith("declined: ")})[:5],
        "max_relative_difference": worst, "real_s": real_s, "meta_s": meta_s,
        "real_incomplete": list(real.incomplete)[:3], "meta_incomplete": list(meta.incomplete)[:3],
        "meta_notes": [n for n in meta.notes if "meta" in n or "init" in n or " not run: " in n],
        "real_findings": [list(k) for k in sorted(real_keys)],
        "real_judged": judged_counts(real), "meta_judged": judged_counts(meta),
        "meta_declined_reasons": {
            scope.code: sorted({why[len("declined: "):][:200] for _, why in scope.unjudged
                                if why.startswith("declined: ")})[:8]
            for scope in meta.rules if scope.code in LAW_RULES},
    }


# The rules whose meta verdicts come from the init laws where a real run measures a forward,
# and the ones that read 3-d expert weights: their layer counts are tabled per rule.
LAW_RULES = ("BL002", "BL003", "BL007", "BL009")


def judged_counts(result: Any) -> dict[str, list[int]]:
    """Per rule: [layers judged, declined by the rule (with its reason), not judged otherwise]."""
    return {scope.code: [scope.judged,
                         sum(1 for _, why in scope.unjudged if why.startswith("declined: ")),
                         sum(1 for _, why in scope.unjudged if not why.startswith("declined: "))]
            for scope in result.rules}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=",".join(FAMILIES))
    parser.add_argument("--match", default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--resume", action="store_true",
                        help="skip the models already in <out>/meta_equivalence.jsonl")
    parser.add_argument("--table", action="store_true", help="only print the table of the log")
    args = parser.parse_args(argv)

    import meta_equivalence

    from biaslint.run.parallel import run_isolated

    pattern = re.compile(args.match) if args.match else None
    jobs = [Job(f, n) for f in args.family.split(",") if f for n in FAMILIES[f].names()
            if pattern is None or pattern.search(n)]
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "meta_equivalence.jsonl")
    rows: list[dict[str, Any]] = []
    done_before: list[dict[str, Any]] = []
    if (args.resume or args.table) and os.path.exists(log):
        with open(log, encoding="utf-8") as handle:
            seen: dict[tuple[str, str], dict[str, Any]] = {}
            for line in handle:
                row = json.loads(line)
                seen[(row["family"], row["model"])] = row
        done_before = list(seen.values())
        jobs = [j for j in jobs if (j.family, j.name) not in seen]
    if args.table:
        print(table(done_before))
        return 0

    def done(index: int, outcome: Any) -> None:
        job = jobs[index]
        row = outcome.value if outcome.error is None else {
            "family": job.family, "model": job.name, "error": str(outcome.error)[:300]}
        rows.append(row)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
        flag = "" if not row.get("misses") and not row.get("extra") and "error" not in row \
            else "  <-- DIFFERS"
        print(f"[{len(rows)}/{len(jobs)}] {job.family}:{job.name}: real {row.get('real')}, "
              f"meta {row.get('meta')}, agree {row.get('agree')}, not judged "
              f"{row.get('not_judged_on_meta')}{flag} {row.get('error', '')}", flush=True)

    run_isolated(meta_equivalence.compare, jobs, jobs=args.jobs, timeout=args.timeout,
                 on_done=done, threads=1)
    text = table(done_before + rows)
    with open(os.path.join(args.out, "meta_equivalence.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    rows = [reclassify(r) if "error" not in r else r for r in rows]
    ok = [r for r in rows if "error" not in r]
    lines = [
        f"{len(rows)} models, {len(rows) - len(ok)} errors; findings real "
        f"{sum(r['real'] for r in ok)}, meta {sum(r['meta'] for r in ok)}, agreeing "
        f"{sum(r['agree'] for r in ok)}, not judged on meta "
        f"{sum(r['not_judged_on_meta'] for r in ok)}, different "
        f"{sum(len(r['misses']) + len(r['extra']) for r in ok)}",
        "",
        "| family | model | real | meta | agree | not judged on meta | different | max rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['model']} | error: {r['error'][:80]} |||||||")
            continue
        if r["real"] or r["meta"] or r["misses"] or r["extra"]:
            diff = "; ".join(" ".join(k) for k in r["misses"] + r["extra"]) or "0"
            lines.append(f"| {r['family']} | {r['model']} | {r['real']} | {r['meta']} | "
                         f"{r['agree']} | {r['not_judged_on_meta']} | {diff} | "
                         f"{r['max_relative_difference']:.3f} |")
    lines += ["", "| rule | layers judged (real) | judged on meta | declined on meta, with "
                  "the reason | not judged on meta otherwise |", "|---|---|---|---|---|"]
    for code in LAW_RULES:
        real = [r.get("real_judged", {}).get(code, [0, 0, 0]) for r in ok]
        meta = [r.get("meta_judged", {}).get(code, [0, 0, 0]) for r in ok]
        lines.append(f"| {code} | {sum(c[0] for c in real)} | {sum(c[0] for c in meta)} | "
                     f"{sum(c[1] for c in meta)} | {sum(c[2] for c in meta)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
