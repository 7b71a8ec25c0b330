"""Stage 1, load: turn a target string into a built model, example inputs and build records."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import inspect
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from biaslint.errors import TargetError, memory_error, out_of_memory
from biaslint.findings import BuildFrame, ConfigScale, InitCall, Location, LostInit, Unwritten
from biaslint.laws import Piece
from biaslint.load.encoding import display_path, refuse_undecodable
from biaslint.load.guard import user_code
from biaslint.load.lasting import lost_inits
from biaslint.load.lazy import lazy_modules, materialize
from biaslint.load.sites import BuildRecord, last_writers, record_build
from biaslint.load.unwritten import unwritten_masks, unwritten_parameters
from biaslint.target import IntShape, TargetSpec, parse_target


@dataclass
class ExampleInputs:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedTarget:
    """The built model and what the build revealed: where each layer and init was written."""

    name: str
    model: nn.Module
    inputs: ExampleInputs | None
    module_sites: dict[str, Location]  # qualified module name -> construction site
    param_inits: dict[str, InitCall]  # qualified parameter name -> last init call
    notes: list[str] = field(default_factory=list)
    # qualified module name -> the user calls that built it, innermost (the site) first; a fix
    # reads it to tell a line that builds this layer alone from a helper shared with others
    module_chains: dict[str, tuple[BuildFrame, ...]] = field(default_factory=dict)
    # Meta-device models: each parameter's init laws (``biaslint.laws``), by qualified name;
    # None for a model with real values (they are measured instead).
    param_laws: dict[str, list[Piece] | None] | None = None
    buffer_laws: dict[str, list[Piece] | None] | None = None
    # The optimizers the target gave for the model ((model, inputs, optimizer) from the build,
    # ``check(..., optimizer=)``, the training callbacks): what BL011 reads.
    optimizers: tuple[torch.optim.Optimizer, ...] = ()
    # Parameters with entries the build allocated without values (torch.empty) and never
    # wrote, by qualified name; None when the build was not recorded (a model built elsewhere).
    param_unwritten: dict[str, Unwritten] | None = None
    # Per parameter, which of its entries hold memory no call wrote (``param_unwritten``'s
    # entries, as masks): the lint reads a fixed draw there (``unwritten.drawn_in``).
    unwritten_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # Modules whose never-written parameters biaslint itself reset on the meta device
    # (``reset_parameters()``, as a deferred init does): whether a real build writes them is
    # not known.
    reset_on_meta: tuple[str, ...] = ()
    # Init calls whose values no parameter keeps (``load.lasting``); None when the build was
    # not recorded.
    lost_inits: tuple[LostInit, ...] | None = None
    # The differential build (``load.differential``, BL017): which drawn parameters follow the
    # config's init scale. None when it was not asked for (``load_target(compare_config=)``).
    config_scale: ConfigScale | None = None
    # The same, built when first asked (what the findings' causes read: whether a drawn
    # weight follows a config value); None where the target cannot be built again.
    compare_later: Callable[[], ConfigScale] | None = field(default=None, compare=False,
                                                             repr=False)

    def config_compared(self) -> ConfigScale | None:
        """The differential build: the one the lint asked for, else built now (once)."""
        if self.config_scale is None and self.compare_later is not None:
            self.config_scale = self.compare_later()
            self.compare_later = None
        return self.config_scale


def load_target(text: str, input_shapes: tuple[tuple[int, ...], ...] = (),
                device: str | None = None, compare_config: bool = False,
                resolved: Any = None) -> LoadedTarget:
    """Build the target and record its build. ``compare_config``: also build it again on meta
    with its config's init scale changed (``load.differential``), for BL017. ``resolved``: the
    object the target names, already imported (a build run again uses the same classes)."""
    spec = parse_target(text)
    meta = device == "meta"
    notes: list[str] = []
    with record_build(laws=meta) as record, _device(meta):
        with user_code(spec.text, f"importing {spec.module}"):
            obj = _resolve(spec) if resolved is None else resolved
        with user_code(spec.text, "building the model"), _library_init_on_meta(meta) as ran:
            model, inputs, optimizers = _build(spec, obj)
        inputs, input_shapes = _lazy_made(spec, model, inputs, input_shapes,
                                          meta or _on_meta(model), notes)
    if ran:
        notes.append(f"ran transformers' initialize_weights() inside {', '.join(sorted(ran))} "
                     "construction, where it runs on the CPU (transformers skips it on the meta "
                     "device), to record the init the model starts from")
    if not meta and isinstance(model, nn.Module) and _on_meta(model):
        if isinstance(obj, nn.Module):
            notes.append("the model is on the meta device and is a module instance, so its init "
                         "calls were not recorded: its values are unknown; point at the "
                         "function that builds it and pass --device meta")
        else:  # built on meta by the user's own code: build again, recording the init laws
            with record_build(laws=True) as record:
                with user_code(spec.text, "building the model"):
                    model, inputs, optimizers = _build(spec, obj)
                # the first build said it already
                inputs, input_shapes = _lazy_made(spec, model, inputs, input_shapes, True, [])
            meta = True
    model = unwrap_compiled(model, notes)
    refuse_scripted(spec.text, model)
    if not any(True for _ in model.parameters()):
        raise TargetError(f"{spec.text} builds a {type(model).__name__} with no parameters: "
                          "nothing to lint; point at the function that builds the model")
    if getattr(type(model).forward, "__name__", "") == "_forward_unimplemented":
        raise TargetError(f"{spec.text} builds a {type(model).__name__} without a forward: "
                          "define forward(), or point at the module that has one")
    if input_shapes and inputs is None:
        inputs = ExampleInputs(args=tuple(example_tensor(model, s) for s in input_shapes))
    elif input_shapes:
        # The shapes are for targets that give no inputs: one --input-shape for a run of
        # several targets must not replace the token ids another target returns.
        notes.append("the input shape given was not used: the target returns its own example "
                     "inputs, and those are what its forward takes")
    laws = buffer_laws = None
    reset: list[str] = []
    if meta and record.laws is not None:
        with record_build(laws=True, book=record.laws, empties=record.empties) as deferred:
            with user_code(spec.text, "running the model's deferred init"):
                notes.extend(_run_deferred_init(model, record, reset))
        record.init_events.extend(deferred.init_events)
        laws = {name: record.laws.pieces(param)
                for name, param in model.named_parameters(remove_duplicate=False)}
        buffer_laws = {name: record.laws.pieces(buffer)
                       for name, buffer in model.named_buffers(remove_duplicate=False)}
        if inputs is not None:
            inputs = to_meta(inputs)
        notes.insert(0, "built on the meta device: values are read from the recorded init "
                        "calls (their laws), not measured")
    scale = compared(spec.text, obj, input_shapes, model, laws, record) \
        if compare_config else None

    def later() -> ConfigScale:
        return compared(spec.text, obj, input_shapes, model, laws, record)

    return LoadedTarget(
        name=spec.text,
        model=model,
        inputs=inputs,
        module_sites=module_sites_of(model, record),
        param_inits=param_inits_of(model, record),
        notes=notes,
        module_chains=module_chains_of(model, record),
        param_laws=laws,
        buffer_laws=buffer_laws,
        optimizers=optimizers,
        param_unwritten=unwritten_parameters(model, record.empties),
        unwritten_masks=unwritten_masks(model, record.empties),
        reset_on_meta=tuple(reset),
        lost_inits=tuple(lost_inits(model, record)),
        config_scale=scale,
        compare_later=None if compare_config else later,
    )


def _lazy_made(spec: TargetSpec, model: Any, inputs: ExampleInputs | None,
               input_shapes: tuple[tuple[int, ...], ...], meta: bool, notes: list[str]
               ) -> tuple[ExampleInputs | None, tuple[tuple[int, ...], ...]]:
    """Lazy modules given their parameters by a first forward (``load.lazy``), inside the
    build's recording; the inputs and the input shapes still to use (none once they made the
    inputs for that forward)."""
    if not isinstance(model, nn.Module) or not lazy_modules(model):
        return inputs, input_shapes
    if inputs is None and input_shapes:
        inputs = ExampleInputs(args=tuple(example_tensor(model, s) for s in input_shapes))
        input_shapes = ()  # used here, and said to be used
    with user_code(spec.text, "running the first forward of the lazy modules"):
        given = inputs if inputs is None or not meta else to_meta(inputs)
        notes.append(materialize(spec.text, model, *(
            (None, None) if given is None else (given.args, given.kwargs))))
    return inputs, input_shapes


def compared(text: str, obj: Any, input_shapes: tuple[tuple[int, ...], ...], model: nn.Module,
             laws: dict[str, list[Piece] | None] | None, record: BuildRecord) -> ConfigScale:
    """The differential build of the target (``load.differential``): ``obj`` is what the target
    names, ``laws`` the build's own when it was on meta. Nothing of it reaches the lint (RNG,
    default device, ...)."""
    from biaslint.load.differential import config_scale
    from biaslint.load.guard import preserved_state, target_scope

    def on_meta() -> dict[str, list[Piece] | None]:
        with target_scope(), preserved_state():
            built = load_target(text, input_shapes, device="meta", resolved=obj)
        return built.param_laws or {}

    found = config_scale(model, laws, on_meta, last_writers(record, model))
    return found if found is not None else ConfigScale(attributes=(), factor=0.0)


def unwrap_compiled(model: Any, notes: list[str]) -> Any:
    """The module ``torch.compile`` wraps (``OptimizedModule._orig_mod``): its parameters are
    the original module's, and its forward is the Python code biaslint traces."""
    original = getattr(model, "_orig_mod", None)
    if isinstance(model, nn.Module) and isinstance(original, nn.Module) \
            and type(model).__name__ == "OptimizedModule":
        notes.append("the target returns a torch.compile'd module: linted the module it "
                     "compiles (the same parameters, the Python forward)")
        return original
    return model


