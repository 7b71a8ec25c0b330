"""BL001 against the perturbation oracle over the wide zoo (``zoo_wide.py``: every transformers
architecture that builds from a tiny config, the smallest model of every timm family), one part
of the dev/held-out split at a time.

Two stages, kept apart so the costly one runs once:

1. **truth** (``--part dev`` / ``--part heldout``): each model is built (``zoo_wide``), and the
   oracle of ``tests/oracle.py`` (via ``recall.build_oracle``: float64 training mode, degenerate
   parameters re-drawn, float32 only where the model needs it) judges, within ``--budget``
   oracle seconds per model:
   a. every bias BL001 claims (whole or slice run), whatever the budget;
   b. every candidate bias (``recall.candidate_params``), whole, in module order; a redundant one
      is re-checked 100x larger and its weight checked (``dead``) as recall.py does;
   c. the key (middle) third of every non-redundant bias of size 3k;
   d. a float64 gradient screen (one backward of a fixed random projection of every float
      output) proposes the contiguous runs (>= 2 elements) of a non-redundant bias whose
      gradient is zero, e.g. the key block of each head in a per-head interleaved qkv layout;
      each run is confirmed by perturbation (unit normal, then 100x, both signs). The truth is
      the perturbation, never the screen;
   e. the query and value thirds.
   Rows go to ``benchmarks/out/wide_truth_<part>.jsonl`` (one line per model, with the claims
   of the biaslint that ran, linted with BL001 only and ``report-partial``, as recall.py does).
2. **compare** (``--compare-only``): re-lint every built model with the biaslint on the path
   and compare its claims to the cached truth; claim runs the cache cannot decide are measured
   by the oracle then. A slice claim (``data["slices"]``, else ``data["slice"]``) finds a truth
   slice when the union of the bias's claimed runs covers the truth slice's elements.

Each model runs in a forked child of a parent that imported torch/transformers/timm/biaslint
once, one at a time (``--jobs``), with ``--timeout``. ``OMP_NUM_THREADS=1`` is expected.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/wide_sweep.py --part dev --budget 6
    OMP_NUM_THREADS=1 python benchmarks/wide_sweep.py --part heldout --budget 6
    OMP_NUM_THREADS=1 python benchmarks/wide_sweep.py --part dev --compare-only
    python benchmarks/wide_sweep.py --part dev --summarize   # report from the jsonl only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from collections import Counter, defaultdict
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, os.path.join(ROOT, "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import zoo_wide  # noqa: E402

OUT = os.path.join(HERE, "out")
FAMILIES = ("hf-all", "timm-all")
# |grad| below this fraction of the bias's largest |grad| proposes the element (only a proposal:
# models that compute rotary tables in float32 leave cancelled elements at 1e-9..1e-8)
SCREEN_ZERO = 1e-6
# The 100x re-checks (large random, large negative) count as "moved" above this relative change
# (or the oracle's own tolerance if larger): a dead ReLU or threshold pushed 100x moves outputs
# by far more; a float32 rotary table inside a float64 model leaves a ~3e-9 floor that grows
# with the perturbation's size.
LARGE_TOLERANCE = 1e-6
SCREEN_MAX_RUNS = 32  # per bias
PARTS = ("dev", "heldout", "heldout2")


def jobs_of(part: str, families: tuple[str, ...] = FAMILIES,
            match: str | None = None) -> list[tuple[str, str]]:
    pattern = re.compile(match) if match else None
    return [(family, name) for family in families for name in zoo_wide.names(family)
            if (part == "all" or zoo_wide.split_of(zoo_wide.key_of(family, name)) == part)
            and (pattern is None or pattern.search(name))]


def _target(family: str, name: str) -> str:
    attr = "HFALL" if family == "hf-all" else "TIMMALL"
    return f"{os.path.join(HERE, 'zoo_wide.py')}:{attr}.{zoo_wide.attr_of(name)}"


def _reason(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        nxt = cause.__cause__ or cause.__context__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {first}"


# --- claims -----------------------------------------------------------------------------------

def claims_of(findings: Any) -> list[dict[str, Any]]:
    out = []
    for f in findings:
        if f.code != "BL001":
            continue
        data = f.data or {}
        verdict = data.get("verdict", "")
        slices = data.get("slices") or ([data["slice"]] if data.get("slice") else [])
        out.append({"layer": f.module, "param": f.parameter or "bias", "verdict": verdict,
                    "slices": [[int(a), int(b)] for a, b in slices],
                    "severity": str(getattr(f.severity, "name", f.severity))})
    return out


def lint(loaded: Any, family: str, name: str) -> tuple[list[dict[str, Any]], str, float]:
    from biaslint.engine import lint_loaded
    from biaslint.settings import Settings, TargetConfig

    start = time.perf_counter()
    settings = Settings(select=("BL001",), debug=True,
                        rule_options={"BL001": {"report-partial": True}})
    result = lint_loaded(loaded, TargetConfig(_target(family, name)), settings)
    # a rule that crashed claims nothing: said as the lint's error, so its misses are not read
    # as the analysis's
    crashed = [why for why in result.incomplete if "crashed" in why]
    error = f"lint: {result.error or crashed[0]}"[:300] if result.error or crashed else ""
    return claims_of(result.findings), error, time.perf_counter() - start


# --- truth (in a child) -----------------------------------------------------------------------

def _screen(oracle: Any, candidates: list[tuple[str, str, str, int]]) -> dict[tuple[str, str],
                                                                               Any]:
    """Float64 gradient of a fixed random projection of every float output, per candidate."""
    import random

    import numpy
    import torch

    from oracle import _tensors, restore_buffers

    model = oracle.model
    params = {}
    for layer, param, _t, _n in candidates:
        tensor = getattr(model.get_submodule(layer), param)
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            params[(layer, param)] = tensor
    saved = {n: b.clone() for n, b in model.named_buffers()}
    flags = {k: p.requires_grad for k, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    try:
        torch.manual_seed(oracle.seed)
        random.seed(oracle.seed)
        numpy.random.seed(oracle.seed)
        with torch.enable_grad():
            out = model(*oracle.args, **oracle.kwargs)
            g = torch.Generator().manual_seed(3)
            total = None
            for t in _tensors(out):
                if not t.requires_grad:
                    continue
                r = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
                term = (torch.nan_to_num(t) * r).sum()
                total = term if total is None else total + term
            if total is None:
                return {}
            grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    finally:
        restore_buffers(model, saved)
        for k, p in params.items():
            p.requires_grad_(flags[k])
    return {k: (None if g is None else g.detach().abs().double())
            for k, g in zip(params, grads)}


def _zero_runs(grad: Any) -> list[tuple[int, int]]:
    top = float(grad.max()) if grad.numel() else 0.0
    if top == 0.0:
        return []
    zero = (grad <= SCREEN_ZERO * top).tolist()
    runs, start = [], None
    for i, z in enumerate(zero + [False]):
        if z and start is None:
            start = i
        elif not z and start is not None:
            if i - start >= 2:
                runs.append((start, i))
            start = None
    return runs


def keep_softmax_precision() -> None:
    """transformers' eager attentions call ``softmax(..., dtype=torch.float32)``: in the float64
    oracle that rounds the scores to float32, and a key bias the softmax cancels then moves the
    outputs by ~1e-7 (above the oracle's 1e-8). In this worker, a float32 softmax of a float64
    tensor stays float64; the model's arithmetic is otherwise unchanged, and the float32 lint
    is unaffected (it never passes float64 tensors)."""
    import torch
    import torch.nn.functional as F

    def wrap(fn: Any) -> Any:
        def softmax(input: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A002
            if (isinstance(input, torch.Tensor) and input.dtype == torch.float64
                    and kwargs.get("dtype") == torch.float32):
                kwargs["dtype"] = torch.float64
            return fn(input, *args, **kwargs)
        return softmax

    if not getattr(F.softmax, "_wide_sweep", False):
        for owner, attr in ((F, "softmax"), (F, "log_softmax"), (torch, "softmax")):
            patched = wrap(getattr(owner, attr))
            patched._wide_sweep = True  # type: ignore[attr-defined]
            setattr(owner, attr, patched)


def measure_truth(family: str, name: str, budget: float) -> dict[str, Any]:
    import recall
    import torch

    from biaslint.load import load_target

    torch.set_num_threads(1)
    keep_softmax_precision()
    info: dict[str, Any] = {"family": family, "model": name, "key": zoo_wide.key_of(family, name),
                            "built": False, "error": "", "rows": [], "claims": []}
    info["class"] = zoo_wide.hf_architectures().get(name, "") if family == "hf-all" else \
        zoo_wide.timm_families().get(name, "")
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        loaded = load_target(_target(family, name))
    except BaseException as exc:  # noqa: BLE001
        info["error"] = "build: " + _reason(exc)
        return info
    info["built"] = True
    info["build_s"] = time.perf_counter() - start
    info["params"] = int(sum(p.numel() for p in loaded.model.parameters()))
    job = recall.Job(family, name, budget)
    start = time.perf_counter()
    oracle = oracle_error = None
    deepcopies = recall._deepcopies(loaded.model)
    if deepcopies:
        try:
            oracle, dtype, note = recall.build_oracle(job, loaded)
        except Exception as exc:  # noqa: BLE001
            oracle_error = exc
    init_s = time.perf_counter() - start
    try:
        info["claims"], info["lint_error"], info["lint_s"] = lint(loaded, family, name)
    except Exception as exc:  # noqa: BLE001
        info["lint_error"] = "lint raised: " + _reason(exc)
    if oracle is None and oracle_error is None:
        start = time.perf_counter()
        try:
            oracle, dtype, note = recall.build_oracle(job, loaded)
        except Exception as exc:  # noqa: BLE001
            oracle_error = exc
        init_s += time.perf_counter() - start
    info["oracle_init_s"] = init_s
    if oracle is None:
        info["error"] = "oracle: " + _reason(oracle_error)
        return info
    info["dtype"] = dtype
    candidates = recall.candidate_params(loaded.model)
    known = {(layer, param) for layer, param, _t, _n in candidates}
    for c in info["claims"]:
        if (c["layer"], c["param"]) not in known:
            module = loaded.model.get_submodule(c["layer"])
            candidates.append((c["layer"], c["param"], type(module).__name__,
                               int(getattr(module, c["param"]).numel())))
            known.add((c["layer"], c["param"]))
    frozen = {n for n, p in loaded.model.named_parameters(remove_duplicate=False)
              if not p.requires_grad}
    types = {(layer, p): t for layer, p, t, _n in candidates}
    sizes = {(layer, p): n for layer, p, _t, n in candidates}
    info["candidates"] = len(candidates)
    rows = measure_rows(oracle, candidates, types, sizes, frozen, info["claims"], budget, dtype,
                        note, info)
    info["rows"] = rows
    return info


def _moves_when_large(oracle: Any, layer: str, param: str, index: Any,
                      constant: bool = False) -> bool:
    """recall._moves_when_large with the LARGE_TOLERANCE floor."""
    import recall
    import torch

    tensor = getattr(oracle.model.get_submodule(layer), param)
    shape = tensor.shape if index is None else tensor[index].shape
    if constant:
        delta = torch.full(shape, recall.LARGE * 1.7, dtype=torch.float64)
    else:
        delta = recall.LARGE * torch.randn(shape, generator=torch.Generator().manual_seed(2),
                                           dtype=torch.float64)
    return oracle.moves(layer, param, delta=delta, index=index) > max(oracle.tolerance,
                                                                       LARGE_TOLERANCE)


def _slice_is_dead(oracle: Any, layer: str, param: str, index: slice) -> bool:
    """Do the weight rows of a slice's output units move nothing either (units dead on these
    inputs, e.g. a gate whose channels are all zero)? Then it is dead, not cancelled."""
    import torch

    module = oracle.model.get_submodule(layer)
    size = int(getattr(module, param).numel())
    weight = module._parameters.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return False
    if weight.shape[0] == size:
        where: Any = index
    elif weight.shape[-1] == size:  # GPT-2's Conv1D: (in, out)
        where = (slice(None),) * (weight.dim() - 1) + (index,)
    else:
        return False
    return oracle.moves(layer, "weight", index=where) <= oracle.tolerance


def recheck_dead(family: str, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Add the dead check to redundant slice rows measured before it existed."""
    import recall
    import torch

    from biaslint.load import load_target

    torch.set_num_threads(1)
    keep_softmax_precision()
    torch.manual_seed(0)
    loaded = load_target(_target(family, name))
    oracle, _dtype, _note = recall.build_oracle(recall.Job(family, name, 0), loaded)
    for row in record["rows"]:
        if row["slice"] and row["truth"] == "redundant" and not row.get("dead_checked"):
            index = slice(*map(int, row["slice"].split(":")))
            row["dead"] = int(_slice_is_dead(oracle, row["layer"], row["param"], index))
            row["dead_checked"] = 1
    return record


