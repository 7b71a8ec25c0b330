"""BL011: weight decay on biases, norm parameters and embeddings.

The truth is measured by a computation of its own: every gradient set to zero, one optimizer
step, and the parameters that moved are exactly the ones the group's decay acts on (with a zero
gradient nothing else moves a parameter). The rule must name, per group, exactly the moved
parameters of the kinds not to decay."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import biaslint
import biaslint.init
from biaslint.errors import ConfigError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(40, 16), nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(),
                         nn.Conv1d(32, 8, 1), nn.BatchNorm1d(8), nn.Flatten(),
                         nn.Linear(8 * 5, 3))


def _inputs() -> torch.Tensor:
    return torch.randint(0, 40, (4, 5))


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def _net() -> nn.Module:
    model = _model()
    layers = list(model)
    # (4, 5, 32) -> (4, 32, 5) for the 1x1 conv over the sequence
    return nn.Sequential(*layers[:4], _Transpose(), *layers[4:])


def _moved_by_decay(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    """The parameters one step with every gradient zero changes: those the decay acts on."""
    copied = copy.deepcopy((model, optimizer))
    twin, twin_optimizer = copied
    with torch.no_grad():  # a parameter at 0 (a fresh bias) would not show its decay
        for p in twin.parameters():
            p.add_(1.0)
    before = {n: p.detach().clone() for n, p in twin.named_parameters()}
    for p in twin.parameters():
        p.grad = torch.zeros_like(p)
    twin_optimizer.step()
    return {n for n, p in twin.named_parameters() if not torch.equal(p.detach(), before[n])}


def _no_decay_names(model: nn.Module) -> set[str]:
    kinds = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if biaslint.init.no_decay_kind(module, name, p) is not None:
                kinds.add(f"{module_name}.{name}" if module_name else name)
    return kinds


def _claimed(report: biaslint.Report) -> list[set[str]]:
    return [set(f.data["parameters"]) for f in report.findings if f.code == "BL011"]


OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
    "adamw-foreach": lambda params: torch.optim.AdamW(params, lr=1e-3, foreach=True),
    "adam-l2": lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4),
    "sgd-decay": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9,
                                                weight_decay=5e-4),
    "sgd-plain": lambda params: torch.optim.SGD(params, lr=0.1),
    "adam-default": lambda params: torch.optim.Adam(params, lr=1e-3),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_one_group_optimizers_match_what_a_zero_gradient_step_moves(kind):
    model = _net()
    optimizer = OPTIMIZERS[kind](model.parameters())
    truth = _moved_by_decay(model, optimizer) & _no_decay_names(model)
    report = biaslint.check(model, _inputs(), optimizer=optimizer, select=["BL011"])
    assert _claimed(report) == ([truth] if truth else []), report
    assert report.ok == (not truth)
    if truth:  # the decayed weight matrices are not named
        assert "1.weight" in _moved_by_decay(model, optimizer)
        assert "1.weight" not in _claimed(report)[0]


def test_fused_adamw_where_the_build_supports_it():
    model = _net()
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        _moved_by_decay(model, optimizer)
    except (RuntimeError, TypeError) as exc:
        pytest.skip(f"fused AdamW not available here: {exc}")
    truth = _moved_by_decay(model, optimizer) & _no_decay_names(model)
    assert _claimed(biaslint.check(model, _inputs(), optimizer=optimizer,
                                   select=["BL011"])) == [truth]


def test_groups_already_split_are_quiet_and_a_leaky_split_names_only_the_leak():
    model = _net()
    optimizer = torch.optim.AdamW(biaslint.init.decay_groups(model, 0.05), lr=1e-3)
    assert _moved_by_decay(model, optimizer) & _no_decay_names(model) == set()
    assert _claimed(biaslint.check(model, _inputs(), optimizer=optimizer,
                                   select=["BL011"])) == []
    # The split many projects write by name ("bias", "LayerNorm.weight") misses BatchNorm's
    # weight and the embedding: those are the only ones named, in the decayed group only.
    named = [(n, p) for n, p in model.named_parameters()]
    decay = [p for n, p in named if not n.endswith("bias") and not n.startswith("2.")]
    keep = [p for n, p in named if n.endswith("bias") or n.startswith("2.")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": keep, "weight_decay": 0.0}], lr=1e-3)
    truth = _moved_by_decay(model, optimizer) & _no_decay_names(model)
    report = biaslint.check(model, _inputs(), optimizer=optimizer, select=["BL011"])
    assert truth == {"0.weight", "6.weight"}
    assert _claimed(report) == [truth]
    assert report.findings[0].data["param_group"] == 0


def test_embeddings_option_and_min_weight_decay():
    model = _net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    claimed = _claimed(biaslint.check(model, _inputs(), optimizer=optimizer, select=["BL011"],
                                      rule_options={"BL011": {"embeddings": False}}))
    assert claimed and "0.weight" not in claimed[0]
    assert _claimed(biaslint.check(model, _inputs(), optimizer=optimizer, select=["BL011"],
                                   rule_options={"BL011": {"min_weight_decay": 0.01}})) == []


def test_the_target_may_return_its_optimizer(lint_source):
    result = lint_source("""
        import torch
        import torch.nn as nn


        def build():
            model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
            return model, torch.randn(4, 8), torch.optim.AdamW(model.parameters(), lr=1e-3)
        """, select=("BL011",))
    [finding] = result.findings
    assert finding.module == "" and finding.module_type == "AdamW"
    assert set(finding.data["parameters"]) == {"0.bias", "1.weight", "1.bias", "2.bias"}
    assert "decay_groups(model, weight_decay=0.01), lr=0.001)" in finding.fix.code
    assert finding.location is not None and finding.location.line == 7


def test_without_an_optimizer_the_rule_applies_to_nothing(lint_source):
    result = lint_source("""
        import torch.nn as nn


        def build():
            return nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        """, select=("BL011",))
    assert result.findings == () and result.incomplete == ()


def test_an_optimizer_that_is_not_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="not a torch.optim optimizer"):
        biaslint.check(_net(), _inputs(), optimizer="adamw")


def test_the_fix_helper_builds_the_groups_the_rule_accepts():
    model = _net()
    groups = biaslint.init.decay_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    params = [list(g["params"]) for g in groups]  # type: ignore[call-overload]
    names = {n for n, p in model.named_parameters() if any(p is q for q in params[0])}
    assert names == {"1.weight", "5.weight", "8.weight"}
    assert len(params[0]) + len(params[1]) == len(list(model.parameters()))
