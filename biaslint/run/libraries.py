"""Which installed distributions (and versions) stand for the library code a target ran.

The cache of ``--changed-since`` keys each target on them: a new version of a library the
build ran invalidates its entry. No torch import."""

from __future__ import annotations

import functools
import sys
from typing import Iterable


def versions() -> dict[str, str]:
    """What stands for the library code a target ran: a new version invalidates its entry."""
    from importlib import metadata

    from biaslint.version import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = "unknown"
    return {"biaslint": __version__, "torch": torch_version,
            "python": "{}.{}".format(*sys.version_info[:2])}



@functools.lru_cache(maxsize=None)
def version_of(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _top_levels() -> dict[str, list[str]]:
    from importlib import metadata

    try:
        return dict(metadata.packages_distributions())
    except Exception:  # a broken installed distribution: no library versions
        return {}


# Stood for by ``versions()`` already.
_OWN = frozenset({"torch", "biaslint"})
# Import machinery that site-packages installs in every process (setuptools' distutils shim,
# virtualenv's, an editable install's finder, all on sys.meta_path): it runs on every import,
# never as a model's code.
_MACHINERY = frozenset({"_distutils_hack", "_virtualenv"})


def distributions(libraries: Iterable[str]) -> dict[str, str]:
    """The installed distributions (and versions) that provide these top-level packages."""
    found: dict[str, str] = {}
    for top in libraries:
        if top in _OWN or top in _MACHINERY or top.startswith("__editable__"):
            continue
        for distribution in _providers(top):
            version = version_of(distribution)
            if version is not None and distribution.lower() not in _OWN:
                found[distribution] = version
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=None)
def _providers(top: str) -> tuple[str, ...]:
    """The distributions that provide the top-level package ``top``. Most are named like it
    (torchvision, timm, transformers): the distribution of that name counts when its RECORD
    lists the package's files. Otherwise every installed distribution's files are read
    (``packages_distributions``, a few hundred ms with a large environment)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(top)
        listed = (distribution.read_text("top_level.txt") or "").split()
        if top in listed:  # the distribution says so itself (a small file)
            return (distribution.metadata["Name"] or top,)
        files = distribution.files or ()
    except Exception:  # not installed under that name, or a broken RECORD
        files = ()
    if any(f.parts and (f.parts[0] == top or f.parts[0] in (f"{top}.py", f"{top}.pth"))
           for f in files):
        return (distribution.metadata["Name"] or top,)
    return tuple(_listed_top_levels().get(top, ()) or _top_levels().get(top, ()))


@functools.lru_cache(maxsize=1)
def _listed_top_levels() -> dict[str, list[str]]:
    """Top-level package -> distributions, from each distribution's ``top_level.txt`` (a small
    file, where it has one): before reading every distribution's whole RECORD."""
    from importlib import metadata

    found: dict[str, list[str]] = {}
    try:
        for distribution in metadata.distributions():
            for top in (distribution.read_text("top_level.txt") or "").split():
                found.setdefault(top, []).append(distribution.metadata["Name"])
    except Exception:  # a broken installed distribution: the full scan decides
        return {}
    return found
