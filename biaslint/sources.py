"""The text of each of the user's source files as the build imported it.

Every line biaslint records (where a layer was built, which call initialized a parameter) comes
from a code object, compiled from the text the file held when it was imported. The fixes, the
fix code a rule shows and the suppression comments are read from the source by those line
numbers, so they must read that same text: a file an editor saves while the build runs holds
other text at those lines (one line more at the top shifts every site by one), and reading it
lazily through ``linecache`` would aim an edit at the wrong line while its digest, taken from
the same new text, matched the file on disk.

While ``remembered()`` is active (``biaslint.load.sites.record_build`` enters it), a source file
outside installed packages and the standard library is compiled from the text read for it right
then, and that text is kept: the code and the text are one read of the file. A file imported
before (by the user's own code, outside a recorded build) has no kept text and is read through
``linecache`` as before. No torch import.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import linecache
import os
import sysconfig
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_TEXTS: dict[str, str] = {}  # real path -> the text the module was compiled from
_lock = threading.Lock()
_depth = 0
_ABSENT = object()
_saved: Any = _ABSENT


def text_of(file: str) -> str | None:
    """The text the build compiled ``file`` from, when the build imported it; else None."""
    return _TEXTS.get(os.path.realpath(file))


def lines_of(file: str) -> list[str]:
    """The lines of ``file`` as the build read it; ``linecache``'s where it was not recorded."""
    text = text_of(file)
    return text.splitlines(keepends=True) if text is not None else linecache.getlines(file)


def line_of(file: str, line: int) -> str:
    """One 1-based line of ``file`` as the build read it; "" past its end."""
    lines = lines_of(file)
    return lines[line - 1] if 1 <= line <= len(lines) else ""


def source_of(file: str) -> str:
    """The whole text of ``file`` as the build read it ("" when it cannot be read)."""
    text = text_of(file)
    return text if text is not None else "".join(linecache.getlines(file))


def forget(file: str) -> None:
    """``--fix`` wrote the file: from now on it is read as it is on disk."""
    _TEXTS.pop(os.path.realpath(file), None)


@contextmanager
def remembered() -> Iterator[None]:
    """Compile the user's modules imported in the block from a text that is then kept."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            loader = importlib.machinery.SourceFileLoader
            _saved = loader.__dict__.get("get_code", _ABSENT)
            loader.get_code = _get_code  # type: ignore[method-assign]  # undone below
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                loader = importlib.machinery.SourceFileLoader
                if _saved is _ABSENT:
                    del loader.get_code  # inherited from SourceLoader: let it be again
                else:
                    loader.get_code = _saved  # type: ignore[method-assign]  # the original
                _saved = _ABSENT


_original_get_code = importlib.machinery.SourceFileLoader.get_code


def _get_code(self: Any, fullname: str) -> Any:
    path = self.get_filename(fullname)
    if not isinstance(path, str) or not path.endswith(".py") or _installed(path):
        return _original_get_code(self, fullname)
    # One read serves both the compile and the kept text (the bytecode cache is skipped for
    # these few files: a .pyc says nothing about which text it came from once the file moved
    # on within the same second).
    data = self.get_data(path)
    try:
        text = importlib.util.decode_source(data)
    except UnicodeDecodeError:
        # not text Python reads as source: import it as Python would, keep nothing (the loader
        # then refuses the file in one line: ``load.encoding``)
        return _original_get_code(self, fullname)
    code = self.source_to_code(data, path)
    _TEXTS[os.path.realpath(path)] = text
    return code


def _installed(path: str) -> bool:
    """A file of an installed package or of the standard library: never edited, so its text
    need not be kept (and compiling a whole library from source would be slow)."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    for key in ("stdlib", "platstdlib"):
        base = sysconfig.get_paths().get(key)
        if base and real.startswith(os.path.realpath(base) + os.sep):
            return True
    return False


__all__ = ["forget", "line_of", "lines_of", "remembered", "source_of", "text_of"]
