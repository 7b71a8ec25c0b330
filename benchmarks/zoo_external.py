"""The external zoo: models from libraries we do not own, each a builder returning
``(model, example_inputs)``, random init, offline, small enough to build and run in seconds.

Exposed by ``zoo_models.py`` as ``EXT``: ``biaslint benchmarks/zoo_models.py:EXT.smp_unet``.
Builders follow the zoo's input conventions: a tensor is called as ``model(x)``, a tuple as
``model(*inputs)``, a dict as ``model(**inputs)``. Batch 2 (BatchNorm in training mode rejects
a batch of one after global pooling); every builder seeds ``torch.manual_seed(0)`` first so
weights and inputs repeat. Every model stays in training mode: none of these libraries needs
eval mode for a plain forward. Libraries are imported inside the builders, so listing the names
imports nothing heavy.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any, Callable

# Same shape as ``zoo_models.Builder``; repeated here so ``zoo_models`` can import this file
# without an import cycle.
Builder = Callable[[], tuple[Any, Any]]

# family -> model name -> builder, filled by ``@_model`` below in definition order.
MODELS: dict[str, dict[str, Builder]] = {}


def _model(family: str) -> Callable[[Callable[[], tuple[Any, Any]]], Builder]:
    """Register ``make`` under its own name in ``family``, seeding torch before each build."""

    def register(make: Callable[[], tuple[Any, Any]]) -> Builder:
        @functools.wraps(make)
        def build() -> tuple[Any, Any]:
            import torch

            torch.manual_seed(0)
            return make()

        # Names are attributes of one namespace (``EXT``) across families: unique, and prefixed
        # by the family so a target says where the model comes from.
        assert make.__name__.startswith(family.replace("-", "_") + "_"), make.__name__
        taken = [f for f, models in MODELS.items() if make.__name__ in models]
        assert not taken, f"{make.__name__} already registered in {taken}"
        MODELS.setdefault(family, {})[make.__name__] = build
        return build

    return register


# --- shared inputs ----------------------------------------------------------------------------

BATCH = 2


def _images(size: int, channels: int = 3) -> Any:
    import torch

    return torch.randn(BATCH, channels, size, size)


def _timesteps(high: int = 1000) -> Any:
    """One integer diffusion step per sample, as the schedulers feed them (a long tensor)."""
    import torch

    return torch.randint(0, high, (BATCH,))


def _tokens(length: int = 16, vocab: int = 512) -> Any:
    import torch

    return torch.randint(3, vocab, (BATCH, length))  # above the usual pad/bos/eos ids


# --- diffusers --------------------------------------------------------------------------------

# Two resolution levels with GroupNorm over 8 groups: enough to keep the down/mid/up structure,
# attention and time embeddings while staying far below a second to build.
_DIFFUSERS_CHANNELS = (32, 64)
_DIFFUSERS_GROUPS = 8


def _pixel_unet(**extra: Any) -> Any:
    """UNet2DModel with one plain and one attention level, shared by the pixel-space UNets."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, block_out_channels=_DIFFUSERS_CHANNELS, layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=_DIFFUSERS_GROUPS, attention_head_dim=16, **extra)


@_model("diffusers")
def diffusers_unet2d() -> tuple[Any, Any]:
    """DDPM-style pixel-space UNet2DModel."""
    return _pixel_unet(), (_images(32), _timesteps())


@_model("diffusers")
def diffusers_unet2d_class_cond() -> tuple[Any, Any]:
    """UNet2DModel with a class embedding added to the time embedding (scale-shift norms)."""
    import torch

    model = _pixel_unet(resnet_time_scale_shift="scale_shift", num_class_embeds=10)
    return model, (_images(32), _timesteps(), torch.randint(0, 10, (BATCH,)))


def _cross_attention_unet_config() -> dict[str, Any]:
    """Stable Diffusion's layout (cross-attention down blocks), shrunk; shared with ControlNet."""
    return dict(
        block_out_channels=_DIFFUSERS_CHANNELS, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        norm_num_groups=_DIFFUSERS_GROUPS, cross_attention_dim=32, attention_head_dim=8)


def _text_condition(length: int = 8, dim: int = 32) -> Any:
    import torch

    return torch.randn(BATCH, length, dim)


