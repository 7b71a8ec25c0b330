"""BL100: a ``# biaslint: ignore`` comment, or a BL code in a ``# noqa`` comment, that suppresses
nothing (the meta-rule).

The findings come from the engine's suppression pass (``biaslint.engine.suppress``), the only
place that knows which comments were used; ``check`` yields nothing. Registering the rule gives
it a code to select or ignore, a page and an entry in ``biaslint rules``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Severity
from biaslint.rules.base import Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel


class UnusedSuppression(Rule):
    code = "BL100"
    name = "unused-suppression"
    severity = Severity.WARNING
    summary = "A biaslint suppression comment that suppresses nothing"
    what_it_does = """\
Reports `# biaslint: ignore[...]` comments, and the BL codes of `# noqa: ...` comments, that
have no effect on the model being linted:

* the comment is on a line that constructs a layer, but none of the codes it names (all of
  them, for a bare `# biaslint: ignore`) found anything there; or it names a code that is not a
  rule;
* the comment is on another line of a function that built or initialized a layer, such as the
  `nn.init.zeros_(...)` line. Suppressions only work on the line (or any line of the call) that
  constructs the layer, which is where biaslint reports it.

In a `# noqa` comment only the BL codes are biaslint's: the finding quotes the comment as the
user wrote it and says to remove just the unused BL code, keeping the other tools' codes
(`# noqa: E501, BL002` becomes `# noqa: E501`). A bare `# noqa` (no codes) belongs to ruff or
flake8: it is not a biaslint suppression, and BL100 never reports it.

A code is only judged when its rule ran (`--select` can leave it out), and BL100 itself is off
when `--select` excludes it. Comments in functions that built nothing of this model are left
alone: they may belong to another target.
"""
    why_bad = """\
A suppression that suppresses nothing is noise at best. At worst it is a misplaced suppression
that the author believes is working, or a stale one that will silently hide a real finding when
the code around it changes.
"""
    fix_text = """\
Remove the comment or the codes it names that suppress nothing, or move it to the line that
constructs the layer. If one line builds layers for several models and the code is needed for
only some of them, keep it and add `BL100` to the comment: `# biaslint: ignore[BL002, BL100]`
(or `# noqa: BL002, BL100`).
"""
    references = (
        "Ruff's RUF100 (unused-noqa), the model for this rule, "
        "https://docs.astral.sh/ruff/rules/unused-noqa/",
    )
    bad_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 10))
    nn.init.zeros_(model[0].weight)  # biaslint: ignore[BL002]  (not a construction line)
    return model
'''
    good_example = '''\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(16, 64),  # biaslint: ignore[BL002]
        nn.Tanh(),
        nn.Linear(64, 64),  # biaslint: ignore[BL002]
        nn.Tanh(),
        nn.Linear(64, 10),
    )
    for hidden in (model[0], model[2]):
        nn.init.zeros_(hidden.weight)
        nn.init.zeros_(hidden.bias)
    return model
'''

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        return ()
