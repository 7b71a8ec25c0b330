"""BL012: a parameter allocated by torch.empty that nothing wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity, Unwritten
from biaslint.fix.phrases import python_path
from biaslint.rules.base import Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer

NOT_RECORDED = ("its build was not recorded, so which calls wrote its parameters is not known; "
                "lint the function that builds the model, or build it inside "
                "`with biaslint.recording():`")
RESET_ON_META = ("on the meta device nothing wrote its parameters and biaslint ran its "
                 "reset_parameters(), as a deferred init does: whether a build with values "
                 "writes them is not known (lint it without --device meta)")


class UninitializedParameter(Rule):
    code = "BL012"
    name = "uninitialized-parameter"
    severity = Severity.ERROR
    summary = "A parameter allocated by torch.empty that nothing wrote: it starts from garbage"
    what_it_does = """\
Follows every parameter's memory through the build. `torch.empty`, `torch.empty_like`,
`Tensor.new_empty`, `torch.empty_strided` and `Tensor.new(*sizes)` allocate memory without
writing it; the rule flags a parameter with entries that no later call wrote: no
`reset_parameters()`, no `nn.init` function, no in-place method (`normal_`, `uniform_`,
`fill_`, `copy_`, `zero_`...), no slice assignment, no `load_state_dict`. A parameter only
partly written is flagged with the count of entries left. A parameter made by a factory that
fills it (`torch.zeros`, `torch.randn`, `torch.tensor(data)`), or computed from other tensors, is
not flagged; neither is a copy of written memory. The finding points at the line that allocated
the memory.

It works the same on the meta device, where the writes are recorded as they are on real
tensors. A model built outside a recorded build (`biaslint.check(model)` without
`biaslint.recording()`) is not judged, with that reason; so, on the meta device, are modules
that biaslint itself had to reset because nothing wrote them there.
"""
    why_bad = """\
`torch.empty` returns whatever the allocator's memory held: often zeros (a fresh page), but
also values left by freed tensors, denormals, numbers like 1e28 or NaN, different from run to
run and machine to machine. A parameter that starts there trains from an arbitrary point: a NaN
or an overflow in the first forward, or, when the memory happened to be zeros, a constant
parameter that breaks the symmetry nothing else breaks. It is easy to miss: `nn.Linear` and the
other torch layers allocate with `torch.empty` too, then write every entry in their
`reset_parameters()`; a hand-written `nn.Parameter(torch.empty(...))` (a positional embedding,
a class token, a scale) gets no such call unless you write it. Under
`torch.use_deterministic_algorithms(True)` with
`torch.utils.deterministic.fill_uninitialized_memory = True` PyTorch fills such memory with NaN,
which shows the problem; the default build does not.
"""
    fix_text = """\
Initialize the parameter right after allocating it, for example
`nn.init.trunc_normal_(self.pos_embedding, std=0.02)` (the ViT and BERT choice for embeddings),
`nn.init.zeros_` for an offset, `nn.init.ones_` for a scale; or allocate it with a factory that
fills it (`torch.zeros`, `torch.randn(...) * 0.02`). If the parameter is meant to be loaded from
a checkpoint, load it inside the build (the target function), so the lint sees the write.
"""
    references = (
        "PyTorch, torch.empty: \"Returns a tensor filled with uninitialized data\", "
        "https://pytorch.org/docs/stable/generated/torch.empty.html",
        "PyTorch, torch.utils.deterministic.fill_uninitialized_memory, "
        "https://pytorch.org/docs/stable/deterministic.html",
    )
    bad_example = '''\
import torch
import torch.nn as nn


class Encoder(nn.Module):
    def __init__(self, frames=50, dim=32):
        super().__init__()
        self.pos = nn.Parameter(torch.empty(1, frames, dim))  # never initialized
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(x + self.pos)


def build():
    return Encoder(), torch.randn(2, 50, 32)
'''
    good_example = '''\
import torch
import torch.nn as nn


class Encoder(nn.Module):
    def __init__(self, frames=50, dim=32):
        super().__init__()
        self.pos = nn.Parameter(torch.empty(1, frames, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(x + self.pos)


def build():
    return Encoder(), torch.randn(2, 50, 32)
'''

    reads = frozenset({"build"})
    explains = frozenset({"unwritten"})
    frozen_matters = True  # garbage in the forward, trained or not

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return list(model.layers.values())

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        if not model.writes_recorded:
            return {name: NOT_RECORDED for name in model.layers}
        if not model.on_meta():
            return {}
        return {name: RESET_ON_META for name in model.reset_on_meta if name in model.layers}

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        declined = self.declined(model, context)
        for layer in model.layers.values():
            if layer.name in declined:
                continue  # said by the engine, with the reason
            for pname in layer.parameters():
                unwritten = model.never_written(layer.name, pname)
                if unwritten is not None and _first_name(model, layer, pname):
                    yield self._finding(layer, pname, unwritten)

    def _finding(self, layer: "Layer", pname: str, unwritten: Unwritten) -> Finding:
        qualified = f"{layer.name}.{pname}" if layer.name else pname
        where = f" at {unwritten.location}" if unwritten.location is not None else ""
        part = "none of its" if unwritten.entries == unwritten.total else \
            f"{unwritten.total - unwritten.entries:,} of its"
        left = "" if unwritten.entries == unwritten.total else \
            f"; {unwritten.entries:,} entries were never written"
        message = (f"parameter {python_path(qualified)} ({unwritten.total:,} values) was "
                   f"allocated by {unwritten.how}{where} and {part} {unwritten.total:,} entries "
                   f"were written after{left}: it starts from whatever that memory held (zeros, "
                   "denormals, 1e28 or NaN, different on each run); initialize it, e.g. with "
                   "nn.init.trunc_normal_(..., std=0.02)")
        subject = _assigned_name(unwritten) or python_path(qualified)
        fix = Fix(title="Initialize the parameter after allocating it",
                  code=f"nn.init.trunc_normal_({subject}, std=0.02)", safe=False,
                  kind=FixKind.MANUAL,
                  manual="the right init (normal, zeros, ones) depends on what the parameter is")
        return self.finding(layer, message, parameter=pname, fix=fix,
                            location=unwritten.location or layer.site,
                            data={"unwritten": unwritten.entries, "values": unwritten.total,
                                  "allocated_by": unwritten.how})


def _first_name(model: "AnalysedModel", layer: "Layer", pname: str) -> bool:
    """This is the first name of the parameter (a tied one is reported once)."""
    qualified = f"{layer.name}.{pname}" if layer.name else pname
    names = model.tied_names(layer.name, pname)
    return not names or names[0] == qualified


def _assigned_name(unwritten: Unwritten) -> str | None:
    """``self.pos`` when the allocating line is ``self.pos = nn.Parameter(torch.empty(...))``."""
    import ast

    from biaslint.sources import line_of

    location = unwritten.location
    if location is None or location.end_line not in (None, location.line):
        return None
    text = line_of(location.file, location.line).strip()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    statement = tree.body[0] if len(tree.body) == 1 else None
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        if len(targets) == 1 and isinstance(targets[0], (ast.Attribute, ast.Name)):
            return ast.unparse(targets[0])
    return None
