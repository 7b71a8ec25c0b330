"""BL009 and BL005 judge a head with the bias it has, find logits computed from an embedding
table, say which output layers they cannot tell are classifiers, and check every claim on the
loss of what the model returns. Every number a finding states is recomputed here another way:
with hard labels through ``F.cross_entropy`` on the model's own output."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biaslint.engine import lint_loaded
from biaslint.load import load_target
from biaslint.settings import Settings, TargetConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PRIORS = (0.9, 0.05, 0.03, 0.02)


def _lint(target: str, select: tuple[str, ...] = ("BL005", "BL009"), **config):
    torch.manual_seed(0)
    loaded = load_target(target, config.pop("input_shapes", ()))
    result = lint_loaded(loaded, TargetConfig.of(target, **config), Settings(select=select))
    return result, loaded


def _scope(result, code: str):
    return next(s for s in result.rules if s.code == code)


def expected_excess(logits: torch.Tensor, target: torch.Tensor) -> float:
    """E over labels y ~ target of F.cross_entropy(logits, y), minus the target's entropy: one
    hard-label cross-entropy per class, weighted. (rows, classes) logits."""
    z = logits.double().reshape(-1, logits.shape[-1])
    p = target.double() / target.double().sum()
    loss = sum(float(p[k]) * float(F.cross_entropy(z, torch.full((len(z),), k)))
               for k in range(z.shape[-1]) if p[k] > 0)
    return loss - float(-(p[p > 0] * p[p > 0].log()).sum())


def _uniform(classes: int) -> torch.Tensor:
    return torch.full((classes,), 1.0 / classes, dtype=torch.float64)


# -- a bias that carries priors ------------------------------------------------------------------

def _head_io(loaded, head: str = "head") -> tuple[torch.Tensor, torch.Tensor]:
    """The head's logits in the model's real forward, and the head's bias."""
    model = loaded.model
    seen = {}
    with torch.no_grad():
        hook = model.get_submodule(head).register_forward_hook(
            lambda m, a, out: seen.setdefault("z", out))
        model(*loaded.inputs.args)
        hook.remove()
    return seen["z"], model.get_submodule(head).bias.detach()


@pytest.mark.parametrize("priors", [None, PRIORS])
def test_the_clean_example_is_quiet_with_and_without_priors(cli, monkeypatch, priors):
    monkeypatch.chdir(EXAMPLES.parent)
    args = ["examples/clean.py:build", "--format", "json"] + (
        ["--class-priors", ",".join(map(str, priors))] if priors else [])
    run = cli(*args)
    assert run.exit_code == 0, run.stdout
    [entry] = json.loads(run.stdout)["results"]
    assert entry["findings"] == []
    assert entry["rules"]["BL009"]["judged"] == 1
    assert all(not scope["disagreements"] for scope in entry["rules"].values())
    # What BL009 judges there, measured: against the labels the bias states the weights add
    # little; against uniform labels (what it used to say) the excess is the bias's skew.
    result, loaded = _lint("examples/clean.py:build")
    logits, bias = _head_io(loaded)
    assert expected_excess(logits, torch.softmax(bias.double(), 0)) < 0.5
    assert expected_excess(logits, _uniform(4)) > 1.0


def test_the_mistakes_example_once_mended_has_no_bl009(cli, tmp_path, monkeypatch):
    mended = tmp_path / "mended_mistakes.py"
    shutil.copy(EXAMPLES / "mistakes.py", mended)
    monkeypatch.chdir(tmp_path)
    target = f"{mended.name}:build"
    fixed = cli(target, "--class-priors", "0.9,0.05,0.03,0.02", "--fix", "--unsafe-fixes")
    assert fixed.exit_code == 0, fixed.stdout
    assert "prior_bias_(self.head" in mended.read_text()
    for priors in ((), ("--class-priors", "0.9,0.05,0.03,0.02")):
        run = cli(target, "--format", "json", *priors)
        assert run.exit_code == 0, run.stdout
        [entry] = json.loads(run.stdout)["results"]
        assert [f for f in entry["findings"] if f["code"] == "BL009"] == []
        assert entry["rules"]["BL009"]["judged"] == 1
    result, loaded = _lint(target)
    logits, bias = _head_io(loaded)
    assert expected_excess(logits, torch.softmax(bias.double(), 0)) < 0.5


