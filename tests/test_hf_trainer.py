"""``BiaslintCallback`` in a real Hugging Face ``Trainer.train``: it stops, warns or logs on
findings, writes the report to ``output_dir``, and leaves training bit-identical to a run
without it."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import Dataset, IterableDataset  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from biaslint.errors import ConfigError  # noqa: E402
from biaslint.integrations.transformers import (  # noqa: E402
    LOGGER,
    BiaslintCallback,
    BiaslintFailure,
    BiaslintWarning,
)


class Net(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear, returning the loss as an HF model does:
    the dropout draws from torch's RNG and the BatchNorm updates its running stats, so a lint
    that leaked either would change training. With ``bias=True`` the first Linear's bias is
    cancelled by the BatchNorm (BL001)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16, bias=bias)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.head(self.drop(self.bn(self.fc(x)).relu()))
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Noisy(Dataset):
    """Random data whose items are "augmented" with Python's and numpy's global RNGs, as image
    pipelines do: making an example batch from it draws from both."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 8, generator=generator)
        self.y = torch.randint(0, 2, (32,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        jitter = random.gauss(0, 0.1) + float(np.random.normal(0, 0.1))
        return {"x": self.x[index] + jitter, "labels": self.y[index]}


class SeededCollator:
    """A collator with a generator of its own (as ``DataCollatorForLanguageModeling(seed=...)``
    has): a lint that called it would shift the noise of every training batch."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(7)

    def __call__(self, items: list[dict]) -> dict:
        x = torch.stack([item["x"] for item in items])
        return {"x": x + 0.1 * torch.randn(x.shape, generator=self.generator),
                "labels": torch.stack([item["labels"] for item in items])}


class Tokens(Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(2)
        self.ids = torch.randint(0, 50, (32, 8), generator=generator)
        self.y = torch.randint(0, 2, (32,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": self.y[index]}


def _bert() -> BertForSequenceClassification:
    """A 2-layer BERT of width 16: its attention keys' biases are cancelled by the softmax
    (BL001, one per layer), a finding in transformers' own code."""
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                        num_labels=2)
    return BertForSequenceClassification(config)


def _args(output_dir: Path, max_steps: int = 3) -> TrainingArguments:
    return TrainingArguments(output_dir=str(output_dir), max_steps=max_steps,
                             per_device_train_batch_size=8, learning_rate=0.1,
                             report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0, logging_steps=1,
                             seed=123)


def _trainer(model: nn.Module, callbacks: list, output_dir: Path, dataset: Dataset | None = None,
             collator=None, max_steps: int = 3) -> Trainer:
    return Trainer(model=model, args=_args(output_dir, max_steps),
                   train_dataset=dataset if dataset is not None else Noisy(),
                   data_collator=collator, callbacks=callbacks)


def _net(bias: bool) -> Net:
    torch.manual_seed(0)
    return Net(bias)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="transformers")
        warnings.filterwarnings("ignore", module="accelerate")
        yield


def test_fail_stops_training_before_the_first_step(tmp_path):
    callback = BiaslintCallback(on_findings="fail")
    model = _net(bias=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, [callback], tmp_path)
    with pytest.raises(BiaslintFailure) as info:
        trainer.train()
    message = str(info.value)
    assert "BL001" in message and "'fc'" in message and "'bn'" in message
    assert "test_hf_trainer.py:" in message and "bias=False" in message
    assert trainer.state.global_step == 0
    for name, value in model.state_dict().items():
        assert torch.equal(before[name], value), name  # not one step, not one BatchNorm update
    assert info.value.report is callback.report
    assert [f.code for f in callback.report.findings] == ["BL001"]
    assert str(callback.report).rstrip("\n") in message
    # the report is kept even when the run stops: that is when it is needed
    assert callback.report_files == [str(tmp_path / "biaslint.txt"),
                                     str(tmp_path / "biaslint.html")]


