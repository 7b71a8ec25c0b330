"""The post-pass over the rules' findings: what the user said about them.

Frozen parameters first (a layer nobody trains has no training to lose), then inline
suppressions (and BL100), per-module ignores, severity overrides, and the edits of ``--fix``;
findings come out in file order."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding
from biaslint.settings import Settings

if TYPE_CHECKING:  # the pipeline's own types; importing them here would load torch
    import torch.nn as nn

    from biaslint.load.build import LoadedTarget


def unfrozen(findings: list[Finding], model: nn.Module) -> tuple[list[Finding], list[str]]:
    """Drop findings about a parameter nobody trains (a frozen backbone): each claims something
    about training (never trains, stays symmetric, grows) that does not apply to it. A rule
    whose claim holds for a frozen parameter too (``Rule.frozen_matters``) keeps its findings."""
    import torch

    from biaslint.rules import all_rules

    standing = {rule.code for rule in all_rules() if rule.frozen_matters}
    kept: list[Finding] = []
    frozen: list[str] = []
    for finding in findings:
        tensor = None
        if finding.parameter and finding.code not in standing:
            try:
                tensor = getattr(model.get_submodule(finding.module), finding.parameter, None)
            except AttributeError:
                tensor = None
        if isinstance(tensor, torch.Tensor) and not tensor.requires_grad:
            frozen.append(f"{finding.code} {finding.module}.{finding.parameter}")
        else:
            kept.append(finding)
    return kept, frozen


def post_process(findings: Iterable[Finding], settings: Settings, loaded: LoadedTarget,
                 ran: list[str]) -> list[Finding]:
    """Inline suppressions (and BL100), then per-module-ignores, then severity overrides.

    Suppressions come first so a comment that also matches a per-module ignore still counts as
    used: BL100 stays quiet about a comment that is merely redundant. A rule that crashed is
    not in ``ran``: its suppressions suppressed nothing because it found nothing, and BL100
    must not call them unused.
    """
    from biaslint.engine.causes import with_causes
    from biaslint.engine.suppress import apply_suppressions, with_severity
    from biaslint.fix.plan import with_edits
    from biaslint.rules import all_rules

    init_sites = [c.location for c in loaded.param_inits.values()
                  if c.by_user and c.location is not None]
    kept = apply_suppressions(list(findings), loaded.module_sites, ran,
                              [r.code for r in all_rules()], extra_locations=init_sites)
    kept = [f for f in kept if not _ignored_for_module(f, settings)]
    kept = with_severity(kept, settings.severity_overrides)
    kept = with_edits(kept, loaded.module_sites, loaded.param_inits,
                      getattr(loaded, "module_chains", None))
    kept.sort(key=lambda f: (f.location.file if f.location else "",
                             f.location.line if f.location else 0, f.code, f.module))
    return with_causes(kept, loaded)


def _ignored_for_module(finding: Finding, settings: Settings) -> bool:
    for pattern, codes in settings.per_module_ignores.items():
        if fnmatch.fnmatchcase(finding.module, pattern) and any(
                finding.code.startswith(c.upper()) for c in codes):
            return True
    return False
