"""BL001 recall benchmark: of the biases the perturbation oracle finds redundant, how many does
BL001 report, and is every report true?

For every model of every zoo family (``zoo_models.FAMILIES``: torchvision, timm, transformers
tiny configs and each library of the external zoo), in its own worker process:

1. build and lint it (BL001 only, ``report-partial`` on, so partial claims are visible too);
2. run the oracle of ``tests/oracle.py`` (float64 training mode, degenerate parameters
   re-drawn; float32 when the model only runs in float32) over *every candidate bias*:
   the 1-d ``bias`` of each ``nn.Linear``, ``nn.modules.conv._ConvNd`` and of any module pairing
   a ``bias`` Parameter with a 2-d+ ``weight`` Parameter (GPT-2's ``Conv1D``), and
   ``nn.MultiheadAttention.in_proj_bias``. Then, for every candidate whose whole bias is not
   redundant and whose size is divisible by 3, each third (q, k, v order) as a slice;
3. record one row per bias: its truth, what BL001 claimed (``redundant``, ``redundant-slice``,
   ``partial`` or nothing) and the oracle time.

Truth columns. ``truth`` is the oracle's verdict (``redundant``, ``partial``, ``live``;
``skipped`` when the model's oracle budget ran out before it, ``error`` when the oracle could not
perturb it). A bias the oracle's unit perturbation leaves unmoved (or, for ``partial``, its
constant shift) is checked again with a 100x larger one: a cancellation holds at any size, a
ReLU that is dead on the example inputs or a float32 loss that moves below the tolerance does
not (those count as ``live``, with a note). A truth-redundant bias whose layer's weight does not
move any output either is
``dead`` (the layer's output is never used: BL001 reports only biases that something cancels).
``frozen`` biases (requires_grad=False, e.g. PEFT's base layers) are never reported by design.
Dead and frozen biases are left out of the recall denominators and counted separately.

Budget. Each model gets ``--budget`` seconds of oracle time (per-family overrides with
``--family-budget``). BL001's claims are measured first and always (so precision is measured on
every claim), then whole biases in module order, then slices (the key, i.e. middle, third of every
layer in module order, then the query and value thirds); what does not fit is recorded
as ``skipped``.

torchvision detectors: the zoo builds them in eval mode, which their forward needs without
targets. The oracle runs them as they train instead: training mode with one synthetic target
per image (boxes, labels, and masks or keypoints where the model has those heads); the outputs
compared are then the losses. (In eval mode a random-init detector keeps few or no boxes after
its score threshold, and then no head bias would move any output.)

Usage::

    python benchmarks/recall.py                       # all -> benchmarks/recall_results.csv
    python benchmarks/recall.py --family hf --match 'bert|gpt2' --csv benchmarks/out/r.csv
    python benchmarks/recall.py --summarize           # summary from the CSV only

The summary goes to ``benchmarks/out/recall.md`` and stdout. Rows are also appended to
``benchmarks/out/recall_rows.jsonl`` as each model finishes; ``--resume`` skips the models
found there (for restarting a long run).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
for _path in (HERE, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from zoo_models import FAMILIES, WIDE_FAMILIES, import_library  # noqa: E402

# every family a run may name; the default run is FAMILIES (the wide zoo is opt-in)
KNOWN_FAMILIES = {**FAMILIES, **WIDE_FAMILIES}

DEFAULT_BUDGET = 120.0
COLUMNS = ["family", "model", "layer", "type", "param", "slice", "truth", "dead", "frozen",
           "claim", "cancelled_by", "dtype", "seconds", "note"]


@dataclass(frozen=True)
class Job:
    family: str
    name: str
    budget: float = DEFAULT_BUDGET

    @property
    def target(self) -> str:
        source = os.path.join(HERE, "zoo_models.py")
        return f"{source}:{KNOWN_FAMILIES[self.family].attr}.{self.name}"


# --- candidates -------------------------------------------------------------------------------

def candidate_params(model: Any) -> list[tuple[str, str, str, int]]:
    """(layer, parameter, type name, size) of every bias the benchmark measures, module order."""
    import torch
    import torch.nn as nn

    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            bias = getattr(module, "in_proj_bias", None)
            if isinstance(bias, torch.Tensor):
                found.append((name, "in_proj_bias", type(module).__name__, int(bias.numel())))
            continue
        bias = module._parameters.get("bias")
        if not isinstance(bias, nn.Parameter) or isinstance(bias, nn.UninitializedParameter):
            continue
        if bias.dim() != 1 or not bias.is_floating_point() or bias.numel() == 0:
            continue
        plain = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
        # (a weight registered as a parametrization, weight_norm, still makes an nn.Conv)
        if plain or (not type(module).__module__.startswith("torch.nn")
                     and _weight_is_not_affine(module)):
            found.append((name, "bias", type(module).__name__, int(bias.numel())))
    return found


def _weight_is_not_affine(module: Any) -> bool:
    """A custom layer's bias is a candidate when the layer's own ``weight`` is 2-d+ (GPT-2's
    Conv1D) or when it has none (torch-geometric's GCNConv: a child ``lin`` without bias, then
    its own ``bias``); a 1-d weight makes it a normalization's or a scale layer's affine."""
    import torch

    weight = module._parameters.get("weight")
    return weight is None or (isinstance(weight, torch.Tensor) and weight.dim() >= 2)


def thirds(size: int) -> list[tuple[int, int]]:
    if size < 3 or size % 3:
        return []
    third = size // 3
    return [(start, start + third) for start in range(0, size, third)]


# --- the oracle -------------------------------------------------------------------------------

def _make_oracle_class() -> Any:
    from oracle import Oracle

    class SafeOracle(Oracle):
        """The tests' oracle; an output whose shape or count changes (a detector keeping other
        proposals) counts as moved instead of failing the comparison."""

        def moves(self, layer: str, param: str = "bias", delta: Any = None,
                  index: slice | None = None) -> float:
            try:
                return super().moves(layer, param, delta=delta, index=index)
            except RuntimeError as exc:
                if "size of tensor" in str(exc) or "must match" in str(exc):
                    return float("inf")
                raise

    return SafeOracle


def _detection_targets(model: Any, images: list[Any]) -> list[dict[str, Any]]:
    """One synthetic object per image, with what the model's heads need to compute losses."""
    import torch

    generator = torch.Generator().manual_seed(0)
    targets = []
    roi = getattr(model, "roi_heads", None)
    for image in images:
        h, w = image.shape[-2:]
        x1, y1 = 0.2 * w, 0.25 * h
        x2, y2 = 0.7 * w, 0.8 * h
        boxes = torch.tensor([[x1, y1, x2, y2], [0.05 * w, 0.1 * h, 0.45 * w, 0.5 * h]])
        target: dict[str, Any] = {"boxes": boxes, "labels": torch.tensor([1, 1])}
        if roi is not None and getattr(roi, "mask_head", None) is not None:
            masks = torch.zeros(2, h, w, dtype=torch.uint8)
            for i, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
                masks[i, b:d, a:c] = 1
            target["masks"] = masks
        if roi is not None and getattr(roi, "keypoint_head", None) is not None:
            k = roi.keypoint_predictor.kps_score_lowres.out_channels
            xs = torch.rand(2, k, generator=generator)
            ys = torch.rand(2, k, generator=generator)
            xs = boxes[:, :1] + xs * (boxes[:, 2:3] - boxes[:, :1])
            ys = boxes[:, 1:2] + ys * (boxes[:, 3:4] - boxes[:, 1:2])
            target["keypoints"] = torch.stack([xs, ys, torch.ones_like(xs) * 2], dim=-1)
        targets.append(target)
    return targets


