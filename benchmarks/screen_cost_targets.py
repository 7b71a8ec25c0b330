"""Two transformers tiny configs for ``benchmarks/screen_cost.py`` (random init, offline)."""

from __future__ import annotations

from typing import Any

import torch


def _ids() -> dict[str, Any]:
    return {"input_ids": torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))}


def bert_tiny() -> tuple[Any, Any]:
    import transformers

    config = transformers.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128)
    return transformers.BertModel(config), _ids()


def gpt2_tiny() -> tuple[Any, Any]:
    import transformers

    config = transformers.GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(config), _ids()
