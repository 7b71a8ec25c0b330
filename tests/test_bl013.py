"""BL013 measured: a norm is flagged exactly when its eps damps it, by a computation of the test's
own. For every norm, the model's forward at init on the example inputs gives the norm's input;
the norm (affine off) is run on it with its own eps and with eps=1e-5, and per group the rms of
the first over the rms of the second is the damping factor. The rule must flag the norms whose
median factor is below 0.9 and no others; the positional eps of the GAN's
``nn.BatchNorm2d(128, 0.8)`` is named, and without a forward with values it is judged from the
call alone, the other norms said as not judged."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
import torch.nn as nn

HEAD = """
import torch
import torch.nn as nn


class Gan(nn.Module):
    '''PyTorch-GAN's DCGAN generator head: nn.BatchNorm2d(128, 0.8), momentum meant.'''
    def __init__(self, keyword=False):
        super().__init__()
        self.l1 = nn.Linear(16, 128 * 4 * 4)
        norm = nn.BatchNorm2d(128, momentum=0.8) if keyword else nn.BatchNorm2d(128, 0.8)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, stride=1, padding=1),
            norm,
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 3, 3, stride=1, padding=1),
        )

    def forward(self, z):
        return self.blocks(self.l1(z).view(z.shape[0], 128, 4, 4))


class MlpGan(nn.Module):
    '''PyTorch-GAN's gan.py generator: the 0.8 given inside a helper, three layers.'''
    def __init__(self):
        super().__init__()

        def block(in_feat, out_feat, normalize=True):
            layers = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(*block(16, 128, normalize=False), *block(128, 256),
                                   *block(256, 512), *block(512, 1024), nn.Linear(1024, 64),
                                   nn.Tanh())

    def forward(self, z):
        return self.model(z)


class Scaled(nn.Module):
    '''A linear layer whose output variance is ``scale**2`` times a unit input's, then a norm.'''
    def __init__(self, norm, d=64, scale=1.0):
        super().__init__()
        self.fc = nn.Linear(d, d)
        nn.init.normal_(self.fc.weight, std=scale / d ** 0.5)
        nn.init.zeros_(self.fc.bias)
        self.norm = norm
        self.out = nn.Linear(d, 4)

    def forward(self, x):
        return self.out(self.norm(self.fc(x)))


class Convs(nn.Module):
    '''Conv, norm, conv: for BatchNorm2d, GroupNorm and InstanceNorm.'''
    def __init__(self, norm, scale=1.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        nn.init.normal_(self.conv.weight, std=scale / 27 ** 0.5)
        nn.init.zeros_(self.conv.bias)
        self.norm = norm
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))))


class Pixels(nn.Module):
    '''Unnormalized pixels (0..255, variance ~5e3) straight into a BatchNorm given eps=1.'''
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3, 1.0)
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(self.norm(x))


class Defaults(nn.Module):
    '''Every norm at its usual eps (1e-5, 1e-6, 1e-3, 1e-12, RMSNorm's None).'''
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.gn = nn.GroupNorm(4, 32, eps=1e-6)
        self.inorm = nn.InstanceNorm2d(32, eps=1e-3)
        self.fc = nn.Linear(32, 64)
        self.ln = nn.LayerNorm(64, eps=1e-12)
        self.rms = nn.RMSNorm(64)
        self.bn1 = nn.BatchNorm1d(64, 1e-3)  # a usual eps, given by position

    def forward(self, x):
        h = self.inorm(self.gn(self.bn(self.conv(x))))
        h = self.fc(h.amax((2, 3)))
        return self.bn1(self.rms(self.ln(h)))


class LayerNorm2d(nn.LayerNorm):
    '''Channels-first LayerNorm, as torchvision's and timm's ConvNeXt write it.'''
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def pixels():
    return torch.randint(0, 256, (4, 3, 16, 16)).float()
