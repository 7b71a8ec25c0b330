"""Source edits of the user's code, shared by every rule's fix (as ruff's ``fix/edits.rs``).

Each function reads the recorded call from the source and returns the rewritten call; the rule
decides whether the fix is safe.
"""

from __future__ import annotations

import ast
import hashlib
from collections import OrderedDict
from typing import Any

from biaslint.findings import Edit, Location
from biaslint.sources import source_of

# Position of ``bias`` among the positional parameters of each torch constructor.
BIAS_POSITION = {"Linear": 2, "Bilinear": 3, "Conv1d": 7, "Conv2d": 7, "Conv3d": 7,
                  "ConvTranspose1d": 7, "ConvTranspose2d": 7, "ConvTranspose3d": 7}


# Parsed files, most recent last: a rule reads many constructor calls of one file (every norm of
# a ResNet is in torchvision's resnet.py), and parsing it again for each cost more than the rule.
# Each entry keeps the text it was parsed from and is used only while the file reads the same.
# The trees are shared: callers read them, and parse their own to change one.
_PARSED: "OrderedDict[str, tuple[str, ast.Module]]" = OrderedDict()
_CALLS: dict[int, tuple[ast.Module, dict[int, list[ast.Call]]]] = {}
_KEEP = 32


def parsed(file: str) -> tuple[str, ast.Module] | None:
    """The file's text as the build read it (``biaslint.sources``: the text its code was
    compiled from, which the recorded lines point into) and its syntax tree."""
    source = source_of(file)
    if not source:
        return None
    found = _PARSED.get(file)
    if found is not None and (found[0] is source or found[0] == source):
        _PARSED.move_to_end(file)
        return found
    try:
        found = source, ast.parse(source)
    except SyntaxError:
        return None
    replaced = _PARSED.pop(file, None)
    if replaced is not None:
        _CALLS.pop(id(replaced[1]), None)
    _PARSED[file] = found
    while len(_PARSED) > _KEEP:
        _, (_, old) = _PARSED.popitem(last=False)
        _CALLS.pop(id(old), None)
    return found


def _calls_on(tree: ast.Module, line: int) -> list[ast.Call]:
    """The calls of ``tree`` that start on ``line``, in ``ast.walk`` order (indexed once per
    tree)."""
    entry = _CALLS.get(id(tree))
    if entry is None or entry[0] is not tree:
        index: dict[int, list[ast.Call]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                index.setdefault(node.lineno, []).append(node)
        if any(kept is tree for kept in (t for _, t in _PARSED.values())):
            _CALLS[id(tree)] = (tree, index)  # only trees the cache keeps alive
        entry = (tree, index)
    return entry[1].get(line, [])


def call_at(tree: ast.Module, site: Location, name: str) -> ast.Call | None:
    """The call recorded at ``site``: the one starting at its column, else the one on its line
    whose callee is named ``name``."""
    candidates = _calls_on(tree, site.line)
    exact = [n for n in candidates if n.col_offset == site.col - 1]
    named = [n for n in candidates if _callee(n).split(".")[-1] == name]
    return (exact or named or [None])[0]


def span_of(source: str, node: ast.AST) -> tuple[int, int]:
    """Character offsets [start, end) of a node in ``source``."""
    placed: Any = node  # a statement or an expression: both have positions
    return (_offset(source, placed.lineno, placed.col_offset),
            _offset(source, placed.end_lineno, placed.end_col_offset))


def edit(file: str, source: str, start: int, end: int, content: str) -> Edit:
    """An ``Edit`` of ``source`` (the text of ``file``), with its line/column positions."""
    def position(offset: int) -> tuple[int, int]:
        before = source[:offset]
        line = before.count("\n") + 1
        return line, offset - (before.rfind("\n") + 1) + 1

    (line, col), (end_line, end_col) = position(start), position(end)
    return Edit(file, start, end, content, line, col, end_line, end_col, digest(source))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def enclosing_statement(tree: ast.Module, node: ast.AST) -> ast.stmt | None:
    """The innermost statement that contains ``node`` (``ast.walk`` visits outer ones first)."""
    best: ast.stmt | None = None
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.stmt) and any(child is node for child in ast.walk(stmt)):
            if best is None or any(child is stmt for child in ast.walk(best)):
                best = stmt
    return best


def with_bias_false(site: Location, class_name: str) -> tuple[str, bool] | None:
    """The constructor call at ``site`` with ``bias=False`` (replacing any bias argument).
    Returns (code, whether an existing bias argument was replaced), None when the call cannot be
    found in the source."""
    found = parsed(site.file)
    if found is None:
        return None
    source, tree = found
    call = call_at(tree, site, class_name)
    if call is None:
        return None
    return call_with_bias_false(source, call, BIAS_POSITION.get(class_name))


def call_with_bias_false(source: str, call: ast.Call, position: int | None
                         ) -> tuple[str, bool] | None:
    """``call``'s text with ``bias=False``: an existing ``bias=`` keyword, or the positional
    argument at ``position`` (where the callee takes ``bias``), becomes ``False``; otherwise
    ``bias=False`` is appended. Returns (code, whether an existing argument was replaced)."""
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


def recorded_call(site: Location, class_name: str) -> tuple[str, ast.Call] | None:
    """The source text of the file and the constructor call of ``class_name`` recorded at
    ``site``, when the call names that class (``nn.BatchNorm2d(...)``, ``BatchNorm2d(...)``);
    None when the source or the call is not found."""
    found = parsed(site.file)
    if found is None:
        return None
    source, tree = found
    call = call_at(tree, site, class_name)
    if call is None or _callee(call).split(".")[-1] != class_name:
        return None
    return source, call


def passed_how(call: ast.Call, position: int, name: str) -> str | None:
    """How ``call`` passed its argument ``name``, which the callee takes at ``position``:
    "keyword", "position" or "default" (not at all); None when a ``*args`` or ``**kwargs``
    hides it."""
    if any(kw.arg == name for kw in call.keywords):
        return "keyword"
    if any(kw.arg is None for kw in call.keywords):
        return None
    if any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        return None
    return "position" if len(call.args) > position else "default"


def with_keyword(source: str, call: ast.Call, position: int, keyword: str) -> str | None:
    """``call``'s text with its positional argument at ``position`` given as ``keyword=``
    instead (``BatchNorm2d(128, 0.8)`` -> ``BatchNorm2d(128, momentum=0.8)``): only when it is
    the last positional argument, no argument is starred and ``keyword`` is not given yet."""
    segment = ast.get_source_segment(source, call)
    if segment is None or len(call.args) != position + 1 or \
            any(isinstance(a, ast.Starred) for a in call.args) or \
            any(kw.arg in (keyword, None) for kw in call.keywords):
        return None
    moved: Any = call.args[position]
    start = _offset(source, moved.lineno, moved.col_offset) - \
        _offset(source, call.lineno, call.col_offset)
    return segment[:start] + f"{keyword}=" + segment[start:]


def _callee(call: "object") -> str:
    assert isinstance(call, ast.Call)
    try:
        return ast.unparse(call.func)
    except Exception:  # a callee ast cannot print: no name to match
        return ""


def _offset(source: str, line: int | None, col: int | None) -> int:
    """Character offset of an AST (line, UTF-8 byte column) position."""
    lines = source.splitlines(keepends=True)
    line = line or 1
    prefix = sum(len(text) for text in lines[:line - 1])
    text = lines[line - 1] if line - 1 < len(lines) else ""
    return prefix + len(text.encode("utf-8")[:col or 0].decode("utf-8", errors="ignore"))


