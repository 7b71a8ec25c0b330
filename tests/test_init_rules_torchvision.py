"""Slow sweep: BL003, BL004 and BL005 stay quiet on real models at their own default init.

* every torchvision classification model (weights=None), BL005 with uniform priors over its 1000
  classes. To stay within ~5 minutes on 2 cores, models above 60M parameters run only as one
  representative per architecture family (KEEP below: each skipped model shares its init code
  with a kept sibling, e.g. vgg13/vgg19 with vgg11/vgg16_bn, vit_l/vit_h with vit_b_16,
  regnet_y_128gf with regnet_y_16gf). BIASLINT_FULL_SWEEP=1 runs all of them; the full sweep
  was run and was quiet too.
* a handful of timm models, and BERT / GPT-2 built offline from tiny configs (width >= 256,
  std 0.02), with example inputs so the transformers graphs trace.
"""

from __future__ import annotations

import os

import pytest
import torch

from biaslint.engine import lint_loaded
from biaslint.load import ExampleInputs, LoadedTarget
from biaslint.load.build import module_sites_of, param_inits_of
from biaslint.load.sites import record_build
from biaslint.settings import Settings, TargetConfig

RULES = ("BL003", "BL004", "BL005")
MAX_PARAMS = 60_000_000
KEEP = {"alexnet", "vgg11", "vgg16_bn", "vit_b_16", "convnext_base", "swin_v2_b", "swin_b",
        "regnet_y_16gf", "regnet_x_32gf", "resnext101_64x4d", "wide_resnet50_2",
        "efficientnet_v2_l"}


def _classification_models() -> list[str]:
    try:
        import torchvision.models as tvm
    except ImportError:  # pragma: no cover - torchvision is a dev dependency
        return []
    names = []
    for name in tvm.list_models(module=tvm):
        params = tvm.get_model_weights(name).DEFAULT.meta.get("num_params", 0)
        if params <= MAX_PARAMS or name in KEEP or os.environ.get("BIASLINT_FULL_SWEEP") == "1":
            names.append(name)
    return names


def _lint(name: str, build, inputs: ExampleInputs | None = None, priors=None):
    torch.manual_seed(0)
    with record_build() as record:
        model = build()
    loaded = LoadedTarget(name=name, model=model, inputs=inputs,
                          module_sites=module_sites_of(model, record),
                          param_inits=param_inits_of(model, record))
    result = lint_loaded(loaded, TargetConfig.of(target=name, class_priors=priors),
                         Settings(select=RULES))
    crashed = [n for n in result.notes if "crashed" in n]
    assert not crashed, crashed
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", _classification_models())
def test_torchvision_classification_is_quiet(name: str) -> None:
    import torchvision.models as tvm

    result = _lint(name, lambda: tvm.get_model(name, weights=None),
                   priors=tuple([1 / 1000] * 1000))
    assert result.coverage is not None and result.coverage.ratio > 0.9
    assert result.findings == (), [f.message for f in result.findings]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convnext_atto", "mixer_s16_224",
                                  "levit_128s", "efficientnet_b0", "resnet26"])
def test_timm_is_quiet(name: str) -> None:
    timm = pytest.importorskip("timm")
    result = _lint(name, lambda: timm.create_model(name, pretrained=False),
                   priors=tuple([1 / 1000] * 1000))
    assert result.coverage is not None and result.coverage.ratio > 0.9
    assert result.findings == (), [f.message for f in result.findings]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("width", [256, 512])
def test_transformers_std_002_is_quiet(kind: str, width: int) -> None:
    transformers = pytest.importorskip("transformers")
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=width, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=4 * width,
                                         vocab_size=100)
    else:
        config = transformers.GPT2Config(n_embd=width, n_layer=2, n_head=4, vocab_size=100,
                                         bos_token_id=0, eos_token_id=0)
    inputs = ExampleInputs(kwargs={"input_ids": torch.randint(0, 100, (2, 16))})
    result = _lint(kind, lambda: transformers.AutoModel.from_config(config), inputs)
    assert result.coverage is not None and result.coverage.ratio > 0.9
    assert result.findings == (), [f.message for f in result.findings]