def oracle_inputs(job: Job, loaded: Any) -> tuple[tuple[Any, ...], dict[str, Any], str]:
    from oracle import split_inputs

    args, kwargs = split_inputs(loaded.inputs)
    if job.family == "tv-detection":
        images = list(args[0])
        return (images, _detection_targets(loaded.model, images)), {}, "train mode + targets"
    return args, kwargs, ""


def build_oracle(job: Job, loaded: Any) -> tuple[Any, str, str]:
    import torch

    args, kwargs, note = oracle_inputs(job, loaded)
    cls = _make_oracle_class()
    attempts = [(args, kwargs, note)]
    if job.family == "tv-detection":
        # BatchNorm on 1x1 maps in training mode (SSDlite's extra layers) needs two images
        images = list(args[0]) + [args[0][0].flip(-1)]
        attempts.append(((images, _detection_targets(loaded.model, images)), {},
                         note + ", two images"))
    if not _deepcopies(loaded.model):
        # weight_norm parametrizations do not deepcopy (wav2vec2's positional conv): the oracle
        # works on the linted model itself, which this worker no longer needs
        object.__setattr__(loaded.model, "__deepcopy__", lambda memo: loaded.model)
        attempts = [(a, k, (n + ", oracle on the linted model (no deepcopy)").lstrip(", "))
                    for a, k, n in attempts]
    first: Exception | None = None
    for args, kwargs, note in attempts:
        for dtype, label in ((torch.float64, "float64"), (torch.float32, "float32")):
            # float32 for models that build float32 tensors inside
            try:
                return cls(loaded.model, args, kwargs, dtype=dtype), label, note
            except Exception as exc:  # noqa: BLE001
                first = first or exc
    assert first is not None
    raise first