def test_warn_warns_and_trains_on(tmp_path):
    callback = BiaslintCallback(on_findings="warn")
    with pytest.warns(BiaslintWarning, match="BL001"):
        trainer = _trainer(_net(bias=True), [callback], tmp_path)
        trainer.train()
    assert trainer.state.global_step == 3
    assert not callback.report.ok and callback.report.findings[0].module == "fc"


def test_log_writes_the_report_to_the_trainers_logger_and_trains_on(tmp_path):
    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    callback = BiaslintCallback(on_findings="log")
    kept, level = Kept(), LOGGER.level
    LOGGER.addHandler(kept)
    LOGGER.setLevel(logging.INFO)  # the summary is INFO, as the Trainer's own lines are
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BiaslintWarning)
            trainer = _trainer(_net(bias=True), [callback], tmp_path)
            trainer.train()
    finally:
        LOGGER.removeHandler(kept)
        LOGGER.setLevel(level)
    assert trainer.state.global_step == 3
    records = kept.records
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING]
    assert records[0].getMessage() == (
        f"biaslint: Net: not clean (BL001 x1); report: {tmp_path / 'biaslint.txt'}, "
        f"{tmp_path / 'biaslint.html'}")
    assert str(callback.report).rstrip("\n") in records[1].getMessage()


def test_the_report_goes_to_output_dir_with_its_plot(tmp_path):
    callback = BiaslintCallback(on_findings="warn", select="BL001")
    with pytest.warns(BiaslintWarning):
        _trainer(_net(bias=True), [callback], tmp_path / "run", max_steps=1).train()
    text = (tmp_path / "run" / "biaslint.txt").read_text(encoding="utf-8")
    assert text == str(callback.report)
    page = (tmp_path / "run" / "biaslint.html").read_text(encoding="utf-8")
    assert page == callback.report.to_html()
    assert callback.report.signal is not None  # measured for the page's plot
    assert "<svg" in page and "BL001" in page

    quiet = BiaslintCallback(on_findings="warn", select="BL001", save_report=False)
    with pytest.warns(BiaslintWarning):
        _trainer(_net(bias=True), [quiet], tmp_path / "quiet", max_steps=1).train()
    assert quiet.report_files == [] and quiet.report.signal is None
    assert not (tmp_path / "quiet" / "biaslint.txt").exists()


def _train(model_factory, callbacks, output_dir, dataset, collator) -> tuple[dict, list, tuple]:
    model = model_factory()
    trainer = _trainer(model, callbacks, output_dir, dataset, collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    rngs = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1])
    return model.state_dict(), losses, rngs


@pytest.mark.parametrize("case", ["net", "bert"])
def test_training_is_bit_identical_with_and_without_the_callback(tmp_path, case):
    if case == "net":  # BatchNorm stats, dropout, an augmenting dataset, a seeded collator
        factory, dataset, collator = (lambda: _net(bias=True)), Noisy, SeededCollator
    else:  # a transformers model, its default collator, its dropout
        factory, dataset, collator = _seeded_bert, Tokens, lambda: None
    plain, plain_losses, plain_rngs = _train(factory, [], tmp_path / "plain", dataset(),
                                             collator())
    callback = BiaslintCallback(on_findings="warn")
    with pytest.warns(BiaslintWarning, match="BL001"):
        linted, linted_losses, linted_rngs = _train(factory, [callback], tmp_path / "linted",
                                                    dataset(), collator())
    assert callback.report.signal is not None  # it ran a forward and a backward
    assert len(plain_losses) == 3 and linted_losses == plain_losses
    assert plain.keys() == linted.keys()
    for name, expected in plain.items():
        assert torch.equal(expected, linted[name]), name  # parameters and BatchNorm stats
    assert torch.equal(plain_rngs[0], linted_rngs[0])
    assert plain_rngs[1] == linted_rngs[1] and np.array_equal(plain_rngs[2], linted_rngs[2])


def _seeded_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return _bert()