@_model("diffusers")
def diffusers_unet2d_condition() -> tuple[Any, Any]:
    """Latent UNet2DConditionModel (Stable Diffusion layout) cross-attending to text states."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=16, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **_cross_attention_unet_config())
    return model, {"sample": _images(16, 4), "timestep": _timesteps(),
                   "encoder_hidden_states": _text_condition()}


@_model("diffusers")
def diffusers_controlnet() -> tuple[Any, Any]:
    """ControlNetModel: the UNet encoder plus zero convs, conditioned on an 8x larger image."""
    from diffusers import ControlNetModel

    model = ControlNetModel(conditioning_embedding_out_channels=(8, 16, 32, 32),
                            **_cross_attention_unet_config())
    return model, {"sample": _images(16, 4), "timestep": _timesteps(),
                   "encoder_hidden_states": _text_condition(), "controlnet_cond": _images(128)}


@_model("diffusers")
def diffusers_autoencoder_kl() -> tuple[Any, Any]:
    """AutoencoderKL (the SD VAE) with two levels; forward encodes and decodes the mode."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL(
        block_out_channels=_DIFFUSERS_CHANNELS, norm_num_groups=_DIFFUSERS_GROUPS,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, sample_size=32)
    return model, _images(32)


@_model("diffusers")
def diffusers_vq() -> tuple[Any, Any]:
    """VQModel (VQ-GAN autoencoder) with a 64-entry codebook."""
    from diffusers import VQModel

    model = VQModel(
        block_out_channels=_DIFFUSERS_CHANNELS, norm_num_groups=_DIFFUSERS_GROUPS,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, num_vq_embeddings=64, sample_size=32)
    return model, _images(32)


@_model("diffusers")
def diffusers_autoencoder_tiny() -> tuple[Any, Any]:
    """AutoencoderTiny (TAESD): plain conv/ReLU blocks, no norms."""
    from diffusers import AutoencoderTiny

    model = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16),
                            decoder_block_out_channels=(16, 16, 16, 16),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    return model, _images(32)


@_model("diffusers")
def diffusers_unet1d() -> tuple[Any, Any]:
    """UNet1DModel (Dance Diffusion layout) on a 2-channel 256-sample signal."""
    import torch
    from diffusers import UNet1DModel

    # The Fourier time features are concatenated to the signal as extra input channels, so
    # extra_in_channels must equal time_embedding_dim (the library does not derive it).
    # Default widths (32, 32, 64): the 1D attention blocks use channels // 32 heads.
    model = UNet1DModel(sample_size=256, time_embedding_dim=16, extra_in_channels=16)
    return model, (torch.randn(BATCH, 2, 256), _timesteps())


@_model("diffusers")
def diffusers_dit() -> tuple[Any, Any]:
    """DiTTransformer2DModel: class-conditional transformer with adaLN-Zero."""
    import torch
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  num_layers=2, sample_size=8, patch_size=2,
                                  num_embeds_ada_norm=10)
    return model, {"hidden_states": _images(8, 4), "timestep": _timesteps(),
                   "class_labels": torch.randint(0, 10, (BATCH,))}


@_model("diffusers")
def diffusers_sd3_transformer() -> tuple[Any, Any]:
    """SD3Transformer2DModel: MM-DiT joint attention over image patches and text tokens."""
    import torch
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        caption_projection_dim=32, pooled_projection_dim=16, pos_embed_max_size=16)
    return model, {"hidden_states": _images(16, 4), "encoder_hidden_states": _text_condition(),
                   "pooled_projections": torch.randn(BATCH, 16), "timestep": _timesteps()}


# --- segmentation_models_pytorch --------------------------------------------------------------

# A resnet18 encoder without weights everywhere: the decoders differ, the encoder is the cheap
# common one. 128 px because PAN's pyramid attention halves its stride-16 map three more times
# (at 64 px it pools below 1x1 and fails).
_SMP_SIZE = 128


def _smp(architecture: str, **kwargs: Any) -> tuple[Any, Any]:
    import segmentation_models_pytorch as smp

    options: dict[str, Any] = dict(encoder_name="resnet18", encoder_weights=None, classes=3)
    model = getattr(smp, architecture)(**(options | kwargs))
    return model, _images(_SMP_SIZE)


