"""The external zoo (benchmarks/zoo_external.py): models from libraries we do not own
(diffusers, segmentation-models-pytorch, MONAI, PEFT, x-transformers, vit-pytorch,
torch-geometric, denoising-diffusion-pytorch), each linted with every rule and each BL001 finding
checked by the perturbation oracle.

Per model: no error and no rule crash, at least 99% of the layers the forward calls inside the
recorded graph, and every BL001 claim true when measured (a warned bias does not move any output
in float64 at generic parameter values; a key slice the same; a "partial" bias moves them only
by a non-constant change). Models run two at a time, each in its own process.
"""

from __future__ import annotations

import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
MIN_COVERAGE = 0.99


def _zoo_external():
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    import zoo_external

    return zoo_external


def _available(zoo_external) -> list[tuple[str, str]]:
    import importlib.util

    jobs = []
    for family, models in zoo_external.MODELS.items():
        if all(importlib.util.find_spec(m.split(".")[0]) for m in zoo_external.LIBRARIES[family]):
            jobs.extend((family, name) for name in models)
    return jobs


def lint_and_check(family: str, name: str) -> dict:
    """Lint one model and measure each BL001 claim (in a worker process)."""
    import torch

    torch.set_num_threads(1)  # two workers on two cores
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    from zoo_models import import_library

    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    from oracle import Oracle, split_inputs

    import_library(family)
    target = f"{os.path.join(BENCHMARKS, 'zoo_models.py')}:EXT.{name}"
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target), Settings(debug=True))
    claims = [f for f in result.findings if f.code == "BL001"]
    checks = []
    if claims:
        args, kwargs = split_inputs(loaded.inputs)
        try:
            oracle = Oracle(loaded.model, args, kwargs)
        except Exception:  # noqa: BLE001 - models that build float32 tensors inside
            oracle = Oracle(loaded.model, args, kwargs, dtype=torch.float32)
        for f in claims:
            verdict = f.data.get("verdict")
            spans = [slice(*span) for span in f.data.get("slices", [f.data["slice"]])] \
                if verdict == "redundant-slice" else [None]
            truths = {oracle.verdict(f.module, f.parameter or "bias", index=index)
                      for index in spans}
            truth = truths.pop() if len(truths) == 1 else "mixed"
            checks.append((f.module, verdict, truth))
    cov = result.coverage
    return {"error": result.error, "notes": list(result.notes),
            "disagreements": [(s.code, d.layer, d.claim, d.measured) for s in result.rules
                              for d in s.disagreements],
            "coverage": None if cov is None else cov.ratio,
            "untraced": [] if cov is None else list(cov.untraced), "checks": checks}


@pytest.fixture(scope="module")
def sweep():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = _available(_zoo_external())
    if not jobs:
        pytest.skip("none of the external libraries is installed")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {job: pool.submit(lint_and_check, *job) for job in jobs}
        return {job: future.result() for job, future in futures.items()}


@pytest.mark.slow
def test_external_zoo_has_at_least_40_models_from_every_library():
    zoo_external = _zoo_external()
    assert sum(len(m) for m in zoo_external.MODELS.values()) >= 40
    assert set(zoo_external.MODELS) == {"diffusers", "smp", "monai", "peft", "x-transformers",
                                        "vit-pytorch", "pyg", "ddpm"}
    assert all(len(models) >= 4 for models in zoo_external.MODELS.values())


@pytest.mark.slow
def test_every_external_model_is_captured(sweep):
    problems = {}
    for (family, name), row in sweep.items():
        crashed = [n for n in row["notes"] if "crashed" in n]
        if row["error"] or crashed or row["coverage"] is None or row["coverage"] < MIN_COVERAGE:
            problems[f"{family}:{name}"] = (row["error"], crashed, row["coverage"],
                                            row["untraced"][:5])
    assert not problems, problems


@pytest.mark.slow
def test_every_bl001_claim_on_the_external_zoo_is_true(sweep):
    wrong = []
    for (family, name), row in sweep.items():
        for module, verdict, truth in row["checks"]:
            expected = {"partial", "redundant"} if verdict == "partial" else {"redundant"}
            if truth not in expected:
                wrong.append((f"{family}:{name}", module, verdict, truth))
    assert not wrong, wrong
    disagreements = {f"{family}:{name}": row["disagreements"]
                     for (family, name), row in sweep.items() if row["disagreements"]}
    assert not disagreements, disagreements
    # Recall guard: 137 true BL001 findings when capture first reached every layer of this zoo
    # (benchmarks/RESULTS.md), less the 4 on PEFT base layers, which PEFT freezes (findings on
    # frozen parameters are not reported). Fewer means a layer went unseen again, or a rule
    # lost a case.
    assert sum(len(row["checks"]) for row in sweep.values()) >= 133
