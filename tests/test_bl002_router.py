"""BL002 on mixture-of-experts routers: an all-zero router gives every token the same score for
every expert, so top-k routes every token to the same experts and the others get no gradient.

Each claim is measured: the experts each token picks (the top-k indices), and which experts'
weights get a gradient from one backward pass. Quiet cases are measured too: a random router,
a noisy-gating router (token-dependent noise breaks the ties) and a zero router with a random
per-expert bias (not claimed: biaslint only claims the exact all-equal case).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def lint_model(model: nn.Module, inputs, select: tuple[str, ...]) -> list:
    """Lint a model object already built (no build record: sites and init calls unknown)."""
    from biaslint.engine import lint_loaded
    from biaslint.load import ExampleInputs, LoadedTarget
    from biaslint.settings import Settings, TargetConfig

    given = ExampleInputs(kwargs=inputs) if isinstance(inputs, dict) else \
        ExampleInputs(args=(inputs,))
    loaded = LoadedTarget(name="model", model=model, inputs=given, module_sites={},
                          param_inits={})
    return list(lint_loaded(loaded, TargetConfig("model"), Settings(select=select)).findings)

EXPERTS, TOP_K, WIDTH, TOKENS = 8, 2, 16, 64


class MoE(nn.Module):
    """Softmax top-k gating over dense experts (every expert computed, outputs combined by the
    renormalized top-k weights), as small MoE layers are often written."""

    def __init__(self, gate: str = "zero", noisy: bool = False) -> None:
        super().__init__()
        self.gate = nn.Linear(WIDTH, EXPERTS, bias=gate == "zero_random_bias")
        self.noise = nn.Linear(WIDTH, EXPERTS) if noisy else None
        self.experts = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(EXPERTS))
        self.out = nn.Linear(WIDTH, 4)
        if gate.startswith("zero"):
            nn.init.zeros_(self.gate.weight)
        if gate == "zero_random_bias":
            nn.init.normal_(self.gate.bias)
        self.picked: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.gate(x)
        if self.noise is not None:
            scores = scores + torch.randn_like(scores) * nn.functional.softplus(self.noise(x))
        probs = torch.softmax(scores, dim=-1)
        weights, index = torch.topk(probs, TOP_K, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        self.picked = index
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # (T, E, W)
        mask = torch.zeros_like(probs).scatter(1, index, weights)  # (T, E)
        return self.out(torch.relu((outputs * mask.unsqueeze(-1)).sum(1)))


def measure(model: MoE) -> tuple[int, int]:
    """(distinct top-k sets over the tokens, experts whose weights got a gradient)."""
    torch.manual_seed(1)
    x = torch.randn(TOKENS, WIDTH)
    model.zero_grad()
    model(x).pow(2).mean().backward()
    assert model.picked is not None
    sets = {tuple(sorted(row.tolist())) for row in model.picked}
    trained = sum(1 for e in model.experts if e.weight.grad is not None
                  and bool(e.weight.grad.abs().sum() > 0))
    return len(sets), trained


def _routed(model: nn.Module) -> list:
    findings = lint_model(model, torch.randn(TOKENS, WIDTH), select=("BL002",))
    return [f for f in findings if f.data.get("verdict") == "routed-alike"]


def test_a_zero_router_sends_every_token_to_the_same_experts():
    torch.manual_seed(0)
    model = MoE("zero")
    sets, trained = measure(model)
    assert sets == 1 and trained == TOP_K  # the truth
    found = _routed(model)
    assert [f.module for f in found] == ["gate"]
    assert "same experts for every token" in found[0].message


@pytest.mark.parametrize("gate", ["random", "noisy", "zero_random_bias"])
def test_quiet_when_tokens_are_not_all_routed_alike_or_not_exactly(gate):
    torch.manual_seed(0)
    model = MoE("zero" if gate == "noisy" else gate, noisy=gate == "noisy")
    sets, trained = measure(model)
    if gate != "zero_random_bias":
        assert sets > 1 and trained > TOP_K  # the truth: tokens spread over the experts
    assert _routed(model) == []


def _deepseek(zero: bool):
    transformers = pytest.importorskip("transformers")
    config = transformers.DeepseekV3Config(
        vocab_size=256, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2,
        n_group=2, topk_group=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16,
        kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
        n_shared_experts=1)
    config._experts_implementation = "batched_mm"
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config)
    if zero:
        nn.init.zeros_(model.model.layers[1].mlp.gate.weight)
    return model


@pytest.mark.parametrize("zero", [True, False])
def test_deepseek_v3_router(zero):
    model = _deepseek(zero)
    ids = torch.randint(0, 256, (2, 16))
    model.zero_grad()
    model(input_ids=ids).logits.float().pow(2).mean().backward()
    experts = model.model.layers[1].mlp.experts
    grad = experts.gate_up_proj.grad
    trained = int((grad.flatten(1).abs().sum(1) > 0).sum())
    findings = [f for f in lint_model(model, {"input_ids": ids}, select=("BL002",))
                if f.data.get("verdict") == "routed-alike"]
    if zero:
        assert trained == 2  # the truth: 2 of 8 experts get any gradient
        assert [f.module for f in findings] == ["model.layers.1.mlp.gate"]
    else:
        assert trained > 2 and findings == []
