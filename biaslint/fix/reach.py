"""Which layers an edit of the user's source changes, and where an edit changes only its own.

An edit changes every execution of the code it edits. The build recorded, for each layer, the
chain of the user's calls that built it (``BuildFrame``s, innermost first). From it:

* a line inside a module's ``__init__``, the target's build function or module-level code runs
  once per instance, per build, per import: where the layer gets its place in the model. Every
  layer this build made there is visible, so an edit there is specific when each of them has a
  finding that asks for the same edit;
* a line inside any other function (a ``conv_nd(dims, *args, **kwargs)`` helper, a factory) runs
  for whoever calls it, with arguments we saw only for this build: other layers, other
  configurations, other models. An edit there is never offered. The edit moves to the call, in
  code of the first kind, when the helper passes a ``bias`` argument through to the constructor
  (a ``bias`` parameter, or ``**kwargs`` handed to that call alone);
* a constructor named by a variable (``rnn_cls(...)``, ``norm_layer(...)``) builds other
  classes for other arguments: a line inserted after it would run for them too.

No torch import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterable, Mapping

from biaslint.findings import BuildFrame, Location

# Scopes that run once per instance (a module's __init__), per build (the target's function,
# or the block that entered recording()) or per import: where a layer gets its place.
OWNED = frozenset({"init", "entry", "module"})


@dataclass(frozen=True)
class Step:
    """One call on the way to a layer: where it is, and the function it is in (``scope``; None
    when the build was not recorded and only the site is known)."""

    location: Location
    scope: BuildFrame | None


def steps_of(chain: Iterable[BuildFrame]) -> list[Step]:
    """The calls, innermost first. A comprehension is part of the function around it: its call
    belongs to that function's scope, and that function's own call (of the comprehension) is
    no step."""
    steps: list[Step] = []
    pending: Location | None = None
    for frame in chain:
        if frame.kind == "comprehension":
            pending = pending or frame.location
            continue
        steps.append(Step(pending or frame.location, frame))
        pending = None
    return steps


def same_place(a: Location, b: Location) -> bool:
    return (a.file, a.line, a.col) == (b.file, b.line, b.col)


def reach(module: str, level: int, steps: Mapping[str, list[Step]],
          sites: Mapping[str, Location]) -> list[str]:
    """The modules built through the same calls as ``module`` up to ``level``: every layer an
    edit of the call at that level changes."""
    mine = steps.get(module)
    if not mine:
        site = sites.get(module)
        return [name for name, other in sites.items()
                if site is not None and same_place(other, site)] or [module]
    path = mine[:level + 1]
    found = []
    for name, theirs in steps.items():
        if len(theirs) > level and all(same_place(a.location, b.location)
                                       for a, b in zip(path, theirs)):
            found.append(name)
    return found


def not_owned(step: Step, tree: ast.Module | None) -> str | None:
    """Why an edit at this step could change code other callers run; None when it cannot."""
    scope = step.scope
    where = f"{step.location.file}:{step.location.line}"
    if scope is not None:
        if scope.kind in OWNED:
            return None
        return (f"it is built inside {called_name(scope)}() at {where}, a function other "
                "layers and other models can call")
    # Not recorded: only the source around the site says where it is.
    function = enclosing_function(tree, step.location) if tree is not None else None
    if function is None:
        return None
    node, in_class = function
    if node.name == "__init__" and in_class:
        return None
    return (f"it is built inside {node.name}() at {where}, a function other layers and other "
            "models can call (the build was not recorded, so its callers are unknown)")


def enclosing_function(tree: ast.Module, location: Location
                       ) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool] | None:
    """The innermost function around the location, and whether it is a class's method."""
    best: tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool] | None = None

    def visit(node: ast.AST, in_class: bool) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    child.lineno <= location.line <= (child.end_lineno or child.lineno):
                best = (child, in_class)
                visit(child, False)
            elif isinstance(child, ast.ClassDef):
                visit(child, True)
            elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, in_class)

    visit(tree, False)
    return best


