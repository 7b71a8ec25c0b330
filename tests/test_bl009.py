"""BL009 measured: the initial cross-entropy under uniform labels, estimated independently by
drawing labels (Monte Carlo over many draws), must exceed log C by more than the limit exactly
where the rule fires; and the fix it suggests brings the loss back near log C."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

HEAD = """
import torch
import torch.nn as nn


class Classifier(nn.Module):
    def __init__(self, std=None, classes=10, squash=None, zero=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU())
        self.head = nn.Linear(256, classes)
        if std is not None:
            nn.init.normal_(self.head.weight, std=std)
        if zero:
            nn.init.zeros_(self.head.weight)
        self.squash = squash

    def forward(self, x):
        z = self.head(self.body(x))
        if self.squash == "softmax":
            return torch.softmax(z, dim=-1)
        if self.squash == "sigmoid":
            return torch.sigmoid(z)
        return z


class LM(nn.Module):
    def __init__(self, std=None, tied=True, norm=True, depth=1, block_std=None):
        super().__init__()
        self.emb = nn.Embedding(500, 64)
        if std is not None:
            nn.init.normal_(self.emb.weight, std=std)
        self.blocks = nn.ModuleList(nn.Linear(64, 64) for _ in range(depth))
        if block_std is not None:
            for b in self.blocks:
                nn.init.normal_(b.weight, std=block_std)
        self.norm = nn.LayerNorm(64) if norm else nn.Identity()
        self.lm_head = nn.Linear(64, 500, bias=False)
        if tied:
            self.lm_head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.lm_head(self.norm(h))


class Segmenter(nn.Module):
    def __init__(self, std=None):
        super().__init__()
        self.body = nn.Conv2d(3, 32, 3, padding=1)
        self.classifier = nn.Conv2d(32, 6, 1)
        if std is not None:
            nn.init.normal_(self.classifier.weight, std=std)

    def forward(self, x):
        return self.classifier(torch.relu(self.body(x)))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 64)
        self.regressor = nn.Linear(64, 1)
        nn.init.normal_(self.regressor.weight, std=5.0)

    def forward(self, x):
        return self.regressor(torch.relu(self.body(x)))


def x():
    return torch.randn(64, 64)


def ids():
    return torch.randint(0, 500, (4, 16))
