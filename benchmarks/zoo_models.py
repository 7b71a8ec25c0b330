"""The zoo's models: each a builder returning ``(model, example_inputs)``, random init, offline.

Families are exposed as attribute namespaces so every model is also a biaslint target:
``biaslint benchmarks/zoo_models.py:TV.resnet18`` or ``...:HF.llama``. Models from other
libraries (diffusers, smp, MONAI, PEFT, ...) live in ``zoo_external.py`` and share one namespace:
``...:EXT.smp_unet``.

Input choices: batch 2, because BatchNorm after global pooling rejects a batch of one in
training mode; image sizes from each model's own config (timm ``pretrained_cfg``), 224 otherwise.
Detection models are put in eval mode: in training mode torchvision's detectors require targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import zoo_external  # a sibling file: biaslint and the zoo scripts put this folder on sys.path
import zoo_wide  # the wide zoo: every transformers architecture, every timm family

Builder = Callable[[], tuple[Any, Any]]

# --- torchvision ------------------------------------------------------------------------------

TV_CLASSIFICATION_SIZE = {"inception_v3": 299}


def _tv_names(module_name: str) -> list[str]:
    import torchvision.models as models
    from torchvision.models import list_models

    module = models if module_name == "" else getattr(models, module_name)
    return list_models(module=module)


def _tv_builder(kind: str, name: str) -> Builder:
    def build() -> tuple[Any, Any]:
        import torch
        import torchvision.models as models

        if kind == "classification":
            model = models.get_model(name, weights=None)
            size = TV_CLASSIFICATION_SIZE.get(name, 224)
            return model, torch.randn(2, 3, size, size)
        if kind == "quantization":
            model = models.get_model(name, weights=None, quantize=False)
            size = 299 if "inception" in name else 224
            return model, torch.randn(2, 3, size, size)
        if kind == "segmentation":
            model = models.get_model(name, weights=None, weights_backbone=None)
            return model, torch.randn(2, 3, 224, 224)
        if kind == "detection":
            model = models.get_model(name, weights=None, weights_backbone=None)
            model.eval()
            size = 320 if ("320" in name or "ssd" in name) else 256
            return model, ([torch.rand(3, size, size)],)
        if kind == "video":
            model = models.get_model(name, weights=None)
            return model, torch.randn(1, 3, 16, 224, 224)
        if kind == "optical_flow":
            model = models.get_model(name, weights=None)
            return model, (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
        raise ValueError(kind)

    build.__name__ = name
    return build


# --- timm -------------------------------------------------------------------------------------

# Small variants across families (CNNs, mobile nets, ViTs, hybrids, MLP-mixers, NFNets...).
TIMM_MODELS = """
resnet18 resnet26d resnet50d resnetv2_50 resnext26ts seresnext26d_32x4d ecaresnet26t skresnet18
res2net50_14w_8s resnest14d regnetx_002 regnety_002 regnetz_b16 efficientnet_b0
efficientnet_lite0 tf_efficientnetv2_b0 efficientnetv2_rw_t mobilenetv2_050 mobilenetv3_small_050
mobilenetv4_conv_small mnasnet_small fbnetc_100 ghostnet_050 ghostnetv2_100 lcnet_050 tinynet_e
mixnet_s rexnet_100 hardcorenas_a ese_vovnet19b_dw dla34 dpn48b densenet121 cspresnet50
cspdarknet53 darknet17 hrnet_w18_small repvgg_a0 repghostnet_050 mobileone_s0 fastvit_t8
efficientformer_l1 efficientformerv2_s0 levit_128s mobilevit_xxs mobilevitv2_050
edgenext_xx_small vit_tiny_patch16_224 vit_small_patch32_224 deit_tiny_patch16_224
deit_tiny_distilled_patch16_224 cait_xxs24_224 xcit_nano_12_p16_224 beit_base_patch16_224
swin_tiny_patch4_window7_224 swinv2_cr_tiny_ns_224 convnext_atto convnextv2_atto convit_tiny
crossvit_tiny_240 coat_lite_tiny twins_svt_small pvt_v2_b0 poolformer_s12 poolformerv2_s12
mixer_s32_224 resmlp_12_224 gmlp_ti16_224 nfnet_l0 dm_nfnet_f0 nf_resnet26 tresnet_m
inception_v3 inception_v4 xception41 gernet_s selecsls42b vgg11 sequencer2d_s tiny_vit_5m_224
maxvit_nano_rw_256 coatnet_nano_rw_224 nest_tiny gcvit_xxtiny davit_tiny efficientvit_b0
efficientvit_m0 inception_next_tiny hgnet_tiny hgnetv2_b0 rdnet_tiny eva02_tiny_patch14_224
hiera_tiny_224 volo_d1_224 pit_ti_224 visformer_tiny tnt_s_patch16_224 botnet26t_256
halonet26t lambda_resnet26t cs3darknet_s bat_resnext26ts convformer_s18 caformer_s18 starnet_s1
repvit_m0_9 fastvit_mci0 mambaout_femto nextvit_small
""".split()


def _timm_builder(name: str) -> Builder:
    def build() -> tuple[Any, Any]:
        import timm
        import torch

        model = timm.create_model(name, pretrained=False)
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        return model, torch.randn(2, *size)

    build.__name__ = name
    return build


# --- transformers: tiny configs ---------------------------------------------------------------

# Small sizes so a model builds in well under a second; structure (layers, heads, norms, heads)
# is what matters for the linter, not width.
_TEXT = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=128)
_DECODER = dict(_TEXT, num_key_value_heads=2)
_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               image_size=32, patch_size=8)


def _ids(n: int = 16, vocab: int = 512) -> Any:
    import torch

    return torch.randint(3, vocab, (2, n))


def _hf(config_name: str, model_name: str, config: dict[str, Any],
        inputs: Callable[[], dict[str, Any]]) -> Builder:
    def build() -> tuple[Any, Any]:
        import transformers  # noqa: F401

        cfg = getattr(transformers, config_name)(**config)
        model = getattr(transformers, model_name).from_config(cfg) \
            if model_name.startswith("Auto") else getattr(transformers, model_name)(cfg)
        return model, inputs()

    return build


def _text(**extra: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"input_ids": _ids(), **{k: v() for k, v in extra.items()}}


def _pixels(size: int = 32, channels: int = 3) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.randn(2, channels, size, size)}

    return make


def _hf_models() -> dict[str, Builder]:
    import torch

    seq2seq = dict(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                   decoder_ffn_dim=128, max_position_embeddings=128)
    dec_ids = {"decoder_input_ids": lambda: _ids(8)}
    return {
        "bert": _hf("BertConfig", "BertModel", _TEXT, _text()),
        "bert_cls": _hf("BertConfig", "BertForSequenceClassification", _TEXT, _text()),
        "roberta": _hf("RobertaConfig", "RobertaForMaskedLM", _TEXT, _text()),
        "distilbert": _hf("DistilBertConfig", "DistilBertModel",
                          dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, hidden_dim=128),
                          _text()),
        "albert": _hf("AlbertConfig", "AlbertModel", dict(_TEXT, embedding_size=32), _text()),
        "electra": _hf("ElectraConfig", "ElectraForPreTraining", dict(_TEXT, embedding_size=32),
                       _text()),
        "deberta_v2": _hf("DebertaV2Config", "DebertaV2Model", _TEXT, _text()),
        "gpt2": _hf("GPT2Config", "GPT2LMHeadModel",
                    dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                         bos_token_id=1, eos_token_id=2),
                    _text()),
        "gpt_neo": _hf("GPTNeoConfig", "GPTNeoModel",
                       dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]],
                            max_position_embeddings=128),
                       _text()),
        "opt": _hf("OPTConfig", "OPTForCausalLM",
                   dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=128),
                   _text()),
        "bloom": _hf("BloomConfig", "BloomModel",
                     dict(vocab_size=512, hidden_size=64, n_layer=2, n_head=4), _text()),
        "llama": _hf("LlamaConfig", "LlamaForCausalLM", _DECODER, _text()),
        "mistral": _hf("MistralConfig", "MistralModel", _DECODER, _text()),
        "qwen2": _hf("Qwen2Config", "Qwen2ForCausalLM", _DECODER, _text()),
        "qwen3": _hf("Qwen3Config", "Qwen3Model", dict(_DECODER, head_dim=16), _text()),
        "gemma": _hf("GemmaConfig", "GemmaForCausalLM", dict(_DECODER, head_dim=16), _text()),
        "phi": _hf("PhiConfig", "PhiForCausalLM", _TEXT, _text()),
        "phi3": _hf("Phi3Config", "Phi3Model", dict(_DECODER, pad_token_id=0), _text()),
        "falcon": _hf("FalconConfig", "FalconModel",
                      dict(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4), _text()),
        "t5": _hf("T5Config", "T5Model",
                  dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
                  _text(**dec_ids)),
        "bart": _hf("BartConfig", "BartModel", seq2seq, _text(**dec_ids)),
        "mbart": _hf("MBartConfig", "MBartForConditionalGeneration", seq2seq, _text(**dec_ids)),
        "vit": _hf("ViTConfig", "ViTForImageClassification", dict(_VISION, num_labels=10),
                   _pixels()),
        "swin": _hf("SwinConfig", "SwinModel",
                    dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                         num_heads=[2, 2], window_size=4), _pixels()),
        "convnext": _hf("ConvNextConfig", "ConvNextForImageClassification",
                        dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10),
                        _pixels()),
        "resnet": _hf("ResNetConfig", "ResNetModel",
                      dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]), _pixels()),
        "segformer": _hf("SegformerConfig", "SegformerForSemanticSegmentation",
                         dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                              hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                              decoder_hidden_size=32, num_labels=5), _pixels()),
        "clip": _hf("CLIPConfig", "CLIPModel",
                    dict(text_config=dict(_TEXT), vision_config=dict(_VISION), projection_dim=32),
                    lambda: {"input_ids": _ids(), "pixel_values": torch.randn(2, 3, 32, 32)}),
        "wav2vec2": _hf("Wav2Vec2Config", "Wav2Vec2Model",
                        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 2),
                             conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=4),
                        lambda: {"input_values": torch.randn(2, 4000)}),
        "whisper": _hf("WhisperConfig", "WhisperModel",
                       dict(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4,
                            encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                            max_source_positions=32, max_target_positions=64, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
                       lambda: {"input_features": torch.randn(2, 16, 64),
                                "decoder_input_ids": _ids(8)}),
    }


# --- families ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    attr: str
    names: Callable[[], list[str]]
    make: Callable[[str], Builder]


def _tv_family(kind: str, module: str) -> Family:
    return Family("TV", lambda: _tv_names(module), lambda name: _tv_builder(kind, name))


_HF_CACHE: dict[str, Builder] = {}


def _hf_builder(name: str) -> Builder:
    if not _HF_CACHE:
        _HF_CACHE.update(_hf_models())
    return _HF_CACHE[name]


def _ext_family(family: str) -> Family:
    return Family("EXT", lambda: zoo_external.names(family),
                  lambda name: zoo_external.builder(family, name))


FAMILIES: dict[str, Family] = {
    "tv-classification": _tv_family("classification", ""),
    "tv-detection": _tv_family("detection", "detection"),
    "tv-segmentation": _tv_family("segmentation", "segmentation"),
    "tv-video": _tv_family("video", "video"),
    "tv-optical-flow": _tv_family("optical_flow", "optical_flow"),
    "tv-quantization": _tv_family("quantization", "quantization"),
    "timm": Family("TIMM", lambda: list(TIMM_MODELS), _timm_builder),
    "hf": Family("HF", lambda: list(_hf_models()), _hf_builder),
    # one family per external library, all under the EXT namespace (zoo_external.py)
    **{family: _ext_family(family) for family in zoo_external.MODELS},
}


# The wide zoo (zoo_wide.py): not in FAMILIES, so the default sweeps stay as they were; recall.py
# accepts ``--family hf-all,timm-all``. Targets: ``zoo_models.py:HFALL.bert``, ``...:TIMMALL.vgg``.
WIDE_FAMILIES: dict[str, Family] = {
    "hf-all": Family("HFALL", lambda: zoo_wide.names("hf-all"),
                     lambda name: zoo_wide.builder("hf-all", name)),
    "timm-all": Family("TIMMALL", lambda: zoo_wide.names("timm-all"),
                       lambda name: zoo_wide.builder("timm-all", name)),
}


def import_library(family: str) -> None:
    """Import the family's library, so a timed build measures building, not importing."""
    if family.startswith("tv-"):
        import torchvision.models  # noqa: F401
    elif family in ("timm", "timm-all"):
        import timm  # noqa: F401
    elif family in ("hf", "hf-all"):
        import transformers  # noqa: F401

        transformers.logging.set_verbosity_error()
    elif family in zoo_external.LIBRARIES:
        zoo_external.import_library(family)


def builder_of(family: str, name: str) -> Builder:
    return {**FAMILIES, **WIDE_FAMILIES}[family].make(name)


class _Namespace:
    """``TV.resnet18`` -> a builder, so that ``zoo_models.py:TV.resnet18`` is a target."""

    def __init__(self, kinds: dict[str, str]) -> None:
        self._kinds = kinds  # family key per attr lookup order

    def __getattr__(self, name: str) -> Builder:
        if name.startswith("_"):
            raise AttributeError(name)
        for family in self._kinds:
            if name in FAMILIES[family].names():
                return builder_of(family, name)
        raise AttributeError(name)


TV = _Namespace({k: k for k in FAMILIES if k.startswith("tv-")})
TIMM = _Namespace({"timm": "timm"})
HF = _Namespace({"hf": "hf"})
EXT = _Namespace({family: family for family in zoo_external.MODELS})
HFALL = zoo_wide.HFALL
TIMMALL = zoo_wide.TIMMALL