@_model("smp")
def smp_unet() -> tuple[Any, Any]:
    return _smp("Unet")


@_model("smp")
def smp_unetplusplus() -> tuple[Any, Any]:
    return _smp("UnetPlusPlus")


@_model("smp")
def smp_unet_scse() -> tuple[Any, Any]:
    """Unet whose decoder blocks carry spatial/channel squeeze-excitation attention."""
    return _smp("Unet", decoder_attention_type="scse")


@_model("smp")
def smp_fpn() -> tuple[Any, Any]:
    return _smp("FPN")


@_model("smp")
def smp_pspnet_depth3() -> tuple[Any, Any]:
    """PSPNet on a 3-stage encoder, so the pyramid pools a 16x16 map."""
    return _smp("PSPNet", encoder_depth=3)


@_model("smp")
def smp_deeplabv3() -> tuple[Any, Any]:
    return _smp("DeepLabV3")


@_model("smp")
def smp_deeplabv3plus() -> tuple[Any, Any]:
    return _smp("DeepLabV3Plus")


@_model("smp")
def smp_linknet() -> tuple[Any, Any]:
    return _smp("Linknet")


@_model("smp")
def smp_manet() -> tuple[Any, Any]:
    return _smp("MAnet")


@_model("smp")
def smp_pan() -> tuple[Any, Any]:
    return _smp("PAN")


@_model("smp")
def smp_upernet() -> tuple[Any, Any]:
    return _smp("UPerNet")


@_model("smp")
def smp_segformer() -> tuple[Any, Any]:
    """Segformer's all-MLP decoder on the resnet18 encoder (not MiT, to stay small)."""
    return _smp("Segformer")


@_model("smp")
def smp_unet_aux() -> tuple[Any, Any]:
    """Unet with a classification head on the encoder (forward returns masks and labels)."""
    return _smp("Unet", aux_params=dict(classes=4, dropout=0.2))


# --- MONAI ------------------------------------------------------------------------------------

# 2D where the network allows it (3D convs at useful sizes are slow on CPU), one channel in as
# for medical scans, 64 px: divisible by the 2**5 the deepest networks downsample by.
_MONAI_SIZE = 64


def _scan(size: int = _MONAI_SIZE, dims: int = 2) -> Any:
    import torch

    return torch.randn(BATCH, 1, *([size] * dims))


@_model("monai")
def monai_unet() -> tuple[Any, Any]:
    """MONAI UNet with residual units (instance norm, PReLU)."""
    from monai.networks.nets import UNet

    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32, 64),
                 strides=(2, 2, 2), num_res_units=2)
    return model, _scan()


@_model("monai")
def monai_unet_3d_batchnorm() -> tuple[Any, Any]:
    """The same UNet in 3D with BatchNorm instead of InstanceNorm, on 32**3 volumes."""
    from monai.networks.nets import UNet

    model = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32),
                 strides=(2, 2), num_res_units=1, norm="batch")
    return model, _scan(32, dims=3)


@_model("monai")
def monai_basic_unet() -> tuple[Any, Any]:
    from monai.networks.nets import BasicUNet

    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2,
                      features=(8, 8, 16, 32, 64, 8))
    return model, _scan()


@_model("monai")
def monai_swin_unetr() -> tuple[Any, Any]:
    """SwinUNETR: Swin transformer encoder with a conv decoder (feature_size a multiple of 12)."""
    from monai.networks.nets import SwinUNETR

    model = SwinUNETR(in_channels=1, out_channels=2, spatial_dims=2, feature_size=12,
                      depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)
    return model, _scan()


@_model("monai")
def monai_unetr() -> tuple[Any, Any]:
    """UNETR: plain ViT encoder whose hidden states feed a conv decoder."""
    from monai.networks.nets import UNETR

    model = UNETR(in_channels=1, out_channels=2, img_size=_MONAI_SIZE, spatial_dims=2,
                  feature_size=8, hidden_size=64, mlp_dim=128, num_heads=4)
    return model, _scan()