def _deepcopies(model: Any) -> bool:
    try:
        copy.deepcopy(model)
    except RuntimeError:
        return False
    return True


LARGE = 100.0


def _moves_when_large(oracle: Any, layer: str, param: str, index: slice | None,
                      constant: bool = False) -> bool:
    """The oracle perturbs by a unit normal vector; a cancellation is exact at any size, while
    a bias that only sits in a flat region (a ReLU dead on these inputs, a threshold) or whose
    unit move stays under the tolerance (a float32 model returning a mean loss) moves the outputs
    once pushed far enough. A second, 100x larger draw tells them apart (for a "partial" bias:
    a 100x larger constant shift)."""
    import torch

    tensor = getattr(oracle.model.get_submodule(layer), param)
    shape = tensor.shape if index is None else tensor[index].shape
    if constant:
        delta = torch.full(shape, LARGE * 1.7, dtype=torch.float64)
    else:
        delta = LARGE * torch.randn(shape, generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float64)
    return oracle.moves(layer, param, delta=delta, index=index) > oracle.tolerance


def _is_dead(oracle: Any, layer: str, param: str) -> bool:
    """Does the layer's weight move nothing either (its output never reaches an output)?"""
    import torch

    module = oracle.model.get_submodule(layer)
    weights = [n for n, p in module.named_parameters()
               if n != param and isinstance(p, torch.Tensor) and p.dim() >= 2]
    if not weights:
        return False
    for name in weights:
        owner, _, leaf = name.rpartition(".")
        if oracle.moves(f"{layer}.{owner}" if owner else layer, leaf) > oracle.tolerance:
            return False
    return True


# --- one model (in a worker) ------------------------------------------------------------------

def _claims(findings: list[Any]) -> dict[tuple[str, str, str], Any]:
    """(layer, parameter, slice text) -> the BL001 finding claiming it."""
    claims = {}
    for f in findings:
        if f.code != "BL001":
            continue
        verdict = f.data.get("verdict")
        span = ""
        if verdict == "redundant-slice":
            start, stop = f.data["slice"]
            span = f"{start}:{stop}"
        claims[(f.module, f.parameter or "bias", span)] = f
    return claims


