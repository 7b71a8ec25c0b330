"""Softmaxes over attention scores, measured on a real forward: see ``capture.attention``.

The measure lives in the capture stage because a capture recorded on a real forward takes it
in the same run; the analysis reads it from there.
"""

from biaslint.capture.attention import AttentionSoftmax, measure_attention, measuring

__all__ = ["AttentionSoftmax", "measure_attention", "measuring"]
