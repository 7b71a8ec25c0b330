"""Paths as the CI formats want them: relative to the folder biaslint reports from (the
project's root when the targets come from its pyproject.toml), with forward slashes."""

from __future__ import annotations

import os

from biaslint.findings import Finding


def relative(file: str) -> str:
    """``file`` relative to the current directory when inside it (an absolute path elsewhere,
    site-packages for one, stays absolute), with forward slashes."""
    if os.path.isabs(file):
        try:
            rel = os.path.relpath(file)
        except ValueError:  # another drive
            rel = file
        if not rel.startswith(".."):
            file = rel
    return file.replace("\\", "/")


def place(target: str, finding: Finding | None = None) -> tuple[str, int]:
    """The file and line a CI format files a finding (or, with none, the target's error)
    under: the finding's location, else what the target names before its ``:attr`` (its file,
    or its module when it names one), line 1."""
    if finding is not None and finding.location is not None:
        return relative(finding.location.file), max(1, finding.location.line)
    return relative(target.rsplit(":", 1)[0]), 1
