"""Softmaxes over attention scores, measured on a real forward.

A score is the product of two activations (``q @ k.transpose(-2, -1)``, ``torch.bmm``,
``torch.einsum`` with two tensor operands, ``torch.baddbmm``): not a layer's weight times an
input. While the model runs once on the example inputs (no grad, state restored), a
``TorchFunctionMode`` tags the tensors such products return, follows the tag through the ops
attention code puts between the product and the softmax (views, transposes, a mask or position
bias added, ``masked_fill``, dtype casts, a scale), notes whether anything on the way scaled the
scores or an operand by a number, and measures every softmax over tagged scores: the mean of each
row's largest weight and the mean entropy, against ``log(keys)``.

``nn.MultiheadAttention`` and ``scaled_dot_product_attention`` scale their scores themselves;
softmaxes inside ``nn.MultiheadAttention`` are not measured.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

_PRODUCTS = frozenset({"matmul", "__matmul__", "bmm", "einsum", "baddbmm"})
_SCALES = frozenset({"mul", "__mul__", "__rmul__", "div", "__truediv__", "true_divide",
                     "mul_", "div_", "__imul__", "__itruediv__", "multiply", "divide"})
_KEEP = frozenset({"view", "reshape", "transpose", "permute", "contiguous", "float", "to", "type",
                   "masked_fill", "masked_fill_", "add", "__add__", "__radd__", "add_", "sub",
                   "__sub__", "unsqueeze", "squeeze", "flatten", "unflatten", "clamp", "where",
                   "half", "bfloat16", "double", "__iadd__", "__getitem__"})
_SOFTMAX = frozenset({"softmax", "_softmax"})


@dataclass(frozen=True)
class AttentionSoftmax:
    module: str  # the innermost module whose forward ran the softmax ("" for the root)
    keys: int  # entries per softmax row
    head_dim: int  # the product's contracted size (d_head)
    scaled: bool  # a number scaled the scores (or an operand) between the product and here
    # The measures below are NaN when ``scaled``: only softmaxes over unscaled scores are judged.
    mean_max: float  # mean over rows of the largest weight
    entropy: float  # mean row entropy, nats
    score_std: float
    mean_max_if_scaled: float  # the same rows with the scores divided by sqrt(head_dim)
    jacobian: float  # mean over rows of ||diag(p) - p p^T||_F: what the softmax passes back
    jacobian_if_scaled: float


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _measure(scores: torch.Tensor, dim: int) -> tuple[float, float, float]:
    """(mean largest weight, mean entropy, mean Frobenius norm of the softmax Jacobian)."""
    p = torch.softmax(scores.double(), dim=dim)
    mean_max = float(p.amax(dim=dim).mean())
    entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum(dim=dim).mean())
    square = p.pow(2).sum(dim=dim)
    jacobian = (square - 2 * p.pow(3).sum(dim=dim) + square.pow(2)).clamp_min(0).sqrt()
    return mean_max, entropy, float(jacobian.mean())


class _ScoreMode(TorchFunctionMode):
    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.tags: dict[int, tuple[bool, int]] = {}  # id -> (scaled, head_dim)
        self.scaled_inputs: set[int] = set()  # activations scaled by a number (q * d**-0.5)
        self.keep: list[torch.Tensor] = []  # tagged tensors stay alive: ids are not reused
        self.stack = stack
        self.found: list[AttentionSoftmax] = []

    def _tag(self, tensor: Any, scaled: bool, head_dim: int) -> None:
        if isinstance(tensor, torch.Tensor):
            self.tags[id(tensor)] = (scaled, head_dim)
            self.keep.append(tensor)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.stack and self.stack[-1].endswith("\x00mha"):
            return out
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name == "einsum":
            tensors = [a for a in (args[1:] if args and isinstance(args[0], str) else args)
                       if isinstance(a, torch.Tensor)]
            if len(args) > 1 and isinstance(args[1], (list, tuple)):
                tensors = [a for a in args[1] if isinstance(a, torch.Tensor)]
        tagged = [self.tags[id(t)] for t in tensors if id(t) in self.tags]
        if name in _PRODUCTS:
            operands = tensors[-2:] if name == "baddbmm" else tensors
            activations = [t for t in operands if not isinstance(t, nn.Parameter)
                           and not (t.requires_grad and t.is_leaf)]
            if len(activations) >= 2 and isinstance(out, torch.Tensor):
                head_dim = int(activations[0].shape[-1]) if activations[0].dim() else 1
                scaled = any(id(t) in self.scaled_inputs for t in activations) or (
                    name == "baddbmm" and kwargs.get("alpha", 1) != 1)
                self._tag(out, scaled, head_dim)
            return out
        if name in _SCALES:
            numbers = [a for a in list(args) + list(kwargs.values()) if _is_number(a)]
            if numbers and isinstance(out, torch.Tensor):
                if tagged:
                    self._tag(out, True, tagged[0][1])
                else:
                    self.scaled_inputs.add(id(out))
                    self.keep.append(out)
                return out
        if name in _SOFTMAX and tagged and isinstance(out, torch.Tensor):
            source = next(t for t in tensors if id(t) in self.tags)
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            dim = dim if isinstance(dim, int) else -1
            scaled, head_dim = self.tags[id(source)]
            module = self.stack[-1] if self.stack else ""
            if scaled:  # nothing to judge (BL006 reads unscaled scores only): not measured
                nan = math.nan
                self.found.append(AttentionSoftmax(
                    module=module, keys=int(source.shape[dim]), head_dim=head_dim, scaled=True,
                    mean_max=nan, entropy=nan, score_std=nan, mean_max_if_scaled=nan,
                    jacobian=nan, jacobian_if_scaled=nan))
                return out
            mean_max, entropy, jacobian = _measure(source, dim)
            if_scaled, _, jacobian_scaled = _measure(
                source.double() / math.sqrt(max(head_dim, 1)), dim)
            self.found.append(AttentionSoftmax(
                module=module, keys=int(source.shape[dim]), head_dim=head_dim, scaled=scaled,
                mean_max=mean_max, entropy=entropy, score_std=float(source.double().std()),
                mean_max_if_scaled=if_scaled, jacobian=jacobian,
                jacobian_if_scaled=jacobian_scaled))
            return out
        if tagged and (name in _KEEP or name.endswith("_")) and isinstance(out, torch.Tensor):
            self._tag(out, any(s for s, _ in tagged), tagged[0][1])
        return out


def measure_attention(model: nn.Module, args: tuple, kwargs: dict) -> list[AttentionSoftmax]:
    """Every softmax over attention scores in one real no-grad forward (state restored)."""
    from biaslint.capture.preserve import preserved

    with measuring(model) as found:
        with preserved(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(*args, **kwargs)
    return found


@contextlib.contextmanager
def measuring(model: nn.Module) -> Iterator[list[AttentionSoftmax]]:
    """Measure every softmax over attention scores that runs inside (a real forward of
    ``model``); the list yielded is filled on exit."""
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module: nn.Module, _args: Any) -> None:
        name = names.get(id(module))
        if name is not None:
            stack.append(name + ("\x00mha" if isinstance(module, nn.MultiheadAttention) else ""))

    def leave(module: nn.Module, _args: Any, _out: Any) -> None:
        if id(module) in names and stack:
            stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(enter)
    post = nn.modules.module.register_module_forward_hook(leave)
    OWN_HOOKS.update((pre.id, post.id))  # not the user's: a recording ignores them
    mode = _ScoreMode(stack)
    found: list[AttentionSoftmax] = []
    try:
        with mode:
            yield found
    finally:
        pre.remove()
        post.remove()
        OWN_HOOKS.difference_update((pre.id, post.id))
    found.extend(AttentionSoftmax(**{**vars(f), "module": f.module.split("\x00")[0]})
                 for f in mode.found)


# Ids of the global module hooks ``measuring`` registers.
OWN_HOOKS: set[int] = set()
