"""What torch ops and layers are, in the terms biaslint's stages care about.

One table per question, so every stage and rule answers it the same way and a new layer type
(say, a new norm) is added in one place: which modules normalize and how, which ops only move
data, which are dropout, pools or size queries, and how to read a call's argument whether it was
passed by position or by keyword. Torch knowledge only: nothing here knows about biaslint's own
types, so capture (below analysis) and every rule (above it) can share it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


def argument(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """The call's argument ``name``, given by keyword or at position ``index``."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


# -- normalizations --------------------------------------------------------------------------
# Subtract a mean (per channel, per group or per sample) and divide by a deviation.
MEAN_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
    nn.GroupNorm,
)
MEAN_NORM_FUNCTIONS: frozenset[Any] = frozenset({
    F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, torch.batch_norm,
    torch.layer_norm, torch.group_norm, torch.instance_norm,
})
# Normalize each channel on its own (BatchNorm, InstanceNorm): a channel's statistics are its own.
PER_CHANNEL_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
)
# Every torch layer that rescales its input by statistics of the input (RMSNorm subtracts no
# mean; LocalResponseNorm divides by a local energy).
SCALE_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
SCALE_NORM_FUNCTIONS: frozenset[Any] = frozenset({
    F.layer_norm, F.batch_norm, F.group_norm, F.instance_norm, F.normalize, F.local_response_norm,
} | ({F.rms_norm} if hasattr(F, "rms_norm") else set()))
# Return a tensor shaped like their input.
SAME_SHAPE_NORM_MODULES: tuple[type[nn.Module], ...] = MEAN_NORM_MODULES + (nn.LocalResponseNorm,)
# Norms with an ``eps`` added to the variance (or mean square) they divide by.
EPS_NORM_MODULES: tuple[type[nn.Module], ...] = MEAN_NORM_MODULES + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
# Where the constructor takes ``eps`` by position, by class name (the lazy norms take no size).
NORM_EPS_POSITION: dict[str, int] = {
    "BatchNorm1d": 1, "BatchNorm2d": 1, "BatchNorm3d": 1, "SyncBatchNorm": 1,
    "InstanceNorm1d": 1, "InstanceNorm2d": 1, "InstanceNorm3d": 1, "LayerNorm": 1, "RMSNorm": 1,
    "GroupNorm": 2, "LazyBatchNorm1d": 0, "LazyBatchNorm2d": 0, "LazyBatchNorm3d": 0,
    "LazyInstanceNorm1d": 0, "LazyInstanceNorm2d": 0, "LazyInstanceNorm3d": 0,
}


def normalized_groups(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module``'s input ``x`` as (groups, entries): each row is one set of entries the norm
    takes its statistics over in training (a channel over the batch and positions for
    BatchNorm, one sample's channel for InstanceNorm, one sample's group of channels for
    GroupNorm, one row of the normalized shape for LayerNorm and RMSNorm, one position's
    channels for a channels-first LayerNorm). None for another module, or an input whose shape
    does not fit it."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if x.dim() < 2:
            return None
        return x.movedim(1, 0).reshape(x.shape[1], -1)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        batched = x.dim() == module._get_no_batch_dim() + 1
        rows = x.shape[0] * x.shape[1] if batched else x.shape[0]
        return x.reshape(rows, -1) if x.dim() >= 2 else None
    if isinstance(module, nn.GroupNorm):
        if x.dim() < 2 or x.shape[1] % module.num_groups:
            return None
        return x.reshape(x.shape[0] * module.num_groups, -1)
    shape = getattr(module, "normalized_shape", None)
    if isinstance(module, EPS_NORM_MODULES) and shape is not None:
        size = 1
        for s in shape:
            size *= int(s)
        if x.dim() >= len(shape) and tuple(x.shape[x.dim() - len(shape):]) == tuple(shape):
            return x.reshape(-1, size)
        if len(shape) == 1 and x.dim() >= 3 and x.shape[1] == size:
            # a channels-first subclass (``LayerNorm2d`` in torchvision and timm): it permutes
            # the channels last and normalizes each position over them
            return x.movedim(1, -1).reshape(-1, size)
        return None
    return None


# -- ops that move or view data without changing values -----------------------------------------
DROPOUT_FUNCTIONS: frozenset[Any] = frozenset({
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
})
SHAPE_FUNCTIONS: frozenset[Any] = frozenset({
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.swapaxes, torch.t, torch.movedim, torch.clone,
}) | DROPOUT_FUNCTIONS
SHAPE_METHODS: frozenset[str] = frozenset({
    "view", "reshape", "permute", "transpose", "flatten", "contiguous", "squeeze", "unsqueeze",
    "view_as", "reshape_as", "expand", "expand_as", "swapaxes", "movedim", "t", "clone", "to",
    "float", "type_as", "mT",
})
SHAPE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout,
)


