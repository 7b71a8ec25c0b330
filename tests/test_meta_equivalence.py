"""Built for real or on the meta device, a model gets the same findings.

The real run measures the values; the meta run reads the init laws the build recorded. For
every finding (code, module, parameter, verdict) must agree, or the meta run must list the layer
as not judged; a different verdict is a failure. Checked on generated models (every init recipe
of ``tests/fixtures/meta_generated.py``, in many combinations), with class priors, and (slow) on
zoo models, where each parameter's law is also compared with the measured values.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
GENERATED = os.path.join(ROOT, "tests", "fixtures", "meta_generated.py")

if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import meta_equivalence as equivalence  # noqa: E402


def _compare(target: str, priors: tuple[float, ...] | None = None) -> dict:
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    results = []
    for device in (None, "meta"):
        config = TargetConfig.of(target=target, device=device, class_priors=priors)
        loaded = load_target(target, device=device)
        results.append(lint_loaded(loaded, config, Settings(), {}))
    return equivalence.compare_results("gen", target, results[0], results[1])


def _agree(row: dict) -> None:
    assert row["misses"] == [] and row["extra"] == [], row
    assert row["meta_unjudged_layers"] == 0, row["meta_unjudged_reasons"]


@pytest.mark.parametrize("seed", range(12))
def test_generated_models_agree(seed):
    _agree(_compare(f"{GENERATED}:GEN.s{seed}"))


@pytest.mark.slow
def test_many_generated_models_agree():
    found = 0
    for seed in range(12, 160):
        row = _compare(f"{GENERATED}:GEN.s{seed}")
        _agree(row)
        found += row["agree"]
    assert found >= 100  # the recipes do produce findings of every seed rule to agree on


@pytest.mark.parametrize("seed", [0, 3, 5, 8])
def test_class_prior_findings_agree(seed):
    """BL005 on meta reads the bias's law (exact when set, its mean when drawn) and no logits."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("meta_generated_models", GENERATED)
    assert spec is not None and spec.loader is not None
    meta_generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(meta_generated)
    model, _ = meta_generated.make(seed)
    classes = model.head.out_features
    priors = tuple([0.7] + [0.3 / (classes - 1)] * (classes - 1))
    row = _compare(f"{GENERATED}:GEN.s{seed}", priors)
    _agree(row)


ZOO = [("tv-classification", "resnet18"), ("tv-classification", "mobilenet_v3_small"),
       ("tv-classification", "vit_b_16"), ("timm", "vit_tiny_patch16_224"),
       ("timm", "convnext_atto"), ("hf", "bert"), ("hf", "llama"), ("hf", "t5"),
       ("hf", "gpt2")]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "name"), ZOO, ids=[f"{f}:{n}" for f, n in ZOO])
def test_zoo_models_agree_and_their_laws_match_the_values(family, name):
    import torch
    from zoo_models import import_library

    pytest.importorskip("timm" if family == "timm" else
                        "transformers" if family == "hf" else "torchvision")
    import_library(family)
    job = equivalence.Job(family, name)
    row = equivalence.compare(job)
    assert row["misses"] == [] and row["extra"] == [], row

    from biaslint.analysis.values import MeasuredValue, value_of
    from biaslint.load import load_target

    torch.manual_seed(0)
    real = load_target(job.target)
    meta = load_target(job.target, device="meta")
    reals = dict(real.model.named_parameters())
    checked = 0
    for pname, tensor in meta.model.named_parameters():
        law = value_of(tensor, meta.param_laws[pname], True)
        assert law.known, (pname, law.why)
        measured = MeasuredValue(reals[pname])
        if measured.constant() is not None:
            assert law.constant() == pytest.approx(measured.constant(), abs=1e-6), pname
            continue
        n = tensor.numel()
        mean, std, _, _ = law.moments()
        m_mean, m_std, _, _ = measured.moments()
        assert abs(mean - m_mean) <= 6 * m_std / math.sqrt(n) + 1e-7, pname
        assert std == pytest.approx(m_std, rel=max(0.03, 5 / math.sqrt(n))), pname
        checked += 1
    assert checked > 0