def run_recheck(part: str, timeout: float) -> None:
    path = truth_path(part)
    records = read_records(path)
    todo = [(k, r) for k, r in records.items()
            if any(x["slice"] and x["truth"] == "redundant" and not x.get("dead_checked")
                   for x in r.get("rows", []))]

    def finish(tag: Any, status: str, value: Any, seconds: float) -> None:
        if status == "ok":
            records[tag] = value
        print(f"recheck {tag[1]}: {status}", flush=True)

    run_forked([(recheck_dead, (k[0], k[1], r), k) for k, r in todo], 1, timeout, finish)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        for rec in records.values():
            handle.write(json.dumps(rec, default=str) + "\n")
    os.replace(path + ".tmp", path)


def measure_rows(oracle: Any, candidates: list[tuple[str, str, str, int]],
                 types: dict[tuple[str, str], str], sizes: dict[tuple[str, str], int],
                 frozen: set[str], claims: list[dict[str, Any]], budget: float, dtype: str,
                 mode_note: str, info: dict[str, Any], only_claims: bool = False
                 ) -> list[dict[str, Any]]:
    import recall

    spent = [0.0]
    results: dict[tuple[str, str, str], dict[str, Any]] = {}

    def run(layer: str, param: str, span: str, kind: str, forced: bool = False
            ) -> dict[str, Any]:
        key = (layer, param, span)
        if key in results:
            if results[key]["kind"] == "claim" and kind != "claim":
                results[key]["kind"] = kind  # a claimed third / screened run is truth too
            return results[key]
        row = {"layer": layer, "param": param, "type": types[(layer, param)],
               "size": sizes[(layer, param)], "slice": span, "kind": kind, "truth": "skipped",
               "dead": 0, "frozen": int(f"{layer}.{param}" in frozen), "dtype": dtype,
               "seconds": 0.0, "note": mode_note}
        if not forced and spent[0] >= budget:
            return row
        t0 = time.perf_counter()
        index = None if not span else slice(*map(int, span.split(":")))
        try:
            truth = oracle.verdict(layer, param, index=index)
            if truth in ("redundant", "partial") and _moves_when_large(
                    oracle, layer, param, index, constant=truth == "partial"):
                truth = "live"
                row["note"] = (mode_note + ", moves only when perturbed 100x").lstrip(", ")
            if truth == "redundant":  # both signs, large: the cancellation holds at any size
                import torch
                tensor = getattr(oracle.model.get_submodule(layer), param)
                shape = tensor.shape if index is None else tensor[index].shape
                delta = -recall.LARGE * torch.randn(
                    shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).abs()
                if oracle.moves(layer, param, delta=delta, index=index) > max(
                        oracle.tolerance, LARGE_TOLERANCE):
                    truth = "live"
                    row["note"] = (mode_note + ", moves under a large negative shift").lstrip(", ")
            if truth == "redundant" and not span:
                row["dead"] = int(recall._is_dead(oracle, layer, param))
            elif truth == "redundant":
                row["dead"] = int(_slice_is_dead(oracle, layer, param, index))
                row["dead_checked"] = 1
        except Exception as exc:  # noqa: BLE001
            truth = "error"
            row["note"] = _reason(exc)[:160]
        row["truth"] = truth
        row["seconds"] = round(time.perf_counter() - t0, 3)
        spent[0] += row["seconds"]
        results[key] = row
        return row

    # a. every claim, forced
    for c in claims:
        if (c["layer"], c["param"]) not in types:
            continue
        if c["verdict"] in ("redundant", "partial") and not c["slices"]:
            run(c["layer"], c["param"], "", "whole", forced=True)
        for a, b in c["slices"]:
            run(c["layer"], c["param"], f"{a}:{b}", "claim", forced=True)
    if only_claims:
        info["oracle_s"] = spent[0]
        return list(results.values())
    # b. whole biases
    wholes = [run(layer, p, "", "whole") for layer, p, _t, _n in candidates]
    live = [w for w in wholes if w["truth"] not in ("redundant", "skipped", "error")]
    # c. key thirds
    for w in live:
        spans = recall.thirds(w["size"])
        if spans:
            a, b = spans[1]
            run(w["layer"], w["param"], f"{a}:{b}", "third")
    # d. gradient screen, confirmed by perturbation
    screened = 0
    if live and spent[0] < budget:
        t0 = time.perf_counter()
        try:
            grads = _screen(oracle, [(w["layer"], w["param"], "", 0) for w in live])
        except Exception as exc:  # noqa: BLE001
            grads = {}
            info["screen_error"] = _reason(exc)
        info["screen_s"] = time.perf_counter() - t0
        spent[0] += info["screen_s"]
        for w in live:
            grad = grads.get((w["layer"], w["param"]))
            if grad is None:
                continue
            thirds = {f"{a}:{b}" for a, b in recall.thirds(w["size"])}
            red_thirds = [tuple(map(int, s.split(":"))) for s in thirds
                          if results.get((w["layer"], w["param"], s), {}).get("truth")
                          == "redundant"]
            for a, b in _zero_runs(grad)[:SCREEN_MAX_RUNS]:
                if f"{a}:{b}" in thirds or any(x <= a and b <= y for x, y in red_thirds):
                    continue
                run(w["layer"], w["param"], f"{a}:{b}", "screen")
                screened += 1
    info["screened_runs"] = screened
    # e. query and value thirds
    for position in (0, 2):
        for w in live:
            spans = recall.thirds(w["size"])
            if spans:
                a, b = spans[position]
                run(w["layer"], w["param"], f"{a}:{b}", "third")
    info["oracle_s"] = spent[0]
    rows = []
    for w in wholes:
        rows.append(w)
        rows.extend(sorted((r for k, r in results.items()
                            if k[0] == w["layer"] and k[1] == w["param"] and k[2]),
                           key=lambda r: int(r["slice"].split(":")[0])))
    return rows


