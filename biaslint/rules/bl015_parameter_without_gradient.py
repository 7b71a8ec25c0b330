"""BL015: parameters the forward reads but no output depends on, measured on the example inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from biaslint.findings import NOT_MEASURED, Finding, Fix, FixKind, Severity
from biaslint.rules.base import Rule, RuleContext

if TYPE_CHECKING:
    from biaslint.analysis import AnalysedModel, Layer


class ParameterWithoutGradient(Rule):
    code = "BL015"
    name = "parameter-without-gradient"
    severity = Severity.WARNING
    summary = "Parameters the forward reads but no output depends on: no gradient, for good"
    what_it_does = """\
Measures, on the example inputs, which trainable parameters no output depends on although the
forward reads them (a parameter the forward never reaches is BL010's; an additive bias is
BL001's). On the model in training mode, with every all-equal or tiny parameter re-drawn for the
measurement (so a zero-initialized gate, whose gradient becomes non-zero after one step, does not
hide what is behind it), one forward and two backwards of random projections of the outputs
propose the parameters whose gradient is exactly zero; each is confirmed by shifting all its
entries by about 10 units, both signs, on the example batch and on a second batch drawn like it
(in float64 where the model runs in it): no output may move, in training mode with the
measurement's fixed random masks, then with random masks off (every module in eval mode but the
batch and instance norms), and last bit for bit, with the re-drawn parameters back at their built
values, in float64. A unit that is merely off on these inputs comes on under such a shift; a
block stochastic depth dropped on the measured run comes back without masks; a path that is only
weak (two layer scales of 1e-5 in a row) moves by 1e-14, not 0: none of them is reported. A
structural silence is exact: a softmax over one key outputs exactly 1.

It also finds parameters autograd reaches no output from although the outputs depend on them:
a trainable parameter that gets no gradient at all (not a zero one) whose shift, as above, moves
an output. The forward computes with it outside autograd: under `torch.no_grad()`, or in a
reentrant gradient checkpoint (`use_reentrant=True`, the old default) none of whose inputs
needs a gradient. It never trains. A parameter the graph shows behind a `.detach()` is BL010's.