LARGE = """
import torch
import torch.nn as nn
from biaslint.init import prior_bias_


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    nn.init.normal_(model[2].weight, std=1.0)
    prior_bias_(model[2], (0.9, 0.05, 0.03, 0.02))
    return model, torch.randn(256, 32)
"""


def test_a_prior_bias_with_large_weights_fires_against_the_labels_it_states(write_target):
    """The weights' spread over a prior bias is still BL009's, measured against the bias's own
    distribution; its fix, applied, lowers that measured excess."""
    result, loaded = _lint(write_target(LARGE), select=("BL009",))
    [finding] = result.findings
    assert finding.data["reference"] == "bias" and "softmax(bias)" in finding.message
    logits, bias = _head_io(loaded, "2")
    target = torch.softmax(bias.double(), 0)
    assert finding.data["excess"] == pytest.approx(expected_excess(logits, target), rel=1e-6)
    assert finding.data["chance"] == pytest.approx(
        float(-(target * target.log()).sum()), rel=1e-9)
    before = expected_excess(logits, target)
    with torch.no_grad():
        exec(finding.fix.code.split("#")[0], {"nn": torch.nn, "model": loaded.model})
    after = expected_excess(_head_io(loaded, "2")[0], target)
    assert after < before and after < 0.5
    assert finding.data["excess_after_fix"] == pytest.approx(after, abs=0.25)


# -- logits from an embedding table --------------------------------------------------------------

LM = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class LM(nn.Module):
    def __init__(self, way, std, tied, vocab=500, bias=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, 64)
        self.out = nn.Embedding(vocab, 64)
        if std is not None:
            nn.init.normal_(self.emb.weight, std=std)
            nn.init.normal_(self.out.weight, std=std)
        self.block = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.way, self.tied = way, tied
        self.logits_bias = None if bias is None else nn.Parameter(torch.as_tensor(bias).float())

    def forward(self, ids):
        h = self.emb(ids)
        h = self.norm(h + self.block(h))
        table = (self.emb if self.tied else self.out).weight
        if self.way == "matmul .T":
            z = h @ table.T
        elif self.way == "F.linear":
            z = F.linear(h, table)
        elif self.way == "torch.matmul .t()":
            z = torch.matmul(h, self.emb.weight.t() if self.tied else self.out.weight.t())
        else:
            z = torch.einsum("btd,vd->btv", h, table)
        return z if self.logits_bias is None else z + self.logits_bias


def build(way="matmul .T", std=None, tied=True, vocab=500, bias=None):
    torch.manual_seed(0)
    return LM(way, std, tied, vocab, bias), torch.randint(0, vocab, (4, 16))
