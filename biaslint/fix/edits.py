"""Source edits of the user's code, shared by every rule's fix (as ruff's ``fix/edits.rs``).

Each function reads the recorded call from the source and returns the rewritten call; the rule
decides whether the fix is safe.
"""

from __future__ import annotations

import ast
import linecache
from typing import Any

from biaslint.findings import Location

# Position of ``bias`` among the positional parameters of each torch constructor.
_BIAS_POSITION = {"Linear": 2, "Bilinear": 3, "Conv1d": 7, "Conv2d": 7, "Conv3d": 7,
                  "ConvTranspose1d": 7, "ConvTranspose2d": 7, "ConvTranspose3d": 7}


def with_bias_false(site: Location, class_name: str) -> tuple[str, bool] | None:
    """The constructor call at ``site`` with ``bias=False`` (replacing any bias argument).
    Returns (code, whether an existing bias argument was replaced), None when the call cannot be
    found in the source."""
    source = "".join(linecache.getlines(site.file))
    if not source:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    candidates = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.lineno == site.line]
    exact = [n for n in candidates if n.col_offset == site.col - 1]
    named = [n for n in candidates if _callee(n).split(".")[-1] == class_name]
    call = (exact or named or [None])[0]
    if call is None:
        return None
    segment = ast.get_source_segment(source, call)
    if segment is None:
        return None
    base = _offset(source, call.lineno, call.col_offset)

    def span(node: Any) -> tuple[int, int]:
        return (_offset(source, node.lineno, node.col_offset) - base,
                _offset(source, node.end_lineno, node.end_col_offset) - base)

    for kw in call.keywords:
        if kw.arg == "bias":
            start, end = span(kw.value)
            return segment[:start] + "False" + segment[end:], True
    position = _BIAS_POSITION.get(class_name)
    if position is not None and len(call.args) > position and not any(
            isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        start, end = span(call.args[position])
        return segment[:start] + "False" + segment[end:], True
    last = [*call.args, *call.keywords]
    if last:
        end = max(span(node)[1] for node in last)
        return segment[:end] + ", bias=False" + segment[end:], False
    close = segment.rstrip().rfind(")")
    return segment[:close] + "bias=False" + segment[close:], False


def _callee(call: "object") -> str:
    assert isinstance(call, ast.Call)
    try:
        return ast.unparse(call.func)
    except Exception:  # noqa: BLE001
        return ""


def _offset(source: str, line: int | None, col: int | None) -> int:
    """Character offset of an AST (line, UTF-8 byte column) position."""
    lines = source.splitlines(keepends=True)
    line = line or 1
    prefix = sum(len(text) for text in lines[:line - 1])
    text = lines[line - 1] if line - 1 < len(lines) else ""
    return prefix + len(text.encode("utf-8")[:col or 0].decode("utf-8", errors="ignore"))


