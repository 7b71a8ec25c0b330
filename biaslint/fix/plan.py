"""Turn each finding's fix into edits of the user's source, where the edit is unambiguous.

Runs after the rules, on their findings and what the build recorded (construction sites, the
init call that last wrote each parameter). Three kinds of edit, chosen by the fix's ``kind``
(``biaslint.findings.FixKind``, set by the rule that wrote the fix):

* ``BIAS_FALSE`` (BL001): the constructor call at the construction site, rewritten with
  ``bias=False``;
* ``REPLACE_INIT`` (BL002, BL003, BL007, BL009, BL004's hand-written gates): the user's init
  call replaced by the suggested one, keeping the tensor expression the user wrote
  (``hidden.weight`` inside their loop);
* ``INIT_HELPER`` (BL004, BL005, BL008): a ``biaslint.init`` call inserted after the statement
  that builds the layer (with ``import biaslint.init``), naming the layer as that statement's
  assignment target does.

An edit is offered only where it changes exactly the layers of its finding (``reach``): the
line that built the layer must build no layer that needs another edit or none, and must not sit
in a helper that other code can call for other layers (then ``bias=False`` goes to the helper's
call when the helper passes a bias on), nor name its class through a variable. Where an edit
would be a guess (the same init line also writes parameters with no finding, the layer is not
assigned to a name, the bias is set later by another call), the fix keeps no edits and
``Fix.manual`` says why. No torch import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Any, Iterable

from biaslint.findings import BuildFrame, Edit, Finding, FixKind, InitCall, Location
from biaslint.fix.edits import (
    BIAS_POSITION,
    call_at,
    call_with_bias_false,
    edit,
    enclosing_statement,
    parsed,
    span_of,
)
from biaslint.fix.reach import (
    Step,
    bias_position,
    called_name,
    callee,
    forwards_bias,
    installed,
    listed,
    names_class,
    not_owned,
    reach,
    steps_of,
)


@dataclass
class _Context:
    """What the edits are judged against: every finding of the target and what the build
    recorded about where each layer and init came from."""

    findings: list[Finding]
    sites: dict[str, Location]
    param_inits: dict[str, InitCall]
    steps: dict[str, list[Step]]
    by_rule: dict[tuple[str, str], Finding]  # (code, module) -> the finding with a fix

    def site(self, finding: Finding) -> Location | None:
        return self.sites.get(finding.module) or finding.location

    def steps_for(self, finding: Finding) -> list[Step]:
        site = self.site(finding)
        steps = self.steps.get(finding.module)
        if steps:
            return steps
        return [Step(site, None)] if site is not None else []


def with_edits(findings: Iterable[Finding], module_sites: dict[str, Any],
               param_inits: dict[str, InitCall],
               module_chains: dict[str, tuple[BuildFrame, ...]] | None = None) -> list[Finding]:
    findings = list(findings)
    wanted = _init_replacements(findings, param_inits)
    context = _Context(
        findings, dict(module_sites), param_inits,
        {name: steps_of(chain) for name, chain in (module_chains or {}).items()},
        {(f.code, f.module): f for f in findings if f.fix is not None and f.fix.code})
    result = []
    for finding in findings:
        fix = finding.fix
        if fix is None or not fix.code:
            result.append(finding)
            continue
        try:
            edits, manual, changed = _edits_for(finding, context, wanted)
        except Exception as exc:  # an edit we cannot compute stays a suggestion
            edits, manual, changed = (), f"no edit computed ({type(exc).__name__})", {}
        result.append(replace(finding, fix=replace(fix, edits=tuple(edits), manual=manual,
                                                   **changed)))
    return result


def _edits_for(finding: Finding, context: _Context,
               wanted: dict[tuple[str, int], tuple[set[str], set[str]]]
               ) -> tuple[list[Edit], str, dict[str, str]]:
    """The edits, why there are none, and the fix's title and code where the edit moved from
    the construction to the call of a helper."""
    fix = finding.fix
    assert fix is not None
    if fix.kind is FixKind.BIAS_FALSE:
        return _bias_false(finding, context)
    if fix.kind is FixKind.REPLACE_INIT:
        return (*_replace_init(finding, context.param_inits, wanted), {})
    if fix.kind is FixKind.INIT_HELPER:
        return (*_insert_after_construction(finding, context), {})
    return [], "no automatic edit for this fix", {}


def _bias_false(finding: Finding, context: _Context) -> tuple[list[Edit], str, dict[str, str]]:
    """``bias=False`` where the layer is built, if that line builds only layers whose bias is
    cancelled; else in the call of the helper that built it, if the helper passes a ``bias``
    on; else nothing, and why."""
    steps = context.steps_for(finding)
    if not steps:
        return [], "the construction site is unknown", {}
    reasons: list[str] = []
    for level, step in enumerate(steps):
        if installed(step.location.file):
            reasons.append(f"it is built in an installed package ({_where(step.location)}), "
                           "outside the project: fix it in your code")
            break
        found = parsed(step.location.file)
        if found is None:
            reasons.append(f"the source of {step.location.file} was not found")
            break
        source, tree = found
        if level > 0:
            # bias=False given at this call must reach the constructor through every helper
            # below it; a helper that does not pass it on blocks every call further out too.
            blocked = _passes_bias_down(steps[:level])
            if blocked is not None:
                reasons.append(blocked)
                break
        why = not_owned(step, tree)
        if why is not None:
            reasons.append(why)
            continue
        if level == 0:
            call = call_at(tree, step.location, finding.module_type)
            if call is None:
                return [], "the constructor call was not found in the source", {}
            if not names_class(tree, call, finding.module_type):
                reasons.append(f"the call at {_where(step.location)} builds a class held in "
                               f"{callee(call) or 'a variable'}: for other arguments it builds "
                               "other layers")
                continue
            rewritten = call_with_bias_false(source, call, BIAS_POSITION.get(
                finding.module_type))
        else:
            inner = steps[level - 1].scope
            assert inner is not None
            call = call_at(tree, step.location, called_name(inner))
            if call is None or callee(call) != called_name(inner):
                reasons.append(f"the call at {_where(step.location)} does not name "
                               f"{called_name(inner)}()")
                break
            rewritten = call_with_bias_false(source, call, bias_position(
                _parsed_tree(inner.location.file), inner))
        if rewritten is None:
            return [], "the constructor call was not found in the source", {}
        built = reach(finding.module, level, context.steps, context.sites)
        live = [name for name in built if ("BL001", name) not in context.by_rule]
        if live:
            reasons.append(f"the call at {_where(step.location)} also builds {listed(live)}, "
                           f"whose bias {'matters' if len(live) == 1 else 'matter'}")
            continue
        start, end = span_of(source, call)
        edits = [edit(step.location.file, source, start, end, rewritten[0])]
        if level == 0:
            return edits, "", {}
        inner = steps[level - 1].scope
        assert inner is not None
        return edits, "", {
            "title": f"Pass bias=False to {called_name(inner)}() at {_where(step.location)}, "
                     "which builds the layer (not inside it: it builds other layers too)",
            "code": rewritten[0]}
    return [], _manual(reasons, "no edit there changes this layer alone; build it with "
                                "bias=False by hand"), {}


def _passes_bias_down(steps: list[Step]) -> str | None:
    """Why a ``bias=False`` given at the call above ``steps`` would not reach the constructor
    (each helper on the way must pass it on to the next call alone); None when it does."""
    for step in steps:
        found = parsed(step.location.file)
        if found is None or step.scope is None:
            return f"the source of {step.location.file} was not found"
        source, tree = found
        call = _call_at_step(tree, step)
        if call is None:
            return f"the call at {_where(step.location)} was not found"
        why = forwards_bias(tree, step, call)
        if why is not None:
            return why
    return None


def _call_at_step(tree: ast.Module, step: Step) -> ast.Call | None:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and n.lineno == step.location.line and n.col_offset == step.location.col - 1]
    return calls[0] if calls else None


def _parsed_tree(file: str) -> ast.Module:
    found = parsed(file)
    return found[1] if found is not None else ast.Module(body=[], type_ignores=[])


def _manual(reasons: list[str], advice: str) -> str:
    """Why there is no edit: why not where the layer is built, and why not at the last call
    tried further out (the ones between say the same as the first)."""
    shown = reasons[:1] + reasons[-1:] if len(reasons) > 1 else reasons
    text = "; ".join(shown)
    return text if text.endswith("fix it in your code") else f"{text}: {advice}"


def _where(location: Location) -> str:
    return f"{location.file}:{location.line}"


# -- REPLACE_INIT: the user's init call -------------------------------------------------------

def _init_key(call: InitCall) -> tuple[str, int] | None:
    return (call.location.file, call.location.line) if call.by_user and call.location else None


def _init_replacements(findings: list[Finding], param_inits: dict[str, InitCall]
                       ) -> dict[tuple[str, int], tuple[set[str], set[str]]]:
    """Per init-call line: the replacement codes the findings on its parameters ask for, and
    those parameters."""
    wanted: dict[tuple[str, int], tuple[set[str], set[str]]] = {}
    for finding in findings:
        if finding.fix is None or not finding.fix.code or \
                finding.fix.kind is not FixKind.REPLACE_INIT:
            continue
        call = param_inits.get(_param_name(finding))
        key = _init_key(call) if call is not None else None
        if key is not None:
            codes, names = wanted.setdefault(key, (set(), set()))
            codes.add(finding.fix.code)
            names.add(_param_name(finding))
            # A BL003 chain finding is about every layer of the chain written by this call
            # (a loop that draws them all with normal_(0, 1)).
            for layer in finding.data.get("chain", ()) if finding.code == "BL003" else ():
                name = f"{layer}.{finding.parameter}" if layer else finding.parameter
                if _init_key(param_inits[name]) == key if name in param_inits else False:
                    names.add(name)
    return wanted


def _param_name(finding: Finding) -> str:
    return f"{finding.module}.{finding.parameter}" if finding.module else finding.parameter


def _replace_init(finding: Finding, param_inits: dict[str, InitCall],
                  wanted: dict[tuple[str, int], tuple[set[str], set[str]]]
               ) -> tuple[list[Edit], str]:
    fix = finding.fix
    assert fix is not None
    call = param_inits.get(_param_name(finding))
    key = _init_key(call) if call is not None else None
    if call is None or key is None or call.location is None:
        return [], "the value comes from PyTorch's default init: write an init call"
    # The same line (a loop over layers) also writes other parameters: the edit changes them
    # too, so every one of them must have a finding asking for the same replacement.
    codes, flagged = wanted.get(key, (set(), set()))
    others = {name for name, other in param_inits.items() if _init_key(other) == key}
    if len(codes) != 1 or not others <= flagged:
        return [], (f"the init call at {key[0]}:{key[1]} also initializes parameters that "
                    "need another init or none: edit it by hand")
    found = parsed(call.location.file)
    if found is None:
        return [], "the init call's source was not found"
    source, tree = found
    node = _init_call_node(tree, call)
    if node is None:
        return [], "the init call was not found in the source"
    code = _spelled_for(_on_subject(_without_comment(fix.code), _subject(source, node, call)),
                        tree)
    if code is None:
        return [], "the file does not import torch.nn as nn (or torch): edit it by hand"
    start, end = span_of(source, node)
    return [edit(call.location.file, source, start, end, code)], ""


def _subject(source: str, node: ast.Call, call: InitCall) -> str | None:
    """The tensor the user's init call writes, as the user wrote it: ``self.fc.bias`` in
    ``nn.init.constant_(self.fc.bias, -3.0)``, ``layer.weight.data`` in
    ``layer.weight.data.normal_()``."""
    if call.name.startswith("Tensor.") and isinstance(node.func, ast.Attribute):
        return ast.get_source_segment(source, node.func.value)
    return ast.get_source_segment(source, node.args[0]) if node.args else None


def _on_subject(code: str, subject: str | None) -> str:
    """The fix's init call on the user's own tensor expression: the rule names the tensor by
    its path in the model (``model.fc.bias``), which the user's code may not have as a name."""
    try:
        call = ast.parse(code, mode="eval").body
    except SyntaxError:
        return code
    if subject is None or not isinstance(call, ast.Call) or not call.args:
        return code
    first = call.args[0]
    lines = code.splitlines(keepends=True)
    start = sum(len(t) for t in lines[:first.lineno - 1]) + first.col_offset
    end = sum(len(t) for t in lines[:(first.end_lineno or first.lineno) - 1]) + \
        (first.end_col_offset or 0)
    return code[:start] + subject + code[end:]