"""
WAYS = ("matmul .T", "F.linear", "torch.matmul .t()", "einsum")


def _lm(write_target, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return write_target(textwrap.dedent(LM) + f"\n\ndef case():\n    return build({args})\n",
                        attr="case")


def _returned(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(*loaded.inputs.args)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("way", WAYS)
def test_table_logits_from_an_n01_embedding_fire_naming_the_embedding(write_target, way, tied):
    result, loaded = _lint(_lm(write_target, way=way, tied=tied), select=("BL009",))
    table = "emb" if tied else "out"
    [finding] = result.findings
    assert finding.module == table and finding.data["table"] == f"{table}.weight"
    assert f"Embedding '{table}'" in finding.message
    assert ("tied" in finding.message) == tied
    assert _scope(result, "BL009").judged == 1 and _scope(result, "BL009").disagreements == ()
    z = _returned(loaded)
    measured = expected_excess(z, _uniform(500))
    assert measured > 10  # logits with std ~8 over 500 classes
    assert finding.data["excess"] == pytest.approx(measured, rel=1e-6)
    assert finding.data["loss"] == pytest.approx(measured + math.log(500), rel=1e-6)
    assert f"{finding.data['loss']:.3g} nats" in finding.message
    # its fix, applied, lowers the measured loss
    with torch.no_grad():
        exec(finding.fix.code.split("#")[0], {"nn": torch.nn, "model": loaded.model})
    after = expected_excess(_returned(loaded), _uniform(500))
    assert after < measured and after < 0.5


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("way", WAYS)
def test_table_logits_from_a_small_embedding_are_quiet(write_target, way, tied):
    result, loaded = _lint(_lm(write_target, way=way, tied=tied, std=0.02), select=("BL009",))
    assert result.findings == ()
    assert _scope(result, "BL009").judged == 1 and _scope(result, "BL009").disagreements == ()
    assert expected_excess(_returned(loaded), _uniform(500)) < 0.5


def test_head_softmax_judges_table_logits_too(write_target):
    result, _ = _lint(_lm(write_target, way="einsum", tied=False), select=("BL009",),
                      head="softmax")
    assert [f.module for f in result.findings] == ["out"]


TOKEN_PRIORS = (0.5, 0.2, 0.1, 0.08, 0.06, 0.03, 0.02, 0.01)


def test_bl005_judges_table_logits_with_and_without_a_bias(write_target):
    """With one prior per token, BL005 judges the bias added to the table product: none (its
    fix adds one), or one set to the log priors (quiet). BL009 then judges the spread."""
    from biaslint.init import prior_logits

    bare = _lm(write_target, way="matmul .T", std=0.02, vocab=8)
    result, loaded = _lint(bare, class_priors=TOKEN_PRIORS)
    [finding] = result.findings
    assert finding.code == "BL005" and finding.module == "emb"
    assert "has no bias" in finding.message and "Embedding 'emb'" in finding.message
    p = torch.tensor(TOKEN_PRIORS, dtype=torch.float64)
    assert finding.data["excess_from_bias"] == pytest.approx(
        float((p * (p / 0.125).log()).sum()), rel=1e-6)  # KL(priors || uniform)
    z = _returned(loaded)
    assert finding.data["excess_from_logits"] == pytest.approx(expected_excess(z, p), rel=1e-6)
    ideal = prior_logits(TOKEN_PRIORS).tolist()
    biased = _lm(write_target, way="matmul .T", std=0.02, vocab=8, bias=ideal)
    for priors in (TOKEN_PRIORS, None):
        result, loaded = _lint(biased, class_priors=priors)
        assert result.findings == (), [f.message for f in result.findings]
        assert all(s.disagreements == () for s in result.rules)
        assert _scope(result, "BL009").judged == 1
    assert expected_excess(_returned(loaded), p) < 0.1


# -- output layers BL009 cannot tell are classifiers -----------------------------------------------

UNNAMED = """
import torch
import torch.nn as nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(16, 32))
    model.add_module("proj", nn.Linear(32, OUT))
    nn.init.normal_(model.proj.weight, std=2.0)
    return model, torch.randn(64, 16)
"""


def test_an_unrecognized_output_layer_is_said_not_skipped(cli, write_target):
    target = write_target(UNNAMED.replace("OUT", "10"))
    run = cli(target, "--select", "BL009", "--format", "json")
    assert run.exit_code == 0  # not an incomplete analysis: the reason says what to do
    scope = json.loads(run.stdout)["results"][0]["rules"]["BL009"]
    assert scope["judged"] == 0 and scope["total"] == 1
    [entry] = scope["unjudged"]
    assert entry["layer"] == "proj" and "--head softmax" in entry["reason"]
    text = cli(target, "--select", "BL009").stdout
    assert "BL009 (initial-loss-above-chance) did not judge 1 layer(s): proj" in text
    judged = cli(target, "--select", "BL009", "--head", "softmax", "--format", "json")
    [entry] = json.loads(judged.stdout)["results"]
    assert [f["module"] for f in entry["findings"]] == ["proj"]
    assert entry["rules"]["BL009"] == {"judged": 1, "total": 1, "unjudged": [],
                                       "disagreements": []}


def test_a_one_output_head_is_declined_unless_a_regression_target_says_what_it_is(write_target):
    target = write_target(UNNAMED.replace("OUT", "1"))
    result, _ = _lint(target, select=("BL009",))
    [(layer, why)] = _scope(result, "BL009").unjudged
    assert layer == "proj" and "--head sigmoid" in why
    result, _ = _lint(target, select=("BL009",), target_mean=(0.0,))
    assert _scope(result, "BL009").total == 0  # a regression head: BL008's


# -- every claim measured: disagreements -----------------------------------------------------------

REUSED = """
import torch
import torch.nn as nn


