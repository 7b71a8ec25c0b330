"""Run the user's code (import, build, forward) so it cannot end, hijack or corrupt the run.

* ``sys.exit()`` or ``raise KeyboardInterrupt`` in user code is an error of that target, not
  the end of biaslint: the other targets are still linted and reported. A real Ctrl-C still
  stops the run: ``interrupts()`` notes the SIGINT before Python raises, so the two differ.
* ``os._exit()`` in user code would end the process with no report: while user code runs it is
  replaced by a function that raises, so it is that target's error too. What no Python code can
  intercept (a segfault, a signal, ``exit()`` from C) ends only the worker process with ``-j`` or
  ``--timeout``; in-process it ends the run, so the exit code is never 0.
* What user code prints goes to stderr: stdout carries only biaslint's report, so the json and
  sarif formats stay valid documents.
* ``old_objects_frozen()``: the cycle collector skips what existed before the lint (torch's
  millions of objects), so the lint does not pay for walking them.
* ``preserved_state()``: default dtype, grad mode, RNG states (torch, numpy, random),
  deterministic-algorithms flags and the thread count are restored after each target, and the
  build runs under a fixed seed, so the same model gives the same numbers every run.
* ``attention_fast_path_off()``: torch's inference fast path for ``nn.TransformerEncoder``
  (nested tensors built from the padding mask, one fused kernel per layer) is off while the
  lint runs the model; each layer then runs the ops a training step runs, which the capture
  records and every forward of the lint can run under its hooks.
* ``target_scope()``: what else a build may set for the whole process (the working directory,
  environment variables, ``sys.path``, torch's default device, the warning filters) is put
  back after each target, so nothing of one target reaches the next.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import sys
from typing import Callable, Iterator

import torch

from biaslint.errors import TargetError

# Re-exported: they were defined here before the command line needed them without torch.
from biaslint.process import interrupts as interrupts
from biaslint.process import is_own_process as is_own_process
from biaslint.process import own_process as own_process
from biaslint.process import real_interrupt as real_interrupt

# The seed every build runs under (torch, random, numpy when imported).
SEED = 0

class _HardExit(BaseException):
    """``os._exit(code)`` called by user code (a BaseException, as SystemExit is)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _hard_exit(code: int) -> None:
    raise _HardExit(code)


@contextlib.contextmanager
def _no_hard_exit() -> Iterator[None]:
    real = os._exit
    if real is _hard_exit:  # nested: the outer block restores it
        yield
        return
    os._exit = _hard_exit
    try:
        yield
    finally:
        os._exit = real


@contextlib.contextmanager
def user_code(target: str, what: str) -> Iterator[None]:
    """Run user code for ``target`` (``what``: "importing x", "building the model", ...)."""
    with contextlib.redirect_stdout(sys.stderr), _no_hard_exit():
        try:
            yield
        except _HardExit as exc:
            raise TargetError(f"{target}: {what} called os._exit({exc.code!r}); a build must "
                              "return the model, not exit") from None
        except SystemExit as exc:
            raise TargetError(f"{target}: {what} called sys.exit({exc.code!r}); a build must "
                              "return the model, not exit") from None
        except KeyboardInterrupt:
            if real_interrupt():
                raise
            raise TargetError(f"{target}: {what} raised KeyboardInterrupt") from None


@contextlib.contextmanager
def preserved_state(seed: int | None = SEED) -> Iterator[None]:
    """Save the process-wide torch/numpy/random state, seed everything (unless ``seed`` is
    None), restore on exit."""
    numpy = sys.modules.get("numpy")
    saved = {
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "torch_rng": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": numpy.random.get_state() if numpy is not None else None,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "threads": torch.get_num_threads(),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
    }
    if seed is not None:
        torch.manual_seed(seed)
        random.seed(seed)
        if numpy is not None:
            numpy.random.seed(seed)
    try:
        yield
    finally:
        torch.set_default_dtype(saved["dtype"])
        torch.set_grad_enabled(saved["grad"])
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["random"])
        numpy_now = sys.modules.get("numpy")
        if numpy_now is not None and saved["numpy"] is not None:
            numpy_now.random.set_state(saved["numpy"])
        torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["warn_only"])
        if torch.get_num_threads() != saved["threads"]:
            torch.set_num_threads(saved["threads"])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved["cudnn"]


@contextlib.contextmanager
def attention_fast_path_off() -> Iterator[None]:
    """torch's fast path for ``nn.TransformerEncoder`` and ``nn.MultiheadAttention`` off, then
    as it was. In eval mode without gradients, with a padding mask, the encoder turns its input
    into a nested tensor (padded positions left out, given back as zeros) and each layer runs
    one fused op: what the lint records is then not the layers' ops, and a forward under a
    recording mode fails on the nested tensor. The unfused ops compute the same values at every
    position that is not padding."""
    mha = getattr(torch.backends, "mha", None)
    get = getattr(mha, "get_fastpath_enabled", None)
    put = getattr(mha, "set_fastpath_enabled", None)
    if get is None or put is None:  # an older torch: no switch to turn
        yield
        return
    before = bool(get())
    put(False)
    try:
        yield
    finally:
        put(before)


