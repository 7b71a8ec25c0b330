"""BL004: an LSTM whose forget gate starts half closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from biaslint.findings import Finding, Fix, FixKind, Severity
from biaslint.fix.phrases import python_path, set_by, user_call
from biaslint.rules.base import Option, Rule, RuleContext

if TYPE_CHECKING:
    import torch.nn as nn

    from biaslint.analysis import AnalysedModel, Layer, Use
    from biaslint.analysis.values import ParamValue


class LstmForgetGateBias(Rule):
    code = "BL004"
    name = "lstm-forget-gate-closed"
    severity = Severity.WARNING
    summary = "LSTM forget-gate bias near 0, so the cell state halves every step at the start"
    what_it_does = """\
Reads the forget-gate bias of every `nn.LSTM` (each layer, each direction, with or without
`proj_size`) and every `nn.LSTMCell`. PyTorch orders the gates (input, forget, cell, output), so
with hidden size `H` the forget gate sees `bias_ih[H:2H] + bias_hh[H:2H]`. The rule flags a mean
effective forget bias below `min_forget_bias` (0.5), naming the layers and directions, and flags
LSTMs built with `bias=False`, which cannot have a forget bias at all. `nn.GRU` has no forget gate
and is not checked.

It also finds LSTM cells written by hand in the traced graph, `c = f * c_prev + i * g` with
`f = sigmoid(chunk k of Linear(x) [+ Linear(h)])`: the forget gate is the sigmoid whose product
with the cell state is added to a sigmoid-times-tanh product, and its bias is the sum of rows
`k*H:(k+1)*H` of the Linears' biases. A cell written with one Linear per gate, as textbooks
write it (`f = sigmoid(W_xf(x) + W_hf(h))`), is found the same way: its forget bias is the sum
of those Linears' biases.
"""
    why_bad = """\
With PyTorch's default init the forget bias is close to 0, so the forget gate starts at
sigmoid(0) = 0.5: the cell state is multiplied by about one half at every step and information
from 10 steps back is scaled by about 0.001, as is the gradient that would teach the LSTM to keep
it. A forget bias of 1 (sigmoid(1) = 0.73) keeps memory much longer from the first step: Gers et
al. (2000) introduced the positive forget bias and Jozefowicz et al. (2015) found that setting it
to 1 closes most of the gap between the LSTM and the best architectures they searched.
"""
    fix_text = """\
