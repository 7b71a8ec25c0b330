"""Paths as the CI formats want them: relative to the folder biaslint reports from (the
project's root when the targets come from its pyproject.toml), with forward slashes."""

from __future__ import annotations

import os

from biaslint.findings import Finding, Location, short_path


def relative(file: str) -> str:
    """``file`` relative to the current directory when inside it (an absolute path elsewhere,
    an installed package's from its package folder on), with forward slashes."""
    if short_path(file) != file:
        return short_path(file)
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
    return place_at(target, finding.location if finding is not None else None)


def place_at(target: str, location: Location | None) -> tuple[str, int]:
    """The same for a location (a group's: ``report.groups``)."""
    if location is not None:
        return relative(location.file), max(1, location.line)
    return relative(target.rsplit(":", 1)[0]), 1