def measure(job: Job) -> dict[str, Any]:
    """Lint one model and measure every candidate bias with the oracle. In a worker."""
    import torch

    torch.set_num_threads(1)
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    import_library(job.family)
    info: dict[str, Any] = {"family": job.family, "model": job.name, "error": "", "notes": ""}
    start = time.perf_counter()
    torch.manual_seed(0)
    loaded = load_target(job.target)
    load_s = time.perf_counter() - start
    # The oracle takes its copy before the lint, so nothing the lint leaves behind (it once left
    # transformers' output-capturing hooks installed twice) changes what is measured. A model
    # that does not deepcopy (weight_norm) gets its oracle after the lint, on the model itself.
    start = time.perf_counter()
    oracle = oracle_error = None
    if _deepcopies(loaded.model):
        try:
            oracle, dtype, mode_note = build_oracle(job, loaded)
        except Exception as exc:  # noqa: BLE001
            oracle_error = exc
    oracle_init_s = time.perf_counter() - start
    start = time.perf_counter()
    settings = Settings(select=("BL001",), debug=True,
                        rule_options={"BL001": {"report-partial": True}})
    result = lint_loaded(loaded, TargetConfig(job.target), settings)
    info["lint_s"] = load_s + time.perf_counter() - start
    info["coverage"] = None if result.coverage is None else result.coverage.ratio
    info["notes"] = " | ".join(n for n in result.notes if "crashed" in n or "frozen" in n)[:600]
    if result.error:
        info["error"] = f"lint: {result.error}"[:300]
    claims = _claims(list(result.findings))

    candidates = candidate_params(loaded.model)
    known = {(layer, param) for layer, param, _t, _n in candidates}
    for layer, param, _span in claims:  # a claim on a layer outside the candidate rule
        if (layer, param) not in known:
            module = loaded.model.get_submodule(layer)
            size = int(getattr(module, param).numel())
            candidates.append((layer, param, type(module).__name__, size))
            known.add((layer, param))
    info["candidates"] = len(candidates)

    start = time.perf_counter()
    if oracle is None and oracle_error is None:
        try:
            oracle, dtype, mode_note = build_oracle(job, loaded)
        except Exception as exc:  # noqa: BLE001
            oracle_error = exc
    oracle_init_s += time.perf_counter() - start
    if oracle is None:
        exc = oracle_error
        info["oracle_init_s"] = oracle_init_s
        info["error"] = (info["error"] + f" oracle: {type(exc).__name__}: {exc}")[:300]
        rows = [_row(job, layer, t, param, "", "error", claims, "", 0.0,
                     note=f"oracle failed: {type(exc).__name__}")
                for layer, param, t, _n in candidates]
        info["rows"] = rows
        return info
    info["oracle_init_s"] = oracle_init_s
    info["dtype"] = dtype
    frozen_params = {name for name, p in loaded.model.named_parameters(remove_duplicate=False)
                     if not p.requires_grad}

    spent = 0.0
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    types = {(layer, param): t for layer, param, t, _n in candidates}

    def run(layer: str, param: str, span: str, forced: bool = False) -> dict[str, Any]:
        nonlocal spent
        key = (layer, param, span)
        if key in results:
            return results[key]
        if not forced and spent >= job.budget:
            row = _row(job, layer, types[(layer, param)], param, span, "skipped", claims, dtype,
                       0.0, frozen_params, note=mode_note)
            return row  # not cached: a forced run may still measure it
        t0 = time.perf_counter()
        index = None if not span else slice(*map(int, span.split(":")))
        note = mode_note
        dead = False
        try:
            truth = oracle.verdict(layer, param, index=index)
            if truth in ("redundant", "partial") and _moves_when_large(
                    oracle, layer, param, index, constant=truth == "partial"):
                truth = "live"
                note = (note + ", moves only when perturbed 100x (below the tolerance at "
                        "unit size: a ReLU dead on these inputs, a float32 loss)").lstrip(", ")
            if truth == "redundant" and not span:
                dead = _is_dead(oracle, layer, param)
        except Exception as exc:  # noqa: BLE001
            truth = "error"
            note = f"{type(exc).__name__}: {str(exc)[:120]}"
        seconds = time.perf_counter() - t0
        spent += seconds
        row = _row(job, layer, types[(layer, param)], param, span, truth, claims, dtype, seconds,
                   frozen_params, dead=dead, note=note)
        results[key] = row
        return row

    # 1. every claim, whatever the budget (precision is measured on all of them)
    for layer, param, span in claims:
        run(layer, param, span, forced=True)
    # 2. whole biases in module order
    wholes = [run(layer, param, "") for layer, param, _t, _n in candidates]
    # 3. thirds of the non-redundant ones
    rows: list[dict[str, Any]] = []
    sizes = {(layer, param): n for layer, param, _t, n in candidates}
    slice_rows: list[dict[str, Any]] = []
    # Key (middle) thirds of every layer first, then the query and value thirds: the key third
    # is the one an attention softmax cancels, so a budget cut loses the unlikely ones first.
    for position in (1, 0, 2):
        for whole in wholes:
            if whole["truth"] in ("redundant", "skipped"):
                continue  # a skipped whole's slices count as "not considered"
            spans = thirds(sizes[(whole["layer"], whole["param"])])
            if spans:
                a, b = spans[position]
                slice_rows.append(run(whole["layer"], whole["param"], f"{a}:{b}"))
    # keep claimed slices not on a third boundary too
    for layer, param, span in claims:
        if span and not any(r["layer"] == layer and r["param"] == param and r["slice"] == span
                            for r in slice_rows):
            slice_rows.append(results[(layer, param, span)])
    for whole in wholes:
        rows.append(whole)
        rows.extend(sorted((r for r in slice_rows
                            if r["layer"] == whole["layer"] and r["param"] == whole["param"]),
                           key=lambda r: int(r["slice"].split(":")[0])))
    info["oracle_s"] = spent
    info["rows"] = rows
    info["skipped_whole"] = sum(1 for r in wholes if r["truth"] == "skipped")
    info["skipped_slices"] = sum(1 for r in slice_rows if r["truth"] == "skipped")
    # slices never considered: their whole was skipped (would be tested if it is not redundant)
    info["unconsidered_slices"] = sum(len(thirds(sizes[(r["layer"], r["param"])]))
                                      for r in wholes if r["truth"] == "skipped")
    return info


