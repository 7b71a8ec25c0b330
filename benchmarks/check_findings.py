"""Check zoo findings numerically: does the claim hold on the real model?

For every BL001 finding (a bias cancelled downstream) of the models named, rebuild the model,
run the example input, perturb the flagged bias (the key slice for MultiheadAttention, a
constant shift for "partial" findings) and measure how far the output moves. A true finding
moves it by float rounding only. Other rules are listed as "not checked here".

    python benchmarks/check_findings.py tv-classification:vgg11_bn timm:vit_tiny_patch16_224
"""

from __future__ import annotations

import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _flat(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value.detach().float()]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    return []


def _run(model: Any, inputs: Any) -> list[Any]:
    import torch

    torch.manual_seed(1)  # identical dropout masks in both runs
    with torch.no_grad():
        if isinstance(inputs, dict):
            return _flat(model(**inputs))
        if isinstance(inputs, tuple):
            return _flat(model(*inputs))
        return _flat(model(inputs))


def check(family: str, name: str) -> list[str]:
    import torch
    from zoo_models import FAMILIES, import_library

    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    import_library(family)
    target = f"{os.path.join(HERE, 'zoo_models.py')}:{FAMILIES[family].attr}.{name}"
    torch.manual_seed(0)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target), Settings())
    model = loaded.model
    inputs = loaded.inputs
    assert inputs is not None
    raw = inputs.kwargs if inputs.kwargs else (
        inputs.args if len(inputs.args) != 1 else inputs.args[0])
    base = _run(model, raw)
    scale = max(float(t.abs().max()) for t in base if t.numel()) or 1.0
    lines = []
    for f in result.findings:
        if f.code != "BL001":
            lines.append(f"{family}:{name} {f.code} {f.module}: not checked here")
            continue
        module = model.get_submodule(f.module)
        param = getattr(module, f.parameter)
        saved = param.detach().clone()
        verdict = f.data.get("verdict")
        with torch.no_grad():
            if verdict == "redundant-slice":
                lo, hi = f.data["slice"]
                param[lo:hi] += torch.randn(hi - lo)
            elif verdict == "partial":
                param += 1.0
            else:
                param += torch.randn_like(param)
        moved = _run(model, raw)
        with torch.no_grad():
            param.copy_(saved)
        diff = max((float((a - b).abs().max()) for a, b in zip(base, moved)
                    if a.shape == b.shape and a.numel()), default=float("nan"))
        verdict_text = "TRUE" if diff <= 1e-3 * scale else "FALSE?"
        lines.append(f"{family}:{name} BL001 {f.module}.{f.parameter} ({verdict}): output moved "
                     f"{diff:.2e} (output scale {scale:.2e}) -> {verdict_text}")
    return lines


def main(argv: list[str]) -> int:
    for item in argv:
        family, name = item.split(":", 1)
        for line in check(family, name):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
