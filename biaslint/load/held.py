"""Load a model the user already holds (``biaslint.check(model)``): stage 1's output without
a build.

``check`` receives the model built; this makes the ``LoadedTarget`` the command line's build
would have made: example inputs in the engine's form, and where each layer and init was
written, from a ``biaslint.recording()`` block when there was one, else from the model's class
source (the ``self.x = ...`` line that made the layer), else the user's line that called
biaslint."""

from __future__ import annotations

import collections
import inspect
import os
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from biaslint.errors import ConfigError
from biaslint.findings import Location

if TYPE_CHECKING:
    from types import FrameType

    import torch.nn as nn

    from biaslint.load.build import ExampleInputs, LoadedTarget
    from biaslint.load.sites import BuildRecord

# The builds recorded by ``biaslint.recording()``, newest last. Each holds the modules it saw
# (that is how a module is told from a later one at the same address), so only the last few
# are kept.
_RECORDS: collections.deque[BuildRecord] = collections.deque(maxlen=16)
# The package's folder: the frames of biaslint's own code, skipped to find the user's line.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def remember(record: BuildRecord) -> None:
    """Keep a recorded build, so a later ``check`` of a model it made finds its lines."""
    _RECORDS.append(record)


def _inputs(model: nn.Module, example_inputs: Any,
            shapes: Sequence[tuple[int, ...]]) -> ExampleInputs | None:
    import torch

    from biaslint.load.build import ExampleInputs, example_tensor

    if example_inputs is None:
        example_inputs = getattr(model, "example_input_array", None)
    if example_inputs is None:
        if shapes:
            return ExampleInputs(args=tuple(example_tensor(model, s) for s in shapes))
        return None
    if isinstance(example_inputs, ExampleInputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        return ExampleInputs(args=(example_inputs,))
    if isinstance(example_inputs, Mapping) and all(isinstance(k, str) for k in example_inputs):
        return ExampleInputs(kwargs=dict(example_inputs))
    if isinstance(example_inputs, (tuple, list)):
        return ExampleInputs(args=tuple(example_inputs))
    raise ConfigError(f"biaslint.check: example_inputs must be a tensor, a tuple of inputs or a "
                      f"dict of keyword inputs, not {type(example_inputs).__name__}")


def load_held(model: nn.Module, example_inputs: Any, name: str,
              input_shapes: Sequence[tuple[int, ...]] = (),
              record: BuildRecord | None = None, optimizer: Any = None) -> LoadedTarget:
    """The ``LoadedTarget`` for ``model``; ``record``: the build recorded around it, else the
    last recorded build that made it (if any); ``optimizer``: the model's optimizer (or a
    list of them), if given."""
    from biaslint.errors import TargetError
    from biaslint.load.build import optimizers_of

    try:
        optimizers = optimizers_of(optimizer, "biaslint.check optimizer=") \
            if optimizer is not None else ()
    except TargetError as exc:  # an argument of check(): the caller's usage
        raise ConfigError(str(exc)) from None
    from biaslint.load.lazy import lazy_modules

    lazy = lazy_modules(model)
    if lazy:  # the caller's model: its first forward is theirs to run, not the lint's
        layer, module = lazy[0]
        raise ConfigError(f"biaslint.check: {type(module).__name__} '{layer}' (and every lazy "
                          "module) makes its parameters on the model's first forward: run one "
                          "forward on an example batch before check(), or lint the function "
                          "that builds the model")
    from biaslint.load.build import (
        LoadedTarget,
        module_chains_of,
        module_sites_of,
        param_inits_of,
        refuse_scripted,
        to_meta,
    )

    refuse_scripted(name, model)
    record = record if record is not None else _record_of(model)
    notes: list[str] = []
    unwritten = None
    masks = {}
    lost = None
    sites: dict[str, Location] = {}
    inits = {}
    chains = {}
    if record is not None:
        sites = module_sites_of(model, record)
        inits = param_inits_of(model, record)
        chains = module_chains_of(model, record)
        from biaslint.load.unwritten import unwritten_masks, unwritten_parameters

        unwritten = unwritten_parameters(model, record.empties)
        masks = unwritten_masks(model, record.empties)
        from biaslint.load.lasting import lost_inits

        lost = tuple(lost_inits(model, record))
    missing = [name for name, _ in model.named_modules() if name not in sites]
    if missing:
        fallback = _class_sites(model)
        # A layer with no class of the user's above it (a bare nn.Sequential): its finding
        # points at the line that called biaslint, the user's line nearest to the model.
        caller = caller_site() if record is None else None
        for name in missing:
            if name in fallback:
                sites[name] = fallback[name]
            elif caller is not None:
                sites[name] = caller
        if record is None:
            notes.append("construction was not recorded: locations point at the model's class "
                         "source (or, for layers of torch classes only, at the line that called "
                         "biaslint); build it inside `with biaslint.recording():` for the lines "
                         "that built each layer and the init calls")
    inputs = _inputs(model, example_inputs, input_shapes)
    from biaslint.load.differential import given_built

    if any(p.device.type == "meta" for p in model.parameters()):
        notes.append("the model is on the meta device and was built outside biaslint, so its "
                     "init calls were not recorded: its values are unknown; lint the function "
                     "that builds it with --device meta")
        if inputs is not None:
            inputs = to_meta(inputs)
    return LoadedTarget(name=name, model=model, inputs=inputs, module_sites=sites,
                        param_inits=inits, notes=notes, module_chains=chains,
                        optimizers=optimizers, param_unwritten=unwritten,
                        unwritten_masks=masks, lost_inits=lost,
                        config_scale=given_built(model))


def default_name(model: nn.Module) -> str:
    """The target's name when none is given: its class, and the test checking it (pytest's
    node id, from ``PYTEST_CURRENT_TEST``, "path::test (call)") or else where it was defined
    (the class's line when the user wrote it, else the line that called biaslint): a report
    in a CI log says which model it is about."""
    name = type(model).__name__
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if test:
        return f"{name} ({test})"
    site = _class_definition(type(model)) or caller_site()
    return f"{name} ({site.file}:{site.line})" if site is not None else name


def _class_definition(cls: type) -> Location | None:
    """Where the user's class ``cls`` is defined; None for a library's or an unknown source."""
    from biaslint.load.files import is_project_file
    from biaslint.load.sites import display_path

    try:
        file = inspect.getsourcefile(cls)
        _, line = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    if not file or not is_project_file(file):
        return None
    return Location(file=display_path(file), line=line, col=1, end_line=line,
                    function=cls.__name__)


def caller_site() -> Location | None:
    """The line of the user's code that called into biaslint (``check``, ``assert_clean``):
    the innermost frame outside the biaslint package, when it is a project file (not a
    library's, such as a training loop calling the Lightning callback)."""
    import sys

    from biaslint.load.files import is_project_file
    from biaslint.load.sites import display_path

    frame: FrameType | None = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
    if frame is None or not is_project_file(frame.f_code.co_filename):
        return None
    import linecache

    file, line = frame.f_code.co_filename, frame.f_lineno
    text = linecache.getline(file, line)
    return Location(file=display_path(file), line=line, col=len(text) - len(text.lstrip()) + 1,
                    end_line=line, function=frame.f_code.co_name)


def _record_of(model: nn.Module) -> BuildRecord | None:
    for record in reversed(_RECORDS):
        if record.site_of(model) is not None or any(
                record.site_of(m) is not None for m in model.modules()):
            return record
    return None


def _class_sites(model: nn.Module) -> dict[str, Location]:
    """Per module, a line of source that made it: the ``self.<attr> =`` line in the nearest
    enclosing class written outside torch, else that class's ``class`` line."""
    from biaslint.load.sites import display_path, is_library_frame

    sources: dict[type, tuple[str, int, list[str]] | None] = {}

    def source(cls: type) -> tuple[str, int, list[str]] | None:
        if cls not in sources:
            try:
                file = inspect.getsourcefile(cls)
                lines, start = inspect.getsourcelines(cls)
            except (OSError, TypeError):
                sources[cls] = None
            else:
                sources[cls] = None if not file or is_library_frame(file) else \
                    (file, start, lines)
        return sources[cls]

    def class_line(cls: type) -> Location | None:
        for klass in cls.__mro__:
            found = source(klass)
            if found is not None:
                file, start, _ = found
                return Location(file=display_path(file), line=start, col=1, end_line=start,
                                function=klass.__name__)
        return None

    def attribute_line(cls: type, attr: str) -> Location | None:
        pattern = re.compile(rf"\bself\.{re.escape(attr)}\s*(:[^=]*)?=(?!=)")
        for klass in cls.__mro__:
            found = source(klass)
            if found is None:
                continue
            file, start, lines = found
            for offset, text in enumerate(lines):
                match = pattern.search(text)
                if match:
                    return Location(file=display_path(file), line=start + offset,
                                    col=match.start() + 1, end_line=start + offset,
                                    function=klass.__name__)
        return None

    modules = dict(model.named_modules())
    sites: dict[str, Location | None] = {}
    for name, module in modules.items():
        own = class_line(type(module)) if source(type(module)) is not None else None
        if own is not None:
            sites[name] = own
            continue
        # A torch (or library) class: the line in the nearest user-written ancestor's source.
        parts = name.split(".") if name else []
        for depth in range(len(parts) - 1, -1, -1):
            parent = modules.get(".".join(parts[:depth]))
            if parent is None or all(source(k) is None for k in type(parent).__mro__):
                continue
            sites[name] = attribute_line(type(parent), parts[depth]) or \
                class_line(type(parent))
            break
    return {k: v for k, v in sites.items() if v is not None}
