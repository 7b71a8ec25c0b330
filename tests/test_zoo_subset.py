"""A fast slice of the model zoo sweep (benchmarks/zoo.py): real architectures must not crash
biaslint, and their layers must end up inside traced graphs.

The full sweep (every torchvision model, ~100 timm models, ~30 transformers configs) runs with
``python benchmarks/zoo.py``; its numbers are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

# One or two per family: classification, detection, segmentation, video, optical flow,
# quantizable, timm CNN / ViT / hybrid, transformers encoder / decoder / seq2seq / audio.
SUBSET = [
    ("tv-classification", "resnet18"),
    ("tv-classification", "mobilenet_v3_small"),
    ("tv-detection", "ssdlite320_mobilenet_v3_large"),
    ("tv-segmentation", "lraspp_mobilenet_v3_large"),
    ("tv-video", "r3d_18"),
    ("tv-optical-flow", "raft_small"),
    ("tv-quantization", "quantized_shufflenet_v2_x0_5"),
    ("timm", "vit_tiny_patch16_224"),
    ("timm", "convnext_atto"),
    ("timm", "mobilevit_xxs"),
    ("hf", "bert"),
    ("hf", "llama"),
    ("hf", "t5"),
    ("hf", "whisper"),
]

# Coverage counts the layers the forward calls (an unused alias such as T5's ``shared``
# embedding is "not called", not untraced): every model must have >= 99% of them in a graph.
MIN_COVERAGE = 0.99


@pytest.fixture(scope="module")
def zoo():
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    import zoo as module

    return module


@pytest.mark.slow
@pytest.mark.parametrize(("family", "name"), SUBSET, ids=[f"{f}:{n}" for f, n in SUBSET])
def test_zoo_model_lints_without_crash(zoo, family: str, name: str) -> None:
    pytest.importorskip("timm" if family == "timm" else
                        "transformers" if family == "hf" else "torchvision")
    row = zoo.run_one(zoo.Job(family, name))
    assert row["error"] == ""
    assert row["layers"] > 0
    assert row["coverage"] >= MIN_COVERAGE, (row["untraced"], row["opaque"])
    assert not any("crashed" in note for note in row["notes"].split(" | ")), row["notes"]
    # every claim the rules derived was borne out by their measurement on the example inputs
    assert row["disagreements"] == "", row["disagreements"]