"""

# name -> (build, inputs, {norm: positional eps named}) for the norms the rule must flag; the
# truth computation decides which norms are damped, and the test checks the two agree.
CASES = {
    "GAN BatchNorm2d(128, 0.8)": ("Gan()", "torch.randn(8, 16)", {"blocks.3": True}),
    "GAN BatchNorm2d(128, momentum=0.8)": ("Gan(keyword=True)", "torch.randn(8, 16)", {}),
    "GAN generator, BatchNorm1d(out_feat, 0.8) in a helper": (
        "MlpGan()", "torch.randn(16, 16)",
        {"model.3": True, "model.6": True, "model.9": True}),
    "LayerNorm(eps=0.5), unit-variance input": ("Scaled(nn.LayerNorm(64, eps=0.5))",
                                                "torch.randn(32, 64)", {"norm": False}),
    "LayerNorm(eps=0.3): just beyond the threshold": ("Scaled(nn.LayerNorm(64, eps=0.3))",
                                                      "torch.randn(32, 64)", {"norm": False}),
    "LayerNorm(eps=0.2): just inside the threshold": ("Scaled(nn.LayerNorm(64, eps=0.2))",
                                                      "torch.randn(32, 64)", {}),
    "LayerNorm(d, 0.5) by position": ("Scaled(nn.LayerNorm(64, 0.5))", "torch.randn(32, 64)",
                                      {"norm": True}),
    "LayerNorm(eps=1.0) after a layer of variance 1e4": (
        "Scaled(nn.LayerNorm(64, eps=1.0), scale=100.0)", "torch.randn(32, 64)", {}),
    "RMSNorm(eps=0.5), unit-variance input": ("Scaled(nn.RMSNorm(64, eps=0.5))",
                                              "torch.randn(32, 64)", {"norm": False}),
    "GroupNorm(4, 32, eps=1.0)": ("Convs(nn.GroupNorm(4, 32, eps=1.0))",
                                  "torch.randn(4, 3, 16, 16)", {"norm": False}),
    "GroupNorm(4, 32, eps=1.0) on a variance of 1e4": (
        "Convs(nn.GroupNorm(4, 32, eps=1.0), scale=100.0)", "torch.randn(4, 3, 16, 16)", {}),
    "InstanceNorm2d(32, 0.8), no affine, by position": (
        "Convs(nn.InstanceNorm2d(32, 0.8))", "torch.randn(4, 3, 16, 16)", {"norm": True}),
    "BatchNorm2d(32, eps=0.05) on a variance of 0.01": (
        "Convs(nn.BatchNorm2d(32, eps=0.05), scale=0.1)", "torch.randn(4, 3, 16, 16)",
        {"norm": False}),
    "BatchNorm2d(3, 1.0) on raw pixels: the measurement overrules the call": (
        "Pixels()", "pixels()", {}),
    "every norm at a usual eps": ("Defaults()", "torch.randn(4, 3, 16, 16)", {}),
    "channels-first LayerNorm2d(32, eps=1.0)": ("Convs(LayerNorm2d(32, eps=1.0))",
                                                "torch.randn(4, 3, 16, 16)", {"norm": False}),
    # damped, but by a tiny input variance: a usual eps is never flagged (a note says it)
    "BatchNorm2d(32, eps=1e-3) on a variance of 1e-4": (
        "Convs(nn.BatchNorm2d(32, eps=1e-3), scale=0.01)", "torch.randn(4, 3, 16, 16)", {}),
}

THRESHOLD = 0.9
USUAL_EPS = 1e-3
NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
         nn.LayerNorm, nn.RMSNorm)


def _source(build: str, inputs: str | None) -> str:
    returned = build if inputs is None else f"{build}, {inputs}"
    return textwrap.dedent(HEAD) + f"\n\ndef build():\n    return {returned}\n"


def _lint(target: str, device: str | None = None):
    from biaslint.engine import lint_loaded
    from biaslint.load import load_target
    from biaslint.settings import Settings, TargetConfig

    torch.manual_seed(0)
    loaded = load_target(target, device=device)
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL013",)))
    assert not [n for n in result.notes if "crashed" in n], result.notes
    return result, loaded


def _groups(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The test's own grouping: (groups, entries) as each norm takes its statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return y.transpose(0, 1).reshape(y.shape[1], -1)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return y.reshape(y.shape[0] * y.shape[1], -1)
    if isinstance(module, nn.GroupNorm):
        return y.reshape(y.shape[0] * module.num_groups, -1)
    if type(module).__name__ == "LayerNorm2d":
        return y.movedim(1, -1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def _bare(module: nn.Module, eps: float) -> nn.Module:
    """A copy of the norm with eps set and its affine transform at identity, in training."""
    bare = copy.deepcopy(module).train()
    bare.eps = eps
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(bare, name, None)
            if isinstance(p, torch.Tensor):
                p.fill_(1.0 if name == "weight" else 0.0)
    return bare


def damping(model: nn.Module, inputs: tuple) -> dict[str, float]:
    """Per norm: the median over its groups of rms(output with its eps) / rms(output with
    eps=1e-5), on its input in the forward at init (groups whose output is zero left out)."""
    model = copy.deepcopy(model)
    fed: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            fed.setdefault(name, args[0].detach().clone())  # the first call's input
        return hook

    hooks = [m.register_forward_hook(keep(name)) for name, m in model.named_modules()
             if isinstance(m, NORMS)]
    with torch.no_grad():
        model(*inputs)
        for h in hooks:
            h.remove()
        result = {}
        for name, x in fed.items():
            module = model.get_submodule(name)
            rms = [_groups(module, _bare(module, eps)(x)).pow(2).mean(1).sqrt()
                   for eps in (module.eps, 1e-5)]
            live = rms[1] > 0
            result[name] = float((rms[0][live] / rms[1][live]).median())
    return result


@pytest.mark.parametrize("name", list(CASES))
def test_flags_exactly_the_norms_the_measurement_shows_damped(name, write_target):
    build, inputs, expected = CASES[name]
    result, loaded = _lint(write_target(_source(build, inputs)))
    measured = damping(loaded.model, loaded.inputs.args)
    damped = {norm for norm, factor in measured.items() if factor < THRESHOLD
              and loaded.model.get_submodule(norm).eps > USUAL_EPS}
    found = {f.module: f for f in result.findings if f.code == "BL013"}
    assert set(found) == damped == set(expected), (measured, [f.message for f in found.values()])
    for norm, finding in found.items():
        assert abs(finding.data["factor"] - measured[norm]) < 0.01, (finding.data, measured)
        assert finding.data["measured"] and finding.data["positional"] == expected[norm]
        type_name = type(loaded.model.get_submodule(norm)).__name__
        named = f"the second positional argument of {type_name} is eps"
        assert (named in finding.message) == expected[norm], finding.message
    # every norm the forward ran was judged: none passed silently
    (scope,) = [s for s in result.rules if s.code == "BL013"]
    assert scope.unjudged == () and scope.judged == len(measured)


def test_names_momentum_and_offers_the_keyword_fix(write_target):
    result, _ = _lint(write_target(_source("Gan()", "torch.randn(8, 16)")))
    (finding,) = result.findings
    assert finding.message.startswith(
        "the second positional argument of BatchNorm2d is eps, not momentum: eps=0.8")
    assert finding.fix is not None and finding.fix.code == "nn.BatchNorm2d(128, 0.8)".replace(
        "0.8", "momentum=0.8")
    assert "momentum=0.2" in finding.fix.title  # Keras' momentum=0.8, in PyTorch's terms
    assert finding.location is not None and finding.location.line > 0


def test_the_measurement_overrules_a_positional_eps_of_a_momentums_size(write_target):
    """eps=1 given by position on raw pixels (variance ~5e3) damps nothing: not a finding, a
    disagreement with what the call alone suggests."""
    result, _ = _lint(write_target(_source("Pixels()", "pixels()")))
    (scope,) = [s for s in result.rules if s.code == "BL013"]
    assert result.findings == () or not [f for f in result.findings if f.code == "BL013"]
    assert [d.layer for d in scope.disagreements] == ["norm"]
    assert "measured" in scope.disagreements[0].measured


@pytest.mark.parametrize("how", ["meta", "no inputs"])
def test_without_values_judges_the_call_alone_and_says_the_rest(how, write_target):
    build = ("nn.Sequential(Gan(), nn.Flatten(), nn.Linear(3 * 8 * 8, 64), "
             "nn.LayerNorm(64, eps=0.5))")
    target = write_target(_source(build, "torch.randn(8, 16)" if how == "meta" else None))
    result, _ = _lint(target, device="meta" if how == "meta" else None)
    assert {f.module for f in result.findings} == {"0.blocks.3"}
    (finding,) = result.findings
    assert "judged from the constructor call" in finding.message
    assert finding.data["measured"] is False and finding.data["positional"] is True
    (scope,) = [s for s in result.rules if s.code == "BL013"]
    reasons = dict(scope.unjudged)
    # the keyword eps of LayerNorm and the default BatchNorm: not judged, with why
    assert set(reasons) == {"0.blocks.0", "3"}
    assert all("real forward" in why for why in reasons.values())
    assert any("BL013" in note and "did not judge 2" in note for note in result.notes)


def test_the_cli_flags_the_bad_example_on_meta(write_target, cli):
    from biaslint.rules.bl013_implausible_norm_epsilon import ImplausibleNormEpsilon

    target = write_target(ImplausibleNormEpsilon.bad_example)
    out = cli(target, "--select", "BL013", "--device", "meta")
    assert out.exit_code == 1 and "is eps, not momentum: eps=0.8" in out.stdout
    good = write_target(ImplausibleNormEpsilon.good_example)
    assert cli(good, "--select", "BL013", "--device", "meta").exit_code == 0


def test_a_norm_on_a_constant_input_is_not_judged_and_says_why(write_target):
    """InstanceNorm's output averaged over its positions is zero in every channel: the
    BatchNorm after it sees a constant (to rounding) input, whose output is noise whatever
    eps is. Not a finding, and not a silent pass."""
    build = ("nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8), nn.AdaptiveAvgPool2d(1), "
             "nn.Flatten(), nn.BatchNorm1d(8, 1e-3))")
    result, _ = _lint(write_target(_source(build, "torch.randn(4, 3, 16, 16)")))
    assert [f for f in result.findings if f.code == "BL013"] == []
    (scope,) = [s for s in result.rules if s.code == "BL013"]
    assert [layer for layer, _ in scope.unjudged] == ["4"]
    assert "constant" in scope.unjudged[0][1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_low_precision_input_with_a_spread_is_judged(write_target, dtype):
    """In bfloat16, 100 units of the dtype's epsilon are 78% of a value: a conv's output at
    init (std about a third of its largest value) was taken for constant and the norm after it
    left unjudged."""
    build = f"nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).to(torch.{dtype})"
    result, _ = _lint(write_target(_source(build, f"torch.randn(4, 3, 8, 8).to(torch.{dtype})")))
    (scope,) = [s for s in result.rules if s.code == "BL013"]
    assert scope.judged == 1 and not scope.unjudged, scope.unjudged
    assert [f for f in result.findings if f.code == "BL013"] == []


def test_a_usual_eps_that_damps_is_a_note_not_a_finding(write_target):
    build, inputs, _ = CASES["BatchNorm2d(32, eps=1e-3) on a variance of 1e-4"]
    result, loaded = _lint(write_target(_source(build, inputs)))
    assert damping(loaded.model, loaded.inputs.args)["norm"] < 0.5  # damped, truly
    assert [f for f in result.findings if f.code == "BL013"] == []
    assert any(n.startswith("BL013: 1 norm(s) with a usual eps damp their input") and
               "norm: eps=0.001" in n for n in result.notes), result.notes
