"""Check every planned fix on a copy before ``--fix`` writes it (``--diff`` shows only those).

The edited files are written to a temporary folder; nothing in the project changes. Then, for
every target of the run, each in its own process (``biaslint.run.parallel``):

1. a *reference* build of the code as it is, which says which project files the target imports
   and keeps its parameters, buffers and training-mode outputs on the example inputs;
2. for each target that imports an edited file, a build of the edited code (each edited file
   is read from its copy in place of the original, by the import system, and no bytecode is
   cached), compared with the reference:

   * every parameter and buffer has the same name and shape, except the biases a ``bias=False``
     fix removes;
   * every parameter and buffer outside the fixed layers is bit-identical. Both builds draw
     each init call of a parameter or buffer from a generator seeded by the tensor's place (the
     order its module was constructed in, its name there, how often it was written) and leave
     the global random stream alone, so a fix that draws more or fewer numbers (``zeros_`` made
     ``kaiming_normal_``, a bias removed) moves no other layer's values;
   * with the fixed parameters set back to the reference's values (removed biases stay
     removed), the outputs in training mode equal the reference's (float64 where the model runs
     in it): the edit changed nothing but those values, and a removed bias was truly cancelled;
   * the edited target, linted as usual, no longer reports the findings the fixes address.

All fixes are checked at once, one edited build per target. When the check fails, the fixes it
names (a finding still reported) are dropped and the rest checked again; a failure it cannot
pin on one fix (a build that raises, a layer that changed) is found by bisection. Only fixes
that passed together are written, and the lint of that last edited build is the report.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from biaslint.findings import Finding, TargetResult
from biaslint.fix.apply import FixPlan, plan_fixes
from biaslint.run.parallel import run_isolated, settings_from, settings_state
from biaslint.settings import Settings, TargetConfig

# The float32 tolerance when a model does not run in float64: a cancelled bias changes the
# outputs by rounding only (~1e-6 relative); a live one by its own size (percent).
_TOLERANCE = {"float64": (1e-7, 1e-9), "float32": (1e-4, 1e-5)}  # (rtol, atol * scale)
_IMPORT_LINE = "import biaslint.init\n"
_ABSENT = object()  # a patched class had no attribute of its own by that name


@dataclass(frozen=True)
class _Fix:
    """One finding's fix as the check sees it: which target it is on, the parameters and
    buffers it may change or remove there, and the finding that must be gone."""

    target: int
    finding: Finding
    changes: tuple[str, ...]  # names (exact) or "prefix.*" (a layer's own tensors)
    removes: tuple[str, ...]


@dataclass
class Verification:
    accepted: list[Finding] = field(default_factory=list)
    rejected: list[tuple[Finding, str]] = field(default_factory=list)
    # The lint of each target's last edited build that passed (the report after --fix); a
    # target that imports no edited file keeps its first result.
    results: dict[int, TargetResult] = field(default_factory=dict)
    affected: set[int] = field(default_factory=set)  # targets importing a written file
    # The real paths of the source files each built target imports: a planned file that is in
    # the end not written (it changed meanwhile) makes the copy's lint wrong for its targets.
    files: dict[int, set[str]] = field(default_factory=dict)
    seconds: float = 0.0
    builds: int = 0
    notes: list[str] = field(default_factory=list)


def verify(plan: FixPlan, results: Sequence[TargetResult], configs: Sequence[TargetConfig],
           settings: Settings, root: str, unsafe: bool, jobs: int = 1,
           timeout: float | None = None) -> Verification:
    start = time.perf_counter()
    fixes = [_Fix(index, f, *_allowed(f)) for index, result in enumerate(results)
             for f in result.findings if any(f is a for a in plan.applied)]
    verification = Verification()
    if not fixes:
        return verification
    folder = tempfile.mkdtemp(prefix="biaslint-fix-")
    checker = _Checker(results, configs, settings, root, unsafe, jobs, timeout, folder)
    try:
        accepted = checker.search(_units(fixes))
        verification.accepted = [f.finding for unit in accepted for f in unit]
        verification.rejected = checker.rejected
        verification.results = checker.results_of(accepted)
        verification.affected = checker.affected(accepted) if accepted else set()
        verification.notes = sorted(checker.notes)
        verification.files = {index: set(reference["files"]) for index, reference in
                              (checker.references or {}).items()}
    except Exception as exc:  # a check that cannot run writes nothing
        verification.accepted = []
        verification.rejected = [(fix.finding, f"the check could not run ({type(exc).__name__}: "
                                               f"{exc})") for fix in fixes]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    verification.builds = checker.builds
    verification.seconds = time.perf_counter() - start
    return verification


def _allowed(finding: Finding) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tensors a finding's fix may change, and those it may remove."""
    prefix = f"{finding.module}." if finding.module else ""
    if finding.code == "BL001":
        return (), (f"{prefix}bias",)
    if not finding.parameter:
        return (f"{prefix}*",), ()
    names = [f"{prefix}{finding.parameter}"]
    # A BL003 chain finding's fix is the one init line that writes every layer of the chain.
    for layer in finding.data.get("chain", ()) if finding.code == "BL003" else ():
        names.append(f"{layer}.{finding.parameter}" if layer else finding.parameter)
    return tuple(names), ()