@_model("monai")
def monai_dynunet() -> tuple[Any, Any]:
    """DynUNet (nnU-Net layout) with residual blocks and a deep supervision head.

    In training mode the output stacks the heads: [batch, 1 + deep_supr_num, classes, H, W].
    """
    from monai.networks.nets import DynUNet

    model = DynUNet(spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3],
                    strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                    filters=[8, 16, 32, 64], res_block=True, deep_supervision=True,
                    deep_supr_num=1)
    return model, _scan()


@_model("monai")
def monai_segresnet() -> tuple[Any, Any]:
    from monai.networks.nets import SegResNet

    model = SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2)
    return model, _scan()


@_model("monai")
def monai_attention_unet() -> tuple[Any, Any]:
    from monai.networks.nets import AttentionUnet

    model = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2,
                          channels=(8, 16, 32, 64), strides=(2, 2, 2))
    return model, _scan()


@_model("monai")
def monai_vnet() -> tuple[Any, Any]:
    """VNet (fixed widths 16..256) in 2D; its dropout is on by default."""
    from monai.networks.nets import VNet

    # dropout_dim defaults to 3 (Dropout3d) whatever spatial_dims is; 2D maps want Dropout2d.
    model = VNet(spatial_dims=2, in_channels=1, out_channels=2, dropout_dim=2)
    return model, _scan()


@_model("monai")
def monai_densenet121() -> tuple[Any, Any]:
    """DenseNet121 classifier in 2D (MONAI's own implementation, no torchvision weights)."""
    from monai.networks.nets import DenseNet121

    model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3, pretrained=False)
    return model, _scan()


# --- PEFT -------------------------------------------------------------------------------------

# Tiny transformers configs as base models (the HF family's sizes): adapters are what differ.
_LLAMA = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)
_GPT2 = dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1,
             eos_token_id=2)
_LLAMA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_LLAMA))


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(**_GPT2))


def _mlp() -> Any:
    """A plain MLP as a non-transformers base model; adapters target its Linear layers by index."""
    from torch import nn

    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def _cnn() -> Any:
    """A small conv net with BatchNorm: a base for adapters on Conv2d layers."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _peft(base: Any, config: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(base, config)


def _text_inputs() -> dict[str, Any]:
    return {"input_ids": _tokens()}


@_model("peft")
def peft_lora_llama() -> tuple[Any, Any]:
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.1,
                        target_modules=_LLAMA_ATTENTION)
    return _peft(_llama(), config), _text_inputs()


@_model("peft")
def peft_dora_llama() -> tuple[Any, Any]:
    """DoRA: LoRA plus a learned magnitude vector per output row."""
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, use_dora=True,
                        target_modules=_LLAMA_ATTENTION + ["gate_proj", "up_proj", "down_proj"])
    return _peft(_llama(), config), _text_inputs()


@_model("peft")
def peft_lora_gpt2_bias() -> tuple[Any, Any]:
    """LoRA on GPT-2's fused Conv1D projections, also training all biases (bias="all")."""
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, fan_in_fan_out=True,
                        bias="all", target_modules=["c_attn", "c_proj"])
    return _peft(_gpt2(), config), _text_inputs()


@_model("peft")
def peft_ia3_gpt2() -> tuple[Any, Any]:
    """IA3: learned rescaling of GPT-2's fused qkv output and of its MLP projection's input."""
    from peft import IA3Config

    config = IA3Config(task_type="CAUSAL_LM", target_modules=["c_attn", "mlp.c_proj"],
                       feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True)
    return _peft(_gpt2(), config), _text_inputs()


@_model("peft")
def peft_adalora_llama() -> tuple[Any, Any]:
    """AdaLoRA: SVD-form adapters whose rank is pruned over a training schedule."""
    from peft import AdaLoraConfig

    config = AdaLoraConfig(task_type="CAUSAL_LM", init_r=6, target_r=4, total_step=100,
                           target_modules=["q_proj", "v_proj"])
    return _peft(_llama(), config), _text_inputs()


@_model("peft")
def peft_prompt_tuning_llama() -> tuple[Any, Any]:
    """Prompt tuning: 4 learned virtual tokens, randomly initialized (no tokenizer download)."""
    from peft import PromptTuningConfig

    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                prompt_tuning_init="RANDOM")
    return _peft(_llama(), config), _text_inputs()