def measure_claims(family: str, name: str, cached: dict[str, Any]) -> dict[str, Any]:
    """compare-only: re-lint; measure the claim runs the cached truth cannot decide."""
    import recall
    import torch

    from biaslint.load import load_target

    torch.set_num_threads(1)
    keep_softmax_precision()
    info: dict[str, Any] = {"family": family, "model": name}
    torch.manual_seed(0)
    loaded = load_target(_target(family, name))
    job = recall.Job(family, name, 0)
    oracle = None
    if recall._deepcopies(loaded.model):
        try:
            oracle, dtype, note = recall.build_oracle(job, loaded)
        except Exception:  # noqa: BLE001
            oracle = None
    info["claims"], info["lint_error"], info["lint_s"] = lint(loaded, family, name)
    undecided = [c for c in info["claims"] if not _decidable(c, cached["rows"])]
    info["extra_rows"] = []
    if undecided:
        if oracle is None:
            oracle, dtype, note = recall.build_oracle(job, loaded)
        modules = dict(loaded.model.named_modules())
        types = {(c["layer"], c["param"]): type(modules[c["layer"]]).__name__ for c in undecided}
        sizes = {(c["layer"], c["param"]): int(getattr(modules[c["layer"]], c["param"]).numel())
                 for c in undecided}
        frozen = {n for n, p in loaded.model.named_parameters(remove_duplicate=False)
                  if not p.requires_grad}
        info["extra_rows"] = measure_rows(oracle, [], types, sizes, frozen, undecided, 0.0,
                                          dtype, note, {}, only_claims=True)
    return info