def refuse_scripted(name: str, model: nn.Module) -> None:
    """A TorchScript module (torch.jit.script/trace) in the model is compiled code without its
    Python forward: nothing in it can be traced, hooked or measured. One line saying which."""
    for child, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule) and not child:
            raise TargetError(
                f"{name} gave a TorchScript module ({type(model).__name__}): biaslint traces "
                "the Python nn.Module, so return the model before torch.jit.script/trace")
        if isinstance(module, torch.jit.ScriptModule):
            raise TargetError(
                f"{name}: submodule {child} is a TorchScript module (torch.jit.script/trace), "
                "whose layers biaslint cannot trace, hook or measure: build the model with the "
                "Python module there for the lint (script it after)")


def _on_meta(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


class _device:
    """``torch.device("meta")`` around the import and build when asked for; else nothing."""

    def __init__(self, meta: bool) -> None:
        self._context = torch.device("meta") if meta else None

    def __enter__(self) -> None:
        if self._context is not None:
            self._context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)


def to_meta(inputs: ExampleInputs) -> ExampleInputs:
    """Example inputs on the meta device (integer ids stay integer: only the device moves)."""
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to("meta")
        if isinstance(value, (list, tuple)):
            return type(value)(move(v) for v in value)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return ExampleInputs(args=tuple(move(a) for a in inputs.args),
                         kwargs={k: move(v) for k, v in inputs.kwargs.items()})


