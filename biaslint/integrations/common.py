"""What the training callbacks share (``biaslint.integrations.lightning`` and ``.transformers``):
their options, the choice of example inputs from a batch, a lint that leaves every RNG as it
was, what happens on findings, and the report written to the run's folder.

Torch-free at import, like the rest of the package's doors: the frameworks import it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from biaslint.errors import ConfigError

__all__ = ["BiaslintFailure", "BiaslintWarning", "LintingCallback", "ON_FINDINGS",
           "REPORT_FILES"]

# "fail" raises, "warn" issues a Python warning, "log" writes the report to the run's logger;
# the last two train on.
ON_FINDINGS = ("fail", "warn", "log")
# What ``save_report`` writes into the run's folder: the text report and the HTML page (the
# signal-propagation plot and the findings).
REPORT_FILES = ("biaslint.txt", "biaslint.html")


class BiaslintFailure(RuntimeError):
    """Raised by ``BiaslintCallback(on_findings="fail")``: the message is the text report;
    ``report`` is the ``biaslint.Report`` (None on the ranks that did not lint)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class BiaslintWarning(UserWarning):
    """Issued by ``BiaslintCallback(on_findings="warn")``: the message is the text report."""


class LintingCallback:
    """The options and the verdict of a framework's ``BiaslintCallback`` (a mixin: the
    framework's module puts it before its own callback class)."""

    def __init__(self, on_findings: str = "fail", inputs: Callable[[Any], Any] | None = None,
                 save_report: bool = True, **settings: Any) -> None:
        from biaslint.run.schema import python_keys

        known = (*python_keys("check"), "name")
        if on_findings not in ON_FINDINGS:
            raise ConfigError(f"BiaslintCallback: on_findings={on_findings!r}; give "
                              f"{', '.join(repr(o) for o in ON_FINDINGS)}")
        if inputs is not None and not callable(inputs):
            raise ConfigError("BiaslintCallback: inputs must be a callable batch -> example "
                              f"inputs, not {type(inputs).__name__}")
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"BiaslintCallback: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
        self.on_findings = on_findings
        self.inputs = inputs
        self.save_report = bool(save_report)
        self.settings = dict(settings)
        self.report: Any = None
        self.report_files: list[str] = []

    def example_inputs(self, model: Any, batch: Any) -> Any:
        """The example inputs: ``inputs(batch)`` if given, else ``model.example_input_array``
        (moved to the model's device), else the batch itself (a tensor is the input, a tuple or
        list gives its first element, a mapping of names is passed as keyword inputs)."""
        import torch

        if self.inputs is not None:
            return self.inputs(batch)
        example = getattr(model, "example_input_array", None)
        if example is not None:
            return to_device(example, model_device(model))
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0]
        if isinstance(batch, Mapping) and batch and all(isinstance(k, str) for k in batch):
            return dict(batch)  # a transformers BatchEncoding is a mapping, not a dict
        raise ConfigError(
            f"BiaslintCallback: cannot tell {type(model).__name__}'s inputs from a batch of "
            f"type {type(batch).__name__}: give inputs=lambda batch: ... (a tensor, a tuple of "
            "positional inputs or a dict of keyword inputs), or set example_input_array")

    def lint_model(self, model: Any, make_inputs: Callable[[], Any], optimizers: list[Any],
                   folder: str | None) -> Any:
        """``biaslint.check(model, make_inputs(), ...)`` with every RNG the inputs or the lint
        may draw from put back after (Python's, numpy's, torch's CPU and CUDA generators):
        training then draws the same numbers as without the callback. The signal curves (a
        forward and a backward) are measured only when the report goes to a folder, for its
        plot, unless ``signal`` was given."""
        from biaslint.api import check
        from biaslint.load.guard import preserved_state

        saving = self.save_report and folder is not None
        with preserved_state(seed=None), cuda_rng_kept():
            inputs = make_inputs()
            return check(model, inputs, optimizer=optimizers or None,
                         **{"signal": saving, **self.settings})

    def verdict(self, report: Any, name: str, folder: str | None,
                logger: logging.Logger) -> str | None:
        """Keep the report, write it to ``folder`` if asked, log one line, warn or log on
        findings; the text to fail with when ``on_findings="fail"`` and the model is not
        clean, else None."""
        self.report = report
        self.report_files = write_report(report, folder) if self.save_report and folder else []
        logger.info(summary(report, name, self.report_files))
        if report.ok:
            return None
        text = str(report).rstrip("\n")
        if self.on_findings == "warn":
            warnings.warn(BiaslintWarning(f"biaslint: {name} is not clean (training goes on):"
                                          f"\n{text}"), stacklevel=2)
        elif self.on_findings == "log":
            logger.warning("biaslint: %s is not clean (training goes on):\n%s", name, text)
        else:
            return text
        return None

    def lint_on_rank_zero(self, rank_zero: bool, lint: Callable[[], Any], name: str,
                          folder: str | None, logger: logging.Logger,
                          broadcast: Callable[[bool], bool] | None) -> None:
        """Lint on global rank zero alone; with ``on_findings="fail"`` every rank stops (rank
        zero's verdict goes to the others through ``broadcast``, where there are others)."""
        failed = False
        text = ""
        error: BaseException | None = None
        if rank_zero:
            try:
                text = self.verdict(lint(), name, folder, logger) or ""
                failed = bool(text)
            except Exception as exc:  # raised below, once every rank knows to stop
                error, failed = exc, True
        if broadcast is not None:
            failed = broadcast(failed)
        if error is not None:
            raise error
        if failed:
            if not rank_zero:
                text = "biaslint found problems in the model: see the report of global rank 0"
            raise BiaslintFailure(
                f"biaslint: {name} is not clean, training stopped "
                f"(BiaslintCallback(on_findings=\"warn\") trains anyway):\n{text}", self.report)


def summary(report: Any, name: str, files: list[str]) -> str:
    """One line for the run's log: the verdict, the count per rule, where the report went."""
    counts: dict[str, int] = {}
    for finding in report.findings:
        counts[finding.code] = counts.get(finding.code, 0) + 1
    found = ", ".join(f"{code} x{n}" for code, n in sorted(counts.items())) or "no findings"
    verdict = "clean" if report.ok else "not clean"
    where = f"; report: {', '.join(files)}" if files else ""
    return f"biaslint: {name}: {verdict} ({found}){where}"


def write_report(report: Any, folder: str) -> list[str]:
    """Write ``biaslint.txt`` and ``biaslint.html`` into ``folder`` (made if missing); the
    paths written."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, file) for file in REPORT_FILES]
    for path, text in zip(paths, (str(report), report.to_html())):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return paths


def model_device(model: Any) -> Any:
    """Where the model's first parameter (or buffer) lives; the CPU for a model with none."""
    import torch

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(value: Any, device: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


@contextlib.contextmanager
def cuda_rng_kept() -> Iterator[None]:
    """Put the CUDA generators back on exit (``check`` restores the CPU ones; training may run
    on the GPU)."""
    import torch

    states = torch.cuda.get_rng_state_all() \
        if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        if states is not None:
            torch.cuda.set_rng_state_all(states)
