"""BL017 measured: each model is built for real twice, with its config's init scale as written
and at ten times it (same seed), and each weight's standard deviation is measured on the drawn
tensor. A weight whose std stays put while some other weight's moves ten-fold ignores the
config (the truth); which kind it is comes from the measured std too (the config's value, 1,
or PyTorch's default 1/sqrt(3 fan_in)). The rule, which reads only the recorded init laws of two
meta builds, must report exactly those weights, with those kinds, on real tensors and on
meta; the scheme kind (xavier here) only with ``report = "all"``."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch

HEAD = """
import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Config:
    width: int = 64
    init_std: float = 0.02


@dataclass
class TowerConfig:  # a sub-model's own config, with no init scale
    width: int = 64


class Tower(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.width, config.width)
        nn.init.normal_(self.proj.weight, std=getattr(config, "init_std", 0.02))

    def forward(self, x):
        return self.proj(x)


class Proj(nn.Module):  # a layer class that draws its own weight, as a library's Conv1D does
    def __init__(self, n, std):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))
        nn.init.normal_(self.weight, std=std)

    def forward(self, x):
        return x @ self.weight


class Net(nn.Module):
    def __init__(self, config, case):
        super().__init__()
        self.config = config
        w = config.width
        self.embed = nn.Embedding(50, w)
        self.inp = nn.Linear(w, w)
        self.mid = nn.Linear(w, w)
        self.out = nn.Linear(w, 10)
        self.tower = Tower(TowerConfig(w)) if case == "fallback" else None
        self.proj = Proj(w, 0.02 if case == "layer-literal" else 0.05) \
            if case.startswith("layer-") else None
        nn.init.normal_(self.inp.weight, std=config.init_std)
        nn.init.normal_(self.out.weight, std=config.init_std / 2)
        if case != "embedding-default":
            nn.init.normal_(self.embed.weight, std=config.init_std)
        if case in ("follows", "embedding-default", "fallback", "layer-literal", "layer-own"):
            nn.init.normal_(self.mid.weight, std=config.init_std)
        if case == "literal":
            nn.init.normal_(self.mid.weight, std=0.02)
        if case == "unit":
            nn.init.normal_(self.mid.weight)
        if case == "scheme":
            nn.init.xavier_uniform_(self.mid.weight)
        if case == "restated":
            nn.init.kaiming_uniform_(self.mid.weight, a=math.sqrt(5))
        if case == "none-follow":
            for layer in (self.inp, self.out, self.mid, self.embed):
                nn.init.xavier_uniform_(layer.weight)
        # "default": mid keeps nn.Linear's own init

    def forward(self, ids):
        h = self.inp(self.embed(ids))
        if self.tower is not None:
            h = self.tower(h)
        if self.proj is not None:
            h = self.proj(h)
        return self.out(torch.relu(self.mid(torch.relu(h))))