def _row(job: Job, layer: str, type_name: str, param: str, span: str, truth: str,
         claims: dict[tuple[str, str, str], Any], dtype: str, seconds: float,
         frozen_params: set[str] | None = None, dead: bool = False,
         note: str = "") -> dict[str, Any]:
    finding = claims.get((layer, param, span))
    claim = ""
    cancelled = ""
    if finding is not None:
        verdict = finding.data.get("verdict", "")
        if span or verdict in ("redundant", "partial"):
            claim = verdict
            cancelled = "; ".join(str(c) for c in finding.data.get("cancelled_by", []))[:200]
    full = f"{layer}.{param}" if layer else param
    return {"family": job.family, "model": job.name, "layer": layer, "type": type_name,
            "param": param, "slice": span, "truth": truth, "dead": int(dead),
            "frozen": int(full in (frozen_params or set())), "claim": claim,
            "cancelled_by": cancelled, "dtype": dtype, "seconds": round(seconds, 3),
            "note": note}


# --- counting ---------------------------------------------------------------------------------

def _counted(row: dict[str, Any], claimed: str) -> bool:
    """In the recall denominators: not frozen, and not dead unless BL001 makes this very claim
    anyway (a layer behind a BatchNorm over two values can look dead: its weight moves nothing
    either). A dead layer BL001 calls only partial is dead on these inputs (a residual branch
    whose stochastic-depth mask dropped every sample), not a miss."""
    return not int(row["frozen"]) and (not int(row["dead"]) or row["claim"] == claimed)