@contextlib.contextmanager
def compiled_code_eager() -> Iterator[None]:
    """Code under ``torch.compile`` (a compiled submodule, a compiled function) runs as its
    Python code while biaslint builds and lints, then compiles again as before. A compiled
    graph run under biaslint's recording modes or on its fake tensors can crash the process
    (a segmentation fault, seen on a conv block compiled by inductor), compiling costs seconds
    per graph, and the eager code is what biaslint traces; the values are the same.
    Nothing compiled exists before torch._dynamo is imported: then the environment switch that
    dynamo reads at import turns it off for a build that imports it, and the setting is put
    back after."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
        with stance("force_eager") if stance is not None else \
                dynamo.config.patch(disable=True):
            yield
        return
    key = "TORCH_COMPILE_DISABLE"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
        imported = sys.modules.get("torch._dynamo")
        if imported is not None:  # imported by the build: as it would have read the switch
            imported.config.disable = before == "1"


@contextlib.contextmanager
def reentrant_checkpoints_plain() -> Iterator[None]:
    """``torch.utils.checkpoint(..., use_reentrant=True)`` runs its function as a plain call
    while biaslint lints. The reentrant form cannot be differentiated with
    ``torch.autograd.grad``, which the measurements use, so every measured rule went unjudged.
    Its gradients are kept as they are: when no tensor input requires a gradient, the reentrant
    form gives the function's parameters none (torch warns "None of the inputs have
    requires_grad=True"), so the call then runs without gradients, as the reentrant forward
    does. Checkpointing trades memory for recomputation and changes no value."""
    try:
        from torch.utils.checkpoint import CheckpointFunction
    except ImportError:  # a torch without the reentrant form
        yield
        return

    def plain(function: Callable[..., object], preserve_rng_state: bool, *args: object) -> object:
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for a in args):
            return function(*args)
        with torch.no_grad():
            return function(*args)

    had = "apply" in CheckpointFunction.__dict__
    before = CheckpointFunction.__dict__.get("apply")
    CheckpointFunction.apply = staticmethod(plain)
    try:
        yield
    finally:
        if had:
            CheckpointFunction.apply = before
        else:
            del CheckpointFunction.apply


@contextlib.contextmanager
def target_scope() -> Iterator[None]:
    """Put back, after one target, the process-wide settings its build or forward may change
    that ``preserved_state`` does not cover (a build that ``os.chdir``s into its data folder
    would otherwise make every later target's relative path wrong)."""
    import warnings

    cwd = os.getcwd()
    environ = dict(os.environ)
    path = list(sys.path)
    device = torch.get_default_device() if hasattr(torch, "get_default_device") else None
    try:
        with warnings.catch_warnings():  # the filters, as they were
            yield
    finally:
        try:
            if os.getcwd() != cwd:
                os.chdir(cwd)
        except OSError:  # the build removed the folder we were in: go back by path
            os.chdir(cwd)
        if dict(os.environ) != environ:
            for key in set(os.environ) - set(environ):
                del os.environ[key]
            for key, value in environ.items():
                if os.environ.get(key) != value:
                    os.environ[key] = value
        sys.path[:] = path
        if device is not None and torch.get_default_device() != device:
            torch.set_default_device(device)


_FROZEN = {"depth": 0, "after_build": False}


@contextlib.contextmanager
def old_objects_frozen() -> Iterator[Callable[[], None]]:
    """Within the block, the cycle collector leaves alone the objects that existed when it began
    (``gc.freeze``), and those the block's caller adds by calling the function it yields once
    the model is built (torch, the libraries the build imported, the model).

    With torch imported a process holds millions of objects that live as long as it does, and a
    full collection walks all of them: 0.15-0.2 s, and a lint allocates enough to trigger at
    least one. Frozen objects are still freed by reference counting; only cycles among them wait
    until they are unfrozen on leaving the outermost block (in the command line's own process,
    which ends after the report, they stay frozen, and only what exists at the first block is
    frozen: a later target's garbage is never frozen with it)."""
    outer = _FROZEN["depth"] == 0
    if outer and not (is_own_process() and _FROZEN["after_build"]):
        gc.freeze()
    _FROZEN["depth"] += 1
    try:
        yield _freeze_after_build
    finally:
        _FROZEN["depth"] -= 1
        if outer and not is_own_process():
            gc.unfreeze()
            _FROZEN["after_build"] = False


def _freeze_after_build() -> None:
    if not _FROZEN["after_build"]:
        _FROZEN["after_build"] = True
        gc.freeze()
