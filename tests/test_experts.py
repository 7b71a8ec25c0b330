"""Expert weights stored as 3-d parameters (a mixture of experts' ``(experts, in, out)`` used with
``torch.bmm`` or an einsum, ``(experts, out, in)`` with ``F.linear`` per expert, transformers'
Mixtral) are in BL002's and BL003's scope, built for real and on meta.

BL003's per-expert gain is checked against the scale each expert's product actually gives a
unit-scale input (measured), and the fan-in it reads from the graph against the axis the
forward contracts; BL002's dead experts get exactly zero gradient from a backward."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch

MOE = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Experts(nn.Module):
    def __init__(self, experts=4, dim=64, hidden=256, std=None, zero_up=False, how="bmm"):
        super().__init__()
        self.how = how
        # bmm and einsum: (experts, in, out); F.linear per expert: (experts, out, in)
        out_in = how == "linear"
        self.up = nn.Parameter(torch.empty(*((experts, hidden, dim) if out_in else
                                             (experts, dim, hidden))))
        self.down = nn.Parameter(torch.empty(*((experts, dim, hidden) if out_in else
                                               (experts, hidden, dim))))
        for w, fan_in in ((self.up, dim), (self.down, hidden)):
            nn.init.normal_(w, std=std if std is not None else (2 / fan_in) ** 0.5)
        if zero_up:
            nn.init.zeros_(self.up)

    def forward(self, x):  # x: (experts, tokens, dim)
        if self.how == "broadcast":  # one input for every expert: "td,edh->eth"
            h = torch.relu(torch.einsum("td,edh->eth", x[0], self.up))
            return torch.einsum("eth,ehd->etd", h, self.down)
        if self.how == "einsum":
            h = torch.relu(torch.einsum("etd,edh->eth", x, self.up))
            return torch.einsum("eth,ehd->etd", h, self.down)
        if self.how == "linear":
            return torch.stack([F.linear(torch.relu(F.linear(x[e], self.up[e])), self.down[e])
                                for e in range(self.up.shape[0])])
        return torch.bmm(torch.relu(torch.bmm(x, self.up)), self.down)


class Moe(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.router = nn.Linear(64, 4)
        self.experts = Experts(**kw)

    def forward(self, x):  # (tokens, dim)
        weights = torch.softmax(self.router(x), -1)
        per = self.experts(x.unsqueeze(0).expand(4, -1, -1))
        return (per * weights.t().unsqueeze(-1)).sum(0)


def build():
    return Moe(**KW), torch.randn(32, 64)
"""


def _lint(target: str, device: str | None, select: tuple[str, ...]):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    loaded = load_target(target, device=device)
    result = lint_loaded(loaded, TargetConfig.of(target, device=device), Settings(select=select))
    return result, loaded


def _target(write_target, **kw) -> str:
    return write_target(textwrap.dedent(MOE).replace("KW", repr(kw)))


def _scope(result, code: str):
    [scope] = [s for s in result.rules if s.code == code]
    return scope


# (keyword arguments, BL003 fires on both expert weights)
GAINS = {
    "bmm, std 4": (dict(std=4.0), True),
    "einsum, std 4": (dict(std=4.0, how="einsum"), True),
    "einsum of one input broadcast over the experts, std 4": (dict(std=4.0, how="broadcast"),
                                                              True),
    "F.linear per expert, (experts, out, in), std 4": (dict(std=4.0, how="linear"), True),
    "He init per expert": (dict(), False),
    "std 0.02, as LLM configs draw experts": (dict(std=0.02), False),
    "F.linear per expert, std 0.02": (dict(std=0.02, how="linear"), False),
}