@_model("peft")
def peft_loha_mlp() -> tuple[Any, Any]:
    """LoHa (Hadamard product of low-rank pairs) on a plain MLP's Linear layers."""
    import torch
    from peft import LoHaConfig

    config = LoHaConfig(r=4, alpha=8, target_modules=["0", "2", "4"])
    return _peft(_mlp(), config), torch.randn(BATCH, 32)


@_model("peft")
def peft_lokr_cnn() -> tuple[Any, Any]:
    """LoKr (Kronecker-factored adapters) on a small CNN's Conv2d layers and its head."""
    from peft import LoKrConfig

    config = LoKrConfig(r=4, alpha=8, target_modules=["0", "3", "8"])
    return _peft(_cnn(), config), _images(16)


@_model("peft")
def peft_lora_cnn_modules_to_save() -> tuple[Any, Any]:
    """LoRA on Conv2d layers, with the head replaced by a trainable copy (modules_to_save)."""
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["0", "3"], modules_to_save=["8"])
    return _peft(_cnn(), config), _images(16)


# --- x-transformers ---------------------------------------------------------------------------

_XT_LAYERS = dict(dim=64, depth=2, heads=4, attn_dim_head=16)
_XT_VOCAB = 512
_XT_MAX_LEN = 64


@_model("x-transformers")
def x_transformers_decoder() -> tuple[Any, Any]:
    """Causal language model: TransformerWrapper around a Decoder."""
    from x_transformers import Decoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=_XT_VOCAB, max_seq_len=_XT_MAX_LEN,
                               attn_layers=Decoder(**_XT_LAYERS))
    return model, _tokens()


@_model("x-transformers")
def x_transformers_decoder_llama_like() -> tuple[Any, Any]:
    """Decoder with RMSNorm, rotary positions, GLU feed-forward, no biases and no abs. pos."""
    from x_transformers import Decoder, TransformerWrapper

    # Rotary over the whole 32-wide head, as Llama does (x-transformers warns below 32).
    layers = Decoder(**(_XT_LAYERS | dict(heads=2, attn_dim_head=32)), use_rmsnorm=True,
                     rotary_pos_emb=True, rotary_emb_dim=32, ff_glu=True, ff_swish=True,
                     ff_no_bias=True, attn_qk_norm=True)
    model = TransformerWrapper(num_tokens=_XT_VOCAB, max_seq_len=_XT_MAX_LEN,
                               attn_layers=layers, use_abs_pos_emb=False)
    return model, _tokens()


@_model("x-transformers")
def x_transformers_encoder() -> tuple[Any, Any]:
    """BERT-like bidirectional Encoder with ALiBi position bias and pre-norm residuals."""
    from x_transformers import Encoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=_XT_VOCAB, max_seq_len=_XT_MAX_LEN,
                               attn_layers=Encoder(**_XT_LAYERS, alibi_pos_bias=True),
                               use_abs_pos_emb=False)
    return model, _tokens()


@_model("x-transformers")
def x_transformers_vit() -> tuple[Any, Any]:
    from x_transformers import Encoder, ViTransformerWrapper

    model = ViTransformerWrapper(image_size=32, patch_size=8, num_classes=10,
                                 attn_layers=Encoder(**_XT_LAYERS))
    return model, _images(32)


@_model("x-transformers")
def x_transformers_encoder_decoder() -> tuple[Any, Any]:
    """XTransformer (encoder-decoder); forward returns the decoder's autoregressive loss."""
    from x_transformers import XTransformer

    model = XTransformer(dim=64, enc_num_tokens=_XT_VOCAB, enc_depth=2, enc_heads=4,
                         enc_max_seq_len=_XT_MAX_LEN, dec_num_tokens=_XT_VOCAB, dec_depth=2,
                         dec_heads=4, dec_max_seq_len=_XT_MAX_LEN)
    return model, (_tokens(16), _tokens(12))


@_model("x-transformers")
def x_transformers_continuous() -> tuple[Any, Any]:
    """ContinuousTransformerWrapper: projects real-valued frames in and out of an Encoder."""
    import torch
    from x_transformers import ContinuousTransformerWrapper, Encoder

    model = ContinuousTransformerWrapper(dim_in=16, dim_out=8, max_seq_len=_XT_MAX_LEN,
                                         attn_layers=Encoder(**_XT_LAYERS))
    return model, torch.randn(BATCH, 20, 16)


