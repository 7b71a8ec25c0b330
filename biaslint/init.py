"""Initialization helpers that the fixes of BL004 and BL005 call. Public API.

``forget_gate_bias_(lstm, value=1.0)``
    Set the forget-gate bias of every layer and direction of an ``nn.LSTM`` (or of an
    ``nn.LSTMCell``, or of every LSTM inside a module) so that ``bias_ih[H:2H] + bias_hh[H:2H]``
    equals ``value``. A forget bias of about 1 keeps the cell state at the start of training
    instead of halving it every step (Gers et al., 2000; Jozefowicz et al., 2015).

``prior_bias_(layer, priors, head="softmax")``
    Set a classifier's bias so that its starting predictions equal the class priors: the bias is
    ``log(p)`` (centred) for a softmax head, ``log(p / (1 - p))`` for a sigmoid head (Lin et al.,
    2017: -4.6 for p = 0.01). With small weights the initial loss is then the entropy of the
    priors, the best a model that has not looked at the input can do.

``regression_bias_(layer, bias)``
    Set a regression head's bias to ``bias`` (one number for every output, or one per output):
    BL008's fix writes the ideal bias it measured, the one that puts the initial outputs' mean on
    the target's mean, so the first steps fit the data rather than the offset.

``decay_groups(model, weight_decay, embeddings=True)``
    Two optimizer parameter groups: the weight matrices and kernels with ``weight_decay``, and
    with ``weight_decay=0.0`` the biases, the normalization layers' parameters, the other 1-d
    parameters (gains, scales) and (unless ``embeddings=False``) embedding tables: weight decay
    pulls those toward zero every step, which no loss asks for (BL011's fix:
    ``torch.optim.AdamW(biaslint.init.decay_groups(model, 0.01), lr=3e-4)``).

The setters work in place under ``torch.no_grad()`` and return their argument, like
``torch.nn.init``.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import torch
import torch.nn as nn

__all__ = ["decay_groups", "forget_gate_bias_", "no_decay_kind", "prior_bias_", "prior_logits",
           "regression_bias_"]

M = TypeVar("M", bound=nn.Module)

# Priors are clamped here before taking logs, so a class that never occurs gets a very negative
# (finite) bias instead of -inf: log(1e-8) = -18.4 already gives it a predicted probability of 1e-8.
_MIN_PRIOR = 1e-8


def forget_gate_bias_(lstm: M, value: float = 1.0) -> M:
    """Make the forget-gate bias ``value`` in every layer and direction; returns ``lstm``.

    PyTorch orders LSTM gates (input, forget, cell, output), so for hidden size ``H`` the forget
    gate reads rows ``H:2H`` of ``bias_ih`` and ``bias_hh``; their sum is what the gate sees. We
    write ``value`` into ``bias_ih[H:2H]`` and 0 into ``bias_hh[H:2H]``; the other gates keep
    their values. Accepts ``nn.LSTM``, ``nn.LSTMCell`` or any module (every LSTM inside it).

    Raises ``ValueError`` for an LSTM built with ``bias=False`` (it has no bias to set: build it
    with ``bias=True``) and when ``lstm`` contains no LSTM at all.
    """
    targets = [m for m in lstm.modules() if isinstance(m, (nn.LSTM, nn.LSTMCell))]
    if not targets:
        raise ValueError(f"forget_gate_bias_: {type(lstm).__name__} contains no nn.LSTM or "
                         "nn.LSTMCell")
    for module in targets:
        if not module.bias:
            raise ValueError("forget_gate_bias_: the LSTM was built with bias=False, so it has no "
                             "forget-gate bias; build it with bias=True")
        hidden = module.hidden_size
        with torch.no_grad():
            for pname, param in module.named_parameters(recurse=False):
                if pname.startswith("bias_ih"):
                    param[hidden:2 * hidden].fill_(value)
                elif pname.startswith("bias_hh"):
                    param[hidden:2 * hidden].zero_()
    return lstm


def prior_logits(priors: Sequence[float], head: str = "softmax",
                 outputs: int | None = None) -> torch.Tensor:
    """The bias that makes a head predict ``priors`` before it has looked at the input.

    softmax: ``log(p) - mean(log p)`` (any constant can be added; centring keeps it small).
    sigmoid with one output and two priors (negative, positive): ``log(p / (1 - p))`` of the
    positive class. sigmoid with K outputs: ``priors`` are K per-label positive rates in [0, 1]
    (they need not sum to 1). ``outputs`` is the head's number of outputs, checked against
    ``priors``.
    """
    values = [float(v) for v in priors]
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("priors must be finite non-negative numbers")
    if head == "softmax":
        if outputs is not None and outputs != len(values):
            raise ValueError(f"the head has {outputs} outputs but {len(values)} priors were given")
        total = sum(values)
        if total <= 0:
            raise ValueError("priors are all zero")
        p = torch.tensor(values, dtype=torch.float64) / total
        logp = p.clamp_min(_MIN_PRIOR).log()
        return logp - logp.mean()
    if head == "sigmoid":
        if (outputs in (None, 1)) and len(values) == 2:
            total = sum(values)
            if total <= 0:
                raise ValueError("priors are all zero")
            rates = torch.tensor([values[1] / total], dtype=torch.float64)
        else:
            if outputs is not None and outputs != len(values):
                raise ValueError(f"the head has {outputs} outputs but {len(values)} priors were "
                                 "given (a one-output sigmoid head takes two: negative, positive)")
            if any(v > 1 for v in values):
                raise ValueError("a sigmoid head needs per-label positive rates in [0, 1]")
            rates = torch.tensor(values, dtype=torch.float64)
        rates = rates.clamp(_MIN_PRIOR, 1 - _MIN_PRIOR)
        return (rates / (1 - rates)).log()
    raise ValueError(f"head must be 'softmax' or 'sigmoid', not {head!r}")


def prior_bias_(layer: M, priors: Sequence[float], head: str = "softmax") -> M:
    """Set ``layer.bias`` to the prior logits of ``priors`` (see ``prior_logits``); returns it.

    ``layer`` is the classifier head: any module with a 1-D ``bias`` of one entry per output
    (``nn.Linear``, a 1x1 ``nn.Conv2d``...). Priors may be probabilities or counts for a softmax
    head. Raises ``ValueError`` when the layer has no bias (build it with ``bias=True``) or the
    number of priors does not match its outputs.
    """
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, torch.Tensor) or bias.dim() != 1:
        raise ValueError(f"prior_bias_: {type(layer).__name__} has no bias; build the classifier "
                         "head with bias=True")
    raw = getattr(priors, "raw", priors)  # biaslint.run.priors.Priors keeps the unnormalized values
    values = raw if head == "sigmoid" else priors
    logits = prior_logits(values, head, outputs=bias.numel())
    with torch.no_grad():
        bias.copy_(logits.to(bias.dtype))
    return layer


def regression_bias_(layer: M, bias: float | Sequence[float]) -> M:
    """Write ``bias`` (a number, or one per output) into ``layer.bias``; returns ``layer``."""
    current = getattr(layer, "bias", None)
    if not isinstance(current, torch.Tensor):
        raise ValueError(f"{type(layer).__name__} has no bias to set: build it with bias=True")
    values = torch.as_tensor(bias, dtype=current.dtype)
    if values.numel() not in (1, current.numel()):
        raise ValueError(f"{values.numel()} bias values for a layer with {current.numel()} "
                         "outputs: give one, or one per output")
    with torch.no_grad():
        current.copy_(values.to(current.device).expand_as(current) if values.numel() == 1
                      else values.reshape(current.shape).to(current.device))
    return layer


def no_decay_kind(module: nn.Module, name: str, parameter: torch.Tensor,
                  embeddings: bool = True) -> str | None:
    """Why the parameter ``name`` of ``module`` (its own, not a child's) should not be weight
    decayed: "bias", "norm" (a normalization layer's gain or shift), "embedding" (a lookup
    table), "1-d" (another gain or scale); None for a weight matrix or kernel, which should."""
    from biaslint.vocabulary import SCALE_NORM_MODULES

    if isinstance(module, SCALE_NORM_MODULES) or (
            parameter.ndim <= 1 and "norm" in type(module).__name__.lower()):
        return "norm"
    if name == "bias" or name.endswith("_bias") or name.startswith("bias_"):
        return "bias"
    if embeddings and isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and name == "weight":
        return "embedding"
    if parameter.ndim <= 1:
        return "1-d"
    return None


def decay_groups(model: nn.Module, weight_decay: float,
                 embeddings: bool = True) -> list[dict[str, object]]:
    """``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
    "weight_decay": 0.0}]`` for ``model``'s trainable parameters (each once), split by
    ``no_decay_kind``: pass it to any ``torch.optim`` optimizer in place of
    ``model.parameters()``."""
    decay: list[torch.Tensor] = []
    keep: list[torch.Tensor] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen or not parameter.requires_grad:
                continue
            seen.add(id(parameter))
            kind = no_decay_kind(module, name, parameter, embeddings)
            (decay if kind is None else keep).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": keep, "weight_decay": 0.0}]
