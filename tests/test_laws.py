"""Init laws on the meta device: what biaslint infers from the recorded init calls must be what
the same calls draw on the CPU.

Each recipe runs twice: on the CPU, where the values are measured, and on the meta device under
recording, where only the law is known. The law's mean and spread must match the measured ones
within the sampling error, constants must be exact, and the measured values must lie in the law's
support. What the algebra cannot follow must come out unknown (and the rules then say "not
judged"), never as a wrong law.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from typing import Callable

import pytest
import torch
import torch.nn as nn

from biaslint.analysis.values import LawValue, MeasuredValue
from biaslint.load.sites import record_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timm_trunc(tensor: torch.Tensor, **kwargs: float) -> None:
    timm_layers = pytest.importorskip("timm.layers")
    timm_layers.trunc_normal_(tensor, **kwargs)


def _timm_trunc_tf(tensor: torch.Tensor, **kwargs: float) -> None:
    timm_layers = pytest.importorskip("timm.layers")
    timm_layers.trunc_normal_tf_(tensor, **kwargs)


def _slice_write(w: torch.Tensor) -> None:
    nn.init.normal_(w, 0, 0.5)
    with torch.no_grad():
        w[:, :3] = 0.0  # a strided view: 3 of every row's entries


def _forget_fill(w: torch.Tensor) -> None:
    nn.init.uniform_(w, -0.1, 0.1)
    with torch.no_grad():
        w[w.numel() // 4: w.numel() // 2] = 1.0


# (name, shape, recipe) -- the recipe writes the tensor in place, returns nothing.
RECIPES: list[tuple[str, tuple[int, ...], Callable[[torch.Tensor], None]]] = [
    ("normal_", (256, 128), lambda w: nn.init.normal_(w, 0.5, 2.0)),
    ("Tensor.normal_", (256, 128), lambda w: w.data.normal_()),
    ("uniform_", (256, 128), lambda w: nn.init.uniform_(w, -3.0, 1.0)),
    ("trunc_normal_ std .02", (256, 128), lambda w: nn.init.trunc_normal_(w, std=0.02)),
    ("trunc_normal_ tight", (256, 128), lambda w: nn.init.trunc_normal_(w, 0.0, 1.0, -1.0, 0.5)),
    ("timm trunc_normal_", (256, 128), lambda w: _timm_trunc(w, std=0.02)),
    ("timm trunc_normal_ tight", (256, 128), lambda w: _timm_trunc(w, std=1.0, a=-0.5, b=1.5)),
    ("timm trunc_normal_tf_", (256, 128), lambda w: _timm_trunc_tf(w, std=0.5)),
    ("xavier_uniform_", (256, 128), lambda w: nn.init.xavier_uniform_(w)),
    ("xavier_normal_ gain", (256, 128), lambda w: nn.init.xavier_normal_(w, gain=3.0)),
    ("kaiming_uniform_ a=sqrt5", (256, 128),
     lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5))),
    ("kaiming_normal_ fan_out", (64, 32, 3, 3),
     lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")),
    ("orthogonal_ wide", (64, 300), lambda w: nn.init.orthogonal_(w, gain=2.0)),
    ("orthogonal_ tall", (300, 64), lambda w: nn.init.orthogonal_(w)),
    ("eye_", (40, 60), lambda w: nn.init.eye_(w)),
    ("dirac_", (16, 16, 3, 3), lambda w: nn.init.dirac_(w)),
    ("constant_", (64, 64), lambda w: nn.init.constant_(w, 0.25)),
    ("zeros_", (64, 64), lambda w: nn.init.zeros_(w)),
    ("ones_", (64, 64), lambda w: nn.init.ones_(w)),
    ("fill_", (64, 64), lambda w: w.data.fill_(-1.5)),
    ("normal_ mul_ add_", (256, 128), lambda w: w.data.normal_().mul_(0.1).add_(1.0)),
    ("uniform_ div_ sub_", (256, 128), lambda w: w.data.uniform_().div_(4.0).sub_(2.0)),
    ("slice written through a strided view", (256, 16), _slice_write),
    ("forget-gate quarter", (4 * 256,), _forget_fill),
    ("copy_ of a literal", (4,), lambda w: w.data.copy_(torch.tensor([2.3, -1.2, 0.0, 5.0]))),
    ("copy_ of log priors", (3,),
     lambda w: w.data.copy_(torch.log(torch.tensor([0.7, 0.2, 0.1])))),
    ("data = randn * 0.02", (256, 128), lambda w: setattr(w, "data", torch.randn(256, 128) * .02)),
    ("data = 0.02 * randn + 1", (256, 128),
     lambda w: setattr(w, "data", 0.02 * torch.randn(256, 128) + 1)),
    ("data = cat of two draws' slices", (512, 16),
     lambda w: setattr(w, "data", torch.cat([torch.zeros(256, 16), torch.zeros(256, 16) + 3]))),
    ("data = arange", (100,), lambda w: setattr(w, "data", torch.arange(100.0) / 10)),
]


def _apply(recipe: Callable[[torch.Tensor], None], shape: tuple[int, ...],
           device: str) -> tuple[nn.Parameter, dict]:
    with record_build(laws=device == "meta") as record, torch.device(device):
        torch.manual_seed(0)
        holder = nn.Module()
        holder.w = nn.Parameter(torch.empty(shape))
        recipe(holder.w)
    return holder.w, record


@pytest.mark.parametrize(("name", "shape", "recipe"), RECIPES, ids=[r[0] for r in RECIPES])
def test_the_law_on_meta_matches_the_values_on_cpu(name, shape, recipe):
    real, _ = _apply(recipe, shape, "cpu")
    meta, record = _apply(recipe, shape, "meta")
    assert meta.device.type == "meta"
    measured = MeasuredValue(real)
    law = LawValue(record.laws.pieces(meta), tuple(meta.shape))
    assert law.known, law.why
    if measured.constant() is not None:
        assert law.constant() == pytest.approx(measured.constant(), abs=1e-6)
        return
    assert law.constant() is None
    mean, std, low, high = law.moments()
    m_mean, m_std, m_low, m_high = measured.moments()
    n = real.numel()
    assert abs(mean - m_mean) <= 5 * m_std / math.sqrt(n) + 1e-6 * max(1.0, abs(m_mean)), \
        (mean, m_mean)
    assert std == pytest.approx(m_std, rel=0.03), (std, m_std)
    assert low <= m_low + 1e-6 and m_high <= high + 1e-6, ((low, high), (m_low, m_high))
    exact = law.exact()
    if exact is not None:  # known entry by entry: the very values
        assert torch.allclose(exact, real.detach().double(), atol=1e-6)
    # Rules ask the same questions of both: they must get the same answers.
    for dim in range(min(2, real.dim())):
        assert law.rows(dim) == measured.rows(dim), dim
    assert law.count_at_most(0.0) == pytest.approx(measured.count_at_most(0.0),
                                                   abs=5 * math.sqrt(n) + 1)


DEFAULT_MODULES = [
    ("Linear", lambda: nn.Linear(96, 48)),
    ("Conv2d", lambda: nn.Conv2d(16, 32, 3)),
    ("ConvTranspose2d", lambda: nn.ConvTranspose2d(16, 8, 4, stride=2)),
    ("Embedding padding_idx", lambda: nn.Embedding(500, 64, padding_idx=0)),
    ("LSTM", lambda: nn.LSTM(32, 64, num_layers=2, bidirectional=True)),
    ("GRU", lambda: nn.GRU(16, 32)),
    ("MultiheadAttention", lambda: nn.MultiheadAttention(64, 4)),
    ("LayerNorm", lambda: nn.LayerNorm(64)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(32)),
    ("Bilinear", lambda: nn.Bilinear(16, 24, 8)),
    ("deepcopy of a Linear", lambda: copy.deepcopy(nn.Linear(64, 64))),
    ("Sequential moved with .to(float64)", lambda: nn.Sequential(nn.Linear(32, 32)).double()),
]


@pytest.mark.parametrize(("name", "make"), DEFAULT_MODULES, ids=[m[0] for m in DEFAULT_MODULES])
def test_pytorch_default_inits_have_their_laws(name, make):
    torch.manual_seed(0)
    real = make()
    with record_build(laws=True) as record, torch.device("meta"):
        meta = make()
    reals = dict(real.named_parameters())
    for pname, tensor in meta.named_parameters():
        measured = MeasuredValue(reals[pname])
        law = LawValue(record.laws.pieces(tensor), tuple(tensor.shape))
        assert law.known, (pname, law.why)
        if measured.constant() is not None:
            assert law.constant() == pytest.approx(measured.constant()), pname
            continue
        mean, std, _, _ = law.moments()
        m_mean, m_std, _, _ = measured.moments()
        n = tensor.numel()
        assert abs(mean - m_mean) <= 5 * m_std / math.sqrt(n) + 1e-9, pname
        assert std == pytest.approx(m_std, rel=max(0.03, 4 / math.sqrt(n))), pname


UNKNOWABLE = [
    ("copied from a large real tensor", lambda w: w.data.copy_(torch.randn(1200, 1000,
                                                                           device="cpu"))),
    ("an initializer the algebra does not know", lambda w: w.data.exponential_()),
    ("written through an index tensor", lambda w: w.data.__setitem__(
        torch.tensor([0, 5, 7]), 1.0)),
    ("one draw broadcast over the rows", lambda w: setattr(
        w, "data", torch.ones(1200, 1) * torch.randn(1, 1000))),
    ("never written (torch.empty)", lambda w: None),
]


@pytest.mark.parametrize(("name", "recipe"), UNKNOWABLE, ids=[u[0] for u in UNKNOWABLE])
def test_what_the_laws_cannot_follow_is_unknown(name, recipe):
    meta, record = _apply(recipe, (1200, 1000), "meta")
    law = LawValue(record.laws.pieces(meta), tuple(meta.shape))
    if name.startswith("written through an index"):
        # the rest of the tensor is still torch.empty: unknown either way
        pass
    assert not law.known
    assert law.why


def _run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "biaslint", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_an_unknown_init_on_meta_is_not_judged_and_exits_2(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n"
        "    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "    model[0].weight.data.exponential_()\n"
        "    return model, torch.randn(4, 8)\n")
    result = _run("m.py:build", "--device", "meta", cwd=str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not judged" in result.stdout
    assert "0.weight (init law unknown: set by exponential_)" in result.stdout
    # BL001 reads the graph only: it still judges every layer, and is enough for a gate
    graph_only = _run("m.py:build", "--device", "meta", "--select", "BL001", cwd=str(tmp_path))
    assert graph_only.returncode == 0, graph_only.stdout + graph_only.stderr


def test_the_seed_mistakes_are_all_found_on_meta():
    """examples/mistakes.py makes each seed mistake: the same findings on meta as on the CPU."""
    args = ("examples/mistakes.py:build", "--class-priors", "0.9,0.05,0.03,0.02",
            "--format", "json")
    import json

    real = json.loads(_run(*args).stdout)
    meta = json.loads(_run(*args, "--device", "meta").stdout)

    def keys(report: dict) -> list[tuple[str, str, str]]:
        return sorted((f["code"], f["module"], f.get("parameter") or "")
                      for t in report["results"] for f in t["findings"])

    assert keys(real) == keys(meta)
    assert {k[0] for k in keys(meta)} >= {"BL001", "BL002", "BL003", "BL004", "BL005"}
    assert len(keys(meta)) == 6


def test_a_target_that_builds_on_meta_itself_gets_its_laws(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n"
        "    with torch.device('meta'):\n"
        "        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "        nn.init.zeros_(model[0].weight)\n"
        "    return model, torch.randn(4, 8)\n")
    result = _run("m.py:build", cwd=str(tmp_path))
    assert "BL002" in result.stdout, result.stdout + result.stderr
    assert "built on the meta device" in result.stdout


def test_to_empty_then_reset_parameters_is_run_and_said(tmp_path):
    """``to_empty`` leaves memory unwritten; the model starts from ``reset_parameters()``, which
    biaslint runs under recording (and says so)."""
    (tmp_path / "m.py").write_text(
        "import torch, torch.nn as nn\n"
        "def build():\n"
        "    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "    return model.to_empty(device='meta'), torch.randn(4, 8)\n")
    result = _run("m.py:build", "--device", "meta", "--format", "json", cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran reset_parameters() of 2 module(s)" in result.stdout


def test_transformers_init_skipped_on_meta_is_run_and_recorded():
    transformers = pytest.importorskip("transformers")
    from biaslint.analysis.values import value_of
    from biaslint.load import load_target

    loaded = load_target(os.path.join(ROOT, "benchmarks", "zoo_models.py") + ":HF.llama",
                         device="meta")
    assert any("initialize_weights()" in n for n in loaded.notes)
    model = loaded.model
    assert isinstance(model, transformers.PreTrainedModel)
    std = model.config.initializer_range
    for name, param in model.named_parameters():
        value = value_of(param, loaded.param_laws[name], True)
        assert value.known, (name, value.why)
        if name.endswith("embed_tokens.weight") or name.endswith("q_proj.weight"):
            mean, spread, _, _ = value.moments()
            assert spread == pytest.approx(std) and mean == 0.0, name
        if "layernorm" in name or name.endswith("norm.weight"):
            assert value.constant() == 1.0, name


def test_device_in_the_config_is_validated(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.biaslint]\ntargets = [{target = \"m.py:build\", device = \"gpu\"}]\n")
    result = _run(cwd=str(tmp_path))
    assert result.returncode == 2
    assert "device" in result.stderr and "'gpu' is not one of cpu, meta" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_large_tensor_of_mixed_laws_is_judged_only_where_the_laws_answer():
    """Row questions (are the units alike?) on a tensor too large for a stand-in: answered when
    one drawn block spans rows (an embedding with its padding row zeroed), else not judged."""
    from biaslint.laws import Law, Piece

    padded = LawValue([Piece(0, 8, Law.constant(0.0)), Piece(8, 8 * 600_000, Law.normal(0, 1))],
                      (600_000, 8))
    assert padded.known and padded.rows(1) is None
    striped = LawValue([Piece(i * 2, i * 2 + 2, Law.normal(0, 1) if i % 2 else Law.constant(1.0))
                        for i in range(3_000_000)], (3_000_000, 2))
    assert not striped.known and "several init laws" in striped.why
