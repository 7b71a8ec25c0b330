"""Softmaxes over attention scores, measured on a real forward.

A score is the product of two activations (``q @ k.transpose(-2, -1)``, ``torch.bmm``,
``torch.einsum`` with two tensor operands, ``torch.baddbmm``): not a layer's weight times an
input. While the model runs once on the example inputs (no grad, state restored), a
``TorchFunctionMode`` tags the tensors such products return, follows the tag through the ops
attention code puts between the product and the softmax (views, transposes, a mask or position
bias added, ``masked_fill``, dtype casts, a scale), notes whether anything on the way scaled the
scores or an operand by a number, and measures every softmax over tagged scores: the mean of each
row's largest weight and the mean entropy, against ``log(keys)``.

Every softmax over scores (scaled or not, and the one inside ``scaled_dot_product_attention``,
whose scores are rebuilt in float64 from its q, k, mask and scale) also gets the largest range of
its scores along the keys: 0 when every row is uniform. Beside it, what the tag saw on the way:
a number 0 that multiplied the scores or an operand (fixed, or a learnable parameter), an operand
that is all zero, keys identical at every position. Those name why a uniform row is uniform.

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
_SDPA = "scaled_dot_product_attention"
# Scores rebuilt for a scaled_dot_product_attention call: at most this many entries (float64);
# a larger call is measured on its first batch element.
_SDPA_ENTRIES = 1 << 24
_MASKED = 50.0  # a score this far below its row's largest weighs < exp(-50): a masked key


@dataclass(frozen=True)
class _Tag:
    """What the ops between a score product and here did to the scores."""

    scaled: bool  # a number scaled the scores or an operand
    head_dim: int
    zero_scale: str = ""  # "fixed" (a constant 0) or "learned" (a parameter at 0) multiplied them
    zero_queries: bool = False  # the product's left operand is all zero
    zero_keys: bool = False  # its right operand is all zero
    same_keys: bool = False  # the right operand is the same at every key position

    def merged(self, other: "_Tag") -> "_Tag":
        return _Tag(self.scaled or other.scaled, self.head_dim,
                    self.zero_scale or other.zero_scale, self.zero_queries or other.zero_queries,
                    self.zero_keys or other.zero_keys, self.same_keys or other.same_keys)


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
    # Measured on every softmax, scaled or not: the largest range of the finite scores along the
    # keys over the rows with two or more (0: every row uniform; NaN: no such row).
    spread: float = math.nan
    zero_scale: str = ""  # see ``_Tag``
    zero_queries: bool = False
    zero_keys: bool = False
    same_keys: bool = False
    sdpa: bool = False  # inside scaled_dot_product_attention (its scores rebuilt)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _wrapped(tensor: torch.Tensor) -> bool:
    """A tensor of a functorch transform (inside ``torch.vmap``, as transformers builds its
    attention masks): reading its values (``bool``) raises there."""
    is_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(is_wrapped(tensor)) if is_wrapped is not None else False


def _zero_number(value: Any) -> str:
    """"fixed" for a constant 0, "learned" for a parameter (or tensor needing grad) at 0."""
    if isinstance(value, torch.Tensor):
        if bool(value.detach().reshape(-1)[0] != 0):
            return ""
        return "learned" if value.requires_grad else "fixed"
    return "fixed" if value == 0 else ""


def _spread(scores: torch.Tensor, dim: int) -> float:
    """The largest range of a row's scores along ``dim``, over the rows with two or more keys
    that weigh anything: a key more than ``_MASKED`` below its row's largest score (``-inf``,
    ``torch.finfo(dtype).min``, ``-1e4`` as masks write it) gets a weight below ``exp(-50)`` and
    is left out, as a masked key."""
    s = scores.detach().double()
    top = torch.where(torch.isnan(s), -math.inf, s).amax(dim=dim, keepdim=True)
    live = torch.isfinite(s) & (s >= top - _MASKED)
    high = torch.where(live, s, -math.inf).amax(dim=dim)
    low = torch.where(live, s, math.inf).amin(dim=dim)
    rows = live.sum(dim=dim) >= 2
    if not bool(rows.any()):
        return math.nan
    return float((high - low)[rows].max())


def _operand_facts(name: str, operands: list[torch.Tensor]) -> dict[str, bool]:
    """Whether the product's left or right operand is all zero, and (for ``a @ b``-like
    products, keys along ``b``'s last axis) whether the right one is the same at every key."""
    if len(operands) < 2:
        return {}
    left, right = operands[0].detach(), operands[-1].detach()
    same = (name != "einsum" and right.dim() >= 1 and right.shape[-1] > 1
            and bool((right == right[..., :1]).all()))
    return {"zero_queries": not bool(left.any()), "zero_keys": not bool(right.any()),
            "same_keys": same}


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
        self.tags: dict[int, _Tag] = {}
        # activations scaled by a number (q * d**-0.5) -> what a 0 there was ("" for none)
        self.scaled_inputs: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []  # tagged tensors stay alive: ids are not reused
        self.stack = stack
        self.found: list[AttentionSoftmax] = []

    def _tag(self, tensor: Any, tag: _Tag) -> None:
        if isinstance(tensor, torch.Tensor):
            self.tags[id(tensor)] = tag
            self.keep.append(tensor)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.stack and self.stack[-1].endswith("\x00mha"):
            return out
        if not isinstance(out, torch.Tensor) or _wrapped(out):
            return out  # inside torch.vmap (a mask built per position): no values to read
        tensors = _tensors_of(name, args)
        tagged = [self.tags[id(t)] for t in tensors if id(t) in self.tags]
        if name in _PRODUCTS:
            self._product(name, tensors, kwargs, out)
        elif name in _SCALES and (numbers := [a for a in list(args) + list(kwargs.values())
                                              if _is_number(a)]):
            zero = next((z for z in map(_zero_number, numbers) if z), "")
            if tagged:
                self._tag(out, tagged[0].merged(_Tag(True, tagged[0].head_dim, zero)))
            else:
                self.scaled_inputs[id(out)] = zero
                self.keep.append(out)
        elif name in _SOFTMAX and tagged:
            source = next(t for t in tensors if id(t) in self.tags)
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            self._softmax(source, dim if isinstance(dim, int) else -1, self.tags[id(source)])
        elif name == _SDPA:
            self._sdpa(args, kwargs)
        elif tagged and (name in _KEEP or name.endswith("_")):
            merged = tagged[0]
            for other in tagged[1:]:
                merged = merged.merged(other)
            self._tag(out, merged)
        return out

    def _product(self, name: str, tensors: list[torch.Tensor], kwargs: dict,
                 out: torch.Tensor) -> None:
        operands = tensors[-2:] if name == "baddbmm" else tensors
        activations = [t for t in operands if not isinstance(t, nn.Parameter)
                       and not (t.requires_grad and t.is_leaf)]
        if len(activations) < 2:
            return
        head_dim = int(activations[0].shape[-1]) if activations[0].dim() else 1
        zeros = [self.scaled_inputs[id(t)] for t in activations if id(t) in self.scaled_inputs]
        alpha = kwargs.get("alpha", 1) if name == "baddbmm" else 1
        zero = next((z for z in zeros if z), "") or _zero_number(alpha)
        scaled = bool(zeros) or alpha != 1
        self._tag(out, _Tag(scaled, head_dim, zero, **_operand_facts(name, activations)))

    def _module(self) -> str:
        return self.stack[-1] if self.stack else ""

    def _softmax(self, source: torch.Tensor, dim: int, tag: _Tag) -> None:
        facts: dict[str, Any] = {
            "spread": _spread(source, dim), "zero_scale": tag.zero_scale,
            "zero_queries": tag.zero_queries, "zero_keys": tag.zero_keys,
            "same_keys": tag.same_keys}
        keys = int(source.shape[dim])
        if tag.scaled:  # nothing for BL006 (it reads unscaled scores only)
            nan = math.nan
            self.found.append(AttentionSoftmax(
                module=self._module(), keys=keys, head_dim=tag.head_dim, scaled=True,
                mean_max=nan, entropy=nan, score_std=nan, mean_max_if_scaled=nan,
                jacobian=nan, jacobian_if_scaled=nan, **facts))
            return
        mean_max, entropy, jacobian = _measure(source, dim)
        if_scaled, _, jacobian_scaled = _measure(
            source.double() / math.sqrt(max(tag.head_dim, 1)), dim)
        self.found.append(AttentionSoftmax(
            module=self._module(), keys=keys, head_dim=tag.head_dim, scaled=False,
            mean_max=mean_max, entropy=entropy, score_std=float(source.double().std()),
            mean_max_if_scaled=if_scaled, jacobian=jacobian,
            jacobian_if_scaled=jacobian_scaled, **facts))

    def _sdpa(self, args: tuple, kwargs: dict) -> None:
        """The scores of a ``scaled_dot_product_attention`` call, rebuilt in float64."""
        rebuilt = _sdpa_scores(args, kwargs)  # a mode's own ops do not re-enter it
        if rebuilt is None:
            return
        scores, scale, operands = rebuilt
        zero = _zero_number(scale) if scale is not None else ""
        facts = _operand_facts("sdpa", operands)
        nan = math.nan
        self.found.append(AttentionSoftmax(
            module=self._module(), keys=int(scores.shape[-1]),
            head_dim=int(operands[0].shape[-1]), scaled=True, mean_max=nan, entropy=nan,
            score_std=nan, mean_max_if_scaled=nan, jacobian=nan, jacobian_if_scaled=nan,
            spread=_spread(scores, -1), zero_scale=zero, sdpa=True, **facts))


