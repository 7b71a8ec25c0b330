"""What the rules that measure a real forward (BL007, BL009) derive from the init laws instead,
on the meta device: the pieces they share.

A layer's pre-activation ``w . x`` is known in law when its weight is drawn i.i.d. around 0 and
its input comes straight from a norm (``biaslint.analysis.normed``): each row of ``x`` has rms
at most ``NormedInput.high``, exactly, and at least ``NormedInput.low`` when the norm normalizes
(its input's variance at least its eps). Anything else is declined with the reason.

No torch at module level: the rule modules import this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Use
    from biaslint.analysis.normed import NormedInput
    from biaslint.analysis.values import ParamValue
    from biaslint.laws import Law

# Laws whose entries are drawn independently: a sum over many of them is normal (exactly for
# ``normal``); ``orthogonal`` rows are not independent entries.
IID_KINDS = frozenset({"normal", "uniform", "trunc_normal"})
# Below this many terms a sum of uniform or truncated-normal draws is not called normal.
CLT_TERMS = 16
# The chance, over the weights' draw, that a bound said to hold does not: e**-20.
TAIL = 20.0


@dataclass(frozen=True)
class DrawnWeight:
    """A weight whose entries are drawn independently from one law."""

    law: "Law"
    std: float
    mean: float


def drawn_weight(value: "ParamValue | None", terms: int) -> DrawnWeight | str:
    """The weight's one law, when every entry is drawn independently from it around 0 (a sum of
    ``terms`` of them then normal); else why the laws do not give the pre-activation's law."""
    if value is None or not value.known:
        return "its weight's init law is not known"
    pieces = getattr(value, "pieces", None)
    if not pieces:
        return "its weight has no recorded init law"
    law = pieces[0].law
    if any(p.law.kind != law.kind or p.law.describe() != law.describe() for p in pieces):
        return "its weight is made of several init laws"
    if law.kind == "constant":
        return DrawnWeight(law, 0.0, law.value)
    if law.kind not in IID_KINDS:
        return f"its weight is drawn as {law.describe()}, not entry by entry independently"
    if law.kind != "normal" and terms < CLT_TERMS:
        return f"its pre-activation sums only {terms} draws of {law.describe()}"
    return DrawnWeight(law, law.std, law.mean)


def row_norm_bound(weight: DrawnWeight, width: int, units: int) -> float | None:
    """A bound on every unit's ``||w_u||`` (``width`` entries each): from the support when it is
    bounded, else (a normal) from the chi-square tail at ``TAIL`` with a union over the units.
    None when neither holds."""
    low, high = weight.law.support
    if math.isfinite(low) and math.isfinite(high):
        return max(abs(low), abs(high)) * math.sqrt(width)
    if weight.law.kind != "normal" or weight.mean != 0:
        return None
    t = TAIL + math.log(max(units, 1))
    square = width + 2 * math.sqrt(width * t) + 2 * t  # Laurent and Massart (2000)
    return weight.std * math.sqrt(square)


def normed(model: "AnalysedModel", use: "Use", width: int, operand: int = 0
           ) -> "NormedInput | str":
    """The norm feeding ``use``'s ``operand`` over rows of ``width`` entries, or why not."""
    from biaslint.analysis.normed import normed_input

    found = normed_input(model, use, operand)
    if isinstance(found, str):
        return found
    if found.width != width:
        return (f"the norm {found.norm} normalizes rows of {found.width} entries, not the "
                f"{width} it contracts")
    return found


def binomial_low(trials: float, p: float) -> float:
    """A count of ``trials`` independent events of chance at least ``p`` is at least this but
    with chance e**-TAIL (Hoeffding; exact at chance 0 or 1)."""
    if p <= 0 or p >= 1:
        return trials * min(max(p, 0.0), 1.0)
    return trials * p - math.sqrt(trials * TAIL / 2)


LAWS_NOTE = ("derived from the init laws (the meta device: no forward with values), for any "
             "input whose rows reach the layer through the norm")