The finding names the graph's reason where it knows one:
- the parameter feeds the scores of a softmax over a **length-1 axis** (one key): its output is
  the constant 1 whatever the scores, so the query and key projections never train (a vision
  transformer's pooling attention at a small input, a cross-attention over one memory slot);
- it is the **reverse direction's recurrent weight** of a bidirectional RNN whose output is read
  only at the last step: there the reverse direction has run one step, from its initial state,
  which is all that weight multiplies.

The verdict holds for these inputs' shapes: another sequence length or image size can change it,
as the message says. Without a forward with values (the meta device) the rule does not run.
"""
    why_bad = """\
A parameter with no gradient never trains: it keeps its init while the optimizer spends state and
memory on it, and weight decay alone shrinks it toward zero. The layer it belongs to looks
healthy, so nothing says the model learns without it, or that a shape (one key, the last step of
a reverse direction) made a whole projection decorative.
"""
    fix_text = """\
Give the part real work or remove it: attend over more than one key (or drop the attention for a
plain projection when there is one); read a bidirectional RNN's reverse direction where it has
seen the sequence (`out[:, 0, hidden:]`, or `h_n`); or delete the parameter.
"""
    references = (
        "PyTorch documentation, torch.nn.LSTM (outputs of a bidirectional LSTM: the reverse "
        "direction's output at the last step has seen one input), "
        "https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html",
    )
    bad_example = '''\
import torch
import torch.nn as nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(16, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])  # the reverse half has seen only the last step here


def build():
    return Tagger(), torch.randn(8, 12, 16)
'''
    good_example = '''\
import torch
import torch.nn as nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(16, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(torch.cat([h[-2], h[-1]], dim=-1))  # each direction's final state


def build():
    return Tagger(), torch.randn(8, 12, 16)
'''

    reads = frozenset({"graph", "forward", "gradients"})

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        return [layer for layer in model.layers.values()
                if any(p.requires_grad and p.is_floating_point()
                       for p in layer.parameters().values())]

    def declined(self, model: "AnalysedModel", context: RuleContext) -> dict[str, str]:
        screen = model.silent_parameters()
        if screen is None:
            return {}
        if screen.error is None:
            return {layer: f"{NOT_MEASURED}autograd reaches no output from {pname}, and the "
                           "shifts' budget ran out before it was shifted"
                    for layer, pname in screen.cut_unsettled}
        return {layer.name: f"{NOT_MEASURED}{screen.error}"
                for layer in self.scope(model, context)}

    def forward_needs(self, model: "AnalysedModel", context: RuleContext) -> tuple[list[str], bool]:
        return [], True  # the attention measure names a softmax over one key

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        screen = model.silent_parameters()
        if screen is None or screen.error is not None:
            return
        by_layer: dict[str, list[str]] = {}
        for layer_name, pname in screen.silent:
            by_layer.setdefault(layer_name, []).append(pname)
        for layer_name, pnames in by_layer.items():
            layer = model.layers.get(layer_name)
            if layer is not None:
                yield self._finding(model, layer, pnames)
        cut: dict[str, list[str]] = {}
        for layer_name, pname in screen.cut:
            if not _detached_in_graph(model, layer_name, pname):  # that is BL010's
                cut.setdefault(layer_name, []).append(pname)
        for layer_name, pnames in cut.items():
            layer = model.layers.get(layer_name)
            if layer is not None:
                yield self._cut(layer, pnames, _integer_cast(model, layer_name))

    def _cut(self, layer: "Layer", pnames: list[str], cast: str | None) -> Finding:
        one = len(pnames) == 1
        names = ", ".join(pnames)
        how = (f"its result reaches the outputs only through {cast}, a cast to an integer "
               "dtype, which autograd does not differentiate" if cast else
               f"the forward computes with {'it' if one else 'them'} outside autograd (under "
               "torch.no_grad(), or in a reentrant gradient checkpoint none of whose inputs "
               "needs a gradient)")
        message = (
            f"{names} of {layer.name or 'the model'} get{'s' if one else ''} no gradient at all, "
            f"though shifting {'it' if one else 'them'} moves the outputs (measured on the "
            f"example inputs): {how}. {'It' if one else 'They'} never train"
            f"{'s' if one else ''}; to freeze {'it' if one else 'them'} on purpose, set "
            f"requires_grad=False so the optimizer skips {'it' if one else 'them'}")
        return self.finding(
            layer, message, parameter=pnames[0],
            fix=Fix(title="Compute the layer with autograd, or freeze it explicitly",
                    code=("pass the gradient around the cast (straight-through: "
                          "x + (quantized - x).detach())" if cast else
                          "move the layer out of torch.no_grad(), or use "
                          "checkpoint(..., use_reentrant=False)") +
                    "; to freeze: module.requires_grad_(False)", safe=False,
                    kind=FixKind.MANUAL),
            data={"parameters": pnames, "reason": "cut"})

    def _finding(self, model: "AnalysedModel", layer: "Layer", pnames: list[str]) -> Finding:
        kind, why = _why(model, layer, pnames)
        names = ", ".join(pnames)
        message = (
            f"{names} of {layer.name or 'the model'} get{'s' if len(pnames) == 1 else ''} no "
            f"gradient on the example inputs, and shifting "
            f"{'it' if len(pnames) == 1 else 'them'} by 10 units moves no output (measured "
            f"on two batches): {why}. {'It' if len(pnames) == 1 else 'They'} never train"
            f"{'s' if len(pnames) == 1 else ''} while this holds (weight decay alone moves "
            f"{'it' if len(pnames) == 1 else 'them'}); it holds for these input shapes")
        fixes = {
            "one-key": "attend over more than one key, or use a plain projection",
            "reverse": "read the reverse direction where it has seen the sequence: "
                       "out[:, 0, hidden:] or h_n",
        }
        return self.finding(
            layer, message, parameter=pnames[0],
            fix=Fix(title="Give the parameters work that reaches an output, or remove them",
                    code=fixes.get(kind, "remove the parameters, or use them"), safe=False,
                    kind=FixKind.MANUAL),
            data={"parameters": pnames, "reason": kind})


def _why(model: "AnalysedModel", layer: "Layer", pnames: list[str]) -> tuple[str, str]:
    """(kind, words): what in the graph keeps the outputs from depending on them."""
    import torch.nn as nn

    module = layer.module
    if isinstance(module, nn.RNNBase) and all(
            p.startswith(("weight_hh", "weight_hr")) and p.endswith("_reverse") for p in pnames):
        return "reverse", (
            "the reverse direction's recurrent weights, and the output is read only where the "
            "reverse direction has run one step, from its initial state, which is all they "
            "multiply there")
    one_key = [a for a in _attention(model) if a.keys == 1
               and _inside(layer.name, model.scores_module(a.module))]
    if one_key:
        where = model.scores_module(one_key[0].module) or "the model"
        return "one-key", (
            f"the scores of the softmax in {where} read them, and it runs over a length-1 axis "
            f"(one key): it outputs the constant 1 whatever the scores")
    return "measured", "no output depends on them on these inputs"


def _inside(layer: str, owner: str) -> bool:
    return owner == "" or layer == owner or layer.startswith(owner + ".")


def _attention(model: "AnalysedModel") -> list[Any]:
    try:
        return list(model.attention)
    except Exception:  # the measure is only for the words: the verdict stands without it
        return []


def _detached_in_graph(model: "AnalysedModel", layer: str, pname: str) -> bool:
    """Whether the graph shows a ``detach`` after the layer's calls or the parameter's reads:
    BL010 names those ("detached")."""
    qualified = f"{layer}.{pname}" if layer else pname
    stack = [u.node for u in model.calls_of(layer)] + [u.node for u in model.reads_of(qualified)]
    seen: set[Any] = set()
    while stack and len(seen) < 4096:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.target in ("detach", "detach_") or getattr(node.target, "__name__", "") in (
                "detach", "detach_"):
            return True
        stack.extend(node.users)
    return False


_INTEGER_CASTS = frozenset({"byte", "char", "short", "int", "long", "bool"})


def _integer_cast(model: "AnalysedModel", layer: str) -> str | None:
    """The first cast to an integer dtype the graph shows after the layer's calls, in words
    (``byte()``), or None."""
    import torch

    stack = [u.node for u in model.calls_of(layer)]
    seen: set[Any] = set()
    while stack and len(seen) < 4096:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_method":
            dtype = None
            if node.target == "to":
                dtype = node.kwargs.get("dtype") or next(
                    (a for a in node.args[1:] if isinstance(a, torch.dtype)), None)
            if node.target in _INTEGER_CASTS or (
                    isinstance(dtype, torch.dtype) and not dtype.is_floating_point
                    and not dtype.is_complex):
                return f"{node.target}()"
        stack.extend(node.users)
    return None