def test_inputs_get_the_collated_batch_of_the_first_items(tmp_path):
    seen = []

    def pick(batch):
        seen.append(batch)
        return {"x": batch["x"]}

    callback = BiaslintCallback(select="BL001", on_findings="warn", inputs=pick)
    with pytest.warns(BiaslintWarning):
        _trainer(_net(bias=True), [callback], tmp_path, Noisy(), SeededCollator(),
                 max_steps=1).train()
    [batch] = seen
    assert sorted(batch) == ["labels", "x"] and batch["x"].shape == (8, 8)
    assert torch.equal(batch["labels"], Noisy().y[:8])  # dataset[0..7], not a sampled batch
    assert callback.report.findings[0].code == "BL001"


def test_a_dataset_that_cannot_be_indexed_falls_back_to_dummy_inputs():
    class Stream(IterableDataset):
        def __iter__(self):
            yield {"input_ids": torch.zeros(8, dtype=torch.long)}

    from biaslint.integrations.transformers import example_batch

    loader = torch.utils.data.DataLoader(Stream(), batch_size=2)
    assert example_batch(_bert(), loader, _args(Path("unused"))) is None
    callback = BiaslintCallback()
    bert = _bert()
    assert sorted(callback.example_inputs(bert, None)) == sorted(bert.dummy_inputs)
    with pytest.raises(ConfigError, match="inputs=lambda batch"):
        callback.example_inputs(_net(bias=False), None)
    picked = BiaslintCallback(inputs=lambda batch: torch.ones(4, 8))
    assert torch.equal(picked.example_inputs(_net(bias=False), None), torch.ones(4, 8))


def test_bad_options_are_refused_at_construction():
    with pytest.raises(ConfigError, match="'fail', 'warn', 'log'"):
        BiaslintCallback(on_findings="ignore")
    with pytest.raises(ConfigError, match="selectt"):
        BiaslintCallback(selectt="BL001")
    with pytest.raises(ConfigError, match="callable"):
        BiaslintCallback(inputs=torch.ones(2))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RANK_SCRIPT = """
import sys, types
import torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_hf_trainer import Noisy, SeededCollator, _net
from biaslint.integrations.transformers import BiaslintCallback, BiaslintFailure
dist.init_process_group("gloo")
rank = dist.get_rank()
loader = torch.utils.data.DataLoader(Noisy(), batch_size=8, collate_fn=SeededCollator())
args = types.SimpleNamespace(output_dir=None, per_device_train_batch_size=8)
state = types.SimpleNamespace(is_world_process_zero=rank == 0)
callback = BiaslintCallback()
try:
    callback.on_train_begin(args, state, None, model=_net(bias=True), train_dataloader=loader)
except BiaslintFailure as exc:
    print(rank, callback.report is not None, str(exc).splitlines()[1])
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh processes import torch and transformers: ~10 s of CPU
def test_in_a_distributed_run_rank_zero_lints_and_every_rank_stops():
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "PYTHONPATH": os.pathsep.join(sys.path)}
    script = RANK_SCRIPT.format(tests=str(Path(__file__).parent))
    ranks = [subprocess.Popen([sys.executable, "-c", script], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [proc.communicate(timeout=240) for proc in ranks]
    for proc, (_, err) in zip(ranks, outputs):
        assert proc.returncode == 0, err
    zero, one = (out.strip() for out, _ in outputs)
    assert zero.startswith("0 True ") and "BL001" in zero
    assert one == ("1 False biaslint found problems in the model: see the report of global "
                   "rank 0")


def test_without_transformers_the_import_error_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['transformers'] = None\n"
        "try:\n"
        "    import biaslint.integrations.transformers\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ('biaslint.integrations.transformers needs transformers: pip '
                                   'install "biaslint[transformers]"')


def test_the_readme_example_runs_as_it_says(tmp_path, monkeypatch, capsys):
    import re
    import runpy

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    [snippet] = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "biaslint.integrations.transformers" in b]
    (tmp_path / "example.py").write_text(snippet, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(BiaslintWarning, match="BL001"):
        runpy.run_path(str(tmp_path / "example.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines()[-1] == "BL001"
    assert "example.py:" in (tmp_path / "run" / "biaslint.txt").read_text(encoding="utf-8")
    assert (tmp_path / "run" / "biaslint.html").exists()
