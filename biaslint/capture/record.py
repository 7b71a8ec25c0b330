"""Record the graph while the model's own ``forward`` runs, on fake tensors.

Symbolic tracing runs user code on ``Proxy`` objects, and library code notices:
``torch.is_tensor(proxy)`` is False, einops does not know the type, ``nn.Parameter`` checks
fail, ``len()`` of a proxy raises. Here the forward runs exactly as in a real run, on real
tensor objects (fake ones: shapes, dtypes and devices without data or compute), and a
``TorchFunctionMode`` writes down each torch-level call it makes into an fx ``Graph``.

The graph has the form the rules are written for, the one ``torch.fx`` tracing gives:

* a call of a built-in layer (a ``torch.nn`` module, as fx's default leaves) is one
  ``call_module`` node named as in ``named_modules()``; nothing inside it is recorded;
* the forward of any other module runs and its torch calls are recorded, each node carrying
  the ``nn_module_stack`` of the modules it ran in;
* a parameter or buffer read outside a built-in layer is a ``get_attr`` node;
* Python operators are ``operator.add``... nodes, other tensor methods ``call_method`` nodes,
  torch functions (``torch.cat``, ``F.relu``...) ``call_function`` nodes;
* anything computed from sizes (``x.shape[-1] ** 0.5``) is a constant: the graph is the one the
  example inputs take, Python control flow included.

An in-place op (``x += y``, ``x.relu_()``, ``x[i] = v``) makes later reads of that tensor read
the op's node, so a value written into a tensor is linked to the tensor's later users.

When a forward cannot run on fake tensors (``.item()`` in an ``if``, data-dependent output
shapes, an op without a fake kernel), the caller runs it again on real tensors without
autograd: the recording works the same on either.
"""

from __future__ import annotations

import builtins
import contextlib
import operator
import weakref
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from biaslint.capture.concrete import carries_tensor, positional_names
from biaslint.capture.leaves import is_default_leaf
from biaslint.capture.shapes import record
from biaslint.vocabulary import MEAN_NORM_FUNCTIONS, SAME_SHAPE_NORM_MODULES

# Tensor methods that are Python operators: recorded as fx records the operator
# (``x + y`` reaches the mode as ``Tensor.add``; fx writes ``operator.add``).
_OPERATORS: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "__truediv__": operator.truediv, "__floordiv__": operator.floordiv,
    "__mod__": operator.mod, "remainder": operator.mod, "pow": operator.pow,
    "__pow__": operator.pow, "matmul": operator.matmul, "__matmul__": operator.matmul,
    "__getitem__": operator.getitem, "__setitem__": operator.setitem,
    "__and__": operator.and_, "__or__": operator.or_, "__xor__": operator.xor,
    "__lshift__": operator.lshift, "__rshift__": operator.rshift,
    "__eq__": operator.eq, "__ne__": operator.ne, "__lt__": operator.lt,
    "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge,
}
_UNARY_OPERATORS: dict[str, Callable[..., Any]] = {
    "neg": operator.neg, "__neg__": operator.neg, "__pos__": operator.pos,
    "__invert__": operator.invert, "bitwise_not": operator.invert, "abs": operator.abs,
    "__abs__": operator.abs,
}
# ``1 - x`` reaches the mode as ``Tensor.__rsub__(x, 1)``: the operator with operands swapped.
_REFLECTED: dict[str, Callable[..., Any]] = {
    "__radd__": operator.add, "__rsub__": operator.sub, "__rmul__": operator.mul,
    "__rdiv__": operator.truediv, "__rtruediv__": operator.truediv,
    "__rfloordiv__": operator.floordiv, "__rmod__": operator.mod, "__rpow__": operator.pow,
    "__rmatmul__": operator.matmul, "__rand__": operator.and_, "__ror__": operator.or_,
    "__rxor__": operator.xor, "__rlshift__": operator.lshift, "__rrshift__": operator.rshift,
}
_TENSOR_CLASSES = (torch.Tensor, torch._C.TensorBase)
_PLAIN = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis), slice, range,
          torch.dtype, torch.device, torch.layout, torch.memory_format)


