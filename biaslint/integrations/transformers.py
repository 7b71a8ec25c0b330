"""Lint the model when a Hugging Face ``Trainer`` starts training: ``BiaslintCallback``.

    from biaslint.integrations.transformers import BiaslintCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[BiaslintCallback()])
    trainer = Trainer(..., callbacks=[BiaslintCallback(on_findings="warn", ignore=["BL009"])])

At the start of each ``train()`` (``on_train_begin``) the callback runs ``biaslint.check(model,
inputs, optimizer=...)``: after the model is loaded (a checkpoint resumed from included),
wrapped and given its optimizer, before any batch is drawn and before the first optimizer step.
``on_step_begin`` would be as early for the optimizer, but by then the Trainer has already
drawn the step's batches, and it does not hand them to callbacks; ``on_train_begin`` also
stops a failing run before the dataloader starts its workers.

The example inputs, in this order: ``inputs(batch)`` if ``inputs`` is given (a callable; it may
return a tensor, a tuple of positional inputs or a dict of keyword inputs; ``batch`` is the
batch below, or None where there is none); ``model.example_input_array`` when set; else a
batch made as the Trainer makes one, without touching its sampler: the first
``per_device_train_batch_size`` items of the training dataset (``dataset[0]``, ``dataset[1]``,
...) through a copy of the dataloader's collate function (the data collator), on the model's
device, passed as keyword inputs (``model(**batch)``, labels included, as training calls it).
A dataset that cannot be indexed (an ``IterableDataset``), or a collate function that cannot be
copied, gives no batch: then the model's ``dummy_inputs`` (every ``PreTrainedModel`` has
them), else give ``inputs``.

Training goes on exactly as without the callback: the lint restores the model's train/eval flags,
buffers and gradients, and puts back every RNG it or the batch may draw from (Python's, numpy's,
torch's CPU and CUDA generators); the collate function is a deep copy, so a collator's own
generator (``DataCollatorForLanguageModeling(seed=...)``) is not advanced. A dataset whose
``__getitem__`` keeps a generator of its own would be advanced: give ``inputs`` for it.

In a ``torch.distributed`` run only global rank zero lints; with ``on_findings="fail"`` rank
zero's verdict is broadcast and every rank raises.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError('biaslint.integrations.transformers needs transformers: pip install '
                      '"biaslint[transformers]"') from None

from biaslint.errors import ConfigError
from biaslint.integrations.common import (
    BiaslintFailure,
    BiaslintWarning,
    LintingCallback,
    model_device,
    to_device,
)

__all__ = ["BiaslintCallback", "BiaslintFailure", "BiaslintWarning"]

# A child of the Trainer's own logger (``transformers.utils.logging.get_logger`` gives the same
# object): the Trainer's ``log_level`` and transformers' verbosity govern it, and transformers'
# handler prints it.
LOGGER = logging.getLogger("transformers.trainer.biaslint")


class BiaslintCallback(LintingCallback, TrainerCallback):
    """Lint the ``Trainer``'s model at the start of each ``train()``.

    ``on_findings``: "fail" (default) raises ``BiaslintFailure`` out of ``trainer.train()``
    before the first step; "warn" issues a ``BiaslintWarning`` and training goes on; "log"
    writes the report to the Trainer's logger (``transformers.trainer.biaslint``, level
    WARNING) and training goes on. Either way the ``Report`` is kept on ``callback.report``.
    "Findings" means what makes ``report.ok`` false: a finding at or above ``fail_on``,
    something the selected rules could not judge (unless ``allow_incomplete=True``), or an
    error (the forward failed on the inputs).

    ``save_report`` (default True): write ``biaslint.txt`` and ``biaslint.html`` (with the
    signal-propagation plot) into ``args.output_dir``; their paths are on
    ``callback.report_files``. A one-line summary goes to the log (level INFO).

    ``inputs``: a callable ``batch -> example inputs`` (see the module's docstring for the
    default). Other settings go to ``biaslint.check``: ``select``, ``ignore``, ``fail_on``,
    ``allow_incomplete``, ``class_priors``, ``head``, ``target_mean``, ``severity``,
    ``rule_options``, ``per_module_ignores``, ``name``; ``signal`` (the plot's curves, a
    forward and a backward) is measured only when the report is written, unless given.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, train_dataloader: Any = None,
                       **kwargs: Any) -> None:
        folder = args.output_dir if self.save_report and args.output_dir else None
        self.lint_on_rank_zero(
            state.is_world_process_zero,
            lambda: self.lint(model, train_dataloader, optimizer, args, folder),
            type(model).__name__, folder, LOGGER, broadcast_from_rank_zero())

    def lint(self, model: Any, train_dataloader: Any, optimizer: Any, args: Any,
             folder: str | None) -> Any:
        """The report on ``model`` with example inputs made from ``train_dataloader``'s dataset,
        and the Trainer's optimizer (BL011 reads its parameter groups)."""
        def make_inputs() -> Any:
            return self.example_inputs(model, example_batch(model, train_dataloader, args))

        return self.lint_model(model, make_inputs, [optimizer] if optimizer else [], folder)

    def example_inputs(self, model: Any, batch: Any) -> Any:
        if batch is None and self.inputs is None \
                and getattr(model, "example_input_array", None) is None:
            dummy = getattr(model, "dummy_inputs", None)
            if dummy:
                return to_device(dict(dummy), model_device(model))
            raise ConfigError(
                f"BiaslintCallback: no example inputs for {type(model).__name__}: its training "
                "dataset cannot be indexed (an IterableDataset?) or its data collator cannot "
                "be copied, and the model has no dummy_inputs; give inputs=lambda batch: ... "
                "(batch is None here; a tensor, a tuple of positional inputs or a dict of "
                "keyword inputs)")
        return super().example_inputs(model, batch)


def example_batch(model: Any, dataloader: Any, args: Any) -> Any:
    """A batch of the first items of the dataloader's dataset, collated by a copy of its
    collate function and moved to the model's device; None for a dataset that cannot be
    indexed. The dataloader's sampler and iterator are not touched (drawing from them would
    move training's data order and RNG)."""
    import copy

    from torch.utils.data import IterableDataset

    dataset = getattr(dataloader, "dataset", None)
    if dataset is None or isinstance(dataset, IterableDataset) \
            or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    size = min(getattr(dataloader, "batch_size", None) or args.per_device_train_batch_size,
               len(dataset))
    items = [dataset[index] for index in range(size)]
    collate = getattr(dataloader, "collate_fn", None)
    if collate is None:
        return to_device(items, model_device(model))
    try:
        collate = copy.deepcopy(collate)  # a collator's own generator stays where it was
    except Exception:  # calling the collator itself could advance it: no batch
        return None
    return to_device(collate(items), model_device(model))


def broadcast_from_rank_zero() -> Callable[[bool], bool] | None:
    """Rank zero's verdict to every rank, in a ``torch.distributed`` run of several processes;
    None otherwise (one process, or DataParallel's threads)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None

    def broadcast(failed: bool) -> bool:
        box = [failed]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    return broadcast
