"""How fixes and messages name the user's code: Python paths to layers, the tensor an init call
wrote, and the phrase that says which init call set a parameter.

Shared by every rule, so each one words these the same way. No torch import.
"""

from __future__ import annotations

from biaslint.findings import InitCall


def python_path(qualname: str, root: str = "model") -> str:
    """``layer1.0.conv1`` -> ``model.layer1[0].conv1``: a qualified name as Python code."""
    text = root
    for part in qualname.split(".") if qualname else ():
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def init_call_subject(call: InitCall | None) -> str | None:
    """The tensor expression the user's init call wrote, read from its source.

    ``nn.init.zeros_(self.fc.weight)`` -> ``self.fc.weight``; ``fc.weight.data.fill_(0)`` ->
    ``fc.weight.data``. None when the source is unavailable or not a plain call.
    """
    import ast

    from biaslint.sources import line_of

    if call is None or not call.by_user or call.location is None:
        return None
    loc = call.location
    lines = [line_of(loc.file, n) for n in range(loc.line, (loc.end_line or loc.line) + 1)]
    source = "".join(lines)
    if not source.strip():
        return None
    try:
        tree = ast.parse(source.strip())
    except SyntaxError:
        return None
    # The init call itself, by its function's name: the line may also construct the layer
    # (``self.fc = nn.Linear(8, 8); nn.init.zeros_(self.fc.weight)``).
    short = call.name.rsplit(".", 1)[-1]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _called_name(node.func) != short:
            continue
        if call.name.startswith("nn.init.") and node.args:
            return ast.unparse(node.args[0])
        if call.name.startswith("Tensor.") and isinstance(node.func, ast.Attribute):
            return ast.unparse(node.func.value)
    return None


def _called_name(func: object) -> str | None:
    import ast

    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def user_call(call: InitCall | None) -> InitCall | None:
    """The init call when the user's code made it; None for torch's default init or none."""
    return call if call is not None and call.by_user else None


def set_by(call: InitCall, detail: str = "") -> str:
    """What set a parameter and where, as messages quote it: ``nn.init.zeros_ at model.py:12``
    (``detail`` goes between the call and the place)."""
    where = f" at {call.location.shown}" if call.location else ""
    return f"{call.describe()}{detail}{where}"