def dropout_active(node: fx.Node, module: nn.Module | None) -> bool:
    """A dropout that zeroes entries while the model trains (p > 0, not forced off)."""
    if node.op == "call_module":
        return isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
    if node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
        p = argument(node, 1, "p", 0.5)
        training = argument(node, 2, "training", True)
        return not (isinstance(p, (int, float)) and p == 0) and training is not False
    return False


# -- pools ----------------------------------------------------------------------------------
POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)

# -- queries that read sizes, never values -------------------------------------------------------
SIZE_METHODS = frozenset({"size", "dim", "numel"})
SIZE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim"})


# Tensors made "like" another one: their values depend on its shape, dtype and device only
# (timm's DropPath draws its mask into ``x.new_empty(shape)``).
LIKE_METHODS = frozenset({"new_empty", "new_zeros", "new_ones", "new_full"})
LIKE_FUNCTIONS = frozenset({torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like,
                            torch.rand_like, torch.randn_like, torch.randint_like})


def is_made_like(node: fx.Node) -> bool:
    """``x.new_empty(shape)``, ``torch.zeros_like(x)``...: the result does not depend on the
    values of ``x`` (only on its shape, dtype and device)."""
    if node.op == "call_method":
        return node.target in LIKE_METHODS
    return node.op == "call_function" and node.target in LIKE_FUNCTIONS


def is_size_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.dim()``, ``x.numel()``, ``x.shape``, ``x.dtype``...: the result does not
    depend on the tensor's values."""
    if node.op == "call_method":
        return node.target in SIZE_METHODS
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 \
        and node.args[1] in SIZE_ATTRIBUTES


# -- products: ops that contract a tensor with a weight matrix -------------------------------------
# Logits computed from an embedding table are one of these with the table as an operand
# (``x @ emb.weight.T``, ``F.linear(x, emb.weight)``, ``torch.einsum("btd,vd->btv", x, W)``). By
# name, because the same op reaches a ``TorchFunctionMode`` as a method or a function and fx
# records it as ``operator.matmul``, ``torch.matmul`` or the method ``"matmul"``.
PRODUCT_NAMES = frozenset({"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "linear",
                           "einsum", "tensordot", "inner"})
# What a table goes through on its way into a product without its values changing: transposes,
# views, copies, dtype casts, slices (``W.T``, ``W.t()``, ``W.transpose(0, 1).contiguous()``,
# ``W.to(x.dtype)``, ``W[:vocab]``). ``__get__`` is how a ``TorchFunctionMode`` sees the
# ``.T``/``.mT``/``.H``/``.data`` properties.
TABLE_VIEW_NAMES = frozenset({"t", "T", "mT", "H", "mH", "data", "__get__", "transpose",
                              "permute", "swapaxes", "movedim", "view", "view_as", "reshape",
                              "reshape_as", "contiguous", "to", "float", "half", "bfloat16",
                              "double", "type", "type_as", "detach", "clone", "squeeze",
                              "unsqueeze", "flatten", "__getitem__", "getitem"})


def op_name(node: fx.Node) -> str:
    """The name of the op a call node runs, as ``PRODUCT_NAMES`` and ``TABLE_VIEW_NAMES`` spell
    it: ``x @ w`` and ``torch.matmul(x, w)`` are "matmul", ``w.T`` is "T"."""
    if node.op == "call_method":
        return str(node.target)
    if node.op != "call_function":
        return ""
    if node.target is getattr and len(node.args) > 1 and isinstance(node.args[1], str):
        return node.args[1]
    return getattr(node.target, "__name__", "")


# -- initializers ---------------------------------------------------------------------------------
# The in-place writes (``torch.nn.init`` functions and ``Tensor`` methods, as the build records
# them) that draw values at random. A parameter last written by one of these holds noise; one
# written otherwise (``copy_``, ``fill_``, an assignment) holds values someone chose.
RANDOM_INITS = frozenset({"uniform_", "normal_", "trunc_normal_", "xavier_uniform_",
                          "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                          "sparse_", "exponential_", "log_normal_", "cauchy_", "geometric_",
                          "random_", "bernoulli_"})
