"""An fx tracer whose proxies carry the fake value of what they stand for.

Plain ``symbolic_trace`` fails as soon as a forward asks a question about its input: ``x.shape``
unpacked into Python ints, ``if x.dim() == 4``, ``len(features)``, ``for f in features``,
``**kwargs``. Real models do this everywhere (transformers attention reshapes, torchvision
detection heads looping over feature maps). When we know the example inputs, each proxy can carry
a fake tensor computed alongside the trace (as ``torch.fx.experimental.meta_tracer`` does with meta
tensors), and such questions get concrete answers. The graph is then specialized to the example
input's shapes, which is what a linter analysing that example wants anyway. Questions about
tensor *values* (``if mask.any()``) still fail, and the caller falls back to finer tracing.

Each node also gets its value's shape recorded (``capture.shapes``), so a graph traced this way
needs no separate shape propagation. Layers stay ``call_module`` nodes with their qualified
names, as with plain fx: rules read the same graph form whichever tracer produced it.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from biaslint.capture.leaves import is_default_leaf
from biaslint.capture.shapes import record
from biaslint.vocabulary import MEAN_NORM_FUNCTIONS, SAME_SHAPE_NORM_MODULES

UNKNOWN: Any = object()  # the proxy's value could not be computed

# Normalizations return a tensor shaped like their input. Fake tensors run batch norm through
# its Python decomposition (tens of ops, ~70 ms a call measured on resnet18), which made
# normalization most of the capture time; the output shape is all we need from them.
# (``vocabulary.SAME_SHAPE_NORM_MODULES`` and ``MEAN_NORM_FUNCTIONS``.)


class _Unknown(Exception):
    pass


def _value_of(item: Any) -> Any:
    if isinstance(item, ValueProxy):
        if item.value is UNKNOWN:
            raise _Unknown
        return item.value
    if isinstance(item, fx.Proxy):
        raise _Unknown
    return item


class ValueProxy(fx.Proxy):
    """An fx proxy that also holds the (fake) value it stands for, when that is known."""

    def __init__(self, node: fx.Node, tracer: Any = None) -> None:
        super().__init__(node, tracer)
        self.value: Any = UNKNOWN

    def _tensor(self) -> torch.Tensor | None:
        value = self.__dict__.get("value", UNKNOWN)
        return value if isinstance(value, torch.Tensor) else None

    @property
    def shape(self) -> Any:
        tensor = self._tensor()
        if tensor is not None:
            return tensor.shape
        return self.tracer.create_proxy("call_function", builtins.getattr, (self, "shape"), {})

    def size(self, dim: int | None = None) -> Any:
        tensor = self._tensor()
        if tensor is not None:
            return tensor.size() if dim is None else tensor.size(dim)
        args = (self,) if dim is None else (self, dim)
        return self.tracer.create_proxy("call_method", "size", args, {})

    def dim(self) -> Any:
        tensor = self._tensor()
        if tensor is not None:
            return tensor.dim()
        return self.tracer.create_proxy("call_method", "dim", (self,), {})

    def numel(self) -> Any:
        tensor = self._tensor()
        if tensor is not None:
            return tensor.numel()
        return self.tracer.create_proxy("call_method", "numel", (self,), {})

    def __len__(self) -> int:
        value = self.__dict__.get("value", UNKNOWN)
        if value is not UNKNOWN and hasattr(value, "__len__"):
            return len(value)
        raise RuntimeError("'len' is not supported in symbolic tracing by default")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "value":
            return super().__getattr__(name)
        value = self.__dict__.get("value", UNKNOWN)
        if value is not UNKNOWN:
            try:
                attr = getattr(value, name)
            except Exception:  # fall back to a lazy fx attribute
                attr = UNKNOWN
            if attr is not UNKNOWN and not callable(attr):
                if isinstance(attr, (torch.Tensor, tuple, list, dict)):
                    return self.tracer.create_proxy("call_function", builtins.getattr,
                                                    (self, name), {})
                return attr  # dtype, device, a flag, an int: specialize to the example
        return fx.proxy.Attribute(self, name)


def _installed(tracer: fx.Tracer, module: nn.Module) -> bool:
    try:
        tracer.path_of_module(module)
        return True
    except NameError:
        return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


class ConcreteTracer(fx.Tracer):
    """Trace ``root`` with ``inputs`` (args, kwargs) known; ``leaves`` are kept as call_module."""

    def __init__(self, leaves: set[str], fake_mode: Any,
                 outputs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.leaves = leaves
        self.fake_mode = fake_mode
        self.values: dict[str, Any] = {}
        # What each submodule returned in the recorded forward: the value of a leaf whose
        # forward cannot run on fake tensors (data-dependent output shapes).
        self.outputs = outputs or {}
        self._forwards: list[Callable[..., Any]] = []
        self._evaluating = False
        self.first_error: str | None = None  # the first op that could not run on the inputs

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or is_default_leaf(m)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ValueProxy(node, self)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if self._evaluating:  # a leaf running on fake tensors calls its children: just run
            return forward(*args, **kwargs)
        if not _installed(self, m):
            # A stateless module kept outside the tree (transformers' shared activation
            # objects): nothing to name, so trace through its forward instead of failing.
            return forward(*args, **kwargs)
        self._forwards.append(forward)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._forwards.pop()

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:  # the leaf reads its own weight: the tensor, not a get_attr node
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any = None,
                     proxy_factory_fn: Callable[[fx.Node], fx.Proxy] | None = None) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        if isinstance(proxy, ValueProxy):
            proxy.value = self._evaluate(kind, target, args, kwargs)
            if proxy.value is not UNKNOWN:
                record(proxy.node, proxy.value)
        return proxy

    def _evaluate(self, kind: str, target: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        if kind == "placeholder":
            return self.values.get(str(target).lstrip("*"), UNKNOWN)
        if kind == "output":
            return UNKNOWN
        try:
            args = map_aggregate(args, _value_of)
            kwargs = map_aggregate(kwargs, _value_of)
        except _Unknown:
            return UNKNOWN
        # Run the op for real on fake tensors. While ``_evaluating``, a leaf's own submodule
        # calls and attribute reads run plainly instead of being recorded in the graph.
        self._evaluating = True
        try:
            with self.fake_mode:
                if kind == "call_function":
                    if target in MEAN_NORM_FUNCTIONS and isinstance(args[0], torch.Tensor):
                        return torch.empty_like(args[0])
                    return target(*args, **kwargs)
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                if kind == "call_module":
                    module = self.root.get_submodule(target)
                    if isinstance(module, SAME_SHAPE_NORM_MODULES) and args \
                            and isinstance(args[0], torch.Tensor):
                        return torch.empty_like(args[0])
                    if self._forwards:
                        return self._forwards[-1](*args, **kwargs)
                    return module(*args, **kwargs)
                if kind == "get_attr":
                    value: Any = self.root
                    for atom in str(target).split("."):
                        value = getattr(value, atom)
                    return value
        except Exception as exc:  # unknown value: the proxy acts like a plain one
            if kind == "call_module" and str(target) in self.outputs:
                return self.outputs[str(target)]
            if self.first_error is None:
                text = str(exc).splitlines()[0] if str(exc) else ""
                self.first_error = f"{type(exc).__name__}: {text}".strip(": ")
            return UNKNOWN
        finally:
            self._evaluating = False
        return UNKNOWN

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = getattr(obj, "value", UNKNOWN)
        if isinstance(value, (bool, int, float)):
            return bool(value)
        return super().to_bool(obj)

    def iter(self, obj: fx.Proxy) -> Any:
        value = getattr(obj, "value", UNKNOWN)
        if isinstance(value, (tuple, list, torch.Tensor)):
            return iter([obj[i] for i in range(len(value))])
        return super().iter(obj)

    def keys(self, obj: fx.Proxy) -> Any:
        value = getattr(obj, "value", UNKNOWN)
        if isinstance(value, dict):
            return value.keys()
        return super().keys(obj)


def carries_tensor(value: Any, depth: int = 0, objects: bool = True) -> bool:
    """Does this argument carry tensors (then it becomes a graph input) or is it a constant?
    ``objects=False`` looks inside tuples, lists and dicts only, not into objects' attributes."""
    if isinstance(value, torch.Tensor):
        return True
    if depth > 3:
        return False
    if isinstance(value, (tuple, list)):
        return any(carries_tensor(v, depth + 1, objects) for v in value)
    if isinstance(value, dict):
        return any(carries_tensor(v, depth + 1, objects) for v in value.values())
    attrs = getattr(value, "__dict__", None) if objects else None
    if isinstance(attrs, dict) and not isinstance(value, (type, nn.Module)):
        return any(carries_tensor(v, depth + 1, objects) for v in attrs.values())
    return False