@pytest.mark.parametrize("name", list(GAINS))
def test_bl003_judges_each_expert_by_the_fan_in_its_product_contracts(name, write_target):
    kw, fires = GAINS[name]
    target = _target(write_target, **kw)
    for seed in range(3):
        torch.manual_seed(seed)
        real, loaded = _lint(target, None, ("BL003",))
        meta, _ = _lint(target, "meta", ("BL003",))
        for result in (real, meta):
            assert _scope(result, "BL003").unjudged == ()
            found = {f.parameter: f for f in result.findings if f.module == "experts"}
            assert set(found) == ({"up", "down"} if fires else set()), [
                f.message for f in result.findings]
        experts = loaded.model.experts
        for pname, fan_in in (("up", 64), ("down", 256)):
            weight = getattr(experts, pname).detach()
            w0 = weight[0] if kw.get("how") != "linear" else weight[0].t()  # (in, out)
            assert w0.shape[0] == fan_in
            x = torch.randn(2048, fan_in, dtype=torch.float64)
            measured = float((x @ w0.double()).pow(2).mean().sqrt())  # x has rms 1
            if fires:
                finding = next(f for f in real.findings if f.parameter == pname)
                assert finding.data["fan_in"] == fan_in
                assert finding.data["gain"] == pytest.approx(measured, rel=0.1)
                assert measured > 10 * 5 / 3 or measured > 10 * math.sqrt(2)
            else:
                assert measured < 10 * math.sqrt(2)


@pytest.mark.parametrize("how", ["bmm", "broadcast"])
def test_bl002_a_zero_expert_weight_into_relu_is_dead_and_a_drawn_one_passes(write_target, how):
    target = _target(write_target, zero_up=True, how=how)
    torch.manual_seed(0)
    real, loaded = _lint(target, None, ("BL002",))
    meta, _ = _lint(target, "meta", ("BL002",))
    for result in (real, meta):
        [finding] = [f for f in result.findings if f.module == "experts"]
        assert finding.parameter == "up" and finding.data["verdict"] == "dead"
        assert finding.data["dead_units"] == 4 * 256
        assert _scope(result, "BL002").judged == 2 and _scope(result, "BL002").unjudged == ()
    model, (x,) = loaded.model, loaded.inputs.args
    model.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()
    assert float(model.experts.up.grad.abs().max()) == 0.0  # dead: no gradient ever
    drawn = _target(write_target, how=how)
    for device in (None, "meta"):
        result, _ = _lint(drawn, device, ("BL002",))
        assert result.findings == () and _scope(result, "BL002").judged == 2
        assert _scope(result, "BL002").unjudged == ()


MIXTRAL = """
import torch
from transformers import MixtralConfig, MixtralForCausalLM


def build():
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                        num_local_experts=4, num_experts_per_tok=2, initializer_range=STD,
                        max_position_embeddings=64)
    return MixtralForCausalLM(cfg), torch.randint(0, 128, (2, 16))
"""


@pytest.mark.parametrize("std", [0.02, 4.0])
def test_mixtral_experts_are_judged_per_expert(std, write_target):
    pytest.importorskip("transformers")
    target = write_target(textwrap.dedent(MIXTRAL).replace("STD", str(std)))
    result, loaded = _lint(target, None, ("BL002", "BL003"))
    experts = "model.layers.0.mlp.experts"
    for code in ("BL002", "BL003"):
        scope = _scope(result, code)
        assert experts not in {layer for layer, _ in scope.unjudged}
    found = {f.parameter: f for f in result.findings
             if f.module == experts and f.code == "BL003"}
    if std == 0.02:
        assert found == {}
        return
    # gate_up_proj is (experts, 2 * intermediate, hidden) and applied as F.linear (or a
    # grouped matmul of its transpose): each expert's fan-in is the hidden size
    module = loaded.model.get_submodule(experts)
    assert found["gate_up_proj"].data["fan_in"] == module.gate_up_proj.shape[2] == 64
    assert found["down_proj"].data["fan_in"] == module.down_proj.shape[2] == 96
    rms = float(module.gate_up_proj.detach().double().pow(2).mean().sqrt())
    assert found["gate_up_proj"].data["gain"] == pytest.approx(rms * 8, rel=0.02)  # sampled