def _decidable(claim: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    mine = [r for r in rows if r["layer"] == claim["layer"] and r["param"] == claim["param"]
            and r["truth"] not in ("skipped", "error")]
    if not claim["slices"]:
        return any(not r["slice"] for r in mine)
    red = _redundant_elements(mine)
    measured = {r["slice"] for r in mine}
    return all(set(range(a, b)) <= red or f"{a}:{b}" in measured for a, b in claim["slices"])


def _redundant_elements(rows: list[dict[str, Any]]) -> set[int]:
    out: set[int] = set()
    for r in rows:
        if r["truth"] != "redundant":
            continue
        if not r["slice"]:
            out |= set(range(int(r["size"])))
        else:
            a, b = map(int, r["slice"].split(":"))
            out |= set(range(a, b))
    return out


# --- the driver -------------------------------------------------------------------------------

def _child(conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("error", _reason(exc) + " | " + traceback.format_exc()[-300:]))
    finally:
        conn.close()


def run_forked(tasks: list[tuple[Any, tuple[Any, ...], Any]], jobs: int, timeout: float,
               on_done: Any) -> None:
    """Each task (fn, args, tag) in a forked child; on_done(tag, status, value, seconds)."""
    ctx = mp.get_context("fork")
    queue = tasks  # not copied: a _until list stops handing out tasks at its deadline
    running: list[tuple[Any, Any, Any, float]] = []
    while queue or running:
        while queue and len(running) < jobs:
            fn, args, tag = queue.pop(0)
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(sender, fn, args), daemon=True)
            process.start()
            sender.close()
            running.append((process, receiver, tag, time.monotonic()))
        for item in list(running):
            process, receiver, tag, started = item
            status = value = None
            if receiver.poll(0.05):
                try:
                    status, value = receiver.recv()
                except EOFError:
                    status, value = "error", f"worker died (exit {process.exitcode})"
            elif not process.is_alive():
                process.join()
                status, value = "error", f"worker died (exit {process.exitcode})"
            elif time.monotonic() - started > timeout:
                status, value = "error", f"timeout after {timeout:.0f} s"
            if status is None:
                continue
            running.remove(item)
            receiver.close()
            process.join(2)
            if process.is_alive():
                process.kill()
                process.join()
            on_done(tag, status, value, time.monotonic() - started)


