"""Lint a ``LightningModule`` when training starts: ``BiaslintCallback``.

    from biaslint.integrations.lightning import BiaslintCallback

    trainer = Trainer(callbacks=[BiaslintCallback()])      # stops fit on a finding
    trainer = Trainer(callbacks=[BiaslintCallback(on_findings="warn", ignore=["BL009"])])

On the first training batch of each ``fit`` the callback runs ``biaslint.check(pl_module,
inputs)``, before the first optimizer step, so what it judges is the model as initialized (or
as loaded). The lint restores what it touches: the module's train/eval flags and buffers, the
RNG states, grad mode; it changes no parameter, so training goes on exactly as without it.

The example inputs, in this order: ``inputs(batch)`` if ``inputs`` is given (a callable; it may
return a tensor, a tuple of positional inputs or a dict of keyword inputs);
``pl_module.example_input_array`` when set (moved to the module's device); else the batch
itself: a tensor is the one input, of a tuple or list batch the first element is (``(x, y)``),
and a dict batch is passed as keyword inputs (``model(**batch)``). For any other batch, give
``inputs``.

Uses ``lightning.pytorch`` when installed, else ``pytorch_lightning``: the callback must come
from the package your ``Trainer`` does. In a distributed run only global rank zero lints; with
``on_findings="fail"`` every rank stops.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised where only pytorch_lightning is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]  # the older package name
    except ImportError:
        raise ImportError('biaslint.integrations.lightning needs Lightning: pip install '
                          '"biaslint[lightning]"') from None

from biaslint.errors import ConfigError

__all__ = ["BiaslintCallback", "BiaslintFailure", "BiaslintWarning"]

ON_FINDINGS = ("fail", "warn")


class BiaslintFailure(RuntimeError):
    """Raised by ``BiaslintCallback(on_findings="fail")``: the message is the text report;
    ``report`` is the ``biaslint.Report`` (None on the ranks that did not lint)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class BiaslintWarning(UserWarning):
    """Issued by ``BiaslintCallback(on_findings="warn")``: the message is the text report."""


class BiaslintCallback(pl.Callback):
    """Lint the ``LightningModule`` on the first training batch of each fit.

    ``on_findings``: "fail" (default) raises ``BiaslintFailure`` and so stops ``fit``; "warn"
    issues a ``BiaslintWarning`` and training goes on. Either way the ``Report`` is kept on
    ``callback.report``. "Findings" means what makes ``report.ok`` false: a finding at or above
    ``fail_on``, something the selected rules could not judge (unless
    ``allow_incomplete=True``), or an error (the forward failed on the inputs).

    ``inputs``: a callable ``batch -> example inputs`` (see the module's docstring for the
    default). Other settings go to ``biaslint.check``: ``select``, ``ignore``, ``fail_on``,
    ``allow_incomplete``, ``class_priors``, ``head``, ``target_mean``, ``severity``,
    ``rule_options``, ``per_module_ignores``, ``name``; ``signal`` is False by default (the
    curves cost a forward and a backward and decide nothing).
    """

    def __init__(self, on_findings: str = "fail",
                 inputs: Callable[[Any], Any] | None = None, **settings: Any) -> None:
        from biaslint.run.schema import python_keys

        known = (*python_keys("check"), "name")
        if on_findings not in ON_FINDINGS:
            raise ConfigError(f"BiaslintCallback: on_findings={on_findings!r}; give "
                              f"{' or '.join(repr(o) for o in ON_FINDINGS)}")
        if inputs is not None and not callable(inputs):
            raise ConfigError("BiaslintCallback: inputs must be a callable batch -> example "
                              f"inputs, not {type(inputs).__name__}")
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"BiaslintCallback: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
        self.on_findings = on_findings
        self.inputs = inputs
        self.settings = {"signal": False, **settings}
        self.report: Any = None
        self._pending = True
        self._trainer: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if not self._pending:
            return
        self._pending = False
        failed = False
        text = ""
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self._trainer = trainer  # its optimizers, for the lint
                self.report = self.lint(pl_module, batch)
            except Exception as exc:  # raised below, once every rank stops
                error, failed = exc, True
            if error is None and not self.report.ok:
                text = str(self.report).rstrip("\n")
                if self.on_findings == "warn":
                    warnings.warn(BiaslintWarning(f"biaslint: {_name(pl_module)} is not clean "
                                                  f"(training goes on):\n{text}"), stacklevel=2)
                else:
                    failed = True
        if trainer.world_size > 1:
            failed = trainer.strategy.broadcast(failed, src=0)
        if error is not None:
            raise error
        if failed:
            if not trainer.is_global_zero:
                text = "biaslint found problems in the model: see the report of global rank 0"
            raise BiaslintFailure(
                f"biaslint: {_name(pl_module)} is not clean, training stopped "
                f"(BiaslintCallback(on_findings=\"warn\") trains anyway):\n{text}", self.report)

    def lint(self, pl_module: Any, batch: Any) -> Any:
        """The report on ``pl_module`` with the example inputs taken from ``batch``, and the
        trainer's optimizers (BL011 reads their parameter groups)."""
        import torch

        from biaslint.api import check

        inputs = self.example_inputs(pl_module, batch)
        cuda = torch.cuda.get_rng_state_all() \
            if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        try:
            optimizers = list(getattr(self._trainer, "optimizers", None) or [])
            return check(pl_module, inputs, optimizer=optimizers or None, **self.settings)
        finally:
            if cuda is not None:  # check() restores the CPU generators; training may be on GPU
                torch.cuda.set_rng_state_all(cuda)

    def example_inputs(self, pl_module: Any, batch: Any) -> Any:
        import torch

        if self.inputs is not None:
            return self.inputs(batch)
        example = getattr(pl_module, "example_input_array", None)
        if example is not None:
            return _to_device(example, pl_module.device)
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0]
        if isinstance(batch, dict) and batch and all(isinstance(k, str) for k in batch):
            return dict(batch)
        raise ConfigError(
            f"BiaslintCallback: cannot tell {_name(pl_module)}'s inputs from a batch of type "
            f"{type(batch).__name__}: give inputs=lambda batch: ... (a tensor, a tuple of "
            "positional inputs or a dict of keyword inputs), or set example_input_array")


def _name(pl_module: Any) -> str:
    return type(pl_module).__name__


def _to_device(value: Any, device: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
