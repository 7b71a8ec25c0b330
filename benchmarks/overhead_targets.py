"""The nine models of the whole-process overhead benchmark (``benchmarks/overhead.py``).

Each attribute is a builder returning ``(model, example_inputs)``, random init, offline, so each
is also a biaslint target: ``biaslint benchmarks/overhead_targets.py:resnet50``. Classifiers get
one batch of two 224x224 images (two, because BatchNorm after global pooling rejects a batch of
one in training mode); the detector is put in eval mode and gets one 320x320 image.

The module imports torch and torchvision only (the bare process imports exactly these).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torchvision.models as models
import torchvision.models.detection as detection

CLASSIFIERS = ("resnet50", "vgg16_bn", "convnext_tiny", "mobilenet_v3_large", "efficientnet_b0",
               "swin_t", "maxvit_t", "vit_b_16")
DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn",)
NAMES = CLASSIFIERS + DETECTORS


def _classifier(name: str) -> Callable[[], tuple[Any, Any]]:
    def build() -> tuple[Any, Any]:
        model = getattr(models, name)(weights=None)
        return model, torch.randn(2, 3, 224, 224)

    build.__name__ = name
    return build


def _detector(name: str) -> Callable[[], tuple[Any, Any]]:
    def build() -> tuple[Any, Any]:
        model = getattr(detection, name)(weights=None, weights_backbone=None)
        model.eval()
        return model, ([torch.rand(3, 320, 320)],)

    build.__name__ = name
    return build


for _name in CLASSIFIERS:
    globals()[_name] = _classifier(_name)
for _name in DETECTORS:
    globals()[_name] = _detector(_name)