def _preload(families: tuple[str, ...] = FAMILIES) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import recall  # noqa: F401
    import timm  # noqa: F401
    import torch
    import transformers

    from biaslint import engine  # noqa: F401
    from biaslint.load import load_target  # noqa: F401

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    if "hf-all" in families:
        # import every modeling module once here, not once per forked child (~1 s each)
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        for model_type, class_name in zoo_wide.hf_architectures().items():
            try:
                getattr(transformers, class_name)
                CONFIG_MAPPING[model_type]
            except Exception:  # noqa: BLE001  the child reports it
                pass
    if "timm-all" in families:
        zoo_wide.timm_families()


def truth_path(part: str) -> str:
    return os.path.join(OUT, f"wide_truth_{part}.jsonl")


def read_records(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    rec = json.loads(line)
                    found[(rec["family"], rec["model"])] = rec
    return found


def records_from_csv(path: str, part: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The truth of a part rebuilt from the committed rows CSV (benchmarks/wide_results.csv),
    for --compare-only on a checkout without the jsonl cache (build failures are not in it)."""
    import csv

    found: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["part"] != part:
                continue
            key = (row["family"], row["model"])
            rec = found.setdefault(key, {"family": key[0], "model": key[1],
                                         "key": zoo_wide.key_of(*key), "built": True,
                                         "error": "", "rows": [], "claims": []})
            row = {k: v for k, v in row.items() if k not in ("part", "family", "model",
                                                             "claim")}
            for name in ("size", "dead", "frozen"):
                row[name] = int(row[name] or 0)
            row["dead_checked"] = 1
            rec["rows"].append(row)
    return found


def run_truth(part: str, budget: float, timeout: float, jobs: int, match: str | None,
              deadline: float | None, families: tuple[str, ...]) -> None:
    path = truth_path(part)
    done = read_records(path)
    # in sha256 order of the key: families interleave, and a --deadline cut is a stable sample
    todo = sorted(((f, n) for f, n in jobs_of(part, families, match) if (f, n) not in done),
                  key=lambda job: zoo_wide.hashlib.sha256(
                      zoo_wide.key_of(*job).encode()).hexdigest())
    total = len(todo)
    start = time.monotonic()
    count = [0]

    def finish(tag: Any, status: str, value: Any, seconds: float) -> None:
        family, name = tag
        count[0] += 1
        if status == "ok":
            rec = value
        else:
            rec = {"family": family, "model": name, "key": zoo_wide.key_of(family, name),
                   "built": None, "error": "worker: " + str(value)[:300], "rows": [],
                   "claims": []}
        rec["wall_s"] = round(seconds, 1)
        rec["budget"] = budget
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(rec, default=str) + "\n")
        print(f"[{count[0]}/{total} {time.monotonic() - start:.0f}s] {family}:{name} "
              f"{'built' if rec.get('built') else 'FAILED'} rows={len(rec['rows'])} "
              f"wall={seconds:.1f}s {rec.get('error', '')[:100]}", flush=True)

    tasks = [(measure_truth, (f, n, budget), (f, n)) for f, n in todo]
    if deadline is not None:
        # a deterministic cut: the first models in zoo order that fit the wall-clock deadline
        tasks = _until(tasks, start + deadline)
    run_forked(tasks, jobs, timeout, finish)


class _until(list):  # type: ignore[type-arg]
    """A task list that stops handing out tasks after a wall-clock time."""

    def __init__(self, tasks: list[Any], end: float) -> None:
        super().__init__(tasks)
        self.end = end

    def pop(self, index: int = -1) -> Any:  # type: ignore[override]
        item = super().pop(index)
        if time.monotonic() > self.end:
            self.clear()
        return item

    def __bool__(self) -> bool:
        return len(self) > 0 and time.monotonic() <= self.end


def load_truth(part: str, truth_csv: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    return records_from_csv(truth_csv, part) if truth_csv else read_records(truth_path(part))


def run_compare(part: str, timeout: float, jobs: int, match: str | None,
                truth_csv: str | None = None) -> None:
    records = load_truth(part, truth_csv)
    pattern = re.compile(match) if match else None
    todo = [(k, r) for k, r in records.items() if r.get("rows")
            and (pattern is None or pattern.search(k[1]))]
    path = os.path.join(OUT, f"wide_claims_{part}.jsonl")
    if os.path.exists(path):
        kept = [r for k, r in read_records(path).items() if pattern is not None
                and not pattern.search(k[1])]  # --match re-lints only those, keeps the rest
        os.replace(path, path + ".old")
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, default=str) + "\n" for r in kept)

    def finish(tag: Any, status: str, value: Any, seconds: float) -> None:
        family, name = tag
        rec = value if status == "ok" else {"family": family, "model": name,
                                             "error": str(value)[:300]}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(rec, default=str) + "\n")
        print(f"{family}:{name} claims={len(rec.get('claims', []))} "
              f"extra={len(rec.get('extra_rows', []))} {rec.get('error', '')[:100]}", flush=True)

    run_forked([(measure_claims, (k[0], k[1], r), k) for k, r in todo], jobs, timeout, finish)


# --- comparison and report --------------------------------------------------------------------

def compare(records: dict[tuple[str, str], dict[str, Any]],
            relint: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    misses: list[dict[str, Any]] = []
    false: list[dict[str, Any]] = []
    unmeasured: list[dict[str, Any]] = []
    truth_counts: Counter[str] = Counter()
    for key, rec in records.items():
        rows = list(rec.get("rows", []))
        claims = rec.get("claims", [])
        if relint is not None:
            if key not in relint or "claims" not in relint[key]:
                stats["relint_failed"] += 1
                continue
            claims = relint[key]["claims"]
            rows += relint[key].get("extra_rows", [])
        by_bias: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_bias[(r["layer"], r["param"])].append(r)
        whole_claims = {(c["layer"], c["param"]) for c in claims
                        if c["verdict"] == "redundant" and not c["slices"]}
        claimed_runs: dict[tuple[str, str], set[int]] = defaultdict(set)
        for c in claims:
            for a, b in c["slices"]:
                claimed_runs[(c["layer"], c["param"])] |= set(range(a, b))
        for bias, group in by_bias.items():
            whole = next((r for r in group if not r["slice"]), None)
            if whole is not None:
                t = whole["truth"]
                label = "dead" if t == "redundant" and whole["dead"] else t
                label = "frozen" if whole["frozen"] and t == "redundant" else label
                truth_counts[f"whole {label}"] += 1
                if t == "redundant" and not whole["frozen"] and (
                        not whole["dead"] or bias in whole_claims):
                    stats["whole_truth"] += 1
                    if bias in whole_claims:
                        stats["whole_tp"] += 1
                    else:
                        misses.append({**whole, "model": key[1], "family": key[0]})
            seen_slices = set()
            for r in group:
                if not r["slice"] or r["kind"] == "claim" or r["slice"] in seen_slices:
                    continue
                seen_slices.add(r["slice"])
                dead = r["truth"] == "redundant" and int(r.get("dead", 0))
                truth_counts[f"slice {r['kind']} {'dead' if dead else r['truth']}"] += 1
                a, b = map(int, r["slice"].split(":"))
                if dead and not set(range(a, b)) <= claimed_runs[bias]:
                    continue  # dead units, not a cancellation (counted apart)
                if r["truth"] == "redundant" and not r["frozen"]:
                    stats["slice_truth"] += 1
                    a, b = map(int, r["slice"].split(":"))
                    if set(range(a, b)) <= claimed_runs[bias]:
                        stats["slice_tp"] += 1
                    else:
                        misses.append({**r, "model": key[1], "family": key[0],
                                       "claimed": sorted(claimed_runs[bias])[:1]})
        # precision: every claim
        for c in claims:
            bias = (c["layer"], c["param"])
            group = by_bias.get(bias, [])
            measured = [r for r in group if r["truth"] not in ("skipped", "error")]
            if c["verdict"] == "redundant" and not c["slices"]:
                whole = next((r for r in measured if not r["slice"]), None)
                stats["whole_claims"] += 1
                if whole is None:
                    unmeasured.append({**c, "model": key[1]})
                elif whole["truth"] == "redundant":
                    stats["whole_claims_true"] += 1
                else:
                    false.append({**c, "model": key[1], "truth": whole["truth"], "slice": ""})
            for a, b in c["slices"]:
                stats["slice_claims"] += 1
                red = _redundant_elements(measured)
                exact = next((r for r in measured if r["slice"] == f"{a}:{b}"), None)
                if set(range(a, b)) <= red:
                    stats["slice_claims_true"] += 1
                elif exact is not None:
                    false.append({**c, "model": key[1], "truth": exact["truth"],
                                  "slice": f"{a}:{b}"})
                else:
                    unmeasured.append({**c, "model": key[1], "slice": f"{a}:{b}"})
            if c["verdict"] == "partial":
                stats["partial_claims"] += 1
    return {"stats": stats, "misses": misses, "false": false, "unmeasured": unmeasured,
            "truth": truth_counts}


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f} ({a}/{b})" if b else "- (0/0)"


def _pattern(row: dict[str, Any]) -> str:
    layer = re.sub(r"\d+", "#", row["layer"])
    return f"{row['type']} {layer.split('.')[-1]} [{row.get('kind') or 'whole'}]"


def report(part: str, records: dict[tuple[str, str], dict[str, Any]],
           relint: dict[tuple[str, str], dict[str, Any]] | None = None,
           command: str = "") -> str:
    result = compare(records, relint)
    s = result["stats"]
    built = [r for r in records.values() if r.get("built")]
    failed = [r for r in records.values() if not r.get("built")]
    oracle_failed = [r for r in built if not r.get("rows") and r.get("error")]
    lines = [f"# Wide zoo, {part} part: BL001 against the perturbation oracle", ""]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [f"- split: `zoo_wide.split_of` (sha256(key) mod {zoo_wide.HELD_OUT_MODULUS} == 0 "
              "-> held out)",
              "- claims: "
              f"{'re-linted (--compare-only)' if relint is not None else 'linted at truth time'}",
              ""]
    for family in sorted({r["family"] for r in records.values()}):
        fam = [r for r in records.values() if r["family"] == family]
        expected = len(jobs_of(part, (family,)))
        oracle_failures = sum(1 for r in fam
                              if r.get('built') and not r.get('rows') and r.get('error'))
        lines.append(f"- {family}: {expected} in the part, {len(fam)} attempted, "
                     f"{sum(1 for r in fam if r.get('built'))} built, "
                     f"{sum(1 for r in fam if not r.get('built'))} failed, "
                     f"{oracle_failures} "
                     "built but oracle failed, "
                     f"{sum(1 for r in fam if r.get('built') and not r.get('candidates'))} "
                     "built without any candidate bias")
    lines += ["", "## Failure reasons (build / worker), by category", ""]
    categories = Counter(_category(r.get("error", "")) for r in failed)
    lines += [f"- {n} x {reason}" for reason, n in categories.most_common()]
    lines += ["", "Every failure (exception type and first line):", ""]
    lines += [f"- {r['family']}:{r['model']}: {r.get('error', '')[:170]}"
              for r in sorted(failed, key=lambda r: (_category(r.get("error", "")),
                                                     r["model"]))]
    if oracle_failed:
        lines += ["", "## Built, oracle or lint failed", ""]
        lines += [f"- {r['family']}:{r['model']}: {r.get('error', '')[:160]}"
                  for r in oracle_failed]
    lines += ["", "## Truth counts", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(result["truth"].items())]
    whole_false = sum(1 for f in result['false'] if not f['slice'])
    slice_false = sum(1 for f in result['false'] if f['slice'])
    lines += ["", "## BL001", "",
              f"- whole biases: recall {_ratio(s['whole_tp'], s['whole_truth'])}, precision "
              f"{_ratio(s['whole_claims_true'], s['whole_claims_true'] + whole_false)}",
              f"- slices (thirds + confirmed screen runs): recall "
              f"{_ratio(s['slice_tp'], s['slice_truth'])}, precision (per claimed run) "
              f"{_ratio(s['slice_claims_true'], s['slice_claims_true'] + slice_false)}",
              f"- claims: {s['whole_claims']} whole, {s['slice_claims']} slice runs, "
              f"{s['partial_claims']} partial (not scored); unmeasured claims: "
              f"{len(result['unmeasured'])}"]
    all_rows = [x for r in records.values() for x in r.get("rows", [])]
    cut = [r for r in records.values() if any(x["truth"] == "skipped" for x in r.get("rows", []))]
    lines.append(f"- left out by the per-model oracle budget: "
                 f"{sum(1 for x in all_rows if x['truth'] == 'skipped' and not x['slice'])} "
                 f"whole biases of {sum(1 for x in all_rows if not x['slice'])}, "
                 f"{sum(1 for x in all_rows if x['truth'] == 'skipped' and x['slice'])} "
                 f"slices, in {len(cut)} models: "
                 + ", ".join(f"{r['model']}" for r in cut))
    if relint is not None:
        lines.append(f"- models whose re-lint failed or was not run (left out): "
                     f"{s['relint_failed']}")
    linted = relint if relint is not None else records
    errors = sorted(f"{k[1]} ({r['lint_error'][:120]})" for k, r in linted.items()
                    if r.get("lint_error"))
    lines.append(f"- lints that ended in an error or a crashed rule (their misses count): "
                 f"{len(errors)}{': ' + '; '.join(errors) if errors else ''}")
    lines += ["", f"## Misses ({len(result['misses'])})", "", "By pattern (module type, "
              "layer leaf, kind):", ""]
    for pat, n in Counter(_pattern(m) for m in result["misses"]).most_common():
        lines.append(f"- {n} x {pat}")
    lines += ["", "Every miss:", ""]
    lines += [f"- {m['family']}:{m['model']} `{m['layer']}.{m['param']}`"
              f"{'[' + m['slice'] + ']' if m['slice'] else ''} ({m['type']}, size {m['size']}, "
              f"{m.get('kind') or 'whole'})" for m in result["misses"]] or ["(none)"]
    lines += ["", f"## False claims ({len(result['false'])})", ""]
    lines += [f"- {f['model']} `{f['layer']}.{f['param']}`"
              f"{'[' + f['slice'] + ']' if f['slice'] else ''} claimed {f['verdict']}, truth "
              f"{f['truth']}" for f in result["false"]] or ["(none)"]
    if result["unmeasured"]:
        lines += ["", f"## Claims not measured ({len(result['unmeasured'])})", ""]
        lines += [f"- {u['model']} `{u['layer']}.{u['param']}` {u.get('slice', '')}"
                  for u in result["unmeasured"]]
    return "\n".join(lines) + "\n"


REASON_CATEGORIES = [
    ("timeout (build + lint + oracle over the per-model limit)", r"timeout after"),
    ("worker died", r"worker died"),
    ("forward needs inputs beyond the generic ones (grids, masks, labels, extra modalities)",
     r"missing \d+ required|must be provided|required positional|requires|labels|"
     r"you have to specify|must specify|should be provided|is not provided|cannot be none|"
     r"provide either|image_grid|grid_thw|pixel_values.*none|input_features.*none"),
    ("the generic shrink breaks a size relation (heads, multiples, per-layer lists, ratios)",
     r"multiple of|divisible|must have|per-layer|must match|entries|must be equal|"
     r"should be equal|out of range|must be|expected .* to|length of|sum"),
    ("shape mismatch in the forward (generic input or shrunk size)",
     r"shape|size of tensor|cannot be multiplied|mat1|dimension|expected input|sizes of "
     r"tensors|view|reshape|invalid for input|out of bounds"),
    ("config or model attribute missing / read-only", r"has no attribute|property|attribute"),
    ("not a plain model (no forward, no parameters, no target)", r"targeterror|no parameters|"
     r"forward"),
]


def _category(error: str) -> str:
    low = error.lower()
    for label, pattern in REASON_CATEGORIES:
        if re.search(pattern, low):
            return label
    return "other: " + error.split(":")[1].strip() if ":" in error else "other"


def _group_reason(error: str) -> str:
    text = re.sub(r"\d+", "N", error)
    text = re.sub(r"'[^']*'", "'…'", text)
    return text[:140]


def write_csv(part: str, records: dict[tuple[str, str], dict[str, Any]], path: str) -> None:
    """One row per measured bias / slice, with the claim covering it (appends when the file
    exists, so both parts can share one file)."""
    import csv

    cols = ["part", "family", "model", "layer", "type", "param", "size", "slice", "kind", "truth",
            "dead", "frozen", "claim", "dtype", "seconds", "note"]
    exists = os.path.exists(path)
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=cols, extrasaction="ignore")
        if not exists:
            writer.writeheader()
        for (family, model), rec in records.items():
            claims = rec.get("claims", [])
            for r in rec.get("rows", []):
                claim = ""
                for c in claims:
                    if (c["layer"], c["param"]) != (r["layer"], r["param"]):
                        continue
                    if not r["slice"] and not c["slices"]:
                        claim = c["verdict"]
                    elif r["slice"]:
                        a, b = map(int, r["slice"].split(":"))
                        runs = {i for x, y in c["slices"] for i in range(x, y)}
                        if runs and set(range(a, b)) <= runs:
                            claim = c["verdict"]
                writer.writerow({**r, "part": part, "family": family, "model": model,
                                 "claim": claim})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("dev", "heldout", "heldout2", "all"), required=True,
                        help="a part of the split; all (with --summarize): the whole sweep")
    parser.add_argument("--family", default=",".join(FAMILIES))
    parser.add_argument("--match", default=None)
    parser.add_argument("--budget", type=float, default=6.0, help="oracle s per model [6]")
    parser.add_argument("--timeout", type=float, default=90.0, help="s per model process [90]")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=None,
                        help="stop starting models after this many seconds (a cut, reported)")
    parser.add_argument("--compare-only", action="store_true",
                        help="re-lint the built models, compare with the cached truth")
    parser.add_argument("--summarize", action="store_true", help="report from the jsonl only")
    parser.add_argument("--truth-csv", default=None,
                        help="take the truth from this rows CSV (e.g. benchmarks/wide_results.csv)"
                             " instead of the jsonl cache under benchmarks/out/")
    parser.add_argument("--recheck-dead", action="store_true",
                        help="add the dead-units check to redundant slices measured without it")
    parser.add_argument("--csv", default=None, help="also write the rows as CSV here")
    args = parser.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    families = tuple(f for f in args.family.split(",") if f)
    command = "python benchmarks/wide_sweep.py " + " ".join(argv or sys.argv[1:])
    if args.recheck_dead:
        _preload(families)
        run_recheck(args.part, args.timeout)
    elif not args.summarize:
        _preload(families)
        if args.compare_only:
            run_compare(args.part, args.timeout, args.jobs, args.match, args.truth_csv)
        else:
            run_truth(args.part, args.budget, args.timeout, args.jobs, args.match,
                      args.deadline, families)
    if args.part == "all":
        if not args.summarize:
            parser.error("--part all only summarizes (run each part first)")
        # the whole sweep: every part's truth, with each part's re-linted claims when every
        # part has them (--compare-only ran), else the claims linted at truth time
        records, relint = {}, {}
        for part in PARTS:
            records.update(load_truth(part, args.truth_csv))
            claims_path = os.path.join(OUT, f"wide_claims_{part}.jsonl")
            if relint is not None and os.path.exists(claims_path):
                relint.update(read_records(claims_path))
            else:
                relint = None
    else:
        records = load_truth(args.part, args.truth_csv)
        relint = None
        if args.compare_only:
            relint = read_records(os.path.join(OUT, f"wide_claims_{args.part}.jsonl"))
    text = report(args.part, records, relint, command)
    name = f"wide_{args.part}.md"
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as handle:
        handle.write(text)
    if args.csv:
        write_csv(args.part, records, args.csv)
    if args.part in ("dev", "all") or args.summarize:
        print(text)
    else:
        print(f"held-out report written to {os.path.join(OUT, name)} (not printed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