# --- vit-pytorch ------------------------------------------------------------------------------

_VIT_SIZE = 32
_VIT = dict(num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128, dim_head=16)


@_model("vit-pytorch")
def vit_pytorch_vit() -> tuple[Any, Any]:
    from vit_pytorch import ViT

    return ViT(image_size=_VIT_SIZE, patch_size=8, **_VIT), _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_simple_vit() -> tuple[Any, Any]:
    """SimpleViT: sincos positions, mean pooling, no dropout or class token."""
    from vit_pytorch import SimpleViT

    return SimpleViT(image_size=_VIT_SIZE, patch_size=8, **_VIT), _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_cait() -> tuple[Any, Any]:
    """CaiT: LayerScale blocks, then class-attention layers."""
    from vit_pytorch.cait import CaiT

    model = CaiT(image_size=_VIT_SIZE, patch_size=8, cls_depth=1, **_VIT)
    return model, _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_deepvit() -> tuple[Any, Any]:
    """DeepViT: re-attention (a learned mixing of attention maps across heads)."""
    from vit_pytorch.deepvit import DeepViT

    return DeepViT(image_size=_VIT_SIZE, patch_size=8, **_VIT), _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_levit() -> tuple[Any, Any]:
    """LeViT: conv stem then attention stages with shrinking maps, BatchNorm throughout."""
    from vit_pytorch.levit import LeViT

    model = LeViT(image_size=64, num_classes=10, stages=3, dim=(32, 48, 64), depth=1,
                  heads=(2, 3, 4), mlp_mult=2, dim_key=16, dim_value=16)
    return model, _images(64)


@_model("vit-pytorch")
def vit_pytorch_crossvit() -> tuple[Any, Any]:
    """CrossViT: two patch sizes in two branches exchanging class tokens by cross-attention."""
    from vit_pytorch.cross_vit import CrossViT

    model = CrossViT(image_size=_VIT_SIZE, num_classes=10, sm_dim=32, lg_dim=64,
                     sm_patch_size=4, sm_enc_depth=1, sm_enc_heads=2, sm_enc_mlp_dim=64,
                     sm_enc_dim_head=16, lg_patch_size=8, lg_enc_depth=1, lg_enc_heads=4,
                     lg_enc_mlp_dim=128, lg_enc_dim_head=16, cross_attn_depth=1,
                     cross_attn_heads=2, cross_attn_dim_head=16, depth=1)
    return model, _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_t2t() -> tuple[Any, Any]:
    """T2T-ViT: tokens-to-token unfolding stages in front of a ViT."""
    from vit_pytorch.t2t import T2TViT

    model = T2TViT(image_size=_VIT_SIZE, t2t_layers=((3, 2), (3, 2)), **_VIT)
    return model, _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_cvt() -> tuple[Any, Any]:
    """CvT: conv token embeddings and conv projections for queries, keys and values."""
    from vit_pytorch.cvt import CvT

    model = CvT(num_classes=10, s1_emb_dim=16, s1_heads=1, s1_depth=1, s2_emb_dim=32,
                s2_heads=2, s2_depth=1, s3_emb_dim=64, s3_heads=4, s3_depth=1)
    return model, _images(64)


@_model("vit-pytorch")
def vit_pytorch_pit() -> tuple[Any, Any]:
    """PiT: pooling (depthwise strided conv) between transformer stages."""
    from vit_pytorch.pit import PiT

    model = PiT(image_size=_VIT_SIZE, patch_size=4, num_classes=10, dim=32, depth=(1, 1, 1),
                heads=2, mlp_dim=64, dim_head=16)
    return model, _images(_VIT_SIZE)


@_model("vit-pytorch")
def vit_pytorch_mobilevit() -> tuple[Any, Any]:
    """MobileViT: MobileNetV2 blocks interleaved with unfold-attend-fold transformer blocks."""
    from vit_pytorch.mobile_vit import MobileViT

    model = MobileViT(image_size=(64, 64), dims=[32, 40, 48],
                      channels=[8, 8, 16, 16, 24, 24, 32, 32, 40, 40, 96], num_classes=10,
                      depths=(1, 1, 1))
    return model, _images(64)