class _RootCall(ConcreteTracer):
    """Make the graph's inputs the call's tensor-carrying arguments, and pass every other
    argument as the constant it was (``if mask is not None`` must see the real None).

    fx's own placeholder creation follows the signature of the innermost function under
    decorators, which breaks on wrappers that take ``*args, **kwargs`` (transformers decorates
    most forwards); calling the forward exactly as the model called it avoids that.
    """

    def __init__(self, leaves: set[str], fake_mode: Any, outputs: dict[str, Any] | None,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(leaves, fake_mode, outputs)
        self.call_args = args
        self.call_kwargs = kwargs

    def create_args_for_root(self, root_fn: Callable[..., Any], is_module: bool,
                             concrete_args: Any = None) -> tuple[Callable[..., Any], list[Any]]:
        names: list[str] = []
        taken: set[str] = set()

        def placeholder(label: str, value: Any) -> Any:
            if not carries_tensor(value):
                return value
            name = label if label.isidentifier() else "arg"
            while name in taken:
                name += "_"
            taken.add(name)
            names.append(name)
            self.values[name] = value
            return self.create_proxy("placeholder", name, (), {})

        labels = positional_names(root_fn, len(self.call_args))
        args = [placeholder(label, v) for label, v in zip(labels, self.call_args)]
        kwargs = {k: placeholder(k, v) for k, v in self.call_kwargs.items()}

        def call(root: nn.Module) -> Any:
            return _representable(root_fn(root, *args, **kwargs))

        return call, [self.root]


def _representable(value: Any) -> Any:
    """The output with what fx cannot put in a graph (cache objects...) replaced by None."""
    if isinstance(value, (fx.Proxy, torch.Tensor, *_SCALARS)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _representable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        items = [_representable(v) for v in value]
        return list(items) if isinstance(value, list) else tuple(items)
    return None


_SCALARS = (bool, int, float, str, torch.dtype, torch.device, slice)


def positional_names(fn: Callable[..., Any], count: int) -> list[str]:
    try:
        params = list(inspect.signature(inspect.unwrap(fn)).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (names + [f"input_{i}" for i in range(len(names), count)])[:count]


@contextlib.contextmanager
def quiet_fake_log() -> Iterator[None]:
    """Fake tensors log every op that fails on them at ERROR level; here a failing op only
    means an unknown shape (or a broken forward, reported once as a note), not an error."""
    import logging

    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        fake_log.setLevel(level)


def trace_with_values(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                      leaves: set[str], fake_mode: Any,
                      outputs: dict[str, Any] | None = None) -> fx.GraphModule:
    """Trace ``module`` called as ``module(*args, **kwargs)``; raises when it cannot."""
    import warnings

    tracer = _RootCall(leaves, fake_mode, outputs, tuple(args), dict(kwargs))
    with quiet_fake_log(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tracer.trace(module)
    gm = fx.GraphModule(tracer.root, graph, module.__class__.__name__)
    if tracer.first_error:
        gm.meta["biaslint_value_error"] = tracer.first_error
    return gm
