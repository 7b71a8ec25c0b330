"""The model zoo sweep: coverage, overhead and crashes of biaslint on real architectures.

Every model is built with random initialization (no downloads), linted through biaslint's Python
API in its own process (``biaslint.run.parallel.run_isolated``), and measured:

- ``build_s``: building the model with no biaslint involved (plain constructor call);
- ``record_s``: what recording construction sites and init calls added to the build
  (``load_target`` time minus ``build_s``; noisy for fast builds, clipped at 0);
- ``capture_s``, ``analysis_s``, ``rules_s``: biaslint's stages, from ``TargetResult.timings``;
- ``own_s`` = record + capture + analysis + rules: biaslint's cost over building the model;
- ``peak_rss_mb``: the worker process's peak resident memory (it includes ``import torch``);
- coverage: of the parametrized layers the forward calls (``layers``), the share inside a
  graph; ``not_called`` counts the layers it never calls on the example inputs; findings per
  rule; any error.

Usage::

    python benchmarks/zoo.py                      # full sweep -> benchmarks/out/zoo.{csv,md}
    python benchmarks/zoo.py --quick              # a few models per family
    python benchmarks/zoo.py --family tv-detection,hf --match 'bert|rcnn' --jobs 2
    python benchmarks/zoo.py --family hf-all --resume   # go on after an interrupted sweep

Each model's row is appended to ``<out>/rows.jsonl`` as soon as it is done, so an interrupted
sweep loses nothing; ``--resume`` skips the models already in that file and reports them with
the new ones.

Each model is also a biaslint target: ``biaslint benchmarks/zoo_models.py:TV.resnet18``,
``benchmarks/zoo_models.py:TIMM.convnext_atto``, ``benchmarks/zoo_models.py:HF.llama``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):
    sys.path.insert(0, HERE)

from zoo_models import FAMILIES, HF, TIMM, TV, WIDE_FAMILIES, builder_of, import_library  # noqa: E402
from zoo_wide import attr_of  # noqa: E402

# The default sweep's families, and the wide zoo's (``--family hf-all,timm-all``).
KNOWN = {**FAMILIES, **WIDE_FAMILIES}

__all__ = ["TV", "TIMM", "HF", "FAMILIES", "run_one", "main"]

# A few representative models per family for --quick (and the CI subset draws on the same idea).
QUICK = {
    "tv-classification": ["resnet18", "mobilenet_v3_small", "vit_b_32", "convnext_tiny",
                          "efficientnet_b0", "squeezenet1_1", "inception_v3", "swin_t"],
    "tv-detection": ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"],
    "tv-segmentation": ["lraspp_mobilenet_v3_large", "fcn_resnet50"],
    "tv-video": ["r3d_18", "mvit_v2_s"],
    "tv-optical-flow": ["raft_small"],
    "tv-quantization": ["quantized_mobilenet_v2"],
    "timm": ["resnet18", "vit_tiny_patch16_224", "convnext_atto", "efficientnet_b0",
             "swin_tiny_patch4_window7_224", "mobilevit_xxs", "levit_128s", "nfnet_l0"],
    "hf": ["bert", "gpt2", "llama", "t5", "vit", "whisper", "clip", "wav2vec2"],
    "diffusers": ["diffusers_unet2d_condition", "diffusers_autoencoder_kl", "diffusers_dit"],
    "smp": ["smp_unet", "smp_deeplabv3plus", "smp_segformer"],
    "monai": ["monai_unet", "monai_swin_unetr", "monai_dynunet"],
    "peft": ["peft_lora_llama", "peft_dora_llama", "peft_ia3_gpt2"],
    "x-transformers": ["x_transformers_decoder", "x_transformers_vit",
                       "x_transformers_encoder_decoder"],
    "vit-pytorch": ["vit_pytorch_vit", "vit_pytorch_levit", "vit_pytorch_cct"],
    "pyg": ["pyg_gcn", "pyg_gat", "pyg_pna"],
    "ddpm": ["ddpm_unet", "ddpm_karras_unet"],
}


@dataclass(frozen=True)
class Job:
    family: str
    name: str
    select: tuple[str, ...] = ()  # the rules linted (all when empty)

    @property
    def target(self) -> str:
        return f"{os.path.join(HERE, 'zoo_models.py')}:{KNOWN[self.family].attr}." \
               f"{attr_of(self.name)}"


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(job: Job) -> dict[str, Any]:
    """Build one model plainly (timed), then lint it through the Python API. In a worker."""
    import gc

    import torch

    from biaslint.engine import lint_loaded
    from biaslint.engine.lint import compares_config
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    import_library(job.family)
    torch.manual_seed(0)
    build = builder_of(job.family, job.name)
    start = time.perf_counter()
    model, _inputs = build()
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    del model, _inputs
    gc.collect()

    torch.manual_seed(0)
    config = TargetConfig(target=job.target)
    settings = Settings(select=job.select)
    start = time.perf_counter()
    loaded = load_target(config.target, compare_config=compares_config(settings))
    load_s = time.perf_counter() - start
    result = lint_loaded(loaded, config, settings, {"build": load_s})
    t = result.timings
    record_s = max(0.0, load_s - build_s)
    own_s = record_s + t["capture"] + t["analysis"] + t["rules"]
    cov = result.coverage
    assert cov is not None
    per_rule = Counter(f.code for f in result.findings)
    notes = [n for n in result.notes if not n.startswith("not traceable by torch.fx")]
    return {
        "family": job.family, "model": job.name, "params_m": round(params / 1e6, 2),
        "build_s": build_s, "record_s": record_s, "capture_s": t["capture"],
        "analysis_s": t["analysis"], "rules_s": t["rules"], "own_s": own_s,
        "own_over_build": own_s / build_s if build_s > 0 else float("inf"),
        "peak_rss_mb": _rss_mb(), "layers": cov.total, "traced": cov.traced,
        "not_called": len(cov.not_called),
        "coverage": cov.ratio, "untraced": " ".join(cov.untraced[:8]),
        "opaque": " ".join(o or "<root>" for o in cov.opaque[:8]),
        "findings": ";".join(f"{k}:{v}" for k, v in sorted(per_rule.items())),
        "notes": " | ".join(notes)[:400], "error": "",
        # what the rules could not judge (exit 2 on the command line): a sweep must show it
        "incomplete": " | ".join(result.incomplete)[:400],
        # claims a rule's analysis made that its measurement overruled (never reported)
        "disagreements": " | ".join(f"{scope.code} {d.layer}: {d.claim} / {d.measured}"
                                    for scope in result.rules
                                    for d in scope.disagreements)[:400],
        "finding_details": [
            {"code": f.code, "module": f.module, "module_type": f.module_type,
             "parameter": f.parameter, "message": f.message, "severity": str(f.severity),
             "data": repr(f.data)[:300]}
            for f in result.findings],
    }


COLUMNS = ["family", "model", "params_m", "build_s", "record_s", "capture_s", "analysis_s",
           "rules_s", "own_s", "own_over_build", "peak_rss_mb", "layers", "traced", "coverage",
           "not_called", "findings", "untraced", "opaque", "notes", "error", "incomplete",
           "disagreements"]


def select_jobs(families: list[str], match: str | None, quick: bool) -> list[Job]:
    jobs = []
    pattern = re.compile(match) if match else None
    for family in families:
        names = QUICK.get(family, []) if quick else KNOWN[family].names()
        for name in names:
            if pattern is None or pattern.search(name):
                jobs.append(Job(family, name))
    return jobs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            kib = int(handle.readline().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}"


def _library_versions(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Versions of the external libraries whose families this sweep ran."""
    from importlib.metadata import PackageNotFoundError, version

    from zoo_external import DISTRIBUTIONS

    ran = {r["family"] for r in rows}
    found = []
    for family, distribution in DISTRIBUTIONS.items():
        if family in ran:
            try:
                found.append((distribution, version(distribution)))
            except PackageNotFoundError:
                pass
    return found