"""

# name -> (build expression, inputs expression, fires, head module, kind)
CASES = {
    "head drawn with std 1": ("Classifier(std=1.0)", "x()", True, "head", "softmax"),
    "default head": ("Classifier()", "x()", False, "head", "softmax"),
    "zero head": ("Classifier(zero=True)", "x()", False, "head", "softmax"),
    "softmax in the model, large head": ("Classifier(std=0.5, squash='softmax')", "x()", True,
                                         "head", "softmax"),
    "multi-label sigmoid, large head": ("Classifier(std=1.0, squash='sigmoid')", "x()", True,
                                        "head", "sigmoid"),
    "N(0,1) embedding tied to the head": ("LM()", "ids()", True, "lm_head", "softmax"),
    "tied embedding drawn with std 0.02": ("LM(std=0.02)", "ids()", False, "lm_head", "softmax"),
    "untied default head after a final norm": ("LM(tied=False)", "ids()", False, "lm_head",
                                               "softmax"),
    "no final norm, growing residual stream": ("LM(std=0.02, tied=False, norm=False, depth=8, "
                                               "block_std=0.5)", "ids()", True, "lm_head",
                                               "softmax"),
    "segmentation head, channels are classes": ("Segmenter(std=2.0)", "torch.randn(2, 3, 16, 16)",
                                                True, "classifier", "conv"),
    "segmentation head, default init": ("Segmenter()", "torch.randn(2, 3, 16, 16)", False,
                                        "classifier", "conv"),
    "regression head is not a classifier": ("Regressor()", "torch.randn(32, 16)", False,
                                            "regressor", None),
}


def _source(build: str, inputs: str) -> str:
    return textwrap.dedent(HEAD) + f"\n\ndef build():\n    return {build}, {inputs}\n"


def _monte_carlo_excess(logits: torch.Tensor, kind: str, draws: int = 400) -> float:
    """E over uniform random labels of the cross-entropy, minus chance, by drawing labels."""
    torch.manual_seed(123)
    if kind == "conv":
        logits, kind = logits.movedim(1, -1), "softmax"
    z = logits.reshape(-1, logits.shape[-1]).double()
    if kind == "sigmoid":
        losses = [F.binary_cross_entropy_with_logits(z, torch.randint(0, 2, z.shape).double())
                  for _ in range(draws)]
        return float(torch.stack(losses).mean()) - math.log(2)
    labels = torch.randint(0, z.shape[1], (draws, z.shape[0]))
    losses = [F.cross_entropy(z, labels[i]) for i in range(draws)]
    return float(torch.stack(losses).mean()) - math.log(z.shape[1])


def _lint(target: str, **config):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    torch.manual_seed(0)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig.of(target, **config), Settings(select=("BL009",)))
    return result, loaded


@pytest.mark.parametrize("name", list(CASES))
def test_fires_exactly_where_the_measured_initial_loss_is_above_chance(name, write_target):
    build, inputs, fires, head, kind = CASES[name]
    result, loaded = _lint(write_target(_source(build, inputs)))
    model = loaded.model
    with torch.no_grad():
        outputs = {}
        hook = model.get_submodule(head).register_forward_hook(
            lambda m, a, out: outputs.setdefault("z", out))
        model(*loaded.inputs.args)
        hook.remove()
        logits = outputs["z"]
    found = [f for f in result.findings if f.module == head]
    if kind is not None:
        excess = _monte_carlo_excess(logits, kind)
        assert (excess > 0.5) == fires, excess
    assert bool(found) == fires, [f.message for f in result.findings]
    if found:
        data = found[0].data
        assert data["excess"] == pytest.approx(_monte_carlo_excess(logits, kind), abs=0.05 *
                                               max(1.0, data["excess"]))
        assert f"log({data['classes']})" in found[0].message


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2]])
def test_the_suggested_fix_brings_the_loss_near_chance(name, write_target):
    build, inputs, _, head, kind = CASES[name]
    result, loaded = _lint(write_target(_source(build, inputs)))
    [finding] = [f for f in result.findings if f.module == head]
    model = loaded.model
    code = finding.fix.code.split("#")[0].strip()
    with torch.no_grad():
        exec(code, {"nn": torch.nn, "model": model})
        outputs = {}
        hook = model.get_submodule(head).register_forward_hook(
            lambda m, a, out: outputs.setdefault("z", out))
        model(*loaded.inputs.args)
        hook.remove()
    assert _monte_carlo_excess(outputs["z"], kind) < 0.5


def test_with_priors_only_the_spread_counts(write_target):
    """A large bias is BL005's when priors are given; BL009 measures what the logits' spread
    adds. Without priors, a bias someone wrote states the priors (it is quiet too), while the
    same skew drawn at random is BL009's, judged against uniform labels."""
    source = _source("Classifier()", "x()") + (
        "\n\ndef build_biased():\n    model = Classifier()\n"
        "    nn.init.constant_(model.head.bias, 0.0)\n"
        "    with torch.no_grad():\n        model.head.bias[0] = 8.0\n"
        "    return model, x()\n"
        "\n\ndef build_drawn():\n    model = Classifier()\n"
        "    nn.init.normal_(model.head.bias, std=4.0)\n"
        "    return model, x()\n")
    target = write_target(source, attr="build_biased")
    priors = tuple([0.1] * 10)
    assert _lint(target, class_priors=priors)[0].findings == ()
    result, loaded = _lint(target)
    assert result.findings == ()  # the bias it was given is the labels it is judged against
    logits = _head_logits(loaded, "head")
    assert _monte_carlo_excess(logits, "softmax") > 3  # uniform labels would have fired
    drawn = write_target(source, attr="build_drawn")
    result, loaded = _lint(drawn)
    [finding] = result.findings
    assert finding.data["reference"] == "uniform" and "uniform labels" in finding.message
    assert finding.data["excess"] == pytest.approx(
        _monte_carlo_excess(_head_logits(loaded, "head"), "softmax"), rel=0.05)
    spread = write_target(_source("Classifier(std=1.0)", "x()"))
    [finding] = _lint(spread, class_priors=priors)[0].findings
    assert "spread" in finding.message