def _without_comment(code: str) -> str:
    """The fix's code without its trailing explanation (``  # std 0.088``): the call may not
    end its line."""
    import io
    import tokenize

    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type == tokenize.COMMENT:
                return code[:token.start[1]].rstrip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return code


def _init_call_node(tree: ast.Module, call: InitCall) -> ast.Call | None:
    """The init call on its recorded line, by the function's name (the line may also construct
    the layer)."""
    assert call.location is not None
    short = call.name.rsplit(".", 1)[-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno <= call.location.line <= \
                (node.end_lineno or node.lineno):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else None
            if name == short:
                return node
    return None


def _spelled_for(code: str, tree: ast.Module) -> str | None:
    """``nn.init...`` as the file can call it: as is where ``nn`` is torch.nn, through ``torch``
    where only torch is imported."""
    names = _imported_names(tree)
    if names.get("nn") == "torch.nn":
        return code
    if names.get("torch") == "torch":
        return "torch." + code
    return None


def _imported_names(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


# -- INIT_HELPER: a biaslint.init call after the construction ---------------------------------

def _insert_after_construction(finding: Finding, context: _Context
                               ) -> tuple[list[Edit], str]:
    fix = finding.fix
    assert fix is not None
    later = _later_bias_init(finding, context.param_inits)
    if later is not None:
        return later
    steps = context.steps_for(finding)
    if not steps:
        return [], "the construction site is unknown"
    reasons: list[str] = []
    for level, step in enumerate(steps):
        if installed(step.location.file):
            reasons.append(f"it is built in an installed package ({_where(step.location)}), "
                           "outside the project: fix it in your code")
            break
        found = parsed(step.location.file)
        if found is None:
            return [], "the construction's source was not found"
        source, tree = found
        why = not_owned(step, tree)
        placed = _Skip(why, further=True) if why is not None else \
            _assignment_at(finding, tree, steps, level)
        if isinstance(placed, _Skip):
            if placed.reason:
                reasons.append(placed.reason)
            if placed.further:
                continue
            break
        statement, target = placed
        code = _called_on(fix.code, target)
        if code is None:
            return [], "the fix needs values only the user has (the priors as a name)"
        built = reach(finding.module, level, context.steps, context.sites)
        differ = [name for name in built if name != finding.module and not _same_insertion(
            context.by_rule.get((finding.code, name)), target, code)]
        if differ:
            reasons.append(f"the statement at {_where(step.location)} also builds "
                           f"{listed(differ)}, which need{'s' if len(differ) == 1 else ''} "
                           "another value or none")
            continue
        return _inserted_after(step.location.file, source, tree, statement, code), ""
    return [], _manual(reasons, "add the line by hand where only this layer is built")


@dataclass(frozen=True)
class _Skip:
    """Why there is no insertion at one step of the build (None: nothing to say), and whether a
    call further out may still take it."""

    reason: str | None
    further: bool


def _later_bias_init(finding: Finding, param_inits: dict[str, InitCall]
                     ) -> tuple[list[Edit], str] | None:
    """When the user's own code sets the layer's bias after building it: that call replaced, or
    why not; None when nothing sets it later."""
    prefix = f"{finding.module}." if finding.module else ""
    later = [c for name, c in param_inits.items()
             if name.startswith(prefix) and "bias" in name.rsplit(".", 1)[-1] and c.by_user]
    if not later:
        return None
    replaced = _replace_bias_init(finding, later[0], param_inits)
    if replaced is not None:
        return replaced, ""
    where = f" at {later[0].location.file}:{later[0].location.line}" if later[0].location \
        else ""
    return [], f"its bias is set later by {later[0].name}{where}: change that call"


def _assignment_at(finding: Finding, tree: ast.Module, steps: list[Step], level: int
                   ) -> tuple[ast.stmt, ast.expr] | _Skip:
    """The statement at build step ``level`` that assigns the layer (level 0: its constructor
    call; further out: the call of the helper that returns it) and its target, or why not."""
    step = steps[level]
    if level == 0:
        call = call_at(tree, step.location, finding.module_type)
        if call is not None and not names_class(tree, call, finding.module_type):
            return _Skip(f"the statement at {_where(step.location)} builds a class held "
                         f"in {callee(call) or 'a variable'}, another layer type for "
                         "other arguments: a line after it would run for those too", True)
    else:
        inner = steps[level - 1].scope
        assert inner is not None
        if inner.kind != "function":
            return _Skip(None, False)  # the call builds the layer's parent (a class), not it
        call = call_at(tree, step.location, called_name(inner))
        if call is not None and callee(call) != called_name(inner):
            call = None
    statement = enclosing_statement(tree, call) if call is not None else None
    target = _assigned_to(statement, call) if statement is not None and call is not None \
        else None
    if statement is None or target is None:
        return _Skip(f"the layer is not assigned to a name at {_where(step.location)} "
                     "(inside a Sequential, say)" if level == 0 else
                     f"the call at {_where(step.location)} is not assigned to the layer", False)
    if level > 0 and not (isinstance(target, ast.Attribute) and
                          target.attr == finding.module.rsplit(".", 1)[-1]):
        # What a helper returns is known only when it lands in the layer's own attribute.
        return _Skip(f"the call at {_where(step.location)} is not assigned to the layer", False)
    return statement, target


def _assigned_to(statement: ast.stmt, call: ast.Call) -> ast.expr | None:
    """The one target ``statement`` assigns ``call``'s value to, or None."""
    if isinstance(statement, ast.AnnAssign) and statement.value is call:
        return statement.target
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and \
            statement.value is call:
        return statement.targets[0]
    return None


def _inserted_after(file: str, source: str, tree: ast.Module, statement: ast.stmt,
                    code: str) -> list[Edit]:
    """``code`` on a line of its own after ``statement``, at its indent (and ``import
    biaslint.init`` where the file lacks it)."""
    line_start = source.rfind("\n", 0, _line_offset(source, statement.lineno)) + 1
    indent = source[line_start:line_start + statement.col_offset]
    end = _line_offset(source, (statement.end_lineno or statement.lineno) + 1)
    edits = [edit(file, source, end, end, f"{indent}{code}\n")]
    if not _imports_module(tree):
        where = _import_position(source, tree)
        edits.append(edit(file, source, where, where, "import biaslint.init\n"))
    return edits


def _same_insertion(other: Finding | None, target: ast.expr, code: str) -> bool:
    """Another layer built by the same statement wants the very line this fix inserts."""
    return other is not None and other.fix is not None and \
        _called_on(other.fix.code, target) == code


def _replace_bias_init(finding: Finding, call: InitCall,
                       param_inits: dict[str, InitCall]) -> list[Edit] | None:
    """The user's own init call of this bias (``nn.init.zeros_(self.head.bias)``), when it
    writes that bias alone, replaced by the fix's call on the layer (``self.head``)."""
    fix = finding.fix
    key = _init_key(call)
    if fix is None or key is None or call.location is None or not call.name.startswith("nn.init"):
        return None
    if [name for name, other in param_inits.items() if _init_key(other) == key] != \
            [_param_name(finding)]:
        return None
    found = parsed(call.location.file)
    if found is None:
        return None
    source, tree = found
    node = _init_call_node(tree, call)
    statement = enclosing_statement(tree, node) if node is not None else None
    if node is None or not isinstance(statement, ast.Expr) or statement.value is not node or \
            not node.args or not isinstance(node.args[0], ast.Attribute) or \
            node.args[0].attr != finding.parameter:
        return None
    code = _called_on(fix.code, node.args[0].value)
    if code is None:
        return None
    start, end = span_of(source, node)
    edits = [edit(call.location.file, source, start, end, code)]
    if not _imports_module(tree):
        where = _import_position(source, tree)
        edits.append(edit(call.location.file, source, where, where, "import biaslint.init\n"))
    return edits


def _called_on(fix_code: str, layer: ast.expr) -> str | None:
    """The fix's ``biaslint.init`` call with its first argument (the model path the message
    uses, ``model.head``) replaced by the user's expression for the layer (``self.head``).
    None when the other arguments name values only the user has (``priors``)."""
    try:
        call = ast.parse(fix_code, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call) or not call.args or any(
            isinstance(a, ast.Name) for a in call.args[1:]):
        return None
    call.args[0] = layer
    return ast.unparse(call)


def _imports_module(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.Import) and any(a.name == "biaslint.init" and not a.asname
                                                    for a in node.names)
               for node in tree.body)


def _line_offset(source: str, line: int) -> int:
    """Offset of the start of 1-based ``line`` (the end of the text past the last line)."""
    lines = source.splitlines(keepends=True)
    return sum(len(text) for text in lines[:line - 1])


def _import_position(source: str, tree: ast.Module) -> int:
    """After the last top-level import (the module docstring and ``__future__`` imports stay
    first); the top of the file when there is none."""
    last = None
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            last = node
        elif last is not None:
            break
    if last is None:
        first = tree.body[0] if tree.body else None
        docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None),
                                                                ast.Constant)
        return _line_offset(source, (first.end_lineno or 1) + 1) if docstring and first else 0
    return _line_offset(source, (last.end_lineno or last.lineno) + 1)


__all__ = ["with_edits"]
