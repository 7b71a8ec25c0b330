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


def split_of(key: str) -> str:
    """``"heldout"`` for about one architecture in five, ``"dev"`` otherwise; ``key`` is
    ``hf:<model_type>`` or ``timm:<module>``. Stable across machines and runs."""
    digest = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16)
    return "heldout" if digest % HELD_OUT_MODULUS == 0 else "dev"