@contextmanager
def _library_init_on_meta(meta: bool) -> Iterator[set[str]]:
    """While a model builds on meta: transformers' ``init_weights`` skips ``initialize_weights``
    under the meta device (it expects weights to be loaded). Run it there anyway, in the same
    place of ``post_init`` as on the CPU, so code that edits the weights after construction
    still comes after it. transformers may be imported only by the build itself: then it is
    patched as its ``modeling_utils`` is imported. Yields the class names it ran for."""
    ran: set[str] = set()
    if not meta:
        yield ran
        return
    patched: list[tuple[Any, Any]] = []

    def patch(utils: Any) -> None:
        base = getattr(utils, "PreTrainedModel", None)
        original = getattr(base, "init_weights", None)
        if base is None or not callable(original) or patched:
            return

        def init_weights(self: Any) -> None:
            self.initialize_weights()
            ran.add(type(self).__name__)
            self._biaslint_initialized = True
            self.tie_weights(recompute_mapping=False)

        patched.append((base, original))
        base.init_weights = init_weights

    name = "transformers.modeling_utils"
    finder = _OnImport(name, patch)
    if name in sys.modules:
        patch(sys.modules[name])
    else:
        sys.meta_path.insert(0, finder)
    try:
        yield ran
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for base, original in patched:
            base.init_weights = original


class _OnImport(importlib.abc.MetaPathFinder):
    """Calls ``patch(module)`` right after the module ``name`` is first imported."""

    def __init__(self, name: str, patch: Any) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module
        patch = self.patch

        def run(module: Any) -> None:
            exec_module(module)
            patch(module)

        loader.exec_module = run  # type: ignore[method-assign]  # wrapped for this import
        return spec


