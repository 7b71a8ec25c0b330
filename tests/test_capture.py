"""Capture: whole-model tracing, per-submodule fallback, coverage, shapes, no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from biaslint.capture import capture
from biaslint.load import ExampleInputs, LoadedTarget


class Dynamic(nn.Module):
    """Data-dependent control flow: symbolic_trace cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.other = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.inner(x)
        return self.other(x)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.dyn = Dynamic()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.dyn(self.stem(x)).relu())


def _loaded(model: nn.Module, inputs=None) -> LoadedTarget:
    return LoadedTarget("test", model, inputs, {}, {})


def test_untraceable_submodule_is_opaque_and_the_rest_is_traced():
    cap = capture(_loaded(Outer()))
    assert cap.opaque == ["dyn"]
    names = {p.qualname for p in cap.parts}
    assert names == {"", "dyn.inner"}  # root traced with dyn as a leaf; dyn's children alone
    # every layer but dyn.other (only reachable through the dynamic forward) sits in a graph
    assert cap.coverage.total == 5
    assert set(cap.coverage.untraced) == {"dyn.other"}
    root = next(p for p in cap.parts if p.qualname == "")
    called = {n.target for n in root.gm.graph.nodes if n.op == "call_module"}
    assert {"stem", "dyn", "head"} <= called


def test_shapes_are_propagated_into_every_part_without_touching_the_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), Outer_like())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cap = capture(_loaded(model, ExampleInputs(args=(torch.randn(2, 3, 10, 10),))))
    assert all(p.shapes_known for p in cap.parts), (
        cap.notes, [(p.qualname, p.shapes_known) for p in cap.parts])
    for part in cap.parts:
        for node in part.gm.graph.nodes:
            if node.op == "call_module" and node.target == "0":
                assert node.meta["biaslint_shape"].shape == (2, 8, 8, 8)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched
    assert model.training


class _Caching(nn.Module):
    """A forward that caches on the module (like RAFT's correlation pyramid or a KV cache) and
    registers a buffer lazily."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.cache = None

    def forward(self, x):
        self.cache = [x * 2, x.mean()]
        self.seen_shape = x.shape
        if not hasattr(self, "lazy"):
            self.register_buffer("lazy", torch.zeros(1))
        return self.lin(x)


class _Dynamic(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # value-dependent: the whole model does not trace


@pytest.mark.parametrize("dynamic", [False, True])
def test_forward_side_effects_on_the_model_are_undone(dynamic):
    import copy

    import torch.fx as fx

    inner = _Caching()
    model = nn.Sequential(inner, _Dynamic()) if dynamic else nn.Sequential(inner)
    capture(_loaded(model, ExampleInputs(args=(torch.randn(2, 8),))))
    assert inner.cache is None and not hasattr(inner, "seen_shape") and "lazy" not in inner._buffers
    leftovers = [v for m in model.modules() for v in vars(m).values() if isinstance(v, fx.Proxy)]
    assert not leftovers
    copy.deepcopy(model)(torch.randn(2, 8))  # still a working, copyable model


class Outer_like(nn.Module):  # noqa: N801 - a second dynamic model to force the hook path
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        x = x.mean((2, 3))
        if x.sum() > 0:
            x = x * 2
        return self.lin(x)


def test_failing_forward_is_a_note_not_an_error():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            return self.l(x)

    cap = capture(_loaded(Bad(), ExampleInputs(args=(torch.randn(2, 5),))))
    assert any("forward on the example inputs failed" in n for n in cap.notes)
    assert cap.coverage.ratio == 1.0


def test_resnet_coverage_is_complete():
    import torchvision

    cap = capture(_loaded(torchvision.models.resnet18(),
                          ExampleInputs(args=(torch.randn(2, 3, 64, 64),))))
    assert cap.coverage.ratio == 1.0 and cap.opaque == []