class Reused(nn.Module):
    '''The head runs twice; only the second call, on zeros, reaches the output.'''

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 10)
        self.head = nn.Linear(10, 10)
        nn.init.normal_(self.head.weight, std=3.0)

    def forward(self, x):
        first = self.head(self.body(x) * 10)
        return self.head(torch.zeros_like(first))


def build():
    torch.manual_seed(0)
    return Reused(), torch.randn(32, 16)
"""

COMPENSATED = """
import torch
import torch.nn as nn
from biaslint.init import prior_logits


class Compensated(nn.Module):
    '''A zero bias, and weights that put every row's logits on the log priors.'''

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[:, 0] = prior_logits((0.9, 0.09, 0.01))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.ones_like(x))


def build():
    return Compensated(), torch.randn(8, 4)
"""


def test_a_claim_the_returned_loss_does_not_show_is_a_disagreement(write_target):
    result, loaded = _lint(write_target(REUSED), select=("BL009",))
    assert result.findings == ()
    [disagreement] = _scope(result, "BL009").disagreements
    assert disagreement.layer == "head"
    first, _ = _head_io(loaded)  # the hook sees the first call, as the analysis did
    assert expected_excess(first, _uniform(10)) > 0.5
    returned = expected_excess(_returned(loaded), _uniform(10))
    assert returned < 0.5 and f"{returned:.3g} above" in disagreement.measured


def test_a_bias_claim_the_logits_do_not_show_is_a_disagreement(write_target):
    priors = (0.9, 0.09, 0.01)
    result, loaded = _lint(write_target(COMPENSATED), select=("BL005",), class_priors=priors)
    assert result.findings == ()
    [disagreement] = _scope(result, "BL005").disagreements
    assert disagreement.layer == "head" and "the bias gives an excess" in disagreement.claim
    p = torch.tensor(priors, dtype=torch.float64)
    assert expected_excess(torch.zeros(1, 3), p) > 0.1  # the bias alone is far off
    assert expected_excess(_returned(loaded), p) < 0.01  # the model's loss is not


def _rule_example(rule_cls, good: bool, write_target) -> str:
    return write_target(rule_cls.good_example if good else rule_cls.bad_example)


@pytest.mark.parametrize("good", [False, True])
def test_no_disagreement_on_the_rules_own_examples(write_target, good):
    from biaslint.rules.bl005_class_prior_bias import ClassPriorBias
    from biaslint.rules.bl009_initial_loss import InitialLossAboveChance

    result, _ = _lint(_rule_example(InitialLossAboveChance, good, write_target))
    assert _scope(result, "BL009").judged == 1 and _scope(result, "BL009").disagreements == ()
    assert bool(result.findings) is not good
    result, _ = _lint(_rule_example(ClassPriorBias, good, write_target),
                      class_priors=(0.9, 0.09, 0.01), input_shapes=((256, 20),))
    assert _scope(result, "BL005").judged == 1 and _scope(result, "BL005").disagreements == ()
    assert bool(result.findings) is not good


TORCHVISION = """
import torch
import torchvision


def build():
    torch.manual_seed(0)
    return torchvision.models.NAME(num_classes=10), torch.randn(2, 3, 64, 64)
"""


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_no_disagreement_on_torchvision_classifiers(write_target, name):
    target = write_target(TORCHVISION.replace("NAME", name))
    skewed = (0.5,) + (0.5 / 9,) * 9
    for priors in (None, skewed):
        result, loaded = _lint(target, class_priors=priors)
        for code in ("BL005", "BL009"):
            assert _scope(result, code).disagreements == (), code
        assert _scope(result, "BL009").judged == 1
        if priors is None:
            bl009 = [f for f in result.findings if f.code == "BL009"]
            measured = expected_excess(_returned(loaded), _uniform(10))
            assert bool(bl009) == (measured > 0.5), measured
        else:  # a zero bias against skewed priors: BL005's, with the same number measured
            [bl005] = [f for f in result.findings if f.code == "BL005"]
            p = torch.tensor(skewed, dtype=torch.float64)
            assert bl005.data["excess_from_logits"] == pytest.approx(
                expected_excess(_returned(loaded), p), rel=1e-6)
