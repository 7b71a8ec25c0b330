"""Source files Python refuses: not UTF-8, and no encoding declared (PEP 263).

``python model.py`` fails on such a file with a SyntaxError, and newer Pythons refuse to import
it; the import machinery of some versions lets invalid bytes in a comment through. biaslint
must not lint a model the user's own program cannot run, so the files of the target's module
and of the project modules it imports are checked after the import, as Python would read them.
"""

from __future__ import annotations

import io
import os
import sys
import tokenize
from typing import Any, Iterable

from biaslint.errors import TargetError

_CHECKED: dict[tuple[str, int, int], int | None] = {}  # (path, mtime_ns, size) -> bad line


def undecodable_line(path: str) -> int | None:
    """The first line of the source file ``path`` that Python cannot decode as UTF-8, when the
    file declares no other encoding; None when Python reads it (or it cannot be read here)."""
    try:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key in _CHECKED:
            return _CHECKED[key]
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:  # a first line that is not UTF-8, or a bad cookie: decided below
        encoding = "utf-8"
    line = None
    if encoding in ("utf-8", "utf-8-sig"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
    _CHECKED[key] = line
    return line


def refuse_undecodable(target: str, module: Any, before: Iterable[str]) -> None:
    """Raise ``TargetError`` when the file of ``module`` (the target's), or of a project module
    first imported since ``before`` (the names ``sys.modules`` held), is a source file Python
    refuses."""
    from biaslint.load.files import is_project_file

    known = set(before)
    files = [getattr(module, "__file__", None)]
    files += [getattr(sys.modules.get(name), "__file__", None)
              for name in list(sys.modules) if name not in known]
    for file in dict.fromkeys(files):
        if not isinstance(file, str) or not file.endswith(".py") or not is_project_file(file):
            continue
        line = undecodable_line(file)
        if line is not None:
            shown = display_path(file)
            raise TargetError(
                f"{target}: {shown} is not valid UTF-8 (line {line}) and declares no other "
                "encoding, so Python refuses it as source (PEP 263); save it as UTF-8, or "
                "declare its encoding on its first line (# -*- coding: latin-1 -*-)")


def display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
