"""The one way rules read a parameter's values: ``ParamValue``.

On a real tensor the answers are measured (the values are the truth). On the meta device they
come from the init laws the build recorded (``biaslint.laws``): exact for constants and literals,
in expectation for random draws (the mean and spread of N(0, 0.02^2) entries; the expected number
of entries at most 0), and ``known`` False, with the reason, when a law is unknown or a question
cannot be answered from the laws (the rule then reports the layer as not judged).
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

from biaslint.laws import EXACT_LIMIT, RANDOM_KINDS, Law, Piece

# Meta tensors whose laws mix draws are answered on a sampled stand-in up to this size.
STAND_IN_LIMIT = 1 << 22

UNKNOWN = "unknown"  # ``rows``/``equal_along`` when the laws cannot say


class ParamValue:
    """What a parameter holds. Subclasses: ``MeasuredValue`` (real) and ``LawValue`` (meta)."""

    shape: tuple[int, ...]
    known: bool = True
    why: str = ""  # why not known
    measured: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def constant(self) -> float | None:
        """The one value every entry holds, or None."""
        raise NotImplementedError

    def moments(self) -> tuple[float, float, float, float]:
        """(mean, population std, min, max); min/max are the support for drawn entries."""
        raise NotImplementedError

    def mean_square(self, sample: int | None = None) -> float:
        """Mean of the squared entries; ``sample``: from that many evenly strided entries of a
        real tensor (i.i.d. draws: relative error ~1/sqrt(2 * sample))."""
        mean, std, _, _ = self.moments()
        return mean * mean + std * std

    def rows(self, units_dim: int) -> str | None:
        """"identical", "parallel" or None, as ``unit_rows`` defines them; UNKNOWN."""
        raise NotImplementedError

    def equal_along(self, axis: int) -> bool | str:
        """Every slice along ``axis`` holds the same values; UNKNOWN."""
        raise NotImplementedError

    def zero_units(self, units_dim: int) -> torch.Tensor | None:
        """Which units (slices along ``units_dim``) hold only zeros, as a boolean mask; None
        when that is not known (a drawn entry is never exactly zero)."""
        raise NotImplementedError

    def exact(self) -> torch.Tensor | None:
        """The values themselves (detached, float64, CPU), when known entry by entry."""
        raise NotImplementedError

    def expected(self) -> torch.Tensor | None:
        """The values where known, each drawn entry's mean where drawn (float64, CPU)."""
        raise NotImplementedError

    def mean_of(self, start: int, stop: int) -> float:
        """Mean of the flattened entries [start, stop) (expected, for drawn entries)."""
        raise NotImplementedError

    def count_at_most(self, x: float, start: int = 0, stop: int | None = None) -> float:
        """How many of the flattened entries [start, stop) are <= x (expected, if drawn)."""
        raise NotImplementedError