def _head_logits(loaded, head: str) -> torch.Tensor:
    model = loaded.model
    outputs = {}
    with torch.no_grad():
        hook = model.get_submodule(head).register_forward_hook(
            lambda m, a, out: outputs.setdefault("z", out))
        model(*loaded.inputs.args)
        hook.remove()
    return outputs["z"]


def test_not_run_without_inputs_and_on_meta_unsettled_heads_are_said(write_target, cli):
    """It measures a real forward: without inputs it applies to nothing, and the report says
    it did not run (as BL005 without priors). On meta it runs, and a head whose input is not a
    norm's output (its scale is in no law) is listed as not judged, with that reason."""
    target = write_target(_source("Classifier(std=1.0)", "x()"))
    meta = cli(target, "--select", "BL009", "--device", "meta")
    assert meta.exit_code == 0 and "not run" not in meta.stdout
    assert "BL009 (initial-loss-above-chance) did not judge 1 layer(s): head: on the meta " \
        "device, its input comes from ReLU body.1" in meta.stdout
    no_inputs = write_target(textwrap.dedent(HEAD) + "\n\ndef build():\n    return Classifier()\n")
    plain = cli(no_inputs, "--select", "BL009")
    assert plain.exit_code == 0 and "no example inputs" in plain.stdout


LAWS = HEAD + """

class Normed(nn.Module):
    def __init__(self, std=None, classes=10, squash=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.LayerNorm(256))
        self.head = nn.Linear(256, classes)
        if std is not None:
            nn.init.normal_(self.head.weight, std=std)
        self.squash = squash

    def forward(self, x):
        z = self.head(self.body(x))
        return torch.sigmoid(z) if self.squash == "sigmoid" else z


class RMSNorm(nn.Module):  # as transformers writes LlamaRMSNorm
    def __init__(self, dim, eps=1e-6, affine=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.eps = eps

    def forward(self, h):
        variance = h.to(torch.float32).pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps)
        return h if self.weight is None else self.weight * h.to(torch.float32)


class Llama(nn.Module):
    def __init__(self, std=0.02, affine=True):
        super().__init__()
        self.emb = nn.Embedding(500, 64)
        self.block = nn.Linear(64, 64)
        self.norm = RMSNorm(64, affine=affine)
        self.lm_head = nn.Linear(64, 500, bias=False)
        for w in (self.emb.weight, self.block.weight, self.lm_head.weight):
            nn.init.normal_(w, std=std)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.block(h)
        return self.lm_head(self.norm(h)[:, -8:, :])


class ClassToken(nn.Module):  # as a ViT reads its class token after the final norm
    def __init__(self, std=None):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)
        if std is not None:
            nn.init.normal_(self.head.weight, std=std)

    def forward(self, x):
        return self.head(self.norm(self.embed(x))[:, 0])


class LayerNorm2d(nn.LayerNorm):  # channels-first, as timm and torchvision write it
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FunctionalNorm(nn.LayerNorm):  # as timm's LayerNorm calls F.layer_norm itself
    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                              self.eps)


class TimmLike(nn.Module):
    def __init__(self, std=None):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.norm = FunctionalNorm(64)
        self.head = nn.Linear(64, 10)
        if std is not None:
            nn.init.normal_(self.head.weight, std=std)

    def forward(self, x):
        return self.head(self.norm(self.embed(x))[:, 0])


class ChannelsFirst(nn.Module):  # the head contracts the width axis, which is not normalized
    def __init__(self):
        super().__init__()
        self.norm = LayerNorm2d(8)
        self.head = nn.Linear(8, 10)
        nn.init.normal_(self.head.weight, std=1.0)

    def forward(self, x):
        return self.head(self.norm(x * 0.01))
"""

