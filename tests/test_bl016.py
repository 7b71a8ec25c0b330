"""BL016 measured: each case's init call under test is a constant fill, built twice with two
values (1.0 and 2.0); when every parameter and the forward's output come out the same both
times, the call had no lasting effect (the truth). The rule must report exactly those calls,
with their kind, on real tensors and on meta; the documented exceptions (a checkpoint loaded
over the init; the same call site writing twice) are checked to be quiet."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch

HEAD = """
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm


class Net(nn.Module):
    def __init__(self, how, c=1.0, s=0.02):
        super().__init__()
        self.s = s
        self.fc = nn.Linear(16, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        if how == "then-apply":
            nn.init.constant_(self.fc.weight, c)
            self.apply(self._init)
        elif how == "apply-then":
            self.apply(self._init)
            nn.init.constant_(self.fc.weight, c)
        elif how == "then-load":
            nn.init.constant_(self.fc.weight, c)
            self.fc.load_state_dict({"weight": torch.ones(16, 16) * 0.1,
                                     "bias": torch.zeros(16)})
        elif how == "then-row":
            nn.init.constant_(self.fc.weight, c)
            with torch.no_grad():
                self.fc.weight[0].zero_()
        elif how == "weight-norm-then":
            self.conv = weight_norm(self.conv)
            nn.init.constant_(self.conv.weight, c)
        elif how == "then-weight-norm":
            nn.init.constant_(self.conv.weight, c)
            self.conv = weight_norm(self.conv)
        elif how == "old-weight-norm-then":
            self.conv = torch.nn.utils.weight_norm(self.conv)
            nn.init.constant_(self.conv.weight, c)
        elif how == "data-fill-then-apply":
            self.fc.weight.data.fill_(c)
            self.apply(self._init)

    def _init(self, m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self.s)

    def forward(self, x):
        return self.conv(self.fc(x).transpose(1, 2)).transpose(1, 2)
"""

# how -> (the kind the rule must report, or None; the call the case varies: "c" the constant
# fill, "s" the std of the init ``apply`` runs; the call a finding must name)
CASES = {
    "then-apply": ("overwritten", "c", "nn.init.constant_"),
    "apply-then": ("overwritten", "s", "nn.init.normal_"),
    "then-row": (None, "c", ""),
    "data-fill-then-apply": ("overwritten", "c", "Tensor.fill_"),
    "weight-norm-then": ("computed", "c", "nn.init.constant_"),
    "then-weight-norm": (None, "c", ""),
    "old-weight-norm-then": ("computed", "c", "nn.init.constant_"),
}
QUIET_BY_DESIGN = {"then-load": (None, "c", "")}  # lost, but loading over an init is the way


def _no_effect(namespace: dict, how: str, varied: str) -> bool:
    """Built twice with the varied call's value changed (same seed): same parameters and the
    same output."""
    runs = []
    for value in ((1.0, 2.0) if varied == "c" else (0.02, 0.05)):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = namespace["Net"](how, **{varied: value})
        torch.manual_seed(1)
        out = model(torch.randn(2, 5, 16))
        runs.append(({n: p.detach().clone() for n, p in model.named_parameters()}, out))
    (p1, o1), (p2, o2) = runs
    return all(torch.equal(p1[n], p2[n]) for n in p1) and torch.equal(o1, o2)


@pytest.mark.parametrize("device", [None, "meta"])
@pytest.mark.parametrize("how", list(CASES) + list(QUIET_BY_DESIGN))
def test_bl016_reports_exactly_the_inits_that_change_nothing(how, device, write_target):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    namespace: dict = {}
    exec(compile(HEAD, "<bl016>", "exec"), namespace)
    expected, varied, call = {**CASES, **QUIET_BY_DESIGN}[how]
    lost = _no_effect(namespace, how, varied)
    assert lost == (expected is not None or how in QUIET_BY_DESIGN)
    target = write_target(HEAD + textwrap.dedent(f"""
        def build():
            return Net({how!r}), torch.randn(2, 5, 16)
        """))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lint(TargetConfig.of(target=target, device=device), Settings(select=("BL016",)))
    assert result.error is None, result.error
    kinds = [f.data["kind"] for f in result.findings if f.code == "BL016"]
    assert kinds == ([expected] if expected else []), [f.message for f in result.findings]
    for f in result.findings:
        assert f.location is not None and f.location.line > 0
        assert f.data["call"] == call
        if expected == "computed":
            assert "conv" in f.data["computed"] and len(f.data["parameters"]) == 2
        else:
            assert f.data["parameters"] == ["fc.weight"]


def test_a_model_built_elsewhere_is_not_judged_and_recording_judges_it():
    import biaslint

    namespace: dict = {}
    exec(compile(HEAD, "<bl016>", "exec"), namespace)
    report = biaslint.check(namespace["Net"]("then-apply"), torch.randn(2, 5, 16),
                            select=("BL016",))
    assert report.findings == []
    (scope,) = [s for s in report.result.rules if s.code == "BL016"]
    assert scope.unjudged and all("not recorded" in why for _, why in scope.unjudged)

    with biaslint.recording():
        model = namespace["Net"]("then-apply")
    report = biaslint.check(model, torch.randn(2, 5, 16), select=("BL016",))
    assert [f.data["call"] for f in report.findings] == ["nn.init.constant_"]
