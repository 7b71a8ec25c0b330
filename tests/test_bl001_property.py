"""Property test: BL001's verdict on random small graphs equals the perturbation oracle's.

Hypothesis composes programs from the ops BL001 reasons about (convs with and without zero
padding, linears, every norm kind, pooling, interpolation, residual adds, concatenation,
reshapes and permutes, nonlinearities, gates, dropout, softmax, einsum channel mixing and einsum
attention whose keys come from another value, extra outputs). For every biased
layer: BL001 warns iff perturbing the bias leaves every output unchanged, and (with
``report-partial``) notes it at info level iff only a constant perturbation leaves them unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biaslint.engine import lint_loaded
from biaslint.findings import Severity
from biaslint.load import ExampleInputs, LoadedTarget
from biaslint.settings import Settings, TargetConfig

from oracle import Oracle, biased_layers

# >= 500 generated graphs in CI (the acceptance bar); override locally for speed.
EXAMPLES = int(os.environ.get("BL001_PROPERTY_EXAMPLES", "500"))
BATCH = 4
STATS: dict[str, int] = {}  # verdicts seen, for the coverage check below


@dataclass(frozen=True)
class Step:
    op: str
    inputs: tuple[int, ...]
    module: int = -1  # index into Program.mods, or -1
    arg: object = None


class Program(nn.Module):
    """Runs a list of steps over a growing list of values; fx unrolls the loop when tracing."""

    def __init__(self, steps: list[Step], mods: list[nn.Module], outputs: tuple[int, ...]):
        super().__init__()
        self.steps = steps
        self.mods = nn.ModuleList(mods)
        self.outputs = outputs

    def forward(self, x):
        vals = [x]
        for step in self.steps:
            a = vals[step.inputs[0]]
            mod = self.mods[step.module] if step.module >= 0 else None
            op = step.op
            if op in ("module", "conv", "linear2d"):
                v = mod(a)
            elif op == "linear_cl":  # channels-last linear, back to channels-first
                v = mod(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif op == "ln_cl":
                v = mod(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif op == "relu":
                v = F.relu(a)
            elif op == "tanh":
                v = torch.tanh(a)
            elif op == "maxpool":
                v = F.max_pool2d(a, 2)
            elif op == "adaptive":
                v = F.adaptive_avg_pool2d(a, 2)
            elif op == "interp":
                v = F.interpolate(a, scale_factor=2.0, mode=step.arg)
            elif op == "add":
                v = a + vals[step.inputs[1]]
            elif op == "cat":
                v = torch.cat([a, vals[step.inputs[1]]], dim=1)
            elif op == "scale":
                v = a * 0.5
            elif op == "gate":
                v = a * torch.sigmoid(vals[step.inputs[1]].mean((2, 3), keepdim=True))
            elif op == "chscale":
                v = a * mod.weight.view(1, -1, 1, 1)
            elif op == "softmax_w":
                v = F.softmax(a, dim=-1)
            elif op == "reshape":
                n, c, h, w = a.shape
                v = a.reshape(n, c, h * w).reshape(n, c, h, w)
            elif op == "flatten":
                v = a.flatten(1)
            elif op == "einsum_mix":  # channels mixed by a matrix, written as einsum
                v = torch.einsum("nchw,dc->ndhw", a, mod.weight)
            elif op == "einsum_attn":  # attention over the last axis, keys from another value
                k = vals[step.inputs[1]]
                attn = torch.einsum("nchw,nchv->nhwv", a, k).softmax(-1)
                v = torch.einsum("nhwv,nchv->nchw", attn, a)
            else:
                raise AssertionError(op)
            vals.append(v)
        return tuple(vals[i] for i in self.outputs)


class _Mix(nn.Module):
    def __init__(self, channels: int, out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out, channels))


class _Scale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)


@st.composite
def programs(draw):
    c0, h0 = draw(st.sampled_from([2, 3])), draw(st.sampled_from([4, 6]))
    shapes: list[tuple[int, ...]] = [(BATCH, c0, h0, h0)]
    steps: list[Step] = []
    mods: list[nn.Module] = []

    def add_mod(m: nn.Module) -> int:
        mods.append(m)
        return len(mods) - 1

    biased = st.sampled_from([True, True, False])
    dropout_p = st.sampled_from([0.0, 0.5])
    for _ in range(draw(st.integers(3, 8))):
        # Prefer recent values so chains form; sometimes branch from an earlier one.
        i = draw(st.sampled_from([len(shapes) - 1] * 3 + list(range(len(shapes)))))
        shape = shapes[i]
        if len(shape) == 2:
            f = shape[1]
            op = draw(st.sampled_from(["linear", "linear", "bn1d", "bn1d", "ln", "relu",
                                       "dropout", "add"]))
            if op == "linear":
                out = draw(st.sampled_from([3, 5]))
                steps.append(Step("linear2d", (i,), add_mod(nn.Linear(f, out, bias=draw(biased)))))
                shapes.append((BATCH, out))
                if draw(st.booleans()):  # often normalize right away: redundant or partial
                    norm = draw(st.sampled_from([nn.BatchNorm1d, nn.LayerNorm]))
                    steps.append(Step("module", (len(shapes) - 1,), add_mod(norm(out))))
                    shapes.append((BATCH, out))
            elif op == "bn1d":
                steps.append(Step("module", (i,), add_mod(nn.BatchNorm1d(f))))
                shapes.append(shape)
            elif op == "ln" and f >= 2:
                steps.append(Step("module", (i,), add_mod(nn.LayerNorm(f))))
                shapes.append(shape)
            elif op == "dropout":
                steps.append(Step("module", (i,), add_mod(nn.Dropout(draw(dropout_p)))))
                shapes.append(shape)
            elif op == "add":
                same = [j for j, s in enumerate(shapes) if s == shape and j != i]
                if same:
                    steps.append(Step("add", (i, draw(st.sampled_from(same)))))
                    shapes.append(shape)
            else:
                steps.append(Step("relu", (i,)))
                shapes.append(shape)
            continue
        _, c, h, w = shape
        op = draw(st.sampled_from([
            "conv", "conv", "conv", "conv", "bn", "bn", "bn", "inorm", "gn", "gn", "ln_cl",
            "ln_cl", "ln_w", "relu", "tanh", "maxpool", "avgpool_pad", "adaptive", "interp",
            "add", "add", "cat", "scale", "gate", "chscale", "dropout", "softmax_w", "reshape",
            "linear_cl", "linear_cl", "flatten", "einsum_mix", "einsum_attn",
        ]))
        new = shape
        if op == "conv":
            k = draw(st.sampled_from([1, 3]))
            pad = draw(st.sampled_from([0, 1])) if k == 3 else draw(st.sampled_from([0, 0, 1]))
            if h + 2 * pad - k + 1 < 2:
                continue
            out = draw(st.sampled_from([2, 3, 4]))
            mode = draw(st.sampled_from(["zeros", "zeros", "replicate"]))
            conv = nn.Conv2d(c, out, k, padding=pad, padding_mode=mode, bias=draw(biased))
            steps.append(Step("conv", (i,), add_mod(conv)))
            side = h + 2 * pad - k + 1
            new = (BATCH, out, side, side)
        elif op == "bn":
            steps.append(Step("module", (i,), add_mod(nn.BatchNorm2d(c))))
        elif op == "inorm" and h * w > 1:
            steps.append(Step("module", (i,), add_mod(nn.InstanceNorm2d(c))))
        elif op == "gn":
            groups = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
            steps.append(Step("module", (i,), add_mod(nn.GroupNorm(groups, c))))
        elif op == "ln_cl" and c >= 2:
            steps.append(Step("ln_cl", (i,), add_mod(nn.LayerNorm(c))))
        elif op == "ln_w" and w >= 2:
            steps.append(Step("module", (i,), add_mod(nn.LayerNorm(w))))
        elif op in ("relu", "tanh", "scale", "reshape"):
            steps.append(Step(op, (i,)))
        elif op == "softmax_w" and w >= 2:
            steps.append(Step(op, (i,)))
        elif op == "maxpool" and h >= 4:
            steps.append(Step(op, (i,)))
            new = (BATCH, c, h // 2, w // 2)
        elif op == "avgpool_pad":
            steps.append(Step("module", (i,), add_mod(nn.AvgPool2d(3, 1, padding=1))))
        elif op == "adaptive" and h >= 2:
            steps.append(Step(op, (i,)))
            new = (BATCH, c, 2, 2)
        elif op == "interp" and h <= 4:
            steps.append(Step(op, (i,), arg=draw(st.sampled_from(["nearest", "bilinear"]))))
            new = (BATCH, c, 2 * h, 2 * w)
        elif op == "add":
            same = [j for j, s in enumerate(shapes) if s == shape]
            steps.append(Step(op, (i, draw(st.sampled_from(same)))))
        elif op == "cat":
            fits = [j for j, s in enumerate(shapes) if len(s) == 4 and s[2:] == shape[2:]]
            j = draw(st.sampled_from(fits))
            steps.append(Step(op, (i, j)))
            new = (BATCH, c + shapes[j][1], h, w)
        elif op == "gate":
            fits = [j for j, s in enumerate(shapes) if len(s) == 4 and s[1] == c]
            steps.append(Step(op, (i, draw(st.sampled_from(fits)))))
        elif op == "chscale":
            steps.append(Step(op, (i,), add_mod(_Scale(c))))
        elif op == "dropout":
            steps.append(Step("module", (i,), add_mod(nn.Dropout(draw(dropout_p)))))
        elif op == "linear_cl":
            out = draw(st.sampled_from([2, 3, 4]))
            steps.append(Step(op, (i,), add_mod(nn.Linear(c, out, bias=draw(biased)))))
            new = (BATCH, out, h, w)
        elif op == "einsum_mix":
            out = draw(st.sampled_from([2, 3]))
            steps.append(Step(op, (i,), add_mod(_Mix(c, out))))
            new = (BATCH, out, h, w)
        elif op == "einsum_attn" and w >= 2:
            fits = [j for j, s in enumerate(shapes) if s == shape]
            steps.append(Step(op, (i, draw(st.sampled_from(fits)))))
        elif op == "flatten" and c * h * w <= 48:
            steps.append(Step(op, (i,)))
            new = (BATCH, c * h * w)
        else:
            continue
        shapes.append(new)
        if op in ("conv", "linear_cl") and draw(st.booleans()):
            # Often normalize a fresh layer output right away: redundant or partial biases.
            _, c2, h2, w2 = new
            kind = draw(st.sampled_from(["bn", "inorm", "gn1", "gnc", "ln_cl", "ln_w"]))
            j = len(shapes) - 1
            if kind == "bn":
                steps.append(Step("module", (j,), add_mod(nn.BatchNorm2d(c2))))
            elif kind == "inorm" and h2 * w2 > 1:
                steps.append(Step("module", (j,), add_mod(nn.InstanceNorm2d(c2))))
            elif kind in ("gn1", "gnc"):
                groups = 1 if kind == "gn1" else c2
                steps.append(Step("module", (j,), add_mod(nn.GroupNorm(groups, c2))))
            elif kind == "ln_cl" and c2 >= 2:
                steps.append(Step("ln_cl", (j,), add_mod(nn.LayerNorm(c2))))
            elif kind == "ln_w" and w2 >= 2:
                steps.append(Step("module", (j,), add_mod(nn.LayerNorm(w2))))
            else:
                continue
            shapes.append(new)
    if not steps:
        steps.append(Step("conv", (0,), add_mod(nn.Conv2d(c0, 2, 1))))
        shapes.append((BATCH, 2, h0, h0))
    last = len(shapes) - 1
    extras = draw(st.lists(st.integers(1, last), max_size=2))
    outputs = tuple(sorted({last, *extras}))
    seed = draw(st.integers(0, 2**16))
    return steps, mods, outputs, shapes[0], seed


def lint_program(model: nn.Module, x: torch.Tensor):
    loaded = LoadedTarget(name="program", model=model, inputs=ExampleInputs(args=(x,)),
                          module_sites={}, param_inits={})
    settings = Settings(select=("BL001",), debug=True,
                        rule_options={"BL001": {"report-partial": True}})
    result = lint_loaded(loaded, TargetConfig("program"), settings)
    assert not [n for n in result.notes if "crashed" in n], result.notes
    return {f.module: f for f in result.findings}


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_verdict_matches_oracle_on_random_graphs(program):
    steps, mods, outputs, in_shape, seed = program
    torch.manual_seed(seed)
    for m in mods:  # fresh default init under the drawn seed
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model = Program(steps, mods, outputs)
    x = torch.randn(*in_shape)
    findings = lint_program(model, x)
    oracle = Oracle(model, (x,))
    for name in biased_layers(model):
        if oracle.dead(name):
            continue  # output never used: nothing for a bias rule to say
        truth = oracle.verdict(name)
        finding = findings.get(name)
        if finding is not None and finding.data.get("verdict") == "redundant-slice":
            start, stop = finding.data["slice"]  # one third of the bias: that slice must be dead
            assert oracle.verdict(name, index=slice(start, stop)) == "redundant", (name, finding)
            finding = None
        got = "live" if finding is None else (
            "redundant" if finding.severity is Severity.WARNING else "partial")
        STATS[truth] = STATS.get(truth, 0) + 1
        assert got == truth, (name, truth, finding, [(s.op, s.inputs) for s in steps], outputs)


@pytest.mark.slow
def test_generated_graphs_cover_every_verdict():
    """The generator is not vacuous: it produced redundant, partial and live biases."""
    if not STATS or EXAMPLES < 500:
        pytest.skip("needs the full property run (>= 500 examples) in the same session")
    print("BL001 property verdicts:", STATS)
    assert all(STATS.get(k, 0) >= 10 for k in ("redundant", "partial", "live")), STATS