def tally(rows: list[dict[str, Any]], kind: str) -> dict[str, int]:
    """kind: "whole" (claims: redundant), "slice" (redundant-slice) or "partial" (whole rows,
    claims: partial; a partial claim on a truth-redundant bias is true but weaker: not an FP)."""
    if kind == "slice":
        group = [r for r in rows if r["slice"]]
        claimed, positive, accepted = "redundant-slice", {"redundant"}, {"redundant"}
    else:
        group = [r for r in rows if not r["slice"] and r["layer"]]
        if kind == "whole":
            claimed, positive, accepted = "redundant", {"redundant"}, {"redundant"}
        else:
            claimed, positive, accepted = "partial", {"partial"}, {"partial", "redundant"}
    measured = [r for r in group if r["truth"] not in ("skipped", "error", "model-error")]
    truth = [r for r in measured if r["truth"] in positive and _counted(r, claimed)]
    tp = sum(1 for r in truth if r["claim"] == claimed)
    fp = sum(1 for r in measured if r["claim"] == claimed and r["truth"] not in accepted)
    fn = sum(1 for r in truth if r["claim"] != claimed)
    return {"measured": len(measured), "truth": len(truth), "tp": tp, "fp": fp, "fn": fn,
            "claims": sum(1 for r in group if r["claim"] == claimed),
            "skipped": sum(1 for r in group if r["truth"] == "skipped"),
            "errors": sum(1 for r in group if r["truth"] == "error"),
            "dead": sum(1 for r in measured if r["truth"] in positive and int(r["dead"])
                        and r["claim"] != claimed),
            "frozen": sum(1 for r in measured if r["truth"] in positive and int(r["frozen"])),
            "weaker": sum(1 for r in measured if kind == "partial" and r["claim"] == claimed
                          and r["truth"] == "redundant")}


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "-"


