"""False positives and a crash that fuzzing BL001 against the oracle found, kept as regressions.

Each fixture builds a small model; every BL001 claim on it must agree with the float64
perturbation oracle (a redundant bias, or key slice, does not move any output), and the rule must
not crash. Tied and aliased biases, out= and in-place writes into other tensors, dim=(),
functional dropout traced in eval mode, fused-slice tracking through pooling/padding/
interpolation, and in_proj_bias read outside its MultiheadAttention.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from biaslint.engine import lint_loaded
from biaslint.load import ExampleInputs, LoadedTarget
from biaslint.settings import Settings, TargetConfig

from oracle import Oracle

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "bl001_fuzz").glob("*.py"))
MIXES = ("replicate", "circular", "avgpool", "adaptive", "interp")  # fp07's variants
CASES = [(path, mix) for path in FIXTURES
         for mix in (MIXES if path.stem.startswith("fp07") else (None,))]


@pytest.mark.parametrize("path,mix", CASES,
                         ids=[p.stem + (f"-{m}" if m else "") for p, m in CASES])
def test_every_claim_agrees_with_the_oracle(path, mix):
    import runpy

    build = runpy.run_path(str(path))["build"]
    model, x = build(mix) if mix else build()
    loaded = LoadedTarget(name=path.stem, model=model, inputs=ExampleInputs(args=(x,), kwargs={}),
                          module_sites={}, param_inits={})
    result = lint_loaded(loaded, TargetConfig(path.stem), Settings(select=("BL001",)))
    assert not [n for n in result.notes if "crashed" in n], result.notes
    oracle = Oracle(model, (x,))
    for finding in result.findings:
        verdict = finding.data.get("verdict")
        if verdict == "redundant-slice":
            # every run of cancelled elements (one per head in an interleaved layout)
            truths = {oracle.verdict(finding.module, finding.parameter, index=slice(a, b))
                      for a, b in finding.data.get("slices", [finding.data["slice"]])}
            truth = truths.pop() if len(truths) == 1 else "mixed"
        elif verdict == "redundant":
            truth = oracle.verdict(finding.module, finding.parameter or "bias")
        else:
            continue
        assert truth == "redundant", (finding.module, truth, finding.message)