# name -> (build, inputs, head, kind, verdict on meta: True / False / "not judged")
LAW_CASES = {
    "head drawn with std 1 after a LayerNorm": ("Normed(std=1.0)", "x()", "head", "softmax",
                                                True),
    "default head after a LayerNorm": ("Normed()", "x()", "head", "softmax", False),
    "multi-label sigmoid after a LayerNorm": ("Normed(std=1.0, squash='sigmoid')", "x()",
                                              "head", "sigmoid", True),
    "untied default LM head after a final norm": ("LM(tied=False)", "ids()", "lm_head",
                                                  "softmax", False),
    "Llama-style RMS norm, std 0.02": ("Llama()", "ids()", "lm_head", "softmax", False),
    "Llama-style RMS norm, std 1": ("Llama(std=1.0)", "ids()", "lm_head", "softmax", True),
    "RMS norm without a weight, std 1": ("Llama(std=1.0, affine=False)", "ids()", "lm_head",
                                         "softmax", True),
    "class token after the final norm, head std 1": ("ClassToken(std=1.0)",
                                                      "torch.randn(64, 5, 16)", "head",
                                                      "softmax", True),
    "class token after the final norm, default head": ("ClassToken()", "torch.randn(64, 5, 16)",
                                                       "head", "softmax", False),
    "F.layer_norm in a norm's own forward, head std 1": ("TimmLike(std=1.0)",
                                                         "torch.randn(64, 5, 16)", "head",
                                                         "softmax", True),
    "F.layer_norm in a norm's own forward, default head": ("TimmLike()",
                                                           "torch.randn(64, 5, 16)", "head",
                                                           "softmax", False),
    "a channels-first LayerNorm, permuted: not the head's rows": ("ChannelsFirst()",
                                                             "torch.randn(4, 8, 6, 8)", "head",
                                                             "softmax", "not judged"),
    "near the limit: the laws do not settle it": ("Normed(std=0.09)", "x()", "head", "softmax",
                                                   "not judged"),
    "tied to the embedding its input is looked up in": ("LM(std=0.02)", "ids()", "lm_head",
                                                        "softmax", "not judged"),
}


def _lint_both(target: str):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    runs = []
    for device in (None, "meta"):
        loaded = load_target(target, device=device)
        runs.append((lint_loaded(loaded, TargetConfig.of(target, device=device),
                                 Settings(select=("BL009",))), loaded))
    return runs


@pytest.mark.parametrize("name", list(LAW_CASES))
def test_on_meta_the_laws_verdict_is_the_measured_one_over_seeds(name, write_target):
    """The same model built for real under several seeds and on meta. Where meta judges, its
    verdict is the real one under every seed, and the real one is the truth: the cross-entropy
    with drawn labels (Monte Carlo) is above chance by more than the limit exactly then. Meta's
    excess is the expectation over draws of the weights: within 25% of the mean measured over
    the seeds (one draw of a 10-class head can sit 30% off it). Where the laws do not settle
    it, the head is listed as not judged with the reason, never passed."""
    build, inputs, head, kind, verdict = LAW_CASES[name]
    source = textwrap.dedent(LAWS) + f"\n\ndef build():\n    return {build}, {inputs}\n"
    target = write_target(source)
    measured_over_seeds = []
    for seed in range(4):
        torch.manual_seed(seed)
        (real, loaded), (meta, _) = _lint_both(target)
        [scope] = [s for s in meta.rules if s.code == "BL009"]
        if verdict == "not judged":
            assert scope.judged == 0 and meta.findings == ()
            [(layer, why)] = scope.unjudged
            assert layer == head and why.startswith("declined: on the meta device")
            return
        assert scope.judged == 1 and scope.unjudged == ()
        measured = _monte_carlo_excess(_head_logits(loaded, head), kind)
        measured_over_seeds.append(measured)
        assert (measured > 0.5) == verdict == bool(real.findings) == bool(meta.findings)
        if verdict:
            [finding] = meta.findings
            assert finding.module == head and "init laws" in finding.message
            assert set(finding.data) == set(real.findings[0].data)
    if verdict:
        mean = sum(measured_over_seeds) / len(measured_over_seeds)
        assert meta.findings[0].data["excess"] == pytest.approx(mean, rel=0.25)