def _units(fixes: list[_Fix]) -> list[list[_Fix]]:
    """Fixes that share an edit (one loop line fixing two layers, one helper call fixing two
    targets) are written together or not at all. The ``import biaslint.init`` line every
    inserted call needs joins nothing."""
    parent = list(range(len(fixes)))

    def root_of(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, int, int, str], int] = {}
    for index, fix in enumerate(fixes):
        assert fix.finding.fix is not None
        for e in fix.finding.fix.edits:
            if e.content == _IMPORT_LINE and e.start == e.end:
                continue
            key = (os.path.realpath(e.file), e.start, e.end, e.content)
            if key in owner:
                parent[root_of(index)] = root_of(owner[key])
            else:
                owner[key] = index
    groups: dict[int, list[_Fix]] = {}
    for index, fix in enumerate(fixes):
        groups.setdefault(root_of(index), []).append(fix)
    return list(groups.values())


class _Checker:
    def __init__(self, results: Sequence[TargetResult], configs: Sequence[TargetConfig],
                 settings: Settings, root: str, unsafe: bool, jobs: int,
                 timeout: float | None, folder: str) -> None:
        self.results = results
        self.configs = configs
        self.state = settings_state(settings)
        self.root = root
        self.unsafe = unsafe
        self.jobs = max(1, jobs)
        self.timeout = timeout
        self.folder = folder
        self.rejected: list[tuple[Finding, str]] = []
        self.passed: dict[frozenset[int], dict[int, TargetResult]] = {}
        self.builds = 0
        self.rounds = 0
        self.references: dict[int, dict[str, Any]] | None = None
        # Targets whose reference build failed: whether they import an edited file is unknown,
        # so no fix can be shown to leave them alone.
        self.unbuilt: dict[int, str] = {}
        self.notes: set[str] = set()  # what a check could not compare, said once

    # -- the search ------------------------------------------------------------------------------

    def search(self, units: list[list[_Fix]]) -> list[list[_Fix]]:
        """The units that pass the check together: all of them if they do; else the rest once
        the units a failure names are dropped; else, bisected, the passing units of each half
        when those also pass together (otherwise the first half's)."""
        if not units:
            return []
        blamed, problem, per_target = self.check(units)
        if not blamed and problem is None:
            self.passed[_key(units)] = per_target
            return units
        for unit, why in blamed.values():
            self._reject(unit, why)
        rest = [u for u in units if id(u) not in blamed]
        if problem is None or not rest:
            return self.search(rest)
        if len(rest) == 1:
            self._reject(rest[0], problem)
            return []
        half = len(rest) // 2
        first, second = self.search(rest[:half]), self.search(rest[half:])
        if not first or not second:
            return first or second
        both = first + second
        blamed, problem, per_target = self.check(both)
        if not blamed and problem is None:
            self.passed[_key(both)] = per_target
            return both
        for unit in second:
            self._reject(unit, "it passes alone but not together with another fix: run --fix "
                               "again once that one is written")
        return first

    def _reject(self, unit: list[_Fix], why: str) -> None:
        self.rejected.extend((fix.finding, why) for fix in unit)

    def results_of(self, units: list[list[_Fix]]) -> dict[int, TargetResult]:
        return dict(self.passed.get(_key(units), {})) if units else {}

    # -- one check -------------------------------------------------------------------------------

    def check(self, units: list[list[_Fix]]
              ) -> tuple[dict[int, tuple[list[_Fix], str]], str | None, dict[int, TargetResult]]:
        """Build every target that imports an edited file with these units' edits applied.
        Returns the units a failure names (with why), a failure named on no unit, and each
        checked target's lint."""
        findings = [fix.finding for unit in units for fix in unit]
        plan = plan_fixes(self.results, self.unsafe, self.root, keep=findings)
        self.rounds += 1
        copies = self._copies(plan)
        references = self._references()
        jobs: list[tuple[int, dict[str, Any]]] = []
        for index, config in enumerate(self.configs):
            reference = references.get(index)
            if reference is None or not (set(reference["files"]) & set(copies)):
                continue
            mine = [fix for unit in units for fix in unit if fix.target == index]
            jobs.append((index, {
                "config": config, "settings": self.state, "reference": reference["path"],
                "edited": copies,
                "changes": sorted({name for fix in mine for name in fix.changes}),
                "removes": sorted({name for fix in mine for name in fix.removes}),
                "gone": [(fix.finding.code, fix.finding.module, fix.finding.parameter,
                          _unit_index(units, fix)) for fix in mine],
            }))
        blamed: dict[int, tuple[list[_Fix], str]] = {}
        problems = [f"{self.configs[index].target} could not be built for the check: {error}"
                    for index, error in self.unbuilt.items()]
        per_target: dict[int, TargetResult] = {}
        outcomes = self._run(_edited_job, [job for _, job in jobs])
        for (index, _), outcome in zip(jobs, outcomes):
            name = self.configs[index].target
            if outcome.error is not None:
                problems.append(f"{name}: the edited build could not be checked: "
                                f"{outcome.error}")
                continue
            value = outcome.value
            for unit_index, text in value["problems"]:
                if unit_index is None:
                    problems.append(f"{name}: {text}" if len(self.configs) > 1 else text)
                else:
                    unit = units[unit_index]
                    blamed.setdefault(id(unit), (unit, text))
            per_target[index] = value["result"]
            self.notes.update(f"{name}: {note}" if len(self.configs) > 1 else note
                              for note in value.get("notes", ()))
        # A fix whose file no target imports cannot be checked: it is not written.
        unseen = [unit for unit in units if not any(
            set(references.get(fix.target, {}).get("files", ())) & set(copies)
            for fix in unit)]
        for unit in unseen:
            blamed.setdefault(id(unit), (unit, "no target of this run imports the edited file "
                                               "(from this folder), so the edit could not be "
                                               "checked"))
        return blamed, ("; ".join(problems) if problems else None), per_target

    def _copies(self, plan: FixPlan) -> dict[str, str]:
        """The edited texts, written to a fresh folder: real path of the original -> copy."""
        folder = os.path.join(self.folder, f"round-{self.rounds}")
        copies: dict[str, str] = {}
        for path, (_, after) in plan.texts.items():
            real = os.path.realpath(path)
            relative = os.path.relpath(real, os.path.realpath(self.root))
            if relative.startswith(".."):
                relative = real.lstrip(os.sep)
            copy = os.path.join(folder, relative)
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            with open(copy, "w", encoding="utf-8", newline="") as handle:
                handle.write(after)
            copies[real] = copy
        return copies

    def _references(self) -> dict[int, dict[str, Any]]:
        """Each target built once as it is (the same for every round): the files it imports
        and where its tensors and outputs are kept."""
        if self.references is not None:
            return self.references
        indices = [i for i, r in enumerate(self.results) if r.error is None]
        payloads = [{"config": self.configs[i], "settings": self.state,
                     "out": os.path.join(self.folder, f"reference-{i}.pt")} for i in indices]
        self.references = {}
        for index, outcome in zip(indices, self._run(_reference_job, payloads)):
            if outcome.error is None:
                self.references[index] = outcome.value
            else:
                self.unbuilt[index] = outcome.error
        return self.references

    def affected(self, units: list[list[_Fix]]) -> set[int]:
        """The targets that import a file these units edit."""
        findings = [fix.finding for unit in units for fix in unit]
        plan = plan_fixes(self.results, self.unsafe, self.root, keep=findings)
        edited = {os.path.realpath(path) for path in plan.texts}
        return {index for index, reference in (self.references or {}).items()
                if edited & set(reference["files"])}

    def _run(self, fn: Callable[[Any], Any], payloads: list[Any]) -> list[Any]:
        if not payloads:
            return []
        self.builds += len(payloads)
        cores = os.cpu_count() or 1
        threads = max(1, cores // min(self.jobs, len(payloads)))
        return run_isolated(fn, payloads, jobs=self.jobs, timeout=self.timeout, threads=threads)


def _key(units: list[list[_Fix]]) -> frozenset[int]:
    return frozenset(id(fix.finding) for unit in units for fix in unit)


def _unit_index(units: list[list[_Fix]], fix: _Fix) -> int:
    return next(i for i, unit in enumerate(units) if any(f is fix for f in unit))


# -- in the worker processes ----------------------------------------------------------------------

def _reference_job(payload: dict[str, Any]) -> dict[str, Any]:
    before = set(sys.modules)
    config = payload["config"]
    model, inputs, error = _keyed_build(config)
    if error is not None:
        raise RuntimeError(error)
    saved = _snapshot(model, inputs)
    import torch

    torch.save(saved, payload["out"])
    return {"path": payload["out"], "files": sorted(_project_files(before, config))}


def _edited_job(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    config = payload["config"]
    edited = {real: _read(copy) for real, copy in payload["edited"].items()}
    _serve_edited(edited)
    problems: list[tuple[int | None, str]] = []
    model, inputs, error = _keyed_build(config)
    if error is not None:
        return {"problems": [(None, f"the edited model does not build: {error}")],
                "result": TargetResult(target=config.target, error=error)}
    reference = torch.load(payload["reference"], weights_only=False)
    problems.extend((None, text) for text in _compare(model, inputs, reference,
                                                       payload["changes"], payload["removes"]))
    notes = []
    if _on_meta(model):
        notes.append("on the meta device, names and shapes only (no values to compare)")
    elif reference["outputs"] is None:
        notes.append("outputs not compared (" + (reference["error"] or "no example inputs")
                     + ")")
    from biaslint.engine import lint
    from biaslint.errors import BiaslintError

    try:
        result = lint(config, settings_from(payload["settings"]))
    except BiaslintError as exc:
        return {"problems": problems + [(None, f"the edited model does not lint: {exc}")],
                "result": TargetResult(target=config.target, error=str(exc))}
    still = {(f.code, f.module, f.parameter): f for f in result.findings}
    for code, module, parameter, unit in payload["gone"]:
        if (code, module, parameter) in still:
            problems.append((unit, "the linted copy still reports it"))
    return {"problems": problems, "result": result, "notes": notes}


def _read(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def _project_files(before: set[str], config: TargetConfig) -> set[str]:
    """The real paths of the source files the build imported (the target's own file too)."""
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) if name not in before else None
        if isinstance(path, str) and path.endswith(".py"):
            files.add(os.path.realpath(path))
    from biaslint.target import parse_target

    spec = parse_target(config.target)
    if spec.is_path:
        files.add(os.path.realpath(spec.module))
    return files


def _serve_edited(edited: dict[str, str]) -> None:
    """From now on, the import system reads each edited file's text in place of the file (its
    name, and so every line biaslint reports, stays the original's), never from or into the
    bytecode cache; ``linecache`` (which the fixes and reports read) holds the edited text."""
    import importlib.machinery
    import importlib.util
    import linecache

    sys.dont_write_bytecode = True  # a .pyc of the edited text must never reach the project
    loader = importlib.machinery.SourceFileLoader
    original = loader.get_data

    def get_data(self: Any, path: str) -> bytes:
        real = os.path.realpath(path)
        if real in edited:
            return edited[real].encode("utf-8")
        if path.endswith(".pyc"):
            try:
                source = importlib.util.source_from_cache(path)
            except (ValueError, NotImplementedError):
                source = None
            if source is not None and os.path.realpath(source) in edited:
                raise OSError("no cached bytecode for an edited file")
        return original(self, path)

    loader.get_data = get_data  # type: ignore[method-assign]  # patched for this run only
    for real, text in edited.items():
        lines = text.splitlines(keepends=True)
        for name in {real, os.path.abspath(real), os.path.relpath(real)}:
            linecache.cache[name] = (len(text), None, lines, name)
    for name in list(sys.modules):
        module = sys.modules[name]
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.realpath(path) in edited:
            del sys.modules[name]  # imported before (never, in a fresh worker): import it anew


def _keyed_build(config: TargetConfig) -> tuple[Any, Any, str | None]:
    """Build the target as the lint does (its fixed seed), with every init call of a
    parameter or buffer drawn from its own generator (``KeyedDraws``)."""
    from biaslint.errors import BiaslintError
    from biaslint.load.build import load_target
    from biaslint.load.guard import preserved_state

    with preserved_state(), KeyedDraws():
        try:
            loaded = load_target(config.target, config.input_shapes,
                                 device=getattr(config, "device", None))
        except BiaslintError as exc:
            return None, None, str(exc)
    return loaded.model, loaded.inputs, None


class KeyedDraws:
    """While active: each ``nn.init`` function and in-place ``Tensor`` initializer that writes
    a registered parameter or buffer draws from a generator seeded by (the construction order
    of its module, its name there, how many times it was written before), and the global random
    stream is restored after it. Two builds of code that differs only in a fix then give every
    other tensor the same values, however many numbers the fix draws."""

    def __init__(self) -> None:
        self.order: dict[int, int] = {}  # id(module) -> construction order
        self.names: dict[int, tuple[int, str, int]] = {}  # storage -> (order, name, bytes)
        self.writes: dict[tuple[int, str], int] = {}
        self.depth = 0
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> "KeyedDraws":
        import torch
        import torch.nn as nn

        from biaslint.load.sites import INIT_FUNCTIONS, TENSOR_METHODS

        keyed = self
        module_init = nn.Module.__init__
        register_parameter = nn.Module.register_parameter
        register_buffer = nn.Module.register_buffer

        def init(module: Any, *args: Any, **kwargs: Any) -> None:
            keyed.order.setdefault(id(module), len(keyed.order))
            module_init(module, *args, **kwargs)

        def parameter(module: Any, name: str, param: Any) -> None:
            register_parameter(module, name, param)
            keyed.name(module, name, param)

        def buffer(module: Any, name: str, tensor: Any, persistent: bool = True) -> None:
            register_buffer(module, name, tensor, persistent)
            keyed.name(module, name, tensor)

        self._patch(nn.Module, "__init__", init)
        self._patch(nn.Module, "register_parameter", parameter)
        self._patch(nn.Module, "register_buffer", buffer)
        for name in INIT_FUNCTIONS:
            if hasattr(nn.init, name):
                self._patch(nn.init, name, self._wrap(getattr(nn.init, name)))
        for name in TENSOR_METHODS:
            if hasattr(torch.Tensor, name) and name not in ("set_", "copy_"):
                self._patch(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, value in reversed(self.saved):
            if value is _ABSENT:
                delattr(owner, name)  # the class had it from a base: let it have that again
            else:
                setattr(owner, name, value)
        self.saved.clear()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self.saved.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, value)

    def name(self, module: Any, name: str, tensor: Any) -> None:
        order = self.order.get(id(module))
        key = _storage(tensor)
        if order is not None and key is not None:
            self.names[key[0]] = (order, name, key[1])

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        keyed = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if keyed.depth or not args:
                return fn(*args, **kwargs)
            key = _storage(args[0])
            place = keyed.names.get(key[0]) if key is not None else None
            if place is None or key is None or place[2] != key[1]:
                return fn(*args, **kwargs)  # not a registered tensor: the global stream
            count = keyed.writes.get(place[:2], 0)
            keyed.writes[place[:2]] = count + 1
            state = torch.get_rng_state()
            torch.manual_seed(zlib.crc32(f"{place[0]}/{place[1]}/{count}".encode()))
            keyed.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                keyed.depth -= 1
                torch.set_rng_state(state)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]  # as functools.wraps sets
        return wrapper


def _storage(tensor: Any) -> tuple[int, int] | None:
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
        return None
    try:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
    except Exception:  # sparse or otherwise storage-less tensors
        return None
    return (pointer, storage.nbytes()) if pointer else None


def _snapshot(model: Any, inputs: Any) -> dict[str, Any]:
    """The reference: every parameter and buffer, and the training-mode outputs (float64 when
    the model runs in it)."""
    state = {name: tensor.detach().clone() for name, tensor in _tensors(model).items()}
    outputs, precision, error = None, None, None
    if inputs is not None and not _on_meta(model):
        for precision in ("float64", "float32"):
            try:
                outputs = _outputs(model, inputs, precision)
                error = None
                break
            except Exception as exc:  # the user's forward
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            precision = None
    return {"state": state, "outputs": outputs, "precision": precision, "error": error}


def _tensors(model: Any) -> dict[str, Any]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return named


def _on_meta(model: Any) -> bool:
    return any(t.device.type == "meta" for t in _tensors(model).values())


def _outputs(model: Any, inputs: Any, precision: str) -> list[Any]:
    import copy

    import torch

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                precision == "float64":
            return value.double()
        if isinstance(value, (list, tuple)):
            return type(value)(cast(v) for v in value)
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    # float64 on a copy (the model is compared and linted afterwards); a model that cannot be
    # copied runs as it is, in float32 (its running statistics are read before).
    if precision == "float64":
        work = copy.deepcopy(model).double()
    else:
        work = model
    work.train()
    torch.manual_seed(0)
    with torch.no_grad():
        out = work(*cast(tuple(inputs.args)), **cast(dict(inputs.kwargs)))
    return [t.detach().clone() for t in _flat(out) if t.is_floating_point()]


def _flat(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict) or hasattr(value, "items") and callable(value.items):
        return [t for v in value.values() for t in _flat(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return []


def _matches(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith(".*") or pattern == "*":
            prefix = pattern[:-1]
            if name.startswith(prefix) and "." not in name[len(prefix):]:
                return True
        elif name == pattern:
            return True
    return False


def _compare(model: Any, inputs: Any, reference: dict[str, Any], changes: Sequence[str],
             removes: Sequence[str]) -> list[str]:
    """What changed outside the fixed layers, each said once; empty when nothing did."""
    import torch

    problems: list[str] = []
    mine = {name: tensor.detach() for name, tensor in _tensors(model).items()}
    theirs = reference["state"]
    gone = [n for n in theirs if n not in mine and not _matches(n, removes)]
    added = [n for n in mine if n not in theirs]
    if gone:
        problems.append(f"it also removes {_names(gone)}")
    if added:
        problems.append(f"it adds {_names(added)}")
    common = [n for n in theirs if n in mine]
    reshaped = [n for n in common if tuple(mine[n].shape) != tuple(theirs[n].shape)]
    if reshaped:
        problems.append(f"it changes the shape of {_names(reshaped)}")
    meta = _on_meta(model)
    moved = [n for n in common if n not in reshaped and not meta and not _matches(n, changes)
             and not _same(mine[n], theirs[n])]
    if moved:
        problems.append(f"it changes the values of {_names(moved)}, which no fixed finding names")
    if problems or meta or reference["outputs"] is None:
        if reference["outputs"] is None and removes and not meta and not problems:
            why = reference["error"] or "the target has no example inputs"
            problems.append(f"the outputs could not be compared ({why}), so a removed bias "
                            "could not be shown to cancel")
        return problems
    # Back to the reference's values where the fixes changed them: what is left of a change
    # in the outputs is a change in what the model computes.
    with torch.no_grad():
        model.load_state_dict({n: theirs[n] for n in common}, strict=False)
    try:
        outputs = _outputs(model, inputs, reference["precision"])
    except Exception as exc:  # the user's forward
        return [f"the edited model's forward raises {type(exc).__name__}: {exc}"]
    expected = reference["outputs"]
    if len(outputs) != len(expected) or any(a.shape != b.shape for a, b in zip(outputs, expected)):
        return ["the outputs change shape"]
    rtol, atol = _TOLERANCE[reference["precision"]]
    for got, want in zip(outputs, expected):
        scale = float(want.abs().max()) if want.numel() else 0.0
        error = (got - want).abs()
        if bool((error > atol * max(scale, 1.0) + rtol * want.abs()).any()):
            relative = float(error.max()) / max(scale, 1e-12)
            problems.append(f"the outputs move by {relative:.2g} of their size in training "
                            "mode (with the fixed parameters at their old values)")
            break
    return problems


def _same(a: Any, b: Any) -> bool:
    import torch

    if a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or torch.allclose(a, b, rtol=0.0, atol=0.0,
                                                        equal_nan=True))
    return bool(torch.equal(a, b))


def _names(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


__all__ = ["KeyedDraws", "Verification", "verify"]
