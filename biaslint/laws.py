"""Init laws: what values a tensor holds at init, as the calls that wrote it define them.

A model built on the meta device has no values; what it would start from is what its init
calls draw. The load stage records, for every write to a parameter's memory, the law of what was
written (``biaslint.load.law_recorder``); the analysis stage answers the rules' questions from
those laws when there are no real values (``biaslint.analysis.values``). This module is the
vocabulary both share: a ``Law`` per written region, and its algebra (scaling, shifting,
clamping, ``erfinv``).

A law describes each entry of the region as drawn independently from one distribution
(``normal``, ``trunc_normal``, ``uniform``, ``random`` with known moments only), a ``constant``,
``exact`` values known entry by entry (a Python literal, an arange, ``eye``), ``uninitialized``
(``torch.empty`` never written) or ``unknown`` (anything else: data loaded from a file, a custom
kernel), with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

# Exact values are kept up to this many entries (4 MB of float32); beyond it "unknown".
EXACT_LIMIT = 1 << 20

RANDOM_KINDS = frozenset({"normal", "trunc_normal", "uniform", "orthogonal", "random"})


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) if math.isfinite(x) else 0.0


def _cdf(x: float) -> float:
    if x == math.inf:
        return 1.0
    if x == -math.inf:
        return 0.0
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@dataclass(frozen=True)
class Law:
    """The distribution of every entry of one written region.

    ``loc``/``scale``: normal and truncated normal (before truncation); ``low``/``high``: the
    support (uniform bounds, truncation bounds). ``m``/``s``: mean and standard deviation for
    ``random`` and ``orthogonal`` (whose entries are not independent, but whose moments are known).
    ``values``: the flattened exact values (CPU, float64) for ``exact``. ``how``: the call that
    set it, for messages; ``why`` for ``unknown``."""

    kind: str
    value: float = 0.0  # constant
    loc: float = 0.0
    scale: float = 0.0
    low: float = -math.inf
    high: float = math.inf
    m: float = 0.0
    s: float = 0.0
    values: torch.Tensor | None = None
    how: str = ""

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def constant(value: float, how: str = "") -> "Law":
        return Law("constant", value=float(value), how=how)

    @staticmethod
    def normal(mean: float, std: float, how: str = "") -> "Law":
        if std == 0:
            return Law.constant(mean, how)
        return Law("normal", loc=float(mean), scale=abs(float(std)), how=how)

    @staticmethod
    def trunc_normal(mean: float, std: float, a: float, b: float, how: str = "") -> "Law":
        if std == 0 or a >= b:
            return Law.constant(min(max(mean, a), b), how)
        return Law("trunc_normal", loc=float(mean), scale=abs(float(std)), low=float(a),
                   high=float(b), how=how)

    @staticmethod
    def uniform(a: float, b: float, how: str = "") -> "Law":
        a, b = float(min(a, b)), float(max(a, b))
        if a == b:
            return Law.constant(a, how)
        return Law("uniform", low=a, high=b, how=how)

    @staticmethod
    def moments(mean: float, std: float, kind: str = "random", how: str = "") -> "Law":
        if std == 0:
            return Law.constant(mean, how)
        return Law(kind, m=float(mean), s=abs(float(std)), how=how)

    @staticmethod
    def exact(values: torch.Tensor, how: str = "") -> "Law":
        flat = values.detach().reshape(-1).to("cpu", torch.float64)
        if flat.numel() and bool((flat == flat[0]).all()):
            return Law.constant(float(flat[0]), how)
        return Law("exact", values=flat, how=how)

    @staticmethod
    def unknown(why: str) -> "Law":
        return Law("unknown", how=why)

    @staticmethod
    def uninitialized(how: str = "torch.empty") -> "Law":
        return Law("uninitialized", how=how)

    # -- what it says ------------------------------------------------------------------------
    @property
    def known(self) -> bool:
        return self.kind not in ("unknown", "uninitialized")

    @property
    def is_random(self) -> bool:
        return self.kind in RANDOM_KINDS

    @property
    def mean(self) -> float:
        if self.kind == "constant":
            return self.value
        if self.kind == "normal":
            return self.loc
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        if self.kind == "trunc_normal":
            alpha, beta, z = self._standard()
            return self.loc + self.scale * (_phi(alpha) - _phi(beta)) / z
        if self.kind in ("random", "orthogonal"):
            return self.m
        if self.kind == "exact":
            assert self.values is not None
            return float(self.values.mean()) if self.values.numel() else 0.0
        return math.nan

    @property
    def std(self) -> float:
        """Standard deviation of the entries (of the distribution; for exact values the
        unbiased estimate, as measured tensors get)."""
        if self.kind == "constant":
            return 0.0
        if self.kind == "normal":
            return self.scale
        if self.kind == "uniform":
            return (self.high - self.low) / math.sqrt(12)
        if self.kind == "trunc_normal":
            alpha, beta, z = self._standard()
            ratio = (_phi(alpha) - _phi(beta)) / z
            inner = ((alpha * _phi(alpha) if math.isfinite(alpha) else 0.0)
                     - (beta * _phi(beta) if math.isfinite(beta) else 0.0)) / z
            return self.scale * math.sqrt(max(0.0, 1 + inner - ratio * ratio))
        if self.kind in ("random", "orthogonal"):
            return self.s
        if self.kind == "exact":
            assert self.values is not None
            n = self.values.numel()
            # the estimator measured values get (torch.var_mean, unbiased): the same answer
            return float(self.values.std()) if n > 1 else 0.0
        return math.nan

    @property
    def second_moment(self) -> float:
        return self.mean ** 2 + self.std ** 2

    @property
    def support(self) -> tuple[float, float]:
        """(min, max) an entry can take."""
        if self.kind == "constant":
            return (self.value, self.value)
        if self.kind in ("uniform", "trunc_normal"):
            return (self.low, self.high)
        if self.kind == "exact":
            assert self.values is not None
            return (float(self.values.min()), float(self.values.max()))
        if self.kind in ("normal", "random", "orthogonal"):
            return (-math.inf, math.inf)
        return (math.nan, math.nan)

    def probability_at_most(self, x: float) -> float:
        """P(entry <= x); for exact values the fraction."""
        if self.kind == "constant":
            return 1.0 if self.value <= x else 0.0
        if self.kind == "normal":
            return _cdf((x - self.loc) / self.scale)
        if self.kind == "uniform":
            return min(1.0, max(0.0, (x - self.low) / (self.high - self.low)))
        if self.kind == "trunc_normal":
            if x >= self.high:
                return 1.0
            if x < self.low:
                return 0.0
            alpha, beta, z = self._standard()
            return (_cdf((x - self.loc) / self.scale) - _cdf(alpha)) / z
        if self.kind == "exact":
            assert self.values is not None
            return float((self.values <= x).double().mean()) if self.values.numel() else 0.0
        # random/orthogonal: symmetric about the mean is all we know
        return 0.5 if x == self.m else (1.0 if x > self.m + 10 * self.s else
                                        0.0 if x < self.m - 10 * self.s else math.nan)

    def describe(self) -> str:
        if self.kind == "constant":
            return f"{self.value:g}"
        if self.kind == "normal":
            return f"N({self.loc:g}, {self.scale:.3g}^2)"
        if self.kind == "trunc_normal":
            return (f"N({self.loc:g}, {self.scale:.3g}^2) "
                    f"truncated to [{self.low:.3g}, {self.high:.3g}]")
        if self.kind == "uniform":
            return f"U({self.low:.3g}, {self.high:.3g})"
        if self.kind in ("random", "orthogonal"):
            return f"{self.kind} (mean {self.m:.3g}, std {self.s:.3g})"
        if self.kind == "exact":
            return "exact values"
        return f"{self.kind} ({self.how})" if self.how else self.kind

    def _standard(self) -> tuple[float, float, float]:
        alpha = (self.low - self.loc) / self.scale
        beta = (self.high - self.loc) / self.scale
        return alpha, beta, max(_cdf(beta) - _cdf(alpha), 1e-300)

    # -- algebra -----------------------------------------------------------------------------
    def affine(self, factor: float, shift: float = 0.0) -> "Law":
        """The law of ``factor * x + shift``."""
        factor, shift = float(factor), float(shift)
        if not self.known:
            return self
        if factor == 0:
            return Law.constant(shift, self.how)
        if self.kind == "constant":
            return Law.constant(self.value * factor + shift, self.how)
        if self.kind == "normal":
            return Law.normal(self.loc * factor + shift, self.scale * abs(factor), self.how)
        if self.kind == "uniform":
            return Law.uniform(self.low * factor + shift, self.high * factor + shift, self.how)
        if self.kind == "trunc_normal":
            a, b = sorted((self.low * factor + shift, self.high * factor + shift))
            return Law.trunc_normal(self.loc * factor + shift, self.scale * abs(factor), a, b,
                                    self.how)
        if self.kind == "exact":
            assert self.values is not None
            return Law.exact(self.values * factor + shift, self.how)
        kind = self.kind if shift == 0 else "random"
        return Law.moments(self.m * factor + shift, self.s * abs(factor), kind, self.how)

    def clamp(self, low: float | None, high: float | None) -> "Law":
        lo = -math.inf if low is None else float(low)
        hi = math.inf if high is None else float(high)
        if not self.known:
            return self
        if self.kind == "constant":
            return Law.constant(min(max(self.value, lo), hi), self.how)
        if self.kind == "exact":
            assert self.values is not None
            return Law.exact(self.values.clamp(lo, hi), self.how)
        s_lo, s_hi = self.support
        # A clamp at (or, within float32 rounding, just beyond) the support changes nothing.
        slack = 1e-6 * max(1.0, abs(s_lo) if math.isfinite(s_lo) else 1.0,
                           abs(s_hi) if math.isfinite(s_hi) else 1.0)
        if lo <= s_lo + slack and hi >= s_hi - slack:
            return self
        # Clamping a normal where (almost) no mass lies beyond the bounds: a truncation
        # (timm's trunc_normal_ at std 0.02 clamps at +-2, 100 std away).
        if self.kind in ("normal", "trunc_normal"):
            outside = self.probability_at_most(lo) + 1 - self.probability_at_most(hi)
            if outside <= 1e-6:
                return Law.trunc_normal(self.loc, self.scale, max(lo, self.low),
                                        min(hi, self.high), self.how)
        return Law.unknown(f"clamped {self.describe()} to [{lo:g}, {hi:g}]")

    def erfinv(self) -> "Law":
        """``erfinv`` of a uniform on [l, u] within [-1, 1] is a truncated normal: this is how
        ``nn.init.trunc_normal_`` and timm's ``trunc_normal_`` draw."""
        if self.kind == "uniform" and -1 <= self.low < self.high <= 1:
            low = torch.erfinv(torch.tensor(self.low, dtype=torch.float64)).item()
            high = torch.erfinv(torch.tensor(self.high, dtype=torch.float64)).item()
            return Law.trunc_normal(0.0, 1 / math.sqrt(2), low, high, self.how)
        if self.kind == "constant":
            return Law.constant(torch.erfinv(torch.tensor(self.value, dtype=torch.float64)).item(),
                                self.how)
        if self.kind == "exact":
            assert self.values is not None
            return Law.exact(torch.erfinv(self.values), self.how)
        return Law.unknown(f"erfinv of {self.describe()}")

    def with_how(self, how: str) -> "Law":
        return replace(self, how=how) if self.known else self

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws (float64, CPU): a stand-in with this law's values or distribution."""
        if self.kind == "constant":
            return torch.full((n,), self.value, dtype=torch.float64)
        if self.kind == "exact":
            assert self.values is not None
            return self.values[:n].clone()
        if self.kind == "normal":
            return torch.randn(n, generator=generator, dtype=torch.float64) * self.scale + self.loc
        if self.kind == "uniform":
            return torch.rand(n, generator=generator, dtype=torch.float64) * (
                self.high - self.low) + self.low
        if self.kind == "trunc_normal":
            alpha, beta, _ = self._standard()
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            lo, hi = _cdf(alpha), _cdf(beta)
            z = torch.special.ndtri((lo + u * (hi - lo)).clamp(1e-300, 1 - 1e-16))
            return (z * self.scale + self.loc).clamp(self.low, self.high)
        if self.kind in ("random", "orthogonal"):
            return torch.randn(n, generator=generator, dtype=torch.float64) * self.s + self.m
        raise ValueError(f"no values to sample for a {self.kind} law")


@dataclass(frozen=True)
class Piece:
    """``law`` holds for the flattened entries [start, stop) of a tensor; for an ``exact`` law
    entry ``start`` is ``law.values[offset]``."""

    start: int
    stop: int
    law: Law
    offset: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    def exact_values(self) -> torch.Tensor:
        assert self.law.values is not None
        return self.law.values[self.offset:self.offset + self.size]


def scalar_of(value: Any) -> float | None:
    """A Python number, or None (tensors are resolved by the recorder, not here)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None