def summary(rows: list[dict[str, Any]], models: list[dict[str, Any]], command: str = "",
            wall_s: float | None = None) -> str:
    families = list(dict.fromkeys(r["family"] for r in rows))
    lines = ["# BL001 recall benchmark", ""]
    if command:
        lines.append(f"- command: `{command}`" + (f" (wall {wall_s / 60:.1f} min)"
                                                   if wall_s is not None else ""))
    lines.append(f"- biaslint {_commit()}; {_versions()}")
    lines += ["- truth: tests/oracle.py (float64 training mode; float32 where the model needs it)",
              "- recall denominators leave out dead layers (weight moves nothing either) and "
              "frozen parameters; `skipped` = left out by the oracle budget", ""]
    for kind, title in (("whole", "Whole biases (claim: redundant)"),
                        ("slice", "Slices: thirds of non-redundant biases (claim: "
                                  "redundant-slice)"),
                        ("partial", "Partial (whole biases; claim: partial; a partial claim on "
                                    "a truth-redundant bias counts as weaker, not FP)")):
        lines += [f"## {title}", "",
                  "| family | measured | truth | TP | FP | FN | precision | recall | skipped | "
                  "dead | frozen | errors |" + (" weaker |" if kind == "partial" else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"
                  + ("---|" if kind == "partial" else "")]
        for family in families + ["ALL"]:
            group = [r for r in rows if family in ("ALL", r["family"])]
            t = tally(group, kind)
            label = f"**{family}**" if family == "ALL" else family
            lines.append(f"| {label} | {t['measured']} | {t['truth']} | {t['tp']} | {t['fp']} | "
                         f"{t['fn']} | {_ratio(t['tp'], t['tp'] + t['fp'])} | "
                         f"{_ratio(t['tp'], t['tp'] + t['fn'])} | {t['skipped']} | {t['dead']} | "
                         f"{t['frozen']} | {t['errors']} |"
                         + (f" {t['weaker']} |" if kind == "partial" else ""))
        lines.append("")
    if models:
        lines += ["## Time and budget per family", "",
                  "| family | models | errors | lint s | oracle init s | oracle s | models cut by "
                  "budget | whole skipped | slices skipped | slices not considered |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for family in families + ["ALL"]:
            group = [m for m in models if family in ("ALL", m["family"])]
            cut = [m for m in group if m.get("skipped_whole") or m.get("skipped_slices")]
            lines.append(
                f"| {family} | {len(group)} | {sum(1 for m in group if m.get('error'))} | "
                f"{sum(m.get('lint_s') or 0 for m in group):.0f} | "
                f"{sum(m.get('oracle_init_s') or 0 for m in group):.0f} | "
                f"{sum(m.get('oracle_s') or 0 for m in group):.0f} | {len(cut)} | "
                f"{sum(m.get('skipped_whole') or 0 for m in group)} | "
                f"{sum(m.get('skipped_slices') or 0 for m in group)} | "
                f"{sum(m.get('unconsidered_slices') or 0 for m in group)} |")
        lines.append("")
        cut = [m for m in models if m.get("skipped_whole") or m.get("skipped_slices")]
        if cut:
            lines += ["Models cut by the budget (whole / slices skipped, slices not considered):",
                      ""]
            lines += [f"- {m['family']}:{m['model']} (budget {m.get('budget', '?')} s): "
                      f"{m.get('skipped_whole')} of {m.get('candidates')} whole, "
                      f"{m.get('skipped_slices')} slices, {m.get('unconsidered_slices')} not "
                      "considered" for m in cut]
            lines.append("")
        errors = [m for m in models if m.get("error")]
        if errors:
            lines += ["Errors:", ""] + [f"- {m['family']}:{m['model']}: {m['error']}"
                                        for m in errors] + [""]
    misses = [r for r in rows if r["truth"] == "redundant"
              and _counted(r, "redundant-slice" if r["slice"] else "redundant")
              and r["claim"] not in ("redundant", "redundant-slice")]
    wrong = [r for r in rows if r["claim"] in ("redundant", "redundant-slice")
             and r["truth"] != "redundant"] + \
            [r for r in rows if r["claim"] == "partial" and r["truth"] not in ("partial",
                                                                                "redundant")]
    lines += [f"## False claims ({len(wrong)})", ""]
    lines += [f"- {r['family']}:{r['model']} `{r['layer']}.{r['param']}`"
              f"{'[' + r['slice'] + ']' if r['slice'] else ''} claimed {r['claim']}, truth "
              f"{r['truth']}" for r in wrong] or ["(none)"]
    lines += ["", f"## Misses: truth redundant, not claimed ({len(misses)})", ""]
    lines += [f"- {r['family']}:{r['model']} `{r['layer']}.{r['param']}`"
              f"{'[' + r['slice'] + ']' if r['slice'] else ''} ({r['type']})"
              f"{' claimed ' + r['claim'] if r['claim'] else ''}" for r in misses] or ["(none)"]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
        return f"commit {sha}"
    except (OSError, subprocess.CalledProcessError):
        return f"commit {os.environ.get('BIASLINT_COMMIT', 'unknown')}"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "torchvision", "timm", "transformers"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


# --- files ------------------------------------------------------------------------------------

def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _model_record(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "rows"}


def select_jobs(families: list[str], match: str | None, budget: float,
                family_budget: dict[str, float]) -> list[Job]:
    pattern = re.compile(match) if match else None
    return [Job(family, name, family_budget.get(family, budget))
            for family in families for name in KNOWN_FAMILIES[family].names()
            if pattern is None or pattern.search(name)]


def run_jobs(jobs: list[Job], workers: int = 1, timeout: float | None = None,
             on_done: Any = None) -> list[dict[str, Any]]:
    """Measure each job in its own process; returns each model's info (with its rows)."""
    import recall  # importable by name in the workers, not as __main__

    from biaslint.run.parallel import run_isolated

    infos: list[dict[str, Any]] = [{} for _ in jobs]

    def done(index: int, outcome: Any) -> None:
        job = jobs[index]
        if outcome.error is not None:
            info = {"family": job.family, "model": job.name, "error": outcome.error,
                    "rows": [{"family": job.family, "model": job.name, "layer": "", "type": "",
                              "param": "", "slice": "", "truth": "model-error", "dead": 0,
                              "frozen": 0, "claim": "", "cancelled_by": "", "dtype": "",
                              "seconds": round(outcome.seconds, 1),
                              "note": str(outcome.error)[:200]}]}
        else:
            info = outcome.value
        info["budget"] = job.budget
        info["wall_s"] = outcome.seconds
        infos[index] = info
        if on_done is not None:
            on_done(index, info)

    run_isolated(recall.measure, jobs, jobs=workers, timeout=timeout, on_done=done, threads=1)
    return infos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=",".join(FAMILIES),
                        help=f"comma-separated families: {', '.join(KNOWN_FAMILIES)}")
    parser.add_argument("--match", default=None, help="regex on model names")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes [1]")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"oracle seconds per model [{DEFAULT_BUDGET:g}]")
    parser.add_argument("--family-budget", default="",
                        help="per-family budgets, e.g. tv-classification=60,tv-video=60")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per model process [4 x budget + 900]")
    parser.add_argument("--csv", default=os.path.join(HERE, "recall_results.csv"))
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="scratch folder")
    parser.add_argument("--resume", action="store_true",
                        help="skip models already in <out>/recall_rows.jsonl")
    parser.add_argument("--summarize", action="store_true",
                        help="only rewrite the summary from --csv (and <out>/recall_models.json)")
    args = parser.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    rows_log = os.path.join(args.out, "recall_rows.jsonl")
    command = "python benchmarks/recall.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    if args.summarize:
        rows = read_csv(args.csv)
        models = _read_log(rows_log)
        keys = {(r["family"], r["model"]) for r in rows}
        text = summary(rows, [m for m in models if (m["family"], m["model"]) in keys])
        _write_summary(text, args.out)
        return 0

    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = [f for f in families if f not in KNOWN_FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown}; choose from {list(KNOWN_FAMILIES)}")
    family_budget = {}
    for item in filter(None, (s.strip() for s in args.family_budget.split(","))):
        family, value = item.split("=")
        family_budget[family.strip()] = float(value)
    jobs = select_jobs(families, args.match, args.budget, family_budget)
    previous: dict[tuple[str, str], dict[str, Any]] = {}
    if args.resume:
        for info in _read_log(rows_log, with_rows=True):
            previous[(info["family"], info["model"])] = info
    elif os.path.exists(rows_log):
        os.replace(rows_log, rows_log + ".old")
    todo = [j for j in jobs if (j.family, j.name) not in previous]
    timeout = args.timeout or 4 * max(j.budget for j in jobs) + 900 if jobs else None
    start = time.perf_counter()
    count = [len(jobs) - len(todo)]

    def done(index: int, info: dict[str, Any]) -> None:
        count[0] += 1
        job = todo[index]
        with open(rows_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(info, default=str) + "\n")
        rows = info.get("rows", [])
        red = sum(1 for r in rows if r["truth"] == "redundant")
        claimed = sum(1 for r in rows if r["claim"])
        status = info["error"][:120] if info.get("error") else ""
        print(f"[{count[0]}/{len(jobs)}] {job.family}:{job.name}: {len(rows)} biases, "
              f"{red} redundant, {claimed} claimed, skipped {info.get('skipped_whole', 0)}+"
              f"{info.get('skipped_slices', 0)}, oracle {info.get('oracle_s', 0):.0f}s "
              f"wall {info.get('wall_s', 0):.0f}s {status}", flush=True)

    infos = run_jobs(todo, workers=args.jobs, timeout=timeout, on_done=done)
    by_key = {(i["family"], i["model"]): i for i in infos if i}
    by_key.update(previous)
    # rows in the zoo's family order, whatever order --family ran them in
    rank = {family: i for i, family in enumerate(KNOWN_FAMILIES)}
    ordered = [by_key[(j.family, j.name)]
               for j in sorted(jobs, key=lambda j: rank[j.family])
               if (j.family, j.name) in by_key]
    rows = [r for info in ordered for r in info.get("rows", [])]
    write_csv(rows, args.csv)
    text = summary(rows, [_model_record(i) for i in ordered], command.strip(),
                   time.perf_counter() - start)
    _write_summary(text, args.out)
    print(text)
    return 0


def _read_log(path: str, with_rows: bool = False) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                info = json.loads(line)
                found[(info["family"], info["model"])] = info if with_rows else \
                    _model_record(info)
    return list(found.values())


def _write_summary(text: str, out: str) -> None:
    with open(os.path.join(out, "recall.md"), "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    sys.exit(main())