def _run_deferred_init(model: nn.Module, record: BuildRecord, reset: list[str]) -> list[str]:
    """Run the init a library skips on the meta device, under recording, and say which.

    transformers skips ``initialize_weights()`` when the model is built on meta (it expects
    weights to be loaded): what the model would start from when trained from scratch is what
    that call draws. Then any parameter still never written (``torch.empty`` under
    ``skip_init``, ``to_empty``) whose module has ``reset_parameters()`` gets it, as the
    ``device="meta"`` + ``to_empty`` + ``reset_parameters`` recipe does; their names are
    added to ``reset``."""
    assert record.laws is not None
    notes: list[str] = []
    hf = [m for m in model.modules() if callable(getattr(m, "initialize_weights", None))
          and callable(getattr(m, "_init_weights", None))
          and any(c.__name__ == "PreTrainedModel" for c in type(m).__mro__)]
    if hf and not getattr(hf[0], "_biaslint_initialized", False):
        top = hf[0]
        with torch.no_grad():
            top.initialize_weights()
            tie = getattr(top, "tie_weights", None)
            if callable(tie):
                try:
                    tie()
                except TypeError:
                    pass
        notes.append(f"ran {type(top).__name__}.initialize_weights() (transformers skips it on "
                     "the meta device) to record the init the model starts from")
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own or not callable(getattr(module, "reset_parameters", None)):
            continue
        if any(_never_written(record, p) for _, p in own):
            with torch.no_grad():
                module.reset_parameters()
            reset.append(name)
    if reset:
        shown = ", ".join(n or type(model).__name__ for n in reset[:5]) + (
            f" and {len(reset) - 5} more" if len(reset) > 5 else "")
        notes.append(f"ran reset_parameters() of {len(reset)} module(s) whose parameters were "
                     f"never initialized on the meta device: {shown}")
    return notes


def _never_written(record: BuildRecord, param: torch.Tensor) -> bool:
    assert record.laws is not None
    pieces = record.laws.pieces(param)
    return pieces is not None and any(p.law.kind == "uninitialized" for p in pieces)


