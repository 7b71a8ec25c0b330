"""Which modules a capture keeps as one node (a leaf) instead of tracing through them."""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

# torch.nn modules that are plain Python over child layers of their own
_COMPOSITES = (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
               nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_TRACER = fx.Tracer()  # made once: a Tracer's constructor is not free (566 calls on a CNN)


def is_default_leaf(module: nn.Module) -> bool:
    """fx's default leaves, the modules of torch.nn (not containers), but the transformer
    layers: one node each. ``nn.TransformerEncoderLayer`` and its kin are plain Python over
    child layers (attention, linears, norms), traced through as user code is: as one node, the
    bias cancellations inside them (the attention's key bias) could only be measured, never
    derived, and not at all on the meta device."""
    return _TRACER.is_leaf_module(module, "") and not isinstance(module, _COMPOSITES)