class ForwardFailed(Exception):
    """The model's forward raised while recording; ``where`` is the innermost module it was in."""

    def __init__(self, error: BaseException, where: str | None, cls: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.where = where
        self.cls = cls

    def describe(self) -> str:
        text = str(self.error).strip().splitlines()
        message = f"{type(self.error).__name__}: {text[0]}" if text else type(self.error).__name__
        if self.where is None:
            return message
        place = f"'{self.where}'" if self.where else "the model's own forward"
        return f"{message} (in {place}, {self.cls})"


def failure_of(model: nn.Module, error: BaseException) -> ForwardFailed:
    """``error``, raised by a forward of ``model`` run outside a recording (a rule's real
    forward), with the innermost module of the model whose call its traceback passes through,
    as a recording names it."""
    names = {id(m): n for n, m in model.named_modules()}
    where = cls = None
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name in ("_call_impl", "forward"):
            owner = frame.f_locals.get("self")
            name = names.get(id(owner))
            if name is not None and isinstance(owner, nn.Module):
                where, cls = name, type(owner).__name__
        tb = tb.tb_next
    return ForwardFailed(error, where, cls)


@dataclass
class RecordedForward:
    gm: fx.GraphModule
    called: set[str]  # qualified names of every module the forward called
    # On a real forward: what each parametrized built-in layer first returned and was first fed
    # (copies), the values ``AnalysedModel.real_outputs`` would measure, so no rule runs the
    # forward again. None on fake tensors.
    values: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None


# Built-in activations whose output has the input's shape, dtype and layout (the same tensor
# when ``inplace``): recorded on meta copies without running them.
_ELEMENTWISE = frozenset({nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.SiLU,
                          nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                          nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid})
_VALUE_BUDGET = 256 * 2**20  # bytes of layer outputs kept from a real recording forward


class _ForwardRecorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, fake: bool, leaves: set[str]) -> None:
        super().__init__()
        self.model = model
        self.fake = fake
        self.leaves = leaves
        self.graph = fx.Graph()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.types = {n: type(m) for n, m in model.named_modules()}
        self.tensors = {id(t): n for n, t in _named_tensors(model)}
        self.attr_nodes: dict[str, fx.Node] = {}
        self.attrs: dict[str, Any] = {}  # get_attr target -> value, for the GraphModule
        self.nodes: dict[int, fx.Node] = {}  # id(tensor) -> the node whose value it holds
        self.pending: dict[int, tuple[fx.Node, tuple[int, ...]]] = {}  # items not yet read
        self.items: dict[tuple[fx.Node, tuple[int, ...]], fx.Node] = {}
        self.stack: list[str] = []  # module paths whose forward is running
        self.suspended = 0  # inside a built-in layer: record nothing
        self.called: set[str] = set()
        # Where each exception started: the innermost module it left (a library may catch
        # one and go on, so only the exception that ends the forward is reported).
        self.raised: dict[int, tuple[BaseException, str, str]] = {}
        self._constants = 0
        self.values: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._value_bytes = 0
        self.kept: set[str] = set()
        self.originals: dict[int, torch.Tensor] = {}  # meta copy id -> the model's tensor
        self.meta = False  # recording on meta copies
        self.impure = False  # ... and a tensor with values took part (see _check_meta)

    # -- values to graph arguments ------------------------------------------------------------
    def _bind(self, tensor: torch.Tensor, node: fx.Node) -> None:
        key = id(tensor)
        self.pending.pop(key, None)
        if key not in self.nodes:
            weakref.finalize(tensor, self._forget, key)
        self.nodes[key] = node

    def _forget(self, key: int) -> None:
        self.nodes.pop(key, None)
        self.pending.pop(key, None)

    def _bind_result(self, value: Any, node: fx.Node, path: tuple[int, ...] = ()) -> None:
        """Bind a result: a tensor to the node, each item of a (nested) tuple to getitems of it,
        made only when the item is read, as fx makes getitem nodes only for used items."""
        if isinstance(value, torch.Tensor) and not path:
            self._bind(value, node)
            return
        if isinstance(value, torch.Tensor):
            key = id(value)
            if key not in self.nodes:
                weakref.finalize(value, self._forget, key)
                self.nodes[key] = None
            self.pending[key] = (node, path)
        elif isinstance(value, (tuple, list)) and len(path) < 3:
            for index, item in enumerate(value):
                self._bind_result(item, node, (*path, index))

    def _item(self, parent: fx.Node, path: tuple[int, ...]) -> fx.Node:
        """The getitem chain ``parent[path[0]][path[1]]...``, each link made once."""
        node = parent
        for depth in range(1, len(path) + 1):
            key = (parent, path[:depth])
            link = self.items.get(key)
            if link is None:
                link = self._node("call_function", operator.getitem, (node, path[depth - 1]),
                                  parent.meta.get("nn_module_stack"))
                self.items[key] = link
            node = link
        return node

    def _node_of(self, tensor: torch.Tensor) -> fx.Node:
        key = id(tensor)
        if key in self.pending:
            parent, path = self.pending.pop(key)
            node = self._item(parent, path)
            record(node, tensor)
            self.nodes[key] = node
            return node
        node = self.nodes.get(key)
        if node is not None:
            return node
        name = self.tensors.get(key)
        if name is None:  # a tensor made outside the recorded calls: a constant
            name = f"_tensor_constant{self._constants}"
            self._constants += 1
            self.tensors[key] = name
        return self._get_attr(name, tensor)

    def _get_attr(self, name: str, value: Any) -> fx.Node:
        node = self.attr_nodes.get(name)
        if node is None:
            node = self._node("get_attr", name)
            self.attr_nodes[name] = node
            # On meta copies, the graph holds the model's own tensor.
            self.attrs[name] = self.originals.get(id(value), value)
            record(node, value)
        return node

    def _arg(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._node_of(value)
        if isinstance(value, torch.Size):
            return tuple(int(s) for s in value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, (tuple, list)):
            items = [self._arg(v) for v in value]
            return type(value)(items) if type(value) in (tuple, list) else tuple(items)
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        if isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool):
            return value
        # Any other object (a generator, a config...): a constant attribute of the graph.
        name = f"_constant{self._constants}"
        self._constants += 1
        return self._get_attr(name, value)

    # -- recording ------------------------------------------------------------------------------
    def _stack_meta(self) -> dict[str, tuple[str, type]] | None:
        if not self.stack:
            return None
        return {path: (path, self.types[path]) for path in self.stack}

    def _node(self, op: str, target: Any, args: tuple[Any, ...] = (), stack: Any = None,
              kwargs: dict[str, Any] | None = None) -> fx.Node:
        node = self.graph.create_node(op, target, args, kwargs or {})
        if stack:
            node.meta["nn_module_stack"] = dict(stack)
        return node

    def _emit(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
              value: Any, stack: Any = None) -> fx.Node:
        node = self.graph.create_node(op, target, self._arg(tuple(args)), self._arg(dict(kwargs)))
        meta = stack if stack is not None else self._stack_meta()
        if meta:
            node.meta["nn_module_stack"] = dict(meta)
        record(node, value)
        return node

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.suspended:
            value = self._call(func, args, kwargs) if self.meta else func(*args, **kwargs)
            if self.meta and not self.impure:
                self._check_meta(args, kwargs, value)
            return value
        if self.fake and func in MEAN_NORM_FUNCTIONS and args and \
                isinstance(args[0], torch.Tensor):
            # The output is shaped like the input; fake tensors would run batch norm's
            # Python decomposition (tens of ops a call) for no information.
            value: Any = torch.empty_like(args[0])
        else:
            value = self._call(func, args, kwargs) if self.meta else func(*args, **kwargs)
        if self.meta and not self.impure:
            self._check_meta(args, kwargs, value)
        call = _classify(func, args, kwargs, value)
        if call is None:
            return value
        op, target, args, kwargs = call
        written = args[0] if target is operator.setitem else None
        node = self._emit(op, target, args, kwargs, written if written is not None else value)
        if written is not None:  # x[i] = v: later reads of x read the write
            self._written(written, node)
            return value
        self._bind_result(value, node)
        if isinstance(value, torch.Tensor) and args and value is args[0]:
            self._written(value, node)  # in place (x.add_(y), relu_): the same, through views
        return value

    @staticmethod
    def _call(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """On meta copies: an op that raises notes the size of its largest tensor input (fake
        tensors hold the values of one-element tensors, so they may run what meta ones cannot)."""
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            sizes = [t.numel() for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
            if not hasattr(exc, "biaslint_input_numel"):
                try:
                    exc.biaslint_input_numel = max(  # type: ignore[attr-defined]  # read on report
                        sizes, default=0)
                except AttributeError:
                    pass
            raise

    def _check_meta(self, args: Any, kwargs: dict[str, Any], value: Any) -> None:
        """On meta copies, every tensor the forward computes with must be a meta tensor: one
        made on the CPU inside the forward (``torch.rand([])``, ``torch.arange(n)``) holds real
        values, where fake tensors would hold none, so the forward could take a path it would
        not take on fake tensors. Then the recording is discarded (``impure``)."""
        for item in (value, *args, *kwargs.values()):
            if isinstance(item, torch.Tensor):
                if item.device.type != "meta":
                    self.impure = True
            elif isinstance(item, (tuple, list)):
                if any(isinstance(inner, torch.Tensor) and inner.device.type != "meta"
                       for inner in item):
                    self.impure = True
            if self.impure:  # stop here: nothing after this point would be kept
                raise _impure()

    def _written(self, tensor: torch.Tensor, node: fx.Node) -> None:
        """``tensor`` was changed in place by ``node``: later reads of it read ``node``, and a
        tensor it is a view of reads a node that depends on the write (an op no rule knows,
        so whatever flowed into the write is followed no further than that)."""
        self._bind(tensor, node)
        base = tensor._base
        if isinstance(base, torch.Tensor) and (id(base) in self.nodes or id(base) in self.pending):
            changed = self._node("call_function", written_through_view,
                                 (self._node_of(base), node), node.meta.get("nn_module_stack"))
            record(changed, base)
            self._bind(base, changed)

    def module_call(self, module: nn.Module, call: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        name = self.names.get(id(module))
        if name is None or self.suspended:
            # Not in the model's tree (an activation object made on the fly): its torch calls
            # are recorded where they run. Inside a built-in layer: nothing is recorded.
            if name is not None:
                self.called.add(name)
            return call(module, *args, **kwargs)
        self.called.add(name)
        if name and (name in self.leaves or is_default_leaf(module)):
            return self._leaf(module, name, call, args, kwargs)
        if name:
            self.stack.append(name)
        try:
            return call(module, *args, **kwargs)
        except BaseException as exc:
            self._raised(exc, name, module)
            raise
        finally:
            if name:
                self.stack.pop()

    def _raised(self, exc: BaseException, name: str, module: nn.Module) -> None:
        if id(exc) not in self.raised:
            self.raised[id(exc)] = (exc, name, type(module).__name__)

    def failure(self, exc: BaseException) -> ForwardFailed:
        entry = self.raised.get(id(exc))
        if entry is None or entry[0] is not exc:
            return ForwardFailed(exc, None, None)
        return ForwardFailed(exc, entry[1], entry[2])

    def _leaf(self, module: nn.Module, name: str, call: Callable[..., Any],
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # A forward hook may change what the layer returns (``out ** 2``): the layer is one
        # node and its hooks run after it while recording, so what they compute is in the graph.
        hooks = dict(module._forward_hooks)
        if hooks:
            saved_hooks = module._forward_hooks
            module._forward_hooks = type(saved_hooks)()
        self.suspended += 1
        try:
            if self.fake and isinstance(module, SAME_SHAPE_NORM_MODULES) and args and \
                    isinstance(args[0], torch.Tensor) and not kwargs and not _hooked(module):
                value = torch.empty_like(args[0])
            elif self.meta and type(module) in _ELEMENTWISE and len(args) == 1 and not kwargs \
                    and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() \
                    and not _hooked(module):
                # An activation's output is its input's shape: meta tensors need no kernel
                # (several are Python decompositions on meta). In place, it is the input.
                value = args[0] if getattr(module, "inplace", False) is True else \
                    torch.empty_like(args[0])
            else:
                value = call(module, *args, **kwargs)
        except BaseException as exc:
            self._raised(exc, name, module)
            raise
        finally:
            self.suspended -= 1
            if hooks:
                module._forward_hooks = saved_hooks
        if not self.fake and not hooks and not module._forward_pre_hooks and \
                name not in self.kept and isinstance(value, torch.Tensor):
            self.kept.add(name)  # the first tensor it returns, as a forward hook keeps it
            self._keep_value(module, name, args, value)
        stack = dict(self._stack_meta() or {})
        stack[name] = (name, type(module))
        node = self._emit("call_module", name, args, kwargs, value, stack)
        self._bind_result(value, node)
        if _global_forward_hooks():
            # Hooks on every module ran inside the call: what they did to the output is unknown
            # here, so the output is marked with an op no rule knows.
            changed = self._node("call_function", changed_by_hooks, (node,), stack)
            record(changed, value)
            self._bind_result(value, changed)
        for key, hook in hooks.items():
            if module._forward_hooks_with_kwargs.get(key, False):
                result = hook(module, args, kwargs, value)
            else:
                result = hook(module, args, value)
            if result is not None:
                value = result
        return value

    def _keep_value(self, module: nn.Module, name: str, args: tuple[Any, ...],
                    value: Any) -> None:
        """Copy what a real forward's layer returned and was fed, as a forward hook on it sees
        them (no hooks of its own, none global), within a memory budget."""
        if _global_forward_hooks() or \
                not any(True for _ in module.parameters(recurse=False)):
            return
        fed = args[0] if args and isinstance(args[0], torch.Tensor) else None
        size = value.numel() * value.element_size() + (
            fed.numel() * fed.element_size() if fed is not None else 0)
        if self._value_bytes + size > _VALUE_BUDGET:
            return
        self._value_bytes += size
        self.values[name] = (value.detach().clone(),
                             fed.detach().clone() if fed is not None else None)

    # -- inputs and outputs ---------------------------------------------------------------------
    def placeholders(self, labels: list[str], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
        taken: set[str] = set()
        for label, value in [*zip(labels, args), *kwargs.items()]:
            for path, tensor in _tensors_in(value, label):
                name = path if path.isidentifier() else "arg"
                while name in taken:
                    name += "_"
                taken.add(name)
                node = self._node("placeholder", name)
                record(node, tensor)
                self._bind(tensor, node)

    def output(self, value: Any) -> None:
        self.graph.output(self._arg(_outputs(value)))


def written_through_view(base: torch.Tensor, write: Any) -> torch.Tensor:
    """Graph marker: ``base`` after an in-place write into a view of it (never run)."""
    return base


def _classify(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
              value: Any) -> tuple[str, Any, tuple[Any, ...], dict[str, Any]] | None:
    """The fx node (op, target, args, kwargs) a torch call becomes, or None for a call whose
    result is not a tensor (sizes, dtypes, ``item()``): those are constants in the graph."""
    name = getattr(func, "__name__", "")
    if name == "__get__" and isinstance(getattr(func, "__self__", None),
                                         type(torch.Tensor.T)):  # a property: x.T, x.data
        if not _has_tensor(value) or not args:
            return None
        return "call_function", builtins.getattr, (args[0], func.__self__.__name__), {}
    owner = getattr(func, "__objclass__", None)
    if owner is None:
        qualname = getattr(func, "__qualname__", "")
        owner = torch.Tensor if qualname.startswith(("Tensor.", "TensorBase.")) else None
    is_method = owner in _TENSOR_CLASSES and args and isinstance(args[0], torch.Tensor)
    if name == "__setitem__" and is_method:
        return "call_function", operator.setitem, tuple(args), dict(kwargs)
    if not _has_tensor(value):
        return None
    if not is_method:
        return "call_function", func, tuple(args), dict(kwargs)
    if name in _REFLECTED and len(args) == 2 and not kwargs:
        return "call_function", _REFLECTED[name], (args[1], args[0]), {}
    if name in _OPERATORS and len(args) == 2 and not kwargs:
        return "call_function", _OPERATORS[name], tuple(args), {}
    if name in _UNARY_OPERATORS and len(args) == 1 and not kwargs:
        return "call_function", _UNARY_OPERATORS[name], tuple(args), {}
    return "call_method", name, tuple(args), dict(kwargs)


def changed_by_hooks(value: Any) -> Any:
    """Graph marker: a layer's output after global forward hooks ran on it (never run)."""
    return value


def _global_forward_hooks() -> bool:
    from torch.nn.modules import module as module_globals

    return any(key not in _own_hooks() for key in module_globals._global_forward_hooks)


def _own_hooks() -> set[int]:
    """The global hooks biaslint's attention measure registers (it may run with a recording)."""
    import sys

    attention = sys.modules.get("biaslint.capture.attention")
    return attention.OWN_HOOKS if attention is not None else set()


def _hooked(module: nn.Module) -> bool:
    """Hooks may change what a layer returns: then it runs, even where a shortcut would do."""
    from torch.nn.modules import module as module_globals

    own = _own_hooks()
    return bool(module._forward_hooks or module._forward_pre_hooks
                or any(key not in own for key in module_globals._global_forward_hooks)
                or any(key not in own for key in module_globals._global_forward_pre_hooks))


def _has_tensor(value: Any, depth: int = 0) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if depth < 3 and isinstance(value, (tuple, list)):
        return any(_has_tensor(v, depth + 1) for v in value)
    return False


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()
    for name, module in model.named_modules():  # plain tensor attributes (not registered)
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_"):
                yield (f"{name}.{attr}" if name else attr), value


def _tensors_in(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
    elif depth > 4:
        return
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors_in(item, f"{path}_{i}", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors_in(item, f"{path}_{key}", depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, (type, nn.Module)):
        for key, item in vars(value).items():
            yield from _tensors_in(item, f"{path}_{key}", depth + 1)


def _outputs(value: Any, depth: int = 0) -> Any:
    """The model's return value as fx can hold it: tensors, numbers, and containers of them;
    dataclass-like outputs become dicts of their fields, anything else None."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return value
    if depth > 6:
        return None
    if isinstance(value, dict):
        return {k: _outputs(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        items = [_outputs(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _outputs(getattr(value, f.name, None), depth + 1) for f in fields(value)}
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, (type, nn.Module)):
        return {k: _outputs(v, depth + 1) for k, v in attrs.items()
                # Not into objects: a KV-cache object a model returns keeps the keys it was fed,
                # and reading those as outputs would make every key bias look live (each
                # cached key only ever meets a softmax again).
                if not k.startswith("_") and carries_tensor(v, objects=False)}
    return None


_ACTIVE: list[_ForwardRecorder] = []


@contextlib.contextmanager
def _module_calls(recorder: _ForwardRecorder) -> Iterator[None]:
    """Route every ``nn.Module.__call__`` through the recorder while it records (as fx's
    tracer patches ``nn.Module.__call__``), so layers stay one node each."""
    original = nn.Module.__call__

    def call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not _ACTIVE:
            return original(self, *args, **kwargs)
        return _ACTIVE[-1].module_call(self, original, args, kwargs)

    _ACTIVE.append(recorder)
    nn.Module.__call__ = call
    try:
        yield
    finally:
        nn.Module.__call__ = original
        _ACTIVE.pop()


def _fake_inputs(value: Any, fake_mode: Any, depth: int = 0) -> Any:
    if isinstance(value, torch.Tensor):
        return fake_mode.from_tensor(value)
    if depth > 4:
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_fake_inputs(v, fake_mode, depth + 1) for v in value)
    if isinstance(value, list):
        return [_fake_inputs(v, fake_mode, depth + 1) for v in value]
    if type(value) is dict:
        return {k: _fake_inputs(v, fake_mode, depth + 1) for k, v in value.items()}
    return value


class NotOnMeta(Exception):
    """The model holds tensors the meta recording does not move (subclassed parameters), or
    (``values_needed``) its forward computes with a tensor that holds values."""

    def __init__(self, what: str, values_needed: bool = False) -> None:
        super().__init__(what)
        self.values_needed = values_needed


def _impure() -> NotOnMeta:
    return NotOnMeta("a tensor with values took part", values_needed=True)


def _meta_copy(tensor: torch.Tensor) -> torch.Tensor:
    copy = torch.empty_like(tensor, device="meta")
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(copy, requires_grad=tensor.requires_grad)
    return copy.requires_grad_(tensor.requires_grad) if tensor.is_floating_point() or \
        tensor.is_complex() else copy


@contextlib.contextmanager
def _swapped_to_meta(model: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """Every parameter, buffer and plain tensor attribute of the model replaced by a meta copy
    (tied ones by one copy), restored on exit. Yields meta copy id -> the original."""
    copies: dict[int, torch.Tensor] = {}  # id(original) -> meta copy
    originals: dict[int, torch.Tensor] = {}
    changes: list[tuple[dict[str, Any], str, Any]] = []

    def meta(value: torch.Tensor) -> torch.Tensor:
        if type(value) not in (torch.Tensor, nn.Parameter):
            raise NotOnMeta(type(value).__name__)
        copy = copies.get(id(value))
        if copy is None:
            copy = copies[id(value)] = _meta_copy(value)
            originals[id(copy)] = value
        return copy

    try:
        for module in model.modules():
            for registry in (module._parameters, module._buffers):
                for key, value in list(registry.items()):
                    if isinstance(value, torch.Tensor) and value.device.type != "meta":
                        changes.append((registry, key, value))
                        registry[key] = meta(value)
            state = module.__dict__
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and not key.startswith("_") and \
                        value.device.type != "meta":
                    changes.append((state, key, value))
                    state[key] = meta(value)
        yield originals
    finally:
        for container, key, value in reversed(changes):
            container[key] = value


def _meta_inputs(value: Any, depth: int = 0) -> Any:
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, nn.Parameter):
            raise NotOnMeta(type(value).__name__)
        return _meta_copy(value) if value.device.type != "meta" else value
    if depth > 4:
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_meta_inputs(v, depth + 1) for v in value)
    if isinstance(value, list):
        return [_meta_inputs(v, depth + 1) for v in value]
    if type(value) is dict:
        return {k: _meta_inputs(v, depth + 1) for k, v in value.items()}
    return value


def _real_devices(graph: fx.Graph, device: torch.device) -> None:
    """A meta recording's ``device=x.device`` arguments name the device the model is on."""
    def real(value: Any) -> Any:
        return device if isinstance(value, torch.device) and value.type == "meta" else value

    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            node.args = fx.node.map_aggregate(node.args, real)
            node.kwargs = fx.node.map_aggregate(node.kwargs, real)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def record_forward(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                   fake_mode: Any | None, leaves: set[str] | None = None,
                   meta: bool = False) -> RecordedForward:
    """Run ``model(*args, **kwargs)`` and record its graph. With ``fake_mode``, the inputs are
    made fake and the forward runs under it; with ``meta``, the model's tensors and the inputs
    are swapped for meta copies while it runs (the cheapest: no fake-tensor dispatch; a forward
    that reads values or mixes in tensors made on the CPU raises, and the caller tries fake
    tensors); with neither, it runs on the real inputs under ``no_grad``. Raises
    ``ForwardFailed`` when the forward raises."""
    if meta:
        device = _model_device(model)
        try:
            args = _meta_inputs(tuple(args))
            kwargs = _meta_inputs(dict(kwargs))
        except NotOnMeta as exc:
            raise ForwardFailed(exc, None, None) from exc
        try:
            with _swapped_to_meta(model) as originals:
                recorded = _record(model, args, kwargs, None, leaves, originals)
        except NotOnMeta as exc:
            raise ForwardFailed(exc, None, None) from exc
        _real_devices(recorded.gm.graph, device)
        return recorded
    return _record(model, args, kwargs, fake_mode, leaves, None)


def _record(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
            fake_mode: Any | None, leaves: set[str] | None,
            originals: dict[int, torch.Tensor] | None) -> RecordedForward:
    real = fake_mode is None and originals is None
    recorder = _ForwardRecorder(model, fake=not real, leaves=leaves or set())
    recorder.originals = originals or {}
    recorder.meta = originals is not None
    if fake_mode is not None:
        with fake_mode:
            args = _fake_inputs(tuple(args), fake_mode)
            kwargs = _fake_inputs(dict(kwargs), fake_mode)
    recorder.placeholders(positional_names(type(model).forward, len(args)), tuple(args),
                          dict(kwargs))
    context = fake_mode if fake_mode is not None else (
        torch.no_grad() if real else contextlib.nullcontext())
    try:
        with context, _module_calls(recorder), recorder:
            result = model(*args, **kwargs)
            recorder.output(result)
    except Exception as exc:  # the user's forward failed: say where
        if recorder.impure:  # it may have failed where fake tensors would not
            raise ForwardFailed(_impure(), None, None) from exc
        raise recorder.failure(exc) from exc
    if recorder.impure:
        raise ForwardFailed(_impure(), None, None)
    root: dict[str, Any] = dict(recorder.attrs)
    for node in recorder.graph.nodes:
        if node.op == "call_module":
            root[str(node.target)] = model.get_submodule(str(node.target))
    gm = _RecordedGraphModule(root, recorder.graph, type(model).__name__)
    return RecordedForward(gm, recorder.called, recorder.values if real else None)


class _RecordedGraphModule(fx.GraphModule):
    """A GraphModule that is read, never run: generating its Python code (which a recorded
    graph's constants may not allow, and which costs time on large graphs) is skipped."""

    def recompile(self) -> Any:
        return None
