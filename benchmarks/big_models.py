"""Big-model benchmark: published configs of a 70B dense and a 671B mixture-of-experts model,
built, inited and linted with ``--device meta`` (no download, no parameter memory).

Targets (each ``benchmarks/big_models.py:NAME``):

- ``llama3_70b``: Llama-3-70B (hidden 8192, 80 layers, intermediate 28672, 64 heads, 8 KV
  heads, vocab 128256);
- ``deepseek_v3``: DeepSeek-V3 (671B total: 61 layers, the first 3 dense, 256 routed experts
  of width 2048 plus 1 shared, 8 per token, MLA attention with q/kv LoRA ranks 1536/512);
- the same with one realistic init mistake planted each: ``llama3_70b_initializer_range_1``
  (``initializer_range=1.0`` instead of 0.02), ``llama3_70b_o_proj_scaled`` (every attention
  output projection drawn with std 0.02 * 50, as a wrong residual scaling would),
  ``deepseek_v3_zero_router`` (every MoE router weight zeroed).

transformers picks its experts kernel from ``config._experts_implementation``; its default
(``grouped_mm``) has no float32 kernel, so the configs here choose ``batched_mm``, which runs on
meta tensors.

Usage::

    python benchmarks/big_models.py            # all targets, one process each: a table
    python benchmarks/big_models.py llama3_70b  # some
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOKENS = 16


def _tokens(vocab: int) -> dict[str, Any]:
    import torch

    return {"input_ids": torch.randint(0, vocab, (1, TOKENS))}


def _llama_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    settings = dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
                    num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                    max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False)
    settings.update(overrides)
    return LlamaConfig(**settings)


def _deepseek_config(**overrides: Any) -> Any:
    from transformers import DeepseekV3Config

    settings = dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                    moe_intermediate_size=2048, num_hidden_layers=61, first_k_dense_replace=3,
                    n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8,
                    topk_group=4, routed_scaling_factor=2.5, num_attention_heads=128,
                    num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                    qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                    max_position_embeddings=4096, tie_word_embeddings=False)
    settings.update(overrides)
    config = DeepseekV3Config(**settings)
    config._experts_implementation = "batched_mm"
    return config


def llama3_70b() -> Any:
    from transformers import LlamaForCausalLM

    config = _llama_config()
    return LlamaForCausalLM(config), _tokens(config.vocab_size)


def llama3_70b_initializer_range_1() -> Any:
    from transformers import LlamaForCausalLM

    config = _llama_config(initializer_range=1.0)
    return LlamaForCausalLM(config), _tokens(config.vocab_size)


def llama3_70b_o_proj_scaled() -> Any:
    import torch.nn as nn
    from transformers import LlamaForCausalLM

    config = _llama_config()
    model = LlamaForCausalLM(config)
    for layer in model.model.layers:
        nn.init.normal_(layer.self_attn.o_proj.weight, std=config.initializer_range * 50)
    return model, _tokens(config.vocab_size)


def deepseek_v3() -> Any:
    from transformers import DeepseekV3ForCausalLM

    config = _deepseek_config()
    return DeepseekV3ForCausalLM(config), _tokens(config.vocab_size)


def deepseek_v3_zero_router() -> Any:
    import torch.nn as nn
    from transformers import DeepseekV3ForCausalLM

    config = _deepseek_config()
    model = DeepseekV3ForCausalLM(config)
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            nn.init.zeros_(gate.weight)
    return model, _tokens(config.vocab_size)


TARGETS = ["llama3_70b", "deepseek_v3", "llama3_70b_initializer_range_1",
           "llama3_70b_o_proj_scaled", "deepseek_v3_zero_router"]


def measure(name: str) -> dict[str, Any]:
    """One ``biaslint --device meta`` process: wall time, its peak RSS, the report."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as scratch:
        report_path = os.path.join(scratch, "report.json")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name,
                               report_path], capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=1800)
        wall = time.perf_counter() - start
        try:
            with open(report_path, encoding="utf-8") as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            report = None
    child = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    row: dict[str, Any] = {"target": name, "exit": child.get("exit"), "wall_s": round(wall, 1),
                           "peak_rss_gb": child.get("peak_rss_gb")}
    if report is None:
        row["error"] = (done.stderr or done.stdout)[-800:]
        return row
    result = report["results"][0]
    coverage = result.get("coverage") or {}
    row.update({
        "coverage": coverage.get("ratio"), "layers": coverage.get("total"),
        "findings": [(f["code"], f["module"], f.get("parameter"), f["message"][:200])
                     for f in result["findings"]],
        "rules": {code: f"{r['judged']}/{r['total']}" for code, r in result.get("rules", {})
                  .items()},
        "notes": result.get("notes", [])[:4],
        "incomplete": result.get("incomplete", [])[:3],
    })
    return row


def _child(name: str, report_path: str) -> int:
    """Run biaslint in this process and print its exit code and peak RSS (JSON)."""
    from biaslint.cli import main as biaslint_main

    target = os.path.join(HERE, "big_models.py") + f":{name}"
    try:
        biaslint_main(["check", target, "--device", "meta", "--format", "json", "--output",
                       report_path, "-q"], standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"exit": code, "peak_rss_gb": round(peak, 2)}))
    return 0


def parameter_count(name: str) -> float:
    import torch

    with torch.device("meta"):
        model, _ = globals()[name]()
    return sum(p.numel() for p in model.parameters()) / 1e9


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2])
    names = argv or TARGETS
    rows = []
    for name in names:
        row = measure(name)
        row["params_b"] = round(parameter_count(name), 1)
        rows.append(row)
        print(json.dumps(row, default=str)[:3000], flush=True)
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    print("| target | parameters | wall | peak RSS | coverage | findings | exit |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        counts: dict[str, int] = {}
        for code, *_ in r.get("findings", []):
            counts[code] = counts.get(code, 0) + 1
        found = ", ".join(f"{c} x{n}" for c, n in sorted(counts.items())) or "none"
        print(f"| {r['target']} | {r['params_b']}B | {r['wall_s']} s | {r.get('peak_rss_gb')} GB | "
              f"{r.get('coverage')} | {found} | {r['exit']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
