"""The wide zoo: every transformers architecture that builds from a generic tiny config, and the
smallest registered model of every timm architecture family; split once into a development part
and a held-out part.

Families (also registered in ``zoo_models.FAMILIES``, so ``recall.py --family hf-all`` works):

* ``hf-all``: one model per transformers ``model_type`` reachable from the auto mappings
  (``MODEL_MAPPING_NAMES`` and every ``MODEL_FOR_*_MAPPING_NAMES``). The class is the first
  task head found in ``HEAD_ORDER`` (a head model contains the base model, so one build covers
  both the body and the head's own biases at half the cost of building both), else the base
  class. The config is the config class's defaults with every size attribute that exists shrunk
  (``tiny_overrides``), sub-configs recursively; built under ``torch.manual_seed(0)``, never
  from the hub.
* ``timm-all``: every module of ``timm.models`` that registers models; its smallest registered
  model by parameter count of a meta-device build (at most ``TIMM_CANDIDATES`` candidates per
  family, preferred by size words in the name), ``pretrained=False``, input 2x3x64x64, else the
  model's ``pretrained_cfg`` input size.

The split (fixed before any result was produced, see the git history of this file): an
architecture is held out when ``sha256(name) mod 5 == 0`` (``split_of``), about 20%. The name
is the family-qualified key ``hf:<model_type>`` or ``timm:<module>``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable

Builder = Callable[[], tuple[Any, Any]]
HERE = os.path.dirname(os.path.abspath(__file__))


# --- the split (decided before any result) ----------------------------------------------------

HELD_OUT_MODULUS = 5


# A second held-out part, fixed after the first one was looked at: the dev architectures the
# first dev sweep did not reach (its time cut, in sha256 order), listed before any of them ran.
# Nothing was tuned on them; they are judged once, at the end.
SECOND_HELD_OUT_FILE = os.path.join(HERE, "wide_heldout2.txt")


@functools.lru_cache(maxsize=None)
def _second_held_out() -> frozenset[str]:
    with open(SECOND_HELD_OUT_FILE, encoding="utf-8") as handle:
        return frozenset(line.strip() for line in handle if line.strip())


def split_of(key: str) -> str:
    """``"heldout"`` for about one architecture in five, ``"heldout2"`` for the dev
    architectures listed in ``wide_heldout2.txt``, ``"dev"`` otherwise; ``key`` is
    ``hf:<model_type>`` or ``timm:<module>``. Stable across machines and runs."""
    digest = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16)
    if digest % HELD_OUT_MODULUS == 0:
        return "heldout"
    return "heldout2" if key in _second_held_out() else "dev"


# --- transformers -----------------------------------------------------------------------------

# The head preferred per architecture, first match wins; the base model when none exists.
# Encoder-decoder heads first: BartForCausalLM would be the decoder alone, its cross-attention
# never called.
HEAD_ORDER = [
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_CTC_MAPPING_NAMES", "MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES", "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES",
]

# Size attributes shrunk when the config has them (scalars); lists of per-stage depths become 1s.
TINY_SCALARS = {
    "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128, "head_dim": 16,
    "d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2, "num_heads": 4,
    "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    "encoder_hidden_size": 64, "decoder_hidden_size": 64, "decoder_num_attention_heads": 4,
    "decoder_num_hidden_layers": 2, "decoder_intermediate_size": 128,
    "n_layer": 2, "n_head": 4, "n_embd": 64, "n_inner": 128, "dim": 64, "n_layers": 2,
    "n_heads": 4, "hidden_dim": 128, "ffn_dim": 128, "embed_dim": 64, "embedding_size": 64,
    "projection_dim": 32, "word_embed_proj_dim": 64, "num_experts": 4,
    "num_local_experts": 4, "n_routed_experts": 4, "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64, "num_experts_per_tok": 2,
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
    "v_head_dim": 16, "first_k_dense_replace": 1,
    "max_source_positions": 32, "max_target_positions": 64,
}
CAP_POSITIONS = {"max_position_embeddings": 512, "n_positions": 512, "max_seq_len": 512}
DEPTH_LISTS = ("depths", "num_layers_per_stage", "block_layers")
SUBCONFIG_KEYS = ("text_config", "vision_config", "audio_config", "encoder_config",
                  "decoder_config", "speech_config", "qformer_config", "backbone_config",
                  "vq_config", "prior_config", "talker_config", "thinker_config")


def tiny_overrides(default: Any) -> dict[str, Any]:
    """The kwargs that shrink a config whose defaults are ``default`` (only existing keys)."""
    from transformers import PretrainedConfig

    values = default.to_dict() if hasattr(default, "to_dict") else {}
    values.update({k: getattr(default, k) for k in dir(default)
                   if not k.startswith("_") and k in TINY_SCALARS and hasattr(default, k)})
    out: dict[str, Any] = {}
    for key, small in TINY_SCALARS.items():
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            out[key] = small
    for key, cap in CAP_POSITIONS.items():
        value = values.get(key)
        if isinstance(value, int) and value > cap:
            out[key] = cap
    for key in DEPTH_LISTS:
        value = values.get(key)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
            out[key] = [1] * len(value)
    patch = values.get("patch_size")
    if isinstance(values.get("image_size"), int):
        out["image_size"] = 4 * patch if isinstance(patch, int) and patch <= 32 else 64
    if "use_cache" in values:
        out["use_cache"] = False  # a returned key cache would make the key bias look live
    vocab = out.get("vocab_size", values.get("vocab_size"))
    if isinstance(vocab, int):
        for key, value in values.items():
            if (key.endswith("_token_id") and isinstance(value, int)
                    and not isinstance(value, bool) and value >= vocab):
                out[key] = min(vocab - 1, 2)
    for key in SUBCONFIG_KEYS:
        sub = getattr(default, key, None)
        if isinstance(sub, PretrainedConfig):
            nested = tiny_overrides(sub)
            out[key] = {**sub.to_dict(), **nested}
    return out


@functools.lru_cache(maxsize=1)
def hf_architectures() -> dict[str, str]:
    """model_type -> the model class name the wide zoo builds (sorted by model_type)."""
    from transformers.models.auto import modeling_auto as ma

    chosen: dict[str, str] = {}
    for mapping in HEAD_ORDER:
        for model_type, cls in getattr(ma, mapping, {}).items():
            if isinstance(cls, (list, tuple)):
                cls = cls[0]
            chosen.setdefault(model_type, cls)
    mappings = ["MODEL_MAPPING_NAMES"] + sorted(
        n for n in dir(ma) if n.startswith("MODEL_") and n.endswith("_MAPPING_NAMES"))
    for mapping in mappings:
        for model_type, cls in getattr(ma, mapping, {}).items():
            if isinstance(cls, (list, tuple)):
                cls = cls[0]
            chosen.setdefault(model_type, cls)
    return dict(sorted(chosen.items()))


def _hf_inputs(model: Any, config: Any) -> list[dict[str, Any]]:
    """Candidate example inputs by modality, tried in order."""
    import torch

    g = torch.Generator().manual_seed(0)
    vocab = getattr(getattr(config, "text_config", None), "vocab_size", None) or \
        getattr(config, "vocab_size", None) or 256
    vocab = int(min(vocab, 256))
    ids = torch.randint(3, max(vocab, 4), (2, 16), generator=g)
    dec = {"decoder_input_ids": torch.randint(3, max(vocab, 4), (2, 8), generator=g)} \
        if getattr(config, "is_encoder_decoder", False) else {}
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", 64)
    size = size[0] if isinstance(size, (list, tuple)) else (size if isinstance(size, int)
                                                             else 64)
    channels = getattr(vision, "num_channels", 3)
    channels = channels if isinstance(channels, int) else 3
    mel = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", None) or 80
    frames = 2 * getattr(config, "max_source_positions", 32) \
        if isinstance(getattr(config, "max_source_positions", None), int) else 64
    name = getattr(model, "main_input_name", "input_ids")
    pixels = torch.randn(2, channels, size, size, generator=g)
    candidates: list[dict[str, Any]] = []
    if name == "pixel_values":
        candidates += [{"pixel_values": pixels, **dec},
                       {"pixel_values": torch.randn(2, channels, 224, 224, generator=g), **dec},
                       {"pixel_values": torch.randn(2, 8, channels, size, size, generator=g)}]
    elif name == "input_values":
        candidates += [{"input_values": torch.randn(2, 4000, generator=g), **dec},
                       {"input_values": torch.randn(2, 1, 4000, generator=g), **dec},
                       {"input_values": torch.randn(2, 16000, generator=g), **dec}]
    elif name == "input_features":
        candidates += [{"input_features": torch.randn(2, mel, frames, generator=g), **dec},
                       {"input_features": torch.randn(2, frames, mel, generator=g), **dec},
                       {"input_features": torch.randn(2, mel, 3000, generator=g), **dec}]
    elif name == "pixel_values_videos":
        candidates += [{"pixel_values_videos": torch.randn(2, 8, channels, size, size,
                                                            generator=g)}]
    candidates += [{"input_ids": ids, **dec}, {"input_ids": ids, "pixel_values": pixels, **dec}]
    if "labels" not in candidates[0]:
        candidates.append({"input_ids": ids, "decoder_input_ids": ids[:, :8]})
    return candidates


def _run_quiet(model: Any, inputs: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        model(**inputs)


def hf_build(model_type: str) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    transformers.logging.set_verbosity_error()
    class_name = hf_architectures()[model_type]
    config_cls = CONFIG_MAPPING[model_type]
    default = config_cls()
    overrides = tiny_overrides(default)
    try:
        config = config_cls(**overrides)
    except Exception:  # noqa: BLE001  a sub-config that only takes its own class
        overrides = {k: v for k, v in overrides.items() if k not in SUBCONFIG_KEYS}
        config = config_cls(**overrides)
    model_cls = getattr(transformers, class_name)
    torch.manual_seed(0)
    model = model_cls(config)
    model.train()
    last: Exception | None = None
    for inputs in _hf_inputs(model, config):
        try:
            torch.manual_seed(0)
            _run_quiet(model, inputs)
            return model, inputs
        except Exception as exc:  # noqa: BLE001
            last = last or exc
    assert last is not None
    raise last


def _builder(make: Callable[[str], tuple[Any, Any]], name: str) -> Builder:
    """A no-argument builder named ``name`` (its name is the target's attribute)."""
    def build() -> tuple[Any, Any]:
        return make(name)

    build.__name__ = name
    return build


def hf_builder(model_type: str) -> Builder:
    return _builder(hf_build, model_type)


# --- timm -------------------------------------------------------------------------------------

TIMM_CANDIDATES = 10
SIZE_WORDS = ["pico", "femto", "atto", "nano", "xxtiny", "xxs", "xx_small", "tiny", "xs",
              "x_small", "small", "_s0", "_s1", "_t", "_s", "b0", "_050", "_075", "_100", "18",
              "26", "mini", "lite", "light", "_a0", "_002"]


def _timm_score(name: str) -> tuple[int, int, str]:
    hits = [i for i, w in enumerate(SIZE_WORDS) if w in name]
    return (min(hits) if hits else len(SIZE_WORDS), len(name), name)


def timm_smallest(module: str) -> str:
    import timm
    import torch

    names = sorted(timm.list_models(module=module), key=_timm_score)[:TIMM_CANDIDATES]
    best: tuple[int, str] | None = None
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            count = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001
            continue
        if best is None or count < best[0]:
            best = (count, name)
    return best[1] if best else (names[0] if names else "")


TIMM_CACHE = os.path.join(HERE, "out", "zoo_wide_timm.json")


@functools.lru_cache(maxsize=1)
def timm_families() -> dict[str, str]:
    """timm module -> its smallest model (computed once, cached under benchmarks/out/)."""
    import timm

    modules = sorted(m for m in timm.list_modules() if timm.list_models(module=m))
    if os.path.exists(TIMM_CACHE):
        with open(TIMM_CACHE, encoding="utf-8") as handle:
            cached = json.load(handle)
        if sorted(cached) == modules:
            return dict(sorted(cached.items()))
    chosen = {m: timm_smallest(m) for m in modules}
    os.makedirs(os.path.dirname(TIMM_CACHE), exist_ok=True)
    with open(TIMM_CACHE, "w", encoding="utf-8") as handle:
        json.dump(chosen, handle, indent=1)
    return chosen


def timm_build(module: str) -> tuple[Any, Any]:
    import timm
    import torch

    name = timm_families()[module]
    last: Exception | None = None
    attempts: list[tuple[dict[str, Any], int]] = [({}, 64), ({"img_size": 64}, 64)]
    torch.manual_seed(0)
    probe = timm.create_model(name, pretrained=False)
    cfg = tuple(probe.pretrained_cfg.get("input_size", (3, 224, 224)))
    del probe
    attempts.append(({}, int(cfg[-1])))
    for kwargs, size in attempts:
        try:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs)
            model.train()
            inputs = torch.randn(2, int(cfg[0]), size, size,
                                 generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                model(inputs)
            return model, inputs
        except Exception as exc:  # noqa: BLE001
            last = last or exc
    assert last is not None
    raise last


def timm_builder(module: str) -> Builder:
    return _builder(timm_build, module)


# --- families ---------------------------------------------------------------------------------

def names(family: str) -> list[str]:
    if family == "hf-all":
        return list(hf_architectures())
    if family == "timm-all":
        return list(timm_families())
    raise KeyError(family)


def builder(family: str, name: str) -> Builder:
    return hf_builder(name) if family == "hf-all" else timm_builder(name)


def key_of(family: str, name: str) -> str:
    return f"{'hf' if family == 'hf-all' else 'timm'}:{name}"


class _Namespace:
    """``HFALL.bert`` -> a builder: ``zoo_wide.py:HFALL.bert`` is a biaslint target."""

    def __init__(self, family: str) -> None:
        self._family = family

    def __getattr__(self, name: str) -> Builder:
        if name.startswith("_"):
            raise AttributeError(name)
        return builder(self._family, name.replace(DASH, "-").replace(DOT, "."))


# model types with "-" (deberta-v2, donut-swin) or "." (kosmos-2.5) are spelled with DASH and
# DOT in target attributes
DASH = "__dash__"
DOT = "__dot__"


def attr_of(name: str) -> str:
    return name.replace("-", DASH).replace(".", DOT)


HFALL = _Namespace("hf-all")
TIMMALL = _Namespace("timm-all")
