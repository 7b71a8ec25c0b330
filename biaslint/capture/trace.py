"""Stage 2, capture: choose how the graph is obtained, and measure coverage.

With example inputs, the forward is recorded as it runs (``record``): on fake tensors, or on
real ones without autograd when fake ones cannot take it. Without inputs, or when the forward
fails on them, the model is traced symbolically, as below.

``symbolic_trace`` fails on data-dependent control flow. Rather than give up on the whole model we
trace the children of a module that would not trace, recursively, and retrace the module with the
untraceable children kept as opaque leaves. One dynamic ``forward`` then hides only itself.
When example inputs are known, shapes are propagated with fake tensors (no real compute).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn

from biaslint.capture.leaves import is_default_leaf
from biaslint.capture.preserve import preserved
from biaslint.capture.shapes import ShapeInterpreter
from biaslint.findings import Coverage
from biaslint.load import ExampleInputs, LoadedTarget


@dataclass
class GraphPart:
    """One traced graph: the module it traces (by qualified name) and the fx GraphModule."""

    qualname: str
    module: nn.Module
    gm: fx.GraphModule
    shapes_known: bool = False

    def full_name(self, target: str) -> str:
        """Qualified name in the whole model of a call_module / get_attr target of this graph."""
        return f"{self.qualname}.{target}" if self.qualname else target


@dataclass
class Capture:
    loaded: LoadedTarget
    parts: list[GraphPart]
    opaque: list[str]
    coverage: Coverage
    notes: list[str] = field(default_factory=list)
    # The forward raised on the example inputs (the error, and the module it came from): the
    # graph then comes from symbolic tracing, and no value of a run is known.
    forward_error: str | None = None
    # Recorded on a real forward: each parametrized layer's first output and input (copies), the
    # values rules would otherwise run the forward again for (``AnalysedModel.real_outputs``).
    real_values: dict[str, tuple[Any, Any]] | None = None
    # Recorded on a real forward: the attention softmaxes it ran (``capture.attention``).
    attention: list[Any] | None = None


class _Tracer(fx.Tracer):
    def __init__(self, opaque: set[str]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (module_qualified_name in self.opaque
                or is_default_leaf(m))


def _trace(module: nn.Module, opaque: set[str]) -> fx.GraphModule:
    tracer = _Tracer(opaque)
    with _quiet():
        graph = tracer.trace(module)
    name = module.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings and torch's own error logs while we trace and probe the user's model:
    a failure there is expected, handled, and reported once in our notes."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch.fx",
                                               "torch._dynamo", "torch.utils._sympy")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class _Inputs:
    """What each module was called with (and returned) in one forward pass on the example."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.outputs: dict[str, Any] = {}
        self.fake_mode: Any = None
        self.names: dict[int, str] = {}  # module object -> its name in named_modules()

    def of(self, name: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        return self.calls.get(name)


def _trace_part(module: nn.Module, name: str, leaves: set[str], recorded: _Inputs) -> GraphPart:
    """Trace with concrete values when this module's inputs are known, plainly otherwise."""
    call = recorded.of(name)
    if call is not None and recorded.fake_mode is not None:
        from biaslint.capture.concrete import trace_with_values

        outputs = {k[len(name) + 1:] if name else k: v for k, v in recorded.outputs.items()
                   if not name or k.startswith(name + ".")}
        try:
            gm = trace_with_values(module, call[0], call[1], leaves, recorded.fake_mode,
                                   outputs)
            return _canonical(GraphPart(name, module, gm, shapes_known=True), recorded.names)
        except Exception:  # try the plain tracer, which asks for less
            pass
    return _canonical(GraphPart(name, module, _trace(module, leaves)), recorded.names)


def _canonical(part: GraphPart, names: dict[int, str]) -> GraphPart:
    """Name each called module as ``named_modules()`` does.

    A module registered twice (T5's ``shared`` embedding is also ``encoder.embed_tokens``) is
    called under whichever name the forward used; rules look layers up by their one
    ``named_modules()`` name, so graph targets must use it too.
    """
    prefix = f"{part.qualname}." if part.qualname else ""
    for node in part.gm.graph.nodes:
        if node.op != "call_module":
            continue
        try:
            module = part.gm.get_submodule(node.target)
        except AttributeError:
            continue
        full = names.get(id(module))
        if full is None or full == prefix + node.target or not full.startswith(prefix):
            continue
        relative = full[len(prefix):]
        try:
            part.gm.get_submodule(relative)
        except AttributeError:
            _add_submodule(part.gm, relative, module)
        node.target = relative
    part.gm.recompile()
    return part


def _add_submodule(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    owner: nn.Module = gm
    *parents, leaf = path.split(".")
    for atom in parents:
        child = getattr(owner, atom, None)
        if not isinstance(child, nn.Module):
            child = nn.Module()
            owner.add_module(atom, child)
        owner = child
    owner.add_module(leaf, module)


def _capture_module(module: nn.Module, name: str, parts: list[GraphPart], opaque: list[str],
                    recorded: _Inputs, known_untraceable: bool = False) -> None:
    """Trace ``module`` whole if possible; otherwise trace what can be traced below it."""
    if not known_untraceable:
        try:
            parts.append(_trace_part(module, name, set(), recorded))
            return
        except Exception:  # any tracing failure means: go finer
            pass
    untraceable: set[str] = set()
    below: list[GraphPart] = []  # graphs of the children that do not trace whole
    traced_whole: list[GraphPart] = []
    for child_name, child in module.named_children():
        if is_default_leaf(child):
            continue
        full = f"{name}.{child_name}" if name else child_name
        sub: list[GraphPart] = []
        _capture_module(child, full, sub, opaque, recorded)
        if len(sub) == 1 and sub[0].qualname == full:
            traced_whole.extend(sub)  # inlined in this module's graph if that traces
        else:
            untraceable.add(child_name)
            below.extend(sub)
    if untraceable:
        try:
            parts.append(_trace_part(module, name, untraceable, recorded))
            parts.extend(below)
            return
        except Exception:  # the rest does not trace either: keep this module opaque
            pass
    # This module's own forward does not trace: keep it opaque, keep its children's graphs.
    opaque.append(name)
    parts.extend(traced_whole)
    parts.extend(below)


def _record_inputs(model: nn.Module, inputs: ExampleInputs,
                   fake_mode: Any) -> tuple[_Inputs, str | None]:
    """Run the model once and note each module's first call (arguments and result).

    Fake tensors first (no compute). When the forward needs real values (data-dependent
    shapes, e.g. detection's NMS), fall back to one real forward without autograd, so the
    modules after that point still get their inputs.
    """
    recorded = _Inputs()
    error: str | None = None
    for mode in ("fake", "real"):
        recorded = _Inputs()
        handles = []
        for qualname, module in model.named_modules():
            def pre(mod: nn.Module, args: Any, kwargs: Any, _name: str = qualname) -> None:
                recorded.calls.setdefault(_name, (args, kwargs))

            def post(mod: nn.Module, args: Any, kwargs: Any, out: Any,
                     _name: str = qualname) -> None:
                recorded.outputs.setdefault(_name, out)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
        try:
            from biaslint.capture.concrete import quiet_fake_log

            with _quiet(), quiet_fake_log():
                if mode == "fake":
                    with fake_mode:
                        model(*inputs.args, **inputs.kwargs)
                else:
                    with torch.no_grad():
                        model(*inputs.args, **inputs.kwargs)
            recorded.fake_mode = fake_mode
            return recorded, None
        except Exception as exc:  # the user's forward failed
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if mode == "real" or not _needs_real_values(exc):
                # Keep what was recorded before the failure. A forward that fails on fake
                # tensors for another reason (wrong input shape) would fail for real too.
                recorded.fake_mode = fake_mode
                return recorded, error
        finally:
            for h in handles:
                h.remove()
    return recorded, error


def _needs_real_values(exc: BaseException) -> bool:
    """Fake tensors cannot run ops whose output shape depends on data (nonzero, NMS)."""
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        DynamicOutputShapeException,
    )

    return isinstance(exc, (DynamicOutputShapeException, DataDependentOutputException))


def capture(loaded: LoadedTarget, fallback: bool = True, values: bool = False) -> Capture:
    """The model's graph. With example inputs, recorded from its own forward on fake tensors
    (``record``), on real ones without autograd when fake ones cannot take it; when the forward
    fails on the inputs (unless ``fallback`` is False: then only ``forward_error`` is set), or
    there are none, from symbolic tracing per submodule (below).

    ``values``: a rule will read the model's real outputs. A forward that computes with values
    (a meta recording stopped at a tensor holding some) is then recorded on real tensors
    straight away, keeping those outputs, rather than on fake tensors first: fake tensors would
    cost their dispatch and, as often as not (a detector's NMS, LayerDrop's random draw), stop
    where values are needed anyway, and the real forward would run after them either way."""
    if loaded.inputs is not None:
        recorded = _record(loaded, values)
        if isinstance(recorded, Capture):
            return recorded
        if not fallback:  # the caller stops at the error: no graph is worth tracing for it
            return Capture(loaded=loaded, parts=[], opaque=[], coverage=Coverage(0, 0),
                           forward_error=recorded)
        note = f"forward on the example inputs failed ({recorded}); analysed by symbolic " \
               "tracing instead, shapes known only up to that point"
        result = _capture_symbolic(loaded)
        result.notes[:] = [note] + [n for n in result.notes
                                    if not n.startswith("forward on the example inputs failed")]
        result.forward_error = recorded
        return result
    return _capture_symbolic(loaded)


def _record(loaded: LoadedTarget, values: bool = False) -> Capture | str:
    """Record the forward on meta copies, fake tensors, then real ones; the failure text if
    none of them takes it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from biaslint.capture.concrete import quiet_fake_log
    from biaslint.capture.record import ForwardFailed, NotOnMeta, record_forward
    from biaslint.load.guard import preserved_state

    model = loaded.model
    inputs = loaded.inputs
    assert inputs is not None
    notes: list[str] = []
    failure: ForwardFailed | None = None
    # Meta copies first (no compute, no fake-tensor dispatch); fake tensors when the forward
    # needs what meta tensors lack (an op without a meta kernel, a tensor made on the CPU);
    # real ones when it needs values.
    skip_fake = valued = False
    for way in ("meta", "fake", "real"):
        if way == "fake" and skip_fake:
            continue
        fake = way != "real"
        mode = FakeTensorMode(allow_non_fake_inputs=True) if way == "fake" else None
        # A real forward also measures the attention softmaxes (BL006), which would
        # otherwise run it once more.
        measured = _measuring(model) if way == "real" else contextlib.nullcontext(None)
        # The meta attempt is extra: whatever it draws from Python's or numpy's RNG (LayerDrop)
        # is given back, so the attempts after it see what they saw without it.
        rngs = preserved_state(seed=None) if way == "meta" else contextlib.nullcontext()
        try:
            with measured as attention, rngs, preserved(model), _quiet(), quiet_fake_log(), \
                    torch.random.fork_rng(devices=[]):
                recorded = record_forward(model, inputs.args, inputs.kwargs, mode,
                                          meta=way == "meta")
        except ForwardFailed as exc:
            if way != "meta":
                failure = exc
            elif (failed := _as_on_fake(exc)) is not None:
                failure = failed  # fake tensors stop at the same op: straight to real ones
                skip_fake = True
            elif values and isinstance(exc.error, NotOnMeta) and exc.error.values_needed:
                skip_fake = True  # the values the rules read come from this real forward
                valued = True
            continue
        if not fake and failure is not None:
            notes.append(f"the forward cannot run on fake tensors ({failure.describe()}); "
                         "recorded from a real forward without autograd")
        elif not fake and valued:
            notes.append("the forward computes with values (a tensor it makes holds some), "
                         "so it was recorded from a real forward without autograd, whose "
                         "outputs the rules read")
        part = GraphPart("", model, recorded.gm, shapes_known=True)
        return Capture(loaded=loaded, parts=[part], opaque=[],
                       coverage=_coverage(model, [part], [], recorded.called), notes=notes,
                       real_values=recorded.values, attention=attention)
    assert failure is not None
    return failure.describe()


def _as_on_fake(failure: Any) -> Any:
    """A meta forward that stopped at ``nonzero`` (a data-dependent shape) of a tensor of more
    than one element: the failure fake tensors give at that op (they run the same kernels up to
    there and hold no values for such a tensor), or None otherwise. ``.item()`` is not one of
    these: fake tensors keep the value of a one-element tensor made from a Python number
    (BART's, DeBERTa's), and may run past it."""
    from torch._subclasses.fake_tensor import CONSTANT_NUMEL_LIMIT, DynamicOutputShapeException

    from biaslint.capture.record import ForwardFailed

    error = failure.error
    numel = getattr(error, "biaslint_input_numel", 0)
    if isinstance(error, NotImplementedError) and numel > CONSTANT_NUMEL_LIMIT and \
            str(error).startswith("The register_meta function for torch.nonzero() raises "
                                  "unimplemented"):
        fake = DynamicOutputShapeException(torch.ops.aten.nonzero.default)
        return ForwardFailed(fake, failure.where, failure.cls)
    return None


def _measuring(model: nn.Module) -> Any:
    from biaslint.capture.attention import measuring

    return measuring(model)


def _capture_symbolic(loaded: LoadedTarget) -> Capture:
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = loaded.model
    if is_default_leaf(model):
        # The model is one built-in layer (an nn.LSTM returned as is): there is no graph around
        # it to see, and its own parameters are all the rules read.
        layers = sum(1 for m in model.modules() if any(True for _ in m.parameters(recurse=False)))
        notes = [] if loaded.inputs is not None else [_NO_INPUTS]
        return Capture(loaded=loaded, parts=[], opaque=[],
                       coverage=Coverage(total=layers, traced=layers), notes=notes)
    parts: list[GraphPart] = []
    opaque: list[str] = []
    notes: list[str] = []
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    recorded = _Inputs()
    recorded.names = {id(m): n for n, m in model.named_modules()}
    with preserved(model):
        if loaded.inputs is not None:
            recorded.calls[""] = (loaded.inputs.args, loaded.inputs.kwargs)
            recorded.fake_mode = fake_mode
        try:
            parts.append(_trace_part(model, "", set(), recorded))
        except Exception:  # the whole model does not trace: go per submodule
            if loaded.inputs is not None:
                names = recorded.names
                recorded, error = _record_inputs(model, loaded.inputs, fake_mode)
                recorded.names = names
                if error:
                    notes.append(f"forward on the example inputs failed ({error}); "
                                 "shapes known only up to that point")
            _capture_module(model, "", parts, opaque, recorded, known_untraceable=True)
        root_error = next((p.gm.meta.get("biaslint_value_error") for p in parts
                           if p.qualname == "" and p.gm.meta.get("biaslint_value_error")), None)
        if root_error and not any(n.startswith("forward on the example") for n in notes):
            notes.append(f"forward on the example inputs failed ({root_error}); "
                         "shapes known only up to that point")
        if loaded.inputs is not None and any(p.qualname == "" and not p.shapes_known
                                             for p in parts):
            error = _propagate_shapes(loaded, [p for p in parts if p.qualname == ""])
            if error:
                notes.append(f"shape propagation failed ({error}); some shapes unknown")
    if opaque:
        shown = ", ".join(o or "<root>" for o in opaque[:5])
        more = f" and {len(opaque) - 5} more" if len(opaque) > 5 else ""
        notes.append(f"not traceable by torch.fx, analysed as opaque: {shown}{more}")
    if loaded.inputs is None:
        notes.append(_NO_INPUTS)
    return Capture(loaded=loaded, parts=parts, opaque=opaque,
                   coverage=_coverage(model, parts, opaque), notes=notes)


_NO_INPUTS = ("no example inputs: the graph comes from symbolic tracing, shapes are unknown and "
              "every layer counts as called (give --input-shape or return (model, inputs) "
              "from the target)")


def _coverage(model: nn.Module, parts: list[GraphPart], opaque: list[str],
              called: set[str] | None = None) -> Coverage:
    """Of the parametrized layers the forward called (all of them when the calls are not
    known), how many are inside a graph; the others are listed as not called."""
    seen_modules: set[str] = set()
    read: set[int] = set()  # tensors a graph reads directly (get_attr), by identity
    # Modules whose own forward a graph traced through: its root, and every module a node was
    # made inside (fx's nn_module_stack). One of them that reads none of its own parameters
    # is inside the graph all the same: those parameters are unused (BL010 says so), not
    # hidden from it.
    ran: set[str] = {part.qualname for part in parts}
    for part in parts:
        for node in part.gm.graph.nodes:
            for path, _ in (node.meta.get("nn_module_stack") or {}).values():
                ran.add(part.full_name(str(path)))
            if node.op == "call_module":
                seen_modules.add(part.full_name(node.target))
            elif node.op == "get_attr":
                value = _attribute(part.gm, str(node.target))
                if isinstance(value, torch.Tensor):
                    read.add(id(value))
    opaque_set = set(opaque)
    layers = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    # Tied parameters (RoBERTa's lm_head.bias is lm_head.decoder.bias): a layer whose every
    # parameter is used inside a graph through another module is inside the graph too.
    used: set[int] = set()
    for name in seen_modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if name not in opaque_set and is_default_leaf(module):
            used.update(id(p) for p in module.parameters())
    if called is not None:
        called_leaves = {n for n in called if is_default_leaf(model.get_submodule(n))}
        reached = [n for n in layers if n in called or _under(n, called_leaves) or any(
            id(t) in read for t in model.get_submodule(n).parameters(recurse=False))]
        kept = set(reached)
        not_called = tuple(n for n in layers if n not in kept)
        layers = reached
    else:
        not_called = ()
    traced, untraced = 0, []
    for name in layers:
        own = list(model.get_submodule(name).named_parameters(recurse=False))
        inside = _inside(name, seen_modules, opaque_set) or any(
            id(t) in read for _, t in own) or all(id(t) in used for _, t in own) or (
            name in ran and name not in opaque_set)
        if inside:
            traced += 1
        else:
            untraced.append(name)
    return Coverage(total=len(layers), traced=traced, untraced=tuple(untraced),
                    opaque=tuple(opaque), not_called=not_called)


def _attribute(gm: fx.GraphModule, target: str) -> object:
    value: object = gm
    for atom in target.split("."):
        value = getattr(value, atom, None)
    return value


def _under(name: str, ancestors: set[str]) -> bool:
    """Inside a called built-in layer (MultiheadAttention's out_proj, read by its parent)."""
    while "." in name:
        name = name.rsplit(".", 1)[0]
        if name in ancestors:
            return True
    return "" in ancestors and name != ""


def _inside(name: str, called: set[str], opaque: set[str]) -> bool:
    """Called as a node itself, or inside a standard leaf (e.g. MultiheadAttention.out_proj)."""
    probe = name
    while True:
        if probe in called:
            return probe not in opaque
        if not probe:
            return False
        probe = probe.rsplit(".", 1)[0] if "." in probe else ""


# --- shapes -------------------------------------------------------------------------------------

def _propagate_shapes(loaded: LoadedTarget, parts: list[GraphPart]) -> str | None:
    """Record the inputs each graph root sees in one forward pass, then interpret each graph.

    Fake tensors carry shapes and dtypes without data, so a large model costs no real compute.
    Data-dependent control flow (``if x.sum() > 0``) cannot run on fake tensors; then we run the
    real forward under ``no_grad``. Buffers and train/eval flags are restored afterwards: the
    user's model is never modified by the analysis.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        # Entered inside _run_parts, after the buffers are saved as real tensors.
        _run_parts(loaded, parts, FakeTensorMode(allow_non_fake_inputs=True))
        return None
    except Exception:  # fall back to real compute
        for part in parts:
            part.shapes_known = False
    try:
        with torch.no_grad():
            _run_parts(loaded, parts, contextlib.nullcontext())
        return None
    except Exception as exc:  # the user's forward failed; analysis goes on
        for part in parts:
            part.shapes_known = False
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _run_parts(loaded: LoadedTarget, parts: list[GraphPart], mode: Any) -> None:
    inputs = loaded.inputs
    assert inputs is not None
    model = loaded.model
    roots = {part.qualname: part for part in parts}
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = []
    try:
        if set(roots) == {""}:
            seen[""] = (inputs.args, inputs.kwargs)  # one whole graph: no hook pass needed
        else:
            for name, module in model.named_modules():
                if name in roots:
                    def hook(mod: nn.Module, args: Any, kwargs: Any, _name: str = name) -> None:
                        seen.setdefault(_name, (args, kwargs))
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        with preserved(model), _quiet(), mode:
            if set(roots) != {""}:
                model(*inputs.args, **inputs.kwargs)
            for h in handles:
                h.remove()
            handles.clear()
            for name, part in roots.items():
                if name in seen:
                    args, kwargs = seen[name]
                    ShapeInterpreter(part.gm).run(*_placeholders(part.gm, args, kwargs))
                    part.shapes_known = True
    finally:
        for h in handles:
            h.remove()


def _placeholders(gm: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    positional = list(args)
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        name = str(node.target).lstrip("*")
        if str(node.target).startswith("*"):
            values.extend(positional)
            positional = []
        elif positional:
            values.append(positional.pop(0))
        elif name in kwargs:
            values.append(kwargs[name])
        elif node.args:
            values.append(node.args[0])
        else:
            values.append(None)
    return values