def _tensors_of(name: str, args: tuple) -> list[torch.Tensor]:
    if name == "einsum":
        if len(args) > 1 and isinstance(args[1], (list, tuple)):
            return [a for a in args[1] if isinstance(a, torch.Tensor)]
        return [a for a in (args[1:] if args and isinstance(args[0], str) else args)
                if isinstance(a, torch.Tensor)]
    return [a for a in args if isinstance(a, torch.Tensor)]


def _sdpa_scores(args: tuple, kwargs: dict
                 ) -> tuple[torch.Tensor, Any, list[torch.Tensor]] | None:
    """(scores with mask and causal mask applied, the scale given, [q, k transposed]) of one
    ``scaled_dot_product_attention`` call, or None when its arguments are not plain tensors."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    given = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    q, k, mask = given.get("query"), given.get("key"), given.get("attn_mask")
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() < 2:
        return None
    q, k = q.detach(), k.detach()
    if q.dim() > 2 and q.numel() // q.shape[-1] * k.shape[-2] > _SDPA_ENTRIES:
        q, k = q[:1], k[:1]
        mask = mask[:1] if isinstance(mask, torch.Tensor) and mask.dim() == q.dim() \
            and mask.shape[0] > 1 else mask
    if q.dim() >= 3 and k.dim() >= 3 and q.shape[-3] != k.shape[-3] and k.shape[-3] > 0 \
            and q.shape[-3] % k.shape[-3] == 0:  # grouped-query attention
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = given.get("scale")
    factor = float(scale) if scale is not None else 1 / math.sqrt(max(q.shape[-1], 1))
    try:
        scores = (q.double() @ k.double().transpose(-2, -1)) * factor
        if isinstance(mask, torch.Tensor):
            mask = mask.detach()
            scores = (scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool
                      else scores + mask.double())
        if given.get("is_causal"):
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool,
                                device=scores.device).triu(1)
            scores = scores.masked_fill(causal, -math.inf)
    except RuntimeError:
        return None
    return scores, scale, [q, k.transpose(-2, -1)]


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
