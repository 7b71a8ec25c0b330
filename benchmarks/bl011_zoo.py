"""BL011 over the zoo: every model given the optimizer most people start from,
``AdamW(model.parameters(), weight_decay=0.01)``, and then the two-group split BL011's fix
writes. The parameters each finding names are compared with the ones this script picks by
itself from the optimizer and the module tree (a parameter of one dimension, or of a
normalization layer, or an embedding table, in a group with decay); the split must give none.

    python benchmarks/bl011_zoo.py [--family tv-classification,timm,hf] [--out FILE]

Prints per family: models, findings (one per decayed group), parameters named, and any model
where the finding's parameters differ from this script's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from zoo_models import FAMILIES, builder_of, import_library  # noqa: E402


def _kept_out(model: Any) -> set[str]:
    """What the no-decay convention keeps out: 1-d parameters, norm layers, embeddings."""
    import torch.nn as nn

    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    rms = getattr(nn, "RMSNorm", ())
    out = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = f"{module_name}.{pname}" if module_name else pname
            if p.dim() < 2 or isinstance(module, norms) or (rms and isinstance(module, rms)) \
                    or isinstance(module, (nn.Embedding, nn.EmbeddingBag)) \
                    or "norm" in type(module).__name__.lower():
                out.add(name)
    return out


def one(family: str, name: str) -> dict[str, Any]:
    import torch

    import biaslint

    import_library(family)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inputs = builder_of(family, name)()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = _kept_out(model) & trainable
    row: dict[str, Any] = {"family": family, "model": name, "expected": len(expected)}
    plain = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                              weight_decay=0.01)
    start = time.perf_counter()
    report = biaslint.check(model, inputs, optimizer=plain, select=("BL011",), name=name)
    row["seconds"] = round(time.perf_counter() - start, 2)
    named = {p for f in report.findings for p in f.data["parameters"]}
    row["findings"] = len(report.findings)
    row["named"] = len(named)
    row["missed"] = sorted(expected - named)[:5]
    row["extra"] = sorted(named - expected)[:5]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in expected]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and n in expected]
    split = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                               {"params": rest, "weight_decay": 0.0}])
    after = biaslint.check(model, inputs, optimizer=split, select=("BL011",), name=name)
    row["after_split"] = len(after.findings)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default=",".join(FAMILIES))
    parser.add_argument("--out", default=os.path.join(HERE, "out", "bl011_zoo.jsonl"))
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    totals: dict[str, list[int]] = {}
    with open(args.out, "w", encoding="utf-8") as handle:
        for family in args.family.split(","):
            for name in FAMILIES[family].names():
                try:
                    row = one(family, name)
                except Exception as exc:  # noqa: BLE001  a model that does not build is a row
                    row = {"family": family, "model": name, "error": f"{type(exc).__name__}: "
                                                                       f"{exc}"[:200]}
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                t = totals.setdefault(family, [0, 0, 0, 0, 0, 0])
                if "error" in row:
                    t[5] += 1
                    continue
                t[0] += 1
                t[1] += row["findings"]
                t[2] += row["named"]
                t[3] += bool(row["missed"] or row["extra"])
                t[4] += row["after_split"]
                if row["missed"] or row["extra"]:
                    print(f"DIFF {family}:{name} missed={row['missed']} extra={row['extra']}",
                          flush=True)
    print("| family | models | findings | parameters named | models differing | "
          "findings after the split | errors |")
    print("|---|---|---|---|---|---|---|")
    for family, t in totals.items():
        print(f"| {family} | {t[0]} | {t[1]} | {t[2]} | {t[3]} | {t[4]} | {t[5]} |")


if __name__ == "__main__":
    main()