def function_def(tree: ast.Module, scope: BuildFrame
                 ) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The ``def`` a recorded frame ran (``first_line`` is the first decorator's line when
    decorated)."""
    name = _short(scope.name)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if scope.first_line in (first, node.lineno):
                return node
    return None


def called_name(scope: BuildFrame) -> str:
    """How a caller names the function of ``scope``: its name, or its class for ``__init__``."""
    parts = scope.name.split(".")
    if parts[-1] == "__init__" and len(parts) >= 2 and parts[-2] != "<locals>":
        return parts[-2]
    return parts[-1]


def callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def names_class(tree: ast.Module, call: ast.Call, class_name: str) -> bool:
    """The call names the layer's class itself (``nn.LSTM(...)``, ``LSTM`` imported from
    torch.nn, an alias of it), not a variable that holds some class (``rnn_cls(...)``)."""
    name = callee(call)
    if name == class_name:
        return True
    if not isinstance(call.func, ast.Name):
        return False
    # A module-level name bound once, to the class or to a partial of it, is that class in
    # every call; a name bound in a function (``rnn_cls = nn.LSTM if ... else nn.GRU``) is not.
    bound = [node for node in tree.body if isinstance(node, (ast.Assign, ast.ImportFrom))
             and name in _bound_names(node)]
    if len(bound) != 1:
        return False
    node = bound[0]
    if isinstance(node, ast.ImportFrom):
        return any((a.asname or a.name) == name and a.name == class_name for a in node.names)
    value = node.value
    if isinstance(value, ast.Call) and _last_name(value.func) == "partial" and value.args:
        value = value.args[0]
    return _last_name(value) == class_name


def _bound_names(node: ast.Assign | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.ImportFrom):
        return {a.asname or a.name for a in node.names}
    return {t.id for t in node.targets if isinstance(t, ast.Name)}


def _last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def forwards_bias(tree: ast.Module, step: Step, call: ast.Call) -> str | None:
    """Why a ``bias=`` given to the function of ``step`` would not reach exactly ``call`` (the
    next call inwards); None when it does: the function has a ``bias`` parameter that it passes
    as ``bias=bias``, or ``**kwargs`` that it hands to this call alone (handed to two calls, a
    ``bias`` would reach both)."""
    assert step.scope is not None
    name = called_name(step.scope)
    node = function_def(tree, step.scope)
    if node is None:
        return f"the definition of {name}() was not found"
    args = node.args
    explicit = [kw for kw in call.keywords if kw.arg == "bias"]
    params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if "bias" in params:
        if any(isinstance(kw.value, ast.Name) and kw.value.id == "bias" for kw in explicit):
            return None
        return f"{name}() takes a bias but does not pass it on as bias=bias"
    kwarg = args.kwarg.arg if args.kwarg is not None else None
    if kwarg is None:
        return f"{name}() has no bias parameter and no **kwargs to pass bias=False through"
    handed = any(kw.arg is None and isinstance(kw.value, ast.Name) and kw.value.id == kwarg
                 for kw in call.keywords)
    if not handed or explicit:
        return f"{name}() does not pass its **{kwarg} on to the call that builds the layer"
    mine = next(kw.value for kw in call.keywords if kw.arg is None
                and isinstance(kw.value, ast.Name) and kw.value.id == kwarg)
    others = [n for n in ast.walk(node) if isinstance(n, ast.Name) and n.id == kwarg
              and n is not mine]
    if any(not _exclusive(node, mine, other) for other in others):
        return f"{name}() uses its **{kwarg} elsewhere too: a bias there would reach other calls"
    return None


def _exclusive(function: ast.AST, a: ast.AST, b: ast.AST) -> bool:
    """``a`` and ``b`` never run in the same call of ``function``: they are in different
    branches of one ``if``, or one is in an ``if`` body that always returns (or raises) and
    the other after it (``conv_nd``'s ``if dims == 1: return nn.Conv1d(*args, **kwargs)``)."""
    for node in ast.walk(function):
        if isinstance(node, ast.If):
            in_body = [_contains(node.body, x) for x in (a, b)]
            in_else = [_contains(node.orelse, x) for x in (a, b)]
            if (in_body[0] and in_else[1]) or (in_body[1] and in_else[0]):
                return True
        for block in _blocks(node):
            for index, statement in enumerate(block):
                if not (isinstance(statement, ast.If) and statement.body and
                        isinstance(statement.body[-1], (ast.Return, ast.Raise))):
                    continue
                after = block[index + 1:]
                for inside, outside in ((a, b), (b, a)):
                    if _contains(statement.body, inside) and _contains(after, outside):
                        return True
    return False


def _blocks(node: ast.AST) -> list[list[ast.stmt]]:
    return [value for field in ("body", "orelse", "finalbody")
            if isinstance(value := getattr(node, field, None), list)
            and all(isinstance(v, ast.stmt) for v in value)]


def _contains(statements: list[ast.stmt], target: ast.AST) -> bool:
    return any(target is child for statement in statements for child in ast.walk(statement))


def bias_position(tree: ast.Module, scope: BuildFrame) -> int | None:
    """Where ``bias`` is among the positional arguments a caller passes to this function (the
    instance excluded for ``__init__``)."""
    node = function_def(tree, scope)
    if node is None:
        return None
    positional = [a.arg for a in node.args.posonlyargs + node.args.args]
    if scope.kind == "init" and positional:
        positional = positional[1:]
    return positional.index("bias") if "bias" in positional else None


def installed(file: str) -> bool:
    """A file of an installed package: never the project's to edit, whatever calls it."""
    parts = file.replace("\\", "/").split("/")
    return "site-packages" in parts or "dist-packages" in parts


def _short(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def listed(names: list[str], limit: int = 3) -> str:
    from biaslint.fix.phrases import python_path

    shown = [python_path(n) for n in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


__all__ = ["OWNED", "Step", "bias_position", "callee", "called_name", "enclosing_function",
           "forwards_bias", "function_def", "installed", "listed", "names_class", "not_owned",
           "reach", "same_place", "steps_of"]