@_model("vit-pytorch")
def vit_pytorch_cct() -> tuple[Any, Any]:
    """CCT: conv tokenizer, transformer encoder, attention-weighted sequence pooling."""
    from vit_pytorch.cct import CCT

    model = CCT(img_size=_VIT_SIZE, embedding_dim=64, n_conv_layers=2, kernel_size=3, stride=1,
                padding=1, pooling_kernel_size=3, pooling_stride=2, pooling_padding=1,
                num_layers=2, num_heads=4, mlp_ratio=2.0, num_classes=10,
                positional_embedding="learnable")
    return model, _images(_VIT_SIZE)


# --- PyTorch Geometric ------------------------------------------------------------------------

_GRAPH_NODES = 24
_GRAPH_FEATURES = 16
_PYG = dict(in_channels=_GRAPH_FEATURES, hidden_channels=32, num_layers=3, out_channels=4)


def _graph_edges(nodes: int = _GRAPH_NODES) -> Any:
    """A fixed undirected graph: a ring plus chords to the node 5 steps on, both directions.

    Arithmetic rather than random so every node has degree 4 and the graph never changes.
    """
    import torch

    src = torch.arange(nodes).repeat(2)
    dst = torch.cat([(torch.arange(nodes) + 1) % nodes, (torch.arange(nodes) + 5) % nodes])
    return torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)


def _graph() -> tuple[Any, Any]:
    """``(x, edge_index)``: float node features [N, F] and a long [2, E] edge list."""
    import torch

    return torch.randn(_GRAPH_NODES, _GRAPH_FEATURES), _graph_edges()


def _pyg(name: str, **kwargs: Any) -> tuple[Any, Any]:
    import torch_geometric.nn.models as models

    return getattr(models, name)(**(_PYG | kwargs)), _graph()


@_model("pyg")
def pyg_gcn() -> tuple[Any, Any]:
    return _pyg("GCN")


@_model("pyg")
def pyg_gcn_batchnorm() -> tuple[Any, Any]:
    """GCN with BatchNorm after each conv, whose own bias the norm then cancels."""
    return _pyg("GCN", norm="batch_norm")


@_model("pyg")
def pyg_gat() -> tuple[Any, Any]:
    """GAT, 2 heads concatenated in the hidden layers."""
    return _pyg("GAT", heads=2)


@_model("pyg")
def pyg_graphsage() -> tuple[Any, Any]:
    return _pyg("GraphSAGE")


@_model("pyg")
def pyg_gin() -> tuple[Any, Any]:
    """GIN: each layer an MLP (with BatchNorm) over summed neighbours."""
    return _pyg("GIN")


@_model("pyg")
def pyg_pna() -> tuple[Any, Any]:
    """PNA with four aggregators and degree scalers; ``deg`` is the graph's degree histogram."""
    import torch
    from torch_geometric.utils import degree

    edges = _graph_edges()
    in_degree = degree(edges[1], num_nodes=_GRAPH_NODES, dtype=torch.long)
    histogram = torch.bincount(in_degree)
    model, _ = _pyg("PNA", aggregators=["mean", "min", "max", "std"],
                    scalers=["identity", "amplification", "attenuation"], deg=histogram)
    return model, _graph()


@_model("pyg")
def pyg_edgecnn() -> tuple[Any, Any]:
    """EdgeCNN: EdgeConv layers (an MLP on [x_i, x_j - x_i] per edge, max-aggregated)."""
    return _pyg("EdgeCNN")


# --- denoising-diffusion-pytorch --------------------------------------------------------------

@_model("ddpm")
def ddpm_unet() -> tuple[Any, Any]:
    """The DDPM Unet: ResNet blocks with time scale-shift, linear attention, full attn at the
    bottom."""
    from denoising_diffusion_pytorch import Unet

    model = Unet(dim=16, dim_mults=(1, 2), channels=3, attn_dim_head=16, attn_heads=2)
    return model, (_images(32), _timesteps())


@_model("ddpm")
def ddpm_unet1d() -> tuple[Any, Any]:
    import torch
    from denoising_diffusion_pytorch import Unet1D

    model = Unet1D(dim=16, dim_mults=(1, 2), channels=2, attn_dim_head=16, attn_heads=2)
    return model, (torch.randn(BATCH, 2, 64), _timesteps())


