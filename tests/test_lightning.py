"""``BiaslintCallback`` in a real Lightning ``Trainer.fit``: it stops or warns on findings,
keeps the report, and leaves training exactly as it would have been without it."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

pl = pytest.importorskip("lightning.pytorch")

# Lightning's own deprecation notice on this torch, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*isinstance.treespec")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from biaslint.errors import ConfigError  # noqa: E402
from biaslint.integrations.lightning import (  # noqa: E402
    BiaslintCallback,
    BiaslintFailure,
    BiaslintWarning,
)


class Net(pl.LightningModule):
    """Conv -> BatchNorm -> ReLU -> Dropout -> Linear: the dropout draws from the RNG and the
    BatchNorm updates its running stats, so a lint that leaked either would change training."""

    def __init__(self, conv_bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=conv_bias)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 2)
        self.losses: list[float] = []
        self.all_training: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.bn(self.conv(x)).relu().mean((2, 3))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(loss.item())
        self.all_training.append(all(m.training for m in self.modules()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 8, 8, generator=generator)
    y = torch.randint(0, 2, (16,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _fit(model: pl.LightningModule, callbacks: list, max_steps: int = 1) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    trainer.fit(model, _data())
    return trainer


def _model(conv_bias: bool) -> Net:
    torch.manual_seed(0)
    return Net(conv_bias)


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        yield


def test_fail_stops_fit_with_the_report():
    callback = BiaslintCallback(on_findings="fail")
    model = _model(conv_bias=True)
    with pytest.raises(BiaslintFailure) as info:
        _fit(model, [callback])
    message = str(info.value)
    assert "BL001" in message and "'conv'" in message and "'bn'" in message
    assert "test_lightning.py:" in message and "bias=False" in message
    assert model.losses == []  # stopped before the first training step
    assert callback.report is not None and info.value.report is callback.report
    assert [f.code for f in callback.report.findings] == ["BL001"]
    assert str(callback.report).rstrip("\n") in message


def test_warn_warns_and_trains_on():
    callback = BiaslintCallback(on_findings="warn")
    model = _model(conv_bias=True)
    with pytest.warns(BiaslintWarning, match="BL001"):
        trainer = _fit(model, [callback])
    assert trainer.global_step == 1 and len(model.losses) == 1
    assert not callback.report.ok and callback.report.findings[0].module == "conv"


def test_clean_module_passes_silently():
    callback = BiaslintCallback()
    model = _model(conv_bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiaslintWarning)
        trainer = _fit(model, [callback])
    assert trainer.global_step == 1
    assert callback.report is not None and callback.report.ok
    assert callback.report.findings == [] and callback.report.signal is None


def test_select_ignore_and_fail_on_go_to_check():
    for callback in (BiaslintCallback(ignore=["BL001"]), BiaslintCallback(select="BL005"),
                     BiaslintCallback(fail_on="error")):
        trainer = _fit(_model(conv_bias=True), [callback])
        assert trainer.global_step == 1 and callback.report.ok


def test_training_is_unchanged_by_the_callback():
    def run(callbacks: list) -> tuple[Net, torch.Tensor]:
        torch.manual_seed(0)
        model = Net(conv_bias=True)
        torch.manual_seed(123)  # the dropout masks of training come from here
        _fit(model, callbacks, max_steps=2)
        return model, torch.get_rng_state()

    plain, plain_rng = run([])
    callback = BiaslintCallback(on_findings="warn", select="BL001", signal=True)
    with pytest.warns(BiaslintWarning):
        linted, linted_rng = run([callback])
    assert callback.report.findings  # it did lint (and ran a forward) on the first batch
    assert callback.report.signal is not None  # and a forward and a backward for the plot
    assert len(plain.losses) == 2 and linted.losses == plain.losses
    assert plain.all_training == linted.all_training == [True, True]
    for (name, expected), (_, actual) in zip(plain.state_dict().items(),
                                             linted.state_dict().items()):
        assert torch.equal(expected, actual), name  # parameters and BatchNorm running stats
    assert torch.equal(plain_rng, linted_rng)  # the lint drew none of training's numbers


def test_the_report_goes_to_the_loggers_folder_and_log_mode_logs_it(tmp_path):
    import logging

    from lightning.pytorch.loggers import CSVLogger

    from biaslint.integrations.lightning import LOGGER

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    callback = BiaslintCallback(on_findings="log")
    kept = Kept()
    LOGGER.addHandler(kept)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BiaslintWarning)
            trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1,
                                 logger=CSVLogger(tmp_path), enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False,
                                 callbacks=[callback])
            trainer.fit(_model(conv_bias=True), _data())
    finally:
        LOGGER.removeHandler(kept)
    assert trainer.global_step == 1  # "log" trains on
    folder = trainer.log_dir
    assert folder is not None and folder.startswith(str(tmp_path))
    text, page = (os.path.join(folder, name) for name in ("biaslint.txt", "biaslint.html"))
    assert callback.report_files == [text, page]
    with open(text, encoding="utf-8") as handle:
        assert handle.read() == str(callback.report)
    with open(page, encoding="utf-8") as handle:
        assert handle.read() == callback.report.to_html()
    assert callback.report.signal is not None  # measured for the page's plot
    assert [r.levelno for r in kept.records] == [logging.INFO, logging.WARNING]
    assert kept.records[0].getMessage() == (
        f"biaslint: Net: not clean (BL001 x1); report: {text}, {page}")
    assert str(callback.report).rstrip("\n") in kept.records[1].getMessage()


def test_lints_once_per_fit():
    calls = []

    class Counting(BiaslintCallback):
        def lint(self, pl_module, batch):
            calls.append(batch[0].shape)
            return super().lint(pl_module, batch)

    callback = Counting(select="BL001", on_findings="warn", inputs=lambda batch: batch)
    model = _model(conv_bias=False)
    _fit(model, [callback], max_steps=2)
    assert calls == [torch.Size([8, 3, 8, 8])]
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    trainer.fit(model, _data())
    assert len(calls) == 2


def test_inputs_default_and_callable():
    callback = BiaslintCallback()
    model = _model(conv_bias=False)
    x, y = torch.randn(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)
    assert callback.example_inputs(model, (x, y)) is x
    assert callback.example_inputs(model, x) is x
    assert callback.example_inputs(model, {"x": x}) == {"x": x}
    model.example_input_array = torch.ones(2, 3, 8, 8)
    assert torch.equal(callback.example_inputs(model, (x, y)), torch.ones(2, 3, 8, 8))
    picked = BiaslintCallback(inputs=lambda batch: batch[1])
    assert picked.example_inputs(model, (y, x)) is x
    with pytest.raises(ConfigError, match="inputs=lambda batch"):
        BiaslintCallback().example_inputs(_model(conv_bias=False), object())


def test_bad_options_are_refused_at_construction():
    with pytest.raises(ConfigError, match="on_findings"):
        BiaslintCallback(on_findings="ignore")
    with pytest.raises(ConfigError, match="selectt"):
        BiaslintCallback(selectt="BL001")
    with pytest.raises(ConfigError, match="callable"):
        BiaslintCallback(inputs=torch.ones(2))


def test_without_lightning_the_import_error_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"
        "sys.modules['lightning.pytorch'] = None\n"
        "sys.modules['pytorch_lightning'] = None\n"
        "try:\n"
        "    import biaslint.integrations.lightning\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ('biaslint.integrations.lightning needs Lightning: pip '
                                   'install "biaslint[lightning]"')