class MeasuredValue(ParamValue):
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.detach()
        self.shape = tuple(int(s) for s in tensor.shape)
        finite = True
        if self.tensor.numel() and self.tensor.is_floating_point():
            low, high = torch.aminmax(self.tensor)
            self._extremes = (float(low), float(high))
            finite = math.isfinite(self._extremes[0]) and math.isfinite(self._extremes[1])
        else:
            self._extremes = (0.0, 0.0) if not self.tensor.numel() else (
                float(self.tensor.min()), float(self.tensor.max()))
        if not finite:
            self.known, self.why = False, "holds NaN or Inf"

    def constant(self) -> float | None:
        low, high = self._extremes
        return low if low == high else None

    @cached_property
    def _moments(self) -> tuple[float, float, float, float]:
        data = self.tensor.float()
        if data.numel() > 1:
            var, mean = torch.var_mean(data)
            return float(mean), float(var.sqrt()), self._extremes[0], self._extremes[1]
        mean = float(data.reshape(-1)[0]) if data.numel() else 0.0
        return mean, 0.0, self._extremes[0], self._extremes[1]

    def moments(self) -> tuple[float, float, float, float]:
        return self._moments

    def mean_square(self, sample: int | None = None) -> float:
        flat = self.tensor.reshape(-1)
        if not flat.numel():
            return 0.0
        if sample is not None:
            flat = flat[::max(1, flat.numel() // sample)]
        return float(flat.double().pow(2).mean())

    def expected(self) -> torch.Tensor | None:
        return self.exact()

    def rows(self, units_dim: int) -> str | None:
        return unit_rows(self.tensor, units_dim)

    def equal_along(self, axis: int) -> bool | str:
        data = self.tensor
        if data.dim() <= axis or data.shape[axis] < 2:
            return True
        return bool((data - data.narrow(axis, 0, 1)).abs().max() == 0)

    def zero_units(self, units_dim: int) -> torch.Tensor | None:
        data = self.tensor
        if data.dim() <= units_dim:
            return None
        rows = data.movedim(units_dim, 0).reshape(data.shape[units_dim], -1)
        return (rows == 0).all(dim=1).cpu()

    def exact(self) -> torch.Tensor | None:
        return self.tensor.double().cpu()

    def mean_of(self, start: int, stop: int) -> float:
        return float(self.tensor.reshape(-1)[start:stop].double().mean())

    def count_at_most(self, x: float, start: int = 0, stop: int | None = None) -> float:
        return float((self.tensor.reshape(-1)[start:stop] <= x).sum())


class LawValue(ParamValue):
    measured = False

    def __init__(self, pieces: list[Piece] | None, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.pieces = pieces or []
        if pieces is None:
            self.known, self.why = False, "its memory is not laid out in one block"
        else:
            bad = next((p.law for p in pieces if not p.law.known), None)
            if bad is not None:
                self.known = False
                self.why = "init never recorded (torch.empty)" if bad.kind == "uninitialized" \
                    else f"init law unknown: {bad.how or 'not recorded'}"
            elif not self._answerable():
                # several laws in one tensor too large for a stand-in: the row questions (are
                # the units alike?) have no answer, so the value rules must not judge it
                self.known = False
                self.why = "made of several init laws, too large to answer from them"

    def _answerable(self) -> bool:
        if len(self.pieces) <= 1 or self.numel <= STAND_IN_LIMIT:
            return True
        if all(p.law.kind == "constant" for p in self.pieces) and \
                len({p.law.value for p in self.pieces}) == 1:
            return True
        block = self.numel // max(self.shape[0], 1) if self.shape else 1
        return self._drawn_blocks(block)

    def _single(self) -> Law | None:
        return self.pieces[0].law if len(self.pieces) == 1 else None

    def constant(self) -> float | None:
        values = {p.law.value for p in self.pieces if p.law.kind == "constant"}
        if len(values) == 1 and all(p.law.kind == "constant" for p in self.pieces):
            return values.pop()
        if all(p.law.kind in ("constant", "exact") for p in self.pieces):
            exact = self.exact()
            if exact is not None and exact.numel() and bool((exact == exact[0]).all()):
                return float(exact.reshape(-1)[0])
        return None

    def moments(self) -> tuple[float, float, float, float]:
        total = sum(p.size for p in self.pieces) or 1
        mean = sum(p.size * _law_of_piece(p).mean for p in self.pieces) / total
        square = sum(p.size * _law_of_piece(p).second_moment for p in self.pieces) / total
        low = min((_law_of_piece(p).support[0] for p in self.pieces), default=0.0)
        high = max((_law_of_piece(p).support[1] for p in self.pieces), default=0.0)
        return mean, math.sqrt(max(0.0, square - mean * mean)), low, high

    def _drawn_blocks(self, dim0_block: int) -> bool:
        """Some drawn piece covers three whole slices along dim 0: in it every unit has
        independent draws in at least two places, so no two units are the same or parallel."""
        return any(p.law.is_random and p.size >= 3 * dim0_block for p in self.pieces)

    def stand_in(self) -> torch.Tensor | None:
        """Values with these laws (exact where exact, drawn where drawn), small tensors only."""
        if not self.known or self.numel > STAND_IN_LIMIT:
            return None
        generator = torch.Generator().manual_seed(0)
        parts = []
        for p in self.pieces:
            law = p.law
            parts.append(p.exact_values() if law.kind == "exact" else law.sample(p.size, generator))
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        return flat.reshape(self.shape)

    def rows(self, units_dim: int) -> str | None:
        if not self.known:
            return UNKNOWN
        single = self._single()
        if single is not None and single.kind == "constant":
            return "identical"
        units = self.shape[units_dim] if len(self.shape) > units_dim else 1
        per_unit = self.numel // max(units, 1)
        if single is not None and single.is_random and per_unit >= 2 and units >= 2:
            return None
        stand_in = self.stand_in()
        if stand_in is not None:
            return unit_rows(stand_in, units_dim)
        block = self.numel // max(self.shape[0], 1) if self.shape else 1
        if per_unit >= 2 and self._drawn_blocks(block):
            return None
        return UNKNOWN

    def equal_along(self, axis: int) -> bool | str:
        if not self.known:
            return UNKNOWN
        if len(self.shape) <= axis or self.shape[axis] < 2:
            return True
        if self.constant() is not None:
            return True
        single = self._single()
        if single is not None and single.is_random:
            return False
        stand_in = self.stand_in()
        if stand_in is not None:
            return bool((stand_in - stand_in.narrow(axis, 0, 1)).abs().max() == 0)
        block = self.numel // max(self.shape[0], 1) if self.shape else 1
        return False if self._drawn_blocks(block) else UNKNOWN

    def zero_units(self, units_dim: int) -> torch.Tensor | None:
        if not self.known or len(self.shape) <= units_dim:
            return None
        units = self.shape[units_dim]
        if units_dim == 0 and units:  # unit j is the flat block [j * per, (j + 1) * per)
            per = max(self.numel // units, 1)
            zero = torch.ones(units, dtype=torch.bool)
            for p in self.pieces:
                if p.law.kind in ("constant", *RANDOM_KINDS) and p.law.second_moment == 0:
                    continue  # 0, or a draw with no spread around 0
                if p.law.kind == "exact":
                    hits = torch.nonzero(p.exact_values() != 0).reshape(-1) + p.start
                    zero[torch.unique(hits // per)] = False
                else:  # a non-zero constant, or drawn (never exactly zero)
                    zero[p.start // per:(p.stop - 1) // per + 1] = False
            return zero
        stand_in = self.stand_in()  # exact where exact, drawn (non-zero) where drawn
        if stand_in is None:
            return None
        return (stand_in.movedim(units_dim, 0).reshape(units, -1) == 0).all(dim=1)

    def exact(self) -> torch.Tensor | None:
        if not self.known or self.numel > 4 * EXACT_LIMIT or any(
                p.law.kind not in ("constant", "exact") for p in self.pieces):
            return None
        parts = [p.exact_values() if p.law.kind == "exact"
                 else torch.full((p.size,), p.law.value, dtype=torch.float64) for p in self.pieces]
        return torch.cat(parts).reshape(self.shape) if parts else torch.zeros(self.shape)

    def expected(self) -> torch.Tensor | None:
        """Each entry's expected value (its exact value where known)."""
        if not self.known or self.numel > 4 * EXACT_LIMIT:
            return None
        parts = [p.exact_values() if p.law.kind == "exact"
                 else torch.full((p.size,), p.law.mean, dtype=torch.float64) for p in self.pieces]
        return torch.cat(parts).reshape(self.shape) if parts else torch.zeros(self.shape)

    def _clipped(self, start: int, stop: int) -> list[tuple[int, Law, Piece]]:
        out = []
        for p in self.pieces:
            lo, hi = max(p.start, start), min(p.stop, stop)
            if hi > lo:
                out.append((hi - lo, p.law, Piece(lo, hi, p.law, p.offset + lo - p.start)))
        return out

    def mean_of(self, start: int, stop: int) -> float:
        parts = self._clipped(start, stop)
        total = sum(n for n, _, _ in parts) or 1
        return sum(n * (float(piece.exact_values().mean()) if law.kind == "exact" else law.mean)
                   for n, law, piece in parts) / total

    def count_at_most(self, x: float, start: int = 0, stop: int | None = None) -> float:
        stop = self.numel if stop is None else stop
        count = 0.0
        for n, law, piece in self._clipped(start, stop):
            if law.kind == "exact":
                count += float((piece.exact_values() <= x).sum())
            else:
                count += n * law.probability_at_most(x)
        return count


def _law_of_piece(piece: Piece) -> Law:
    if piece.law.kind == "exact" and piece.size != (piece.law.values.numel()
                                                    if piece.law.values is not None else 0):
        return Law.exact(piece.exact_values())
    return piece.law


def unit_rows(weight: torch.Tensor, units_dim: int) -> str | None:
    """How the units' weight vectors relate: "identical" (every unit has the same weights; a
    constant weight is one case), "parallel" (the same direction, scaled differently per unit),
    or None (they differ in direction). Exact up to float rounding."""
    data = weight.detach()
    if data.dim() < 2 or data.shape[units_dim] < 2 or not data.is_floating_point():
        return None
    # A cheap necessary condition first: random weights fail on the first two rows.
    cheap = data.narrow(units_dim, 0, 2).movedim(units_dim, 0).reshape(2, -1).double()
    norms = cheap.norm(dim=1)
    if float(norms.min()) > 0:
        cosine = float((cheap[0] @ cheap[1]) / (norms[0] * norms[1]))
        if abs(cosine) < 1 - 1e-9:
            return None
    rows = data.movedim(units_dim, 0).reshape(data.shape[units_dim], -1).double()
    scale = float(rows.abs().max())
    if scale == 0:
        return "identical"
    tolerance = 1e-6 * scale
    if float((rows - rows[:1]).abs().max()) <= tolerance:
        return "identical"
    reference = rows[int(torch.argmax(rows.norm(dim=1)))]
    factors = rows @ reference / (reference @ reference)
    residual = rows - factors[:, None] * reference[None, :]
    return "parallel" if float(residual.abs().max()) <= tolerance else None


def value_of(tensor: torch.Tensor, pieces: list[Piece] | None, recorded: bool) -> ParamValue:
    """Measured when the tensor has values; from its recorded laws on the meta device."""
    if tensor.device.type != "meta":
        return MeasuredValue(tensor)
    if not recorded:
        value = LawValue([], tuple(tensor.shape))
        value.known, value.why = False, "on the meta device, and no init law was recorded"
        return value
    return LawValue(pieces, tuple(tensor.shape))