def example_tensor(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A float tensor of that shape, or integer ids for an ``IntShape`` (``2,16:int``)."""
    if not isinstance(shape, IntShape):
        return torch.randn(*shape)
    high = shape.high
    if high is None:
        vocab = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
        high = min(vocab) if vocab else 2
    return torch.randint(0, high, tuple(shape))


def _resolve(spec: TargetSpec) -> Any:
    before = set(sys.modules)
    module = _import(spec)
    refuse_undecodable(spec.text, module, before)  # a file Python refuses is not linted
    obj: Any = module
    for part in spec.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = getattr(module, "__file__", spec.module)
            raise TargetError(
                f"{spec.text}: {module.__name__} has no attribute {spec.attr!r} "
                f"({display_path(where)}); check the name after ':'"
            ) from None
    return obj


def _import(spec: TargetSpec) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if spec.is_path:
        path = os.path.abspath(spec.module)
        if not os.path.isfile(path):
            raise TargetError(f"{spec.text}: no file {spec.module!r}; give a path to a .py file")
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = "_biaslint_target_" + os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise TargetError(f"{spec.text}: cannot import {spec.module!r} as Python source")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's import error, reported in one line
            sys.modules.pop(name, None)
            raise _failed(spec, f"importing {spec.module}", exc) from exc
        return module
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (spec.module == missing or spec.module.startswith(missing + ".")):
            raise TargetError(
                f"{spec.text}: no module named {missing!r}; run biaslint from your project's "
                "root (it is put on sys.path) or install the package"
            ) from None
        raise _failed(spec, f"importing {spec.module}", exc) from exc
    except Exception as exc:  # the user's import error, reported in one line
        raise _failed(spec, f"importing {spec.module}", exc) from exc


# What a build gives: the model, its example inputs and its optimizers (each may be absent).
Built = tuple[nn.Module, "ExampleInputs | None", tuple[torch.optim.Optimizer, ...]]


def _build(spec: TargetSpec, obj: Any) -> Built:
    if isinstance(obj, nn.Module):
        return obj, None, ()
    if isinstance(obj, tuple):
        return _unpack(spec, obj)
    if inspect.isclass(obj) and issubclass(obj, nn.Module) or callable(obj):
        try:
            built = obj()
        except Exception as exc:  # the user's build failed, reported in one line
            raise _failed(spec, "building the model", exc) from exc
        if isinstance(built, nn.Module):
            return built, None, ()
        if isinstance(built, tuple):
            return _unpack(spec, built)
        raise TargetError(
            f"{spec.text} returned {type(built).__name__}, not an nn.Module: return the model, "
            "or a (model, example_inputs) tuple"
        )
    raise TargetError(
        f"{spec.text} is a {type(obj).__name__}: point at a function or class that builds an "
        "nn.Module, or at a module instance"
    )


def _unpack(spec: TargetSpec, given: tuple[Any, ...]) -> Built:
    if len(given) not in (2, 3) or not isinstance(given[0], nn.Module):
        raise TargetError(
            f"{spec.text} gave a tuple that is not (model, example_inputs): return the model, "
            "a pair of the model and its example inputs, or (model, example_inputs, optimizer)"
        )
    optimizers = optimizers_of(given[2], spec.text) if len(given) == 3 else ()
    raw = given[1]
    if raw is None and optimizers:
        return given[0], None, optimizers
    if isinstance(raw, torch.Tensor):
        return given[0], ExampleInputs(args=(raw,)), optimizers
    if isinstance(raw, dict) and all(isinstance(k, str) for k in raw):
        return given[0], ExampleInputs(kwargs=dict(raw)), optimizers
    if isinstance(raw, (tuple, list)):
        return given[0], ExampleInputs(args=tuple(raw)), optimizers
    raise TargetError(
        f"{spec.text}: example inputs must be a tensor, a tuple of tensors or a dict of keyword "
        f"tensors, not {type(raw).__name__}"
    )


def optimizers_of(value: Any, where: str) -> tuple[torch.optim.Optimizer, ...]:
    """An optimizer, or a list of them, as a tuple; a ``TargetError`` naming ``where`` else."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(o, torch.optim.Optimizer) for o in items):
        raise TargetError(f"{where}: the optimizer given is a {type(value).__name__}, not a "
                          "torch.optim optimizer (or a list of them)")
    return tuple(items)


def _failed(spec: TargetSpec, doing: str, exc: BaseException) -> TargetError:
    """The one-line error for the user's code raising ``exc`` while ``doing``."""
    if out_of_memory(exc):  # a model too big for this machine: --device meta lints it
        return memory_error(spec.text, doing, exc)
    return _not_installed(spec, exc) or \
        TargetError(f"{spec.text}: {doing} raised {_describe(exc)}")


# Import names whose package on PyPI is named otherwise (the advice must install the right one).
_DISTRIBUTIONS = {"cv2": "opencv-python", "PIL": "pillow", "sklearn": "scikit-learn",
                  "skimage": "scikit-image", "yaml": "pyyaml", "bs4": "beautifulsoup4",
                  "attr": "attrs", "Crypto": "pycryptodome", "google": "protobuf",
                  "dateutil": "python-dateutil", "jwt": "pyjwt", "magic": "python-magic"}


def _not_installed(spec: TargetSpec, exc: BaseException) -> TargetError | None:
    """A package the model imports that this environment lacks: in pre-commit's isolated
    environment, one missing from the hook's ``additional_dependencies`` (numpy is a common
    one). Named, with the line that imports it and what adds it; None for any other error."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if found:  # the package is there, a module of it is not: not a missing install
        return None
    where = _user_frame(exc)
    package = _DISTRIBUTIONS.get(top, top)
    if os.environ.get("PRE_COMMIT") == "1":  # pre-commit sets it for every hook it runs
        todo = (f"with pre-commit, add it to the hook's additional_dependencies: [{package}] "
                f"(a language: system hook: pip install {package})")
    else:
        todo = f"install it (pip install {package})"
    return TargetError(f"{spec.text}: your model imports {top!r}"
                       f"{f' (at {where})' if where else ''}, which is not installed in this "
                       f"environment; {todo}")


def _user_frame(exc: BaseException) -> str | None:
    """``file.py:12``: the innermost frame of the traceback outside biaslint, torch and the
    import machinery (biaslint wraps the import function while it records a target's sources,
    so its frames sit between the user's import line and importlib's)."""
    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not path.startswith(own) and not path.startswith(torch_dir) \
                and "importlib" not in frame.filename:
            return f"{display_path(frame.filename)}:{frame.lineno}"
    return None


def _describe(exc: BaseException) -> str:
    """``ValueError: message (at file.py:12)`` with the innermost frame outside torch."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    where = _user_frame(exc)
    if where is not None:
        return f"{text} (at {where})"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} (at {display_path(exc.filename)}:{exc.lineno})"
    return text


def module_sites_of(model: nn.Module, record: BuildRecord) -> dict[str, Location]:
    sites: dict[str, Location] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        site = record.site_of(module)
        if site is not None:
            sites.setdefault(name, site)
    return sites


def module_chains_of(model: nn.Module, record: BuildRecord) -> dict[str, tuple[BuildFrame, ...]]:
    chains: dict[str, tuple[BuildFrame, ...]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name not in chains:
            chain = record.chain_of(module)
            if chain:
                chains[name] = chain
    return chains


def param_inits_of(model: nn.Module, record: BuildRecord) -> dict[str, InitCall]:
    inits: dict[str, InitCall] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        call = record.init_of(param)
        if call is not None:
            inits[name] = call
    return inits