def summary(rows: list[dict[str, Any]], command: str, wall_s: float, jobs: int) -> str:
    import timm
    import torch
    import torchvision
    import transformers

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# biaslint model zoo sweep", "",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- versions: torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"timm {timm.__version__}, transformers {transformers.__version__}"
        + "".join(f", {name} {version}" for name, version in _library_versions(rows)),
        f"- command: `{command}` ({jobs} worker process(es); wall time {wall_s / 60:.1f} min)",
        "",
        "## Per family", "",
        "| family | models | errors | coverage (all layers) | min coverage | median own/build "
        "| median own s | max own s | median build s | findings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    families = sorted({r["family"] for r in rows})
    for family in families + ["ALL"]:
        group = [r for r in rows if family in ("ALL", r["family"])]
        ok = [r for r in group if not r["error"]]
        errors = len(group) - len(ok)
        total = sum(r["layers"] for r in ok)
        traced = sum(r["traced"] for r in ok)
        cov = f"{traced / total:.2%}" if total else "-"
        min_cov = f"{min(r['coverage'] for r in ok):.1%}" if ok else "-"
        ratio = f"{statistics.median(r['own_over_build'] for r in ok):.0%}" if ok else "-"
        med_own = f"{statistics.median(r['own_s'] for r in ok):.2f}" if ok else "-"
        max_own = f"{max(r['own_s'] for r in ok):.2f}" if ok else "-"
        med_build = f"{statistics.median(r['build_s'] for r in ok):.2f}" if ok else "-"
        found: Counter[str] = Counter()
        for r in ok:
            for part in filter(None, r["findings"].split(";")):
                code, count = part.split(":")
                found[code] += int(count)
        found_text = ", ".join(f"{k} {v}" for k, v in sorted(found.items())) or "none"
        label = f"**{family}**" if family == "ALL" else family
        lines.append(f"| {label} | {len(group)} | {errors} | {cov} | {min_cov} | {ratio} | "
                     f"{med_own} | {max_own} | {med_build} | {found_text} |")
    lines += ["", "## Models below 100% coverage, slow ones and errors", "",
              "| family | model | coverage | untraced (first) | own s | build s | error |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        slow = not r["error"] and r["own_s"] > 1.0
        if r["error"] or r["coverage"] < 1.0 or slow:
            untraced = " ".join(str(r["untraced"]).split()[:3])
            lines.append(f"| {r['family']} | {r['model']} | {_fmt(r['coverage'])} | "
                         f"{untraced} | {_fmt(r['own_s'])} | {_fmt(r['build_s'])} | "
                         f"{str(r['error'])[:160]} |")
    return "\n".join(lines) + "\n"


def findings_report(rows: list[dict[str, Any]]) -> str:
    lines = ["# Findings on zoo models (random init; triage each as possibly false)", ""]
    for r in rows:
        for f in r.get("finding_details", []):
            message = f["message"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"- **{f['code']}** `{r['family']}:{r['model']}` `{f['module']}` "
                         f"({f['module_type']}{'.' + f['parameter'] if f['parameter'] else ''}): "
                         f"{message} data={f.get('data', '')}")
    if len(lines) == 2:
        lines.append("(no findings)")
    return "\n".join(lines) + "\n"


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows an earlier run of this sweep appended to ``path`` (none when it is absent)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_skip(path: str) -> set[tuple[str, str]]:
    """``family:model`` lines (``#`` comments and blank lines ignored)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.split("#")[0].strip() for line in handle]
    return {tuple(line.split(":", 1)) for line in lines if ":" in line}  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    from biaslint.run.parallel import run_isolated

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=",".join(FAMILIES),
                        help=f"comma-separated families: {', '.join(KNOWN)}")
    parser.add_argument("--match", default=None, help="regex on model names")
    parser.add_argument("--quick", action="store_true", help="a few models per family")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes [2]")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model [900]")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="output folder")
    parser.add_argument("--findings", default=None, help="also write all findings (Markdown)")
    parser.add_argument("--select", default="",
                        help="comma-separated rule codes or prefixes to lint [all]")
    parser.add_argument("--resume", action="store_true",
                        help="skip the models already in <out>/rows.jsonl and report them too")
    parser.add_argument("--skip", default=None,
                        help="a file of family:model lines not to run (swept elsewhere)")
    args = parser.parse_args(argv)

    families = [f.strip() for f in args.family.split(",") if f.strip()]
    unknown = [f for f in families if f not in KNOWN]
    if unknown:
        parser.error(f"unknown family {unknown}; choose from {list(KNOWN)}")
    jobs = select_jobs(families, args.match, args.quick)
    select = tuple(code.strip() for code in args.select.split(",") if code.strip())
    if select:
        from dataclasses import replace

        jobs = [replace(job, select=select) for job in jobs]
    os.makedirs(args.out, exist_ok=True)
    rows_path = os.path.join(args.out, "rows.jsonl")
    rows: list[dict[str, Any]] = read_rows(rows_path) if args.resume else []
    if not args.resume and os.path.exists(rows_path):
        os.remove(rows_path)
    skipped = {(r["family"], r["model"]) for r in rows}
    if args.skip:
        skipped |= read_skip(args.skip)
    listed = {(j.family, j.name) for j in jobs}
    rows = [r for r in rows if (r["family"], r["model"]) in listed]
    jobs = [j for j in jobs if (j.family, j.name) not in skipped]
    total = len(jobs) + len(rows)
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, args.jobs))
    start = time.perf_counter()

    def done(index: int, outcome: Any) -> None:
        job = jobs[index]
        if outcome.error is not None:
            row = {k: "" for k in COLUMNS} | {
                "family": job.family, "model": job.name, "error": outcome.error,
                "coverage": 0.0, "layers": 0, "traced": 0, "own_s": 0.0, "build_s": 0.0,
                "own_over_build": 0.0}
        else:
            row = outcome.value
        rows.append(row)
        with open(rows_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
        status = row["error"][:100] if row["error"] else (
            f"cov {row['coverage']:.1%} own {row['own_s']:.2f}s build {row['build_s']:.2f}s "
            f"{row['findings']}")
        print(f"[{len(rows)}/{total}] {job.family}:{job.name}: {status}", flush=True)

    # The worker must be importable by name in the child processes, not ``__main__.run_one``.
    import zoo

    run_isolated(zoo.run_one, jobs, jobs=args.jobs, timeout=args.timeout, on_done=done,
                 threads=threads)
    wall = time.perf_counter() - start
    order = {(j.family, j.name): i
             for i, j in enumerate(select_jobs(families, args.match, args.quick))}
    rows.sort(key=lambda r: order[(r["family"], r["model"])])
    command = "python benchmarks/zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_csv(rows, os.path.join(args.out, "zoo.csv"))
    text = summary(rows, command.strip(), wall, args.jobs)
    with open(os.path.join(args.out, "zoo.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    if args.findings:
        with open(args.findings, "w", encoding="utf-8") as handle:
            handle.write(findings_report(rows))
    print(text)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
