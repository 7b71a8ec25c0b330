"""Where the --changed-since records live and what their paths are relative to, without torch
(``biaslint --watch`` reads them in the client, which imports none)."""

from __future__ import annotations

from pathlib import Path

from biaslint.settings import CACHE_DIR

SOURCES_FILE = "sources.json"


def sources_cache(project: Path) -> Path:
    """The records' file for a project folder."""
    return project / CACHE_DIR / SOURCES_FILE


def work_tree(start: Path) -> Path | None:
    """The git work tree holding ``start`` (the nearest folder with a ``.git``), or None. No
    git process: a plain run only records, and needs nothing more."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None