Call `biaslint.init.forget_gate_bias_(lstm, 1.0)` after building the LSTM (it sets
`bias_ih[H:2H] = 1` and `bias_hh[H:2H] = 0` in every layer and direction), and build LSTMs with
`bias=True`.
"""
    references = (
        "Gers, Schmidhuber and Cummins, 2000, Learning to Forget: Continual Prediction with LSTM, "
        "https://doi.org/10.1162/089976600300015015",
        "Jozefowicz, Zaremba and Sutskever, 2015, An Empirical Exploration of Recurrent Network "
        "Architectures, https://proceedings.mlr.press/v37/jozefowicz15.html",
    )
    options = (
        # 0.5 is halfway to the recommended 1.0: sigmoid(0.5) = 0.62 already keeps 0.62**10 = 0.8%
        # of a 10-step-old state instead of 0.1%; below that the default-init behaviour dominates.
        Option("min_forget_bias", 0.5, "Flag a mean effective forget-gate bias below this."),
    )
    bad_example = '''\
import torch.nn as nn


def build():
    return nn.LSTM(input_size=32, hidden_size=64, num_layers=2, bidirectional=True)
'''
    good_example = '''\
import torch.nn as nn

from biaslint.init import forget_gate_bias_


def build():
    lstm = nn.LSTM(input_size=32, hidden_size=64, num_layers=2, bidirectional=True)
    return forget_gate_bias_(lstm, 1.0)
'''

    reads = frozenset({"values"})
    grouped_by = "init"

    def scope(self, model: "AnalysedModel", context: RuleContext) -> list["Layer"]:
        import torch.nn as nn

        return list(model.layers_of_type(nn.LSTM, nn.LSTMCell))

    def check(self, model: "AnalysedModel", context: RuleContext) -> Iterable[Finding]:
        import torch.nn as nn

        threshold = float(context.option(self, "min_forget_bias"))
        for layer in model.layers_of_type(nn.LSTM, nn.LSTMCell):
            if not layer.readable():
                continue  # reported as not judged by the engine
            module = layer.module
            fix = Fix(title="Set the forget-gate bias to 1 after building the LSTM",
                      code=f"biaslint.init.forget_gate_bias_({python_path(layer.name)}, 1.0)",
                      safe=False, kind=FixKind.INIT_HELPER)
            if not module.bias:
                yield self.finding(
                    layer,
                    f"{layer.type_name} is built with bias=False, so it has no forget-gate bias: "
                    "the forget gate starts at sigmoid(W x + U h) ~ 0.5 and halves the cell "
                    "state every step; build it with bias=True and set the forget bias to 1.0",
                    fix=Fix(title="Build the LSTM with bias=True, then set the forget bias to 1",
                            code=fix.code, safe=False, kind=FixKind.INIT_HELPER),
                    data={"bias": False},
                )
                continue
            means = forget_biases(module, layer.value)
            low = {where: m for where, m in means.items() if m < threshold}
            if not low:
                continue
            shown = ", ".join(f"{m:.3g} in {where}" for where, m in list(low.items())[:6])
            more = f" and {len(low) - 6} more" if len(low) > 6 else ""
            worst = min(low.values())
            set_by = _init_phrase(layer)
            yield self.finding(
                layer,
                f"mean forget-gate bias (bias_ih[H:2H] + bias_hh[H:2H]) is {shown}{more} "
                f"(below {threshold:g}){set_by}: the forget gate starts near "
                f"sigmoid({worst:.2g}) = "
                f"{_sigmoid(worst):.2f}, keeping only {_sigmoid(worst) ** 10:.1e} of the cell "
                "state after 10 steps; 1.0 is recommended (Jozefowicz et al., 2015)",
                fix=fix,
                data={"forget_bias_means": means, "threshold": threshold},
            )
        yield from self._hand_written(model, threshold)

    def _hand_written(self, model: "AnalysedModel", threshold: float) -> Iterable[Finding]:
        for gate in hand_written_gates(model):
            mean = gate.bias_mean(model)
            if mean is None or mean >= threshold:
                continue
            # The fix goes to a Linear of the sum that has a bias (d2l's W_xf, not W_hf).
            layer = next((model.layers[n] for n in gate.layers
                          if getattr(model.layers[n].module, "bias", None) is not None),
                         model.layers[gate.layers[0]])
            module = layer.module
            size = module.out_features // gate.chunks
            rows = f"{gate.chunk * size}:{(gate.chunk + 1) * size}"
            names = " + ".join(python_path(n) for n in gate.layers)
            has_bias = getattr(module, "bias", None) is not None
            of = f"(chunk {gate.chunk} of {gate.chunks}) of" if gate.chunks > 1 else " of"
            code = (f"nn.init.constant_({python_path(layer.name)}.bias[{rows}], 1.0)"
                    if has_bias else "")
            yield self.finding(
                layer,
                f"hand-written LSTM cell: the forget gate is sigmoid{of} {names}, whose bias "
                f"rows {rows} have mean {mean:.3g} (below "
                f"{threshold:g}): the gate starts near sigmoid({mean:.2g}) = {_sigmoid(mean):.2f}, "
                f"keeping only {_sigmoid(mean) ** 10:.1e} of the cell state after 10 steps; 1.0 "
                "is recommended (Jozefowicz et al., 2015)",
                parameter="bias",
                fix=Fix(title="Set the forget-gate rows of the bias to 1", code=code,
                        kind=FixKind.REPLACE_INIT)
                if has_bias else Fix(title="Give the gate Linear a bias and set its forget rows "
                                           "to 1"),
                data={"forget_bias_mean": mean, "rows": rows, "layers": list(gate.layers)},
            )


@dataclass(frozen=True)
class HandWrittenGate:
    """A forget gate found in the graph: sigmoid(chunk k of some Linear outputs) * cell state."""

    layers: tuple[str, ...]  # the Linear layers whose outputs are summed into the gates
    chunk: int
    chunks: int

    def bias_mean(self, model: "AnalysedModel") -> float | None:
        total = 0.0
        for name in self.layers:
            layer = model.layers[name]
            value = layer.value("bias")
            if value is None:
                continue
            if not value.known:
                return None
            size = layer.module.out_features // self.chunks
            total += value.mean_of(self.chunk * size, (self.chunk + 1) * size)
        return total


def hand_written_gates(model: "AnalysedModel") -> list[HandWrittenGate]:
    """Forget gates of LSTM cells written by hand: ``c = f * c_prev + i * g`` where ``f`` is
    ``sigmoid`` of chunk k of ``Linear(x)`` (or of a sum of Linears). The gate is the sigmoid
    whose product is added to a product of a sigmoid and a tanh (the input-gate term)."""
    import torch.nn as nn

    from biaslint.analysis import Use
    from biaslint.analysis.ops import activation_kind, binary_kind

    found: dict[tuple[tuple[str, ...], int, int], HandWrittenGate] = {}
    for use in model.graph_nodes():
        part, node = use.part, use.node
        binary = binary_kind(use)
        if binary is None or binary != ("add", True):
            continue
        terms = [Use(part, n) for n in node.all_input_nodes]
        if len(terms) != 2 or not all(binary_kind(t) == ("mul", True) for t in terms):
            continue
        kinds = [[activation_kind(Use(part, n)) for n in t.node.all_input_nodes]
                 for t in terms]
        for forget, other in ((0, 1), (1, 0)):
            if sorted(k or "" for k in kinds[other]) != ["sigmoid", "tanh"]:
                continue
            for operand in terms[forget].node.all_input_nodes:
                if activation_kind(Use(part, operand)) != "sigmoid":
                    continue
                gate = _gate_source(model, Use(part, operand))
                if gate is not None and all(
                        isinstance(model.layers[n].module, nn.Linear) for n in gate[0]):
                    found[gate] = HandWrittenGate(*gate)
    return list(found.values())


def _gate_source(model: "AnalysedModel", sigmoid: "Use") -> tuple[tuple[str, ...], int, int] | None:
    """(Linear names, chunk index, number of chunks) when the sigmoid reads
    ``chunk(Linear(x) [+ Linear(h)], n)[k]``; None for anything else."""
    import operator

    import torch

    from biaslint.analysis import Use

    inputs = sigmoid.node.all_input_nodes
    if len(inputs) != 1:
        return None
    if inputs[0].target is not operator.getitem:
        # One Linear per gate (``sigmoid(W_xf(x) + W_hf(h))``): the whole output, chunk 0 of 1.
        whole = _linear_sum(model, Use(sigmoid.part, inputs[0]))
        return None if whole is None else (whole, 0, 1)
    item = inputs[0]
    index = item.args[1] if len(item.args) > 1 else None
    chunked = item.args[0]
    if not isinstance(index, int) or not hasattr(chunked, "op"):
        return None
    if chunked.op == "call_function" and chunked.target is torch.chunk:
        args = list(chunked.args) + [chunked.kwargs.get("chunks"), chunked.kwargs.get("dim", 0)]
    elif chunked.op == "call_method" and chunked.target == "chunk":
        args = list(chunked.args) + [chunked.kwargs.get("chunks"), chunked.kwargs.get("dim", 0)]
    else:
        return None
    source, chunks = args[0], args[1]
    dim = chunked.args[2] if len(chunked.args) > 2 else chunked.kwargs.get("dim", 0)
    if not isinstance(chunks, int) or dim not in (-1, 1):
        return None
    names = _linear_sum(model, Use(sigmoid.part, source))
    return None if names is None else (names, index % chunks, chunks)


def _linear_sum(model: "AnalysedModel", source: "Use") -> tuple[str, ...] | None:
    """The layers whose outputs ``source`` sums (``Linear(x) [+ Linear(h)]``), or None when it
    is anything else."""
    from biaslint.analysis import Use
    from biaslint.analysis.ops import binary_kind

    stack, names = [source], []
    while stack:
        use = stack.pop()
        if use.node.op == "call_module" and model.module_name(use) in model.layers:
            names.append(model.module_name(use))
        elif binary_kind(use) == ("add", True):
            stack.extend(Use(use.part, n) for n in use.node.all_input_nodes)
        else:
            return None
    return tuple(sorted(set(names))) if names else None


def forget_biases(module: "nn.Module", value: "Callable[[str], ParamValue | None] | None" = None
                  ) -> dict[str, float]:
    """Mean effective forget-gate bias per layer and direction, keyed ``layer 0`` /
    ``layer 0 reverse`` (``cell`` for an LSTMCell). ``value`` reads a parameter by name (the
    layer's ``Layer.value``: measured, or from the init laws on meta); by default the module's
    own tensors are measured."""
    import torch.nn as nn

    from biaslint.analysis.values import MeasuredValue

    if value is None:
        def value(pname: str) -> "ParamValue | None":
            return MeasuredValue(getattr(module, pname))

    hidden = module.hidden_size
    result: dict[str, float] = {}
    if isinstance(module, nn.LSTMCell):
        pairs = [("cell", "bias_ih", "bias_hh")]
    else:
        directions = 2 if module.bidirectional else 1
        pairs = []
        for k in range(module.num_layers):
            for d in range(directions):
                suffix = "_reverse" if d else ""
                where = f"layer {k}" + (" reverse" if d else "")
                pairs.append((where, f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}"))
    for where, ih_name, hh_name in pairs:
        ih, hh = value(ih_name), value(hh_name)
        assert ih is not None and hh is not None
        result[where] = ih.mean_of(hidden, 2 * hidden) + hh.mean_of(hidden, 2 * hidden)
    return result


def _init_phrase(layer: "Layer") -> str:
    """Where the user's code last wrote a bias of this LSTM, if it did."""
    for pname in layer.parameters():
        call = user_call(layer.init_of(pname)) if pname.startswith("bias") else None
        if call is not None and call.location is not None:
            return f" (a bias was set by {set_by(call)})"
    return ""


def _sigmoid(x: float) -> float:
    import math

    return 1.0 / (1.0 + math.exp(-x))