"""

CASES = ("follows", "literal", "unit", "default", "embedding-default", "restated", "scheme",
         "fallback", "layer-literal", "layer-own", "none-follow")
# How each case was built, which the measured std alone cannot tell: the weights an init call
# wrote after their constructor, and the weights of a sub-model whose config has no init scale.
EXPLICIT = {"unit": {"mid.weight"}, "scheme": {"mid.weight"}, "restated": {"mid.weight"},
            "literal": {"mid.weight"}}
UNGOVERNED = {"fallback": {"tower.proj.weight"}}


def _stds(namespace: dict, case: str, std: float) -> dict[str, float]:
    torch.manual_seed(0)
    model = namespace["Net"](namespace["Config"](init_std=std), case)
    return {n: float(p.detach().std()) for n, p in model.named_parameters() if p.dim() >= 2}


def _truth(namespace: dict, case: str) -> dict[str, str]:
    """Measured: weight -> kind, for the weights whose std does not follow init_std."""
    base, scaled = _stds(namespace, case, 0.02), _stds(namespace, case, 0.2)
    ratio = {n: scaled[n] / base[n] for n in base}
    if not any(r > 5 for r in ratio.values()):
        return {}  # nothing follows the config: nothing to ignore it against
    out = {}
    for name, r in ratio.items():
        if abs(r - 1) > 0.05:
            continue
        s, explicit = base[name], name in EXPLICIT.get(case, ())
        linear = name.endswith("weight") and not name.startswith("embed")
        if explicit and abs(s - 1) < 0.05 and linear:
            out[name] = "unit"  # a linear map drawn N(0, 1), under any config
        elif name in UNGOVERNED.get(case, ()):
            out[name] = "fallback"
        elif abs(s - 0.02) < 0.002:
            out[name] = "literal"
        elif not explicit:
            out[name] = "default"  # the layer's own draw, never replaced
        else:
            out[name] = "scheme"
    return out


def _lint(write_target, case: str, device: str | None, report: str = "mistakes"):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    target = write_target(HEAD + textwrap.dedent(f"""
        def build():
            return Net(Config(), {case!r}), torch.randint(0, 50, (4, 8))
        """))
    settings = Settings(select=("BL017",), rule_options={"BL017": {"report": report}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lint(TargetConfig.of(target=target, device=device), settings)
    assert result.error is None, result.error
    return result


@pytest.mark.parametrize("device", [None, "meta"])
@pytest.mark.parametrize("case", CASES)
def test_bl017_reports_exactly_the_weights_whose_measured_std_ignores_the_config(
        case, device, write_target):
    namespace: dict = {}
    exec(compile(HEAD, "<bl017>", "exec"), namespace)
    truth = _truth(namespace, case)
    mistakes = {n: k for n, k in truth.items() if k in ("literal", "unit", "default")}
    result = _lint(write_target, case, device)
    found = {f.data["parameter"]: f.data["kind"] for f in result.findings}
    assert found == mistakes, [f.message for f in result.findings]
    for f in result.findings:
        assert f.data["config"] == {"init_std": 0.02}
        assert f.data["follows"] in {n for n in truth.keys() ^ set(_stds(namespace, case, .02))}
        assert f.location is not None and f.location.line > 0
    (scope,) = [s for s in result.rules if s.code == "BL017"]
    assert scope.judged == scope.total and scope.total > 0
    everything = {f.data["parameter"]: f.data["kind"]
                  for f in _lint(write_target, case, device, report="all").findings}
    assert everything == truth


def test_cases_cover_every_kind():
    namespace: dict = {}
    exec(compile(HEAD, "<bl017>", "exec"), namespace)
    kinds = {k for case in CASES for k in _truth(namespace, case).values()}
    assert kinds == {"literal", "unit", "default", "scheme", "fallback"}
    assert _truth(namespace, "follows") == {} and _truth(namespace, "none-follow") == {}


def _gpt_like(name: str):
    import transformers

    make = {
        "openai-gpt": lambda r: transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
            vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
            initializer_range=r)),
        "imagegpt": lambda r: transformers.ImageGPTForCausalImageModeling(
            transformers.ImageGPTConfig(vocab_size=65, n_positions=32, n_embd=32, n_layer=2,
                                        n_head=2, initializer_range=r)),
    }[name]
    return make


@pytest.mark.parametrize("name", ["openai-gpt", "imagegpt"])
def test_bl017_on_transformers_conv1d_models_matches_their_drawn_weights(name, write_target):
    """The 2026 fix's three architectures: their Conv1D weights ignore initializer_range."""
    pytest.importorskip("transformers")
    make = _gpt_like(name)
    stds = []
    for r in (0.02, 0.2):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make(r)
        stds.append({n: float(p.detach().std()) for n, p in model.named_parameters()
                     if p.dim() >= 2 and float(p.detach().std()) > 0})
    ignoring = {n for n in stds[0] if abs(stds[1][n] / stds[0][n] - 1) < 0.05}
    assert any(stds[1][n] / stds[0][n] > 5 for n in stds[0])
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    cls = {"openai-gpt": ("OpenAIGPTLMHeadModel", "OpenAIGPTConfig", 64),
           "imagegpt": ("ImageGPTForCausalImageModeling", "ImageGPTConfig", 65)}[name]
    target = write_target(textwrap.dedent(f"""
        import torch
        import transformers

        def build():
            config = transformers.{cls[1]}(vocab_size={cls[2]}, n_positions=32, n_embd=32,
                                           n_layer=2, n_head=2)
            return transformers.{cls[0]}(config), torch.randint(0, 64, (2, 8))
        """))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lint(TargetConfig.of(target=target, device="meta"),
                      Settings(select=("BL017",)))
    assert result.error is None, result.error
    found = {f.data["parameter"] for f in result.findings}
    assert found == ignoring and len(found) in (4, 8)
    assert {f.data["kind"] for f in result.findings} == {"literal"}