@_model("ddpm")
def ddpm_gaussian_diffusion() -> tuple[Any, Any]:
    """GaussianDiffusion around a Unet: forward samples steps and noise and returns the loss.

    The randomness is inside forward, so a caller seeding before each run sees the same loss.
    """
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    unet = Unet(dim=16, dim_mults=(1, 2), channels=3, attn_dim_head=16, attn_heads=2)
    model = GaussianDiffusion(unet, image_size=32, timesteps=100)
    images = _images(32).sigmoid()  # images in [0, 1]: the wrapper rescales them to [-1, 1]
    return model, images


def _noise_levels() -> Any:
    """Karras (EDM) nets take the noise level sigma as a float per sample, not a step index."""
    import torch

    return torch.rand(BATCH) + 0.1


@_model("ddpm")
def ddpm_karras_unet() -> tuple[Any, Any]:
    """EDM2 magnitude-preserving Unet: weight-normalized convs, no biases, no norms."""
    from denoising_diffusion_pytorch import KarrasUnet

    model = KarrasUnet(image_size=32, dim=16, dim_max=64, channels=3, num_downsamples=2,
                       num_blocks_per_stage=1, attn_res=(8,), attn_dim_head=16)
    return model, (_images(32), _noise_levels())


@_model("ddpm")
def ddpm_karras_unet1d() -> tuple[Any, Any]:
    import torch
    from denoising_diffusion_pytorch import KarrasUnet1D

    model = KarrasUnet1D(seq_len=64, dim=16, dim_max=64, channels=2, num_downsamples=2,
                         num_blocks_per_stage=1, attn_res=(16,), attn_dim_head=16)
    return model, (torch.randn(BATCH, 2, 64), _noise_levels())


# --- families and imports ---------------------------------------------------------------------

# Family -> the importable module(s) behind it.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "diffusers": ("diffusers",),
    "smp": ("segmentation_models_pytorch",),
    "monai": ("monai.networks.nets",),
    "peft": ("peft", "transformers"),
    "x-transformers": ("x_transformers",),
    "vit-pytorch": ("vit_pytorch",),
    "pyg": ("torch_geometric.nn.models",),
    "ddpm": ("denoising_diffusion_pytorch",),
}
assert set(LIBRARIES) == set(MODELS), "every family needs its library and its models"


# family -> the distribution installed for it (for the versions a sweep reports)
DISTRIBUTIONS: dict[str, str] = {
    "diffusers": "diffusers", "smp": "segmentation-models-pytorch", "monai": "monai",
    "peft": "peft", "x-transformers": "x-transformers", "vit-pytorch": "vit-pytorch",
    "pyg": "torch-geometric", "ddpm": "denoising-diffusion-pytorch",
}


def names(family: str) -> list[str]:
    return list(MODELS[family])


def builder(family: str, name: str) -> Builder:
    return MODELS[family][name]


# diffusers and transformers import lazily: the first model class looked up pulls in the
# modeling modules (seconds), which would otherwise land in the first build's time.
_FIRST_LOOKUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "diffusers": (("diffusers", "UNet2DModel"),),
    "peft": (("transformers", "LlamaForCausalLM"), ("transformers", "GPT2LMHeadModel")),
}


def import_library(family: str) -> None:
    """Import the family's library up front, quietly, so a timed build measures building only."""
    with warnings.catch_warnings():
        # Import-time deprecation chatter (e.g. torch.jit.script FutureWarnings from decorated
        # helpers) says nothing about the models; warnings raised later still show.
        warnings.simplefilter("ignore")
        for module in LIBRARIES[family]:
            importlib.import_module(module)
        for module, attr in _FIRST_LOOKUPS.get(family, ()):
            getattr(importlib.import_module(module), attr)
    _quiet(family)


def _quiet(family: str) -> None:
    """Silence the per-build chatter of the noisy libraries (info logs, repeated deprecations)."""
    if family == "diffusers":
        importlib.import_module("diffusers").utils.logging.set_verbosity_error()
    elif family == "peft":
        importlib.import_module("transformers").logging.set_verbosity_error()
        # peft asks every base model a deprecated transformers question on each wrap.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
