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

Where the trainer has a logger, the text report and the HTML page (with the signal-propagation
plot) are written into its ``trainer.log_dir`` as ``biaslint.txt`` and ``biaslint.html``
(``save_report=False`` turns that off), and a one-line summary goes to Lightning's log.

Uses ``lightning.pytorch`` when installed, else ``pytorch_lightning``: the callback must come
from the package your ``Trainer`` does. In a distributed run only global rank zero lints; with
``on_findings="fail"`` every rank stops.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised where only pytorch_lightning is installed
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]  # the older package name
    except ImportError:
        raise ImportError('biaslint.integrations.lightning needs Lightning: pip install '
                          '"biaslint[lightning]"') from None

from biaslint.integrations.common import (
    BiaslintFailure,
    BiaslintWarning,
    LintingCallback,
)

__all__ = ["BiaslintCallback", "BiaslintFailure", "BiaslintWarning"]

LOGGER = logging.getLogger(f"{pl.__name__}.callbacks.biaslint")


class BiaslintCallback(LintingCallback, pl.Callback):
    """Lint the ``LightningModule`` on the first training batch of each fit.

    ``on_findings``: "fail" (default) raises ``BiaslintFailure`` and so stops ``fit``; "warn"
    issues a ``BiaslintWarning`` and training goes on; "log" writes the report to Lightning's
    logger (``lightning.pytorch.callbacks.biaslint``, level WARNING) and training goes on.
    Either way the ``Report`` is kept on ``callback.report``. "Findings" means what makes
    ``report.ok`` false: a finding at or above ``fail_on``, something the selected rules could
    not judge (unless ``allow_incomplete=True``), or an error (the forward failed on the
    inputs).

    ``save_report`` (default True): where the trainer has a logger, write ``biaslint.txt``
    and ``biaslint.html`` (with the signal-propagation plot) into its ``trainer.log_dir``;
    their paths are on ``callback.report_files``. A one-line summary goes to the log.

    ``inputs``: a callable ``batch -> example inputs`` (see the module's docstring for the
    default). Other settings go to ``biaslint.check``: ``select``, ``ignore``, ``fail_on``,
    ``allow_incomplete``, ``class_priors``, ``head``, ``target_mean``, ``severity``,
    ``rule_options``, ``per_module_ignores``, ``name``; ``signal`` (the plot's curves, a
    forward and a backward) is measured only when the report is written, unless given.
    """

    def __init__(self, on_findings: str = "fail",
                 inputs: Callable[[Any], Any] | None = None, save_report: bool = True,
                 **settings: Any) -> None:
        super().__init__(on_findings, inputs, save_report, **settings)
        self._pending = True
        self._trainer: Any = None
        self._folder: str | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if not self._pending:
            return
        self._pending = False
        self._trainer = trainer  # its optimizers, for the lint
        # log_dir broadcasts from rank zero, so every rank asks for it, here
        self._folder = trainer.log_dir if trainer.loggers and self.save_report else None
        broadcast = trainer.strategy.broadcast if trainer.world_size > 1 else None
        self.lint_on_rank_zero(trainer.is_global_zero, lambda: self.lint(pl_module, batch),
                               type(pl_module).__name__, self._folder, LOGGER, broadcast)

    def lint(self, pl_module: Any, batch: Any) -> Any:
        """The report on ``pl_module`` with the example inputs taken from ``batch``, and the
        trainer's optimizers (BL011 reads their parameter groups)."""
        optimizers = list(getattr(self._trainer, "optimizers", None) or [])
        return self.lint_model(pl_module, lambda: self.example_inputs(pl_module, batch),
                               optimizers, self._folder)