def test_a_model_given_built_is_not_judged_with_the_reason():
    import biaslint

    namespace: dict = {}
    exec(compile(HEAD, "<bl017>", "exec"), namespace)
    model = namespace["Net"](namespace["Config"](), "literal")
    report = biaslint.check(model, torch.randint(0, 50, (4, 8)), select=("BL017",))
    assert report.findings == []
    (scope,) = [s for s in report.result.rules if s.code == "BL017"]
    assert scope.unjudged and all("given already built" in why for _, why in scope.unjudged)


def test_a_second_build_that_fails_leaves_the_layers_not_judged(write_target):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    target = write_target(HEAD + textwrap.dedent("""
        def build():
            config = Config()
            assert config.init_std < 0.1, "this build takes only small scales"
            return Net(config, "literal"), torch.randint(0, 50, (4, 8))
        """))
    result = lint(TargetConfig.of(target=target), Settings(select=("BL017",)))
    assert result.error is None and result.findings == ()
    (scope,) = [s for s in result.rules if s.code == "BL017"]
    assert scope.unjudged and all("only small scales" in why for _, why in scope.unjudged)


@pytest.mark.parametrize("make", ["types.SimpleNamespace(width=64, init_std=0.02)",
                                  "{'width': 64, 'init_std': 0.02}"])
def test_a_config_whose_reads_cannot_be_changed_leaves_the_layers_not_judged(make,
                                                                            write_target):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    target = write_target(HEAD + textwrap.dedent("""
        import types


        class Flat(nn.Module):  # reads its config as the config's type allows
            def __init__(self, config):
                super().__init__()
                self.config = config
                std = config["init_std"] if isinstance(config, dict) else config.init_std
                self.a, self.b = nn.Embedding(50, 64), nn.Linear(64, 64)
                nn.init.normal_(self.a.weight, std=std)
                nn.init.normal_(self.b.weight, std=0.02)

            def forward(self, ids):
                return self.b(self.a(ids))

        def build():
            config = MAKE
            return Flat(config), torch.randint(0, 50, (4, 8))
        """).replace("MAKE", make))
    result = lint(TargetConfig.of(target=target), Settings(select=("BL017",)))
    assert result.error is None and result.findings == ()
    (scope,) = [s for s in result.rules if s.code == "BL017"]
    shown = "SimpleNamespace" if "Namespace" in make else "dict"
    assert scope.unjudged and all(shown in why for _, why in scope.unjudged)


def test_a_model_without_a_config_is_out_of_scope(write_target):
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    target = write_target(textwrap.dedent("""
        import torch
        import torch.nn as nn

        def build():
            return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(4, 8)
        """))
    result = lint(TargetConfig.of(target=target), Settings(select=("BL017",)))
    (scope,) = [s for s in result.rules if s.code == "BL017"]
    assert result.findings == () and scope.total == 0 and not scope.unjudged


PEFT_TARGET = """
import torch
import transformers
from peft import LoraConfig, get_peft_model


def model(r):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, initializer_range=r)
    base = transformers.LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights="gaussian")
    return get_peft_model(base, lora)


def build():
    return model(0.02), torch.randint(0, 64, (2, 8))
"""


def test_an_adapter_another_library_adds_is_not_the_configs(write_target):
    """peft's LoRA weights are drawn by peft whatever the base model's initializer_range says
    (measured); that is the adapter's scheme, not the config's literal: quiet by default, the
    fallback kind with report="all"."""
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    namespace: dict = {}
    exec(compile(PEFT_TARGET, "<peft>", "exec"), namespace)
    stds = []
    for r in (0.02, 0.2):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = namespace["model"](r)
        stds.append({n: float(p.detach().std()) for n, p in built.named_parameters()
                     if p.dim() >= 2 and float(p.detach().std()) > 0})
    lora = {n for n in stds[0] if "lora_A" in n}
    assert lora and all(abs(stds[1][n] / stds[0][n] - 1) < 0.05 for n in lora)
    assert any(stds[1][n] / stds[0][n] > 5 for n in stds[0] if "lora" not in n)

    target = write_target(PEFT_TARGET)
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = lint(TargetConfig.of(target=target), Settings(select=("BL017",)))
        everything = lint(TargetConfig.of(target=target),
                          Settings(select=("BL017",), rule_options={"BL017": {"report": "all"}}))
    assert quiet.error is None and quiet.findings == ()
    kinds = {f.data["parameter"]: f.data["kind"] for f in everything.findings}
    assert {n for n in kinds if "lora_A" in n} == lora
    assert {kinds[n] for n in lora} == {"fallback"}
