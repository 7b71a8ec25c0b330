"""BL012 (uninitialized-parameter) against a truth of its own: PyTorch's NaN fill.

Under ``torch.use_deterministic_algorithms(True)`` with
``torch.utils.deterministic.fill_uninitialized_memory = True``, ``torch.empty`` and its kin fill
floating memory with NaN; a build under those settings leaves NaN exactly in the entries nothing
wrote. Each hand-made model below is built that way (the truth: the parameters holding NaN) and
linted with ``--select BL012`` on real tensors and on the meta device; the findings must be that
set, and the set must be the one the case was written to have.
"""

from __future__ import annotations

import importlib.util
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

CASES = textwrap.dedent('''
    import copy

    import torch
    import torch.nn as nn


    class Pos(nn.Module):
        """The speech model's positional embedding: allocated, never initialized."""

        def __init__(self, init=None):
            super().__init__()
            self.pos = nn.Parameter(torch.empty(1, 6, 8))
            if init is not None:
                init(self.pos)
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x + self.pos)


    class OwnReset(nn.Module):
        def __init__(self, call=True):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(8))
            self.shift = nn.Parameter(torch.empty(8))
            if call:
                self.reset_parameters()

        def reset_parameters(self):
            nn.init.ones_(self.scale)
            nn.init.zeros_(self.shift)

        def forward(self, x):
            return x * self.scale + self.shift


    class Holder(nn.Module):
        def __init__(self, **params):
            super().__init__()
            for name, value in params.items():
                setattr(self, name, nn.Parameter(value))
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            total = sum(p.sum() for n, p in self.named_parameters() if not n.startswith("proj"))
            return self.proj(x) + total


    def _x():
        return torch.randn(2, 6, 8)


    def bare():
        return Pos(), _x()


    def trunc_normal():
        return Pos(lambda p: nn.init.trunc_normal_(p, std=0.02)), _x()


    def in_place_uniform():
        return Holder(w=torch.empty(8, 8).uniform_(-0.1, 0.1)), _x()


    def own_reset():
        return OwnReset(), _x()


    def reset_never_called():
        return OwnReset(call=False), _x()


    def new_empty_and_empty_like():
        base = torch.zeros(8, 8)
        return Holder(a=base.new_empty(8, 8), b=torch.empty_like(base),
                      c=base.new(4, 4), d=torch.empty_strided((4, 4), (4, 1))), _x()


    def sliced():
        w = torch.empty(4, 8)
        with torch.no_grad():
            w[:2] = 1.0  # rows 2 and 3 never written
        full = torch.empty(4, 8)
        with torch.no_grad():
            full[:2] = 0.5
            full[2:].normal_()
        return Holder(part=w, whole=full), _x()


    def loaded():
        model = Pos()
        source = Pos(lambda p: nn.init.normal_(p, std=0.02))
        model.load_state_dict(source.state_dict())
        return model, _x()


    def factories():
        return Holder(a=torch.zeros(8), b=torch.randn(8, 8) * 0.02, c=torch.ones(8),
                      d=torch.tensor([1.0, 2.0, 3.0]), e=torch.full((3,), 0.1),
                      f=torch.arange(4.0)), _x()


    def written_otherwise():
        a = torch.empty(8, 8)
        with torch.no_grad():
            a.copy_(torch.randn(8, 8))
        b = torch.empty(8)
        b.fill_(0.0)
        model = Holder(a=a, b=b, c=torch.empty(3), d=torch.empty(5))
        model.c.data = torch.randn(3)
        with torch.no_grad():
            model.d[:] = torch.arange(5.0)
        return model, _x()


    def frozen():
        return Holder(buffer_like=torch.empty(8).requires_grad_(False)), _x()


    def torch_layers():
        model = nn.Sequential(nn.Conv1d(6, 6, 3, padding=1), nn.LayerNorm(8),
                              nn.BatchNorm1d(6), nn.Linear(8, 8))
        attention = nn.MultiheadAttention(8, 2, batch_first=True)
        lstm = nn.LSTM(8, 8, batch_first=True)
        embedding = nn.Embedding(10, 8, padding_idx=0)
        whole = nn.ModuleDict(dict(body=model, attention=attention, lstm=lstm,
                                   embedding=embedding))

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.whole = whole

            def forward(self, x):
                x = self.whole["body"](x)
                x = self.whole["attention"](x, x, x)[0]
                x = self.whole["lstm"](x)[0]
                return x + self.whole["embedding"].weight[:6].sum()

        return Net(), _x()


    def deep_copies():
        block = Pos()
        return nn.Sequential(*[copy.deepcopy(block) for _ in range(2)]), _x()


    def tied():
        head = nn.Linear(8, 10, bias=False)
        head.weight = nn.Parameter(torch.empty(10, 8))
        embedding = nn.Embedding(10, 8)
        embedding.weight = head.weight

        class Tied(nn.Module):
            def __init__(self):
                super().__init__()
                self.head, self.embedding = head, embedding

            def forward(self, ids):
                return self.head(self.embedding(ids))

        return Tied(), torch.randint(0, 10, (2, 6))


    def _table(skip):
        """A sinusoidal table written one column at a time (every other column by sin, the
        rest by cos): 600 strided writes fragment what is left unwritten."""
        table = torch.empty(64, 600)
        position = torch.arange(64, dtype=torch.float32)
        for j in range(600):
            if j != skip:
                table[:, j] = torch.sin(position / 10000 ** (j / 600)) if j % 2 == 0 \
                    else torch.cos(position / 10000 ** ((j - 1) / 600))
        return table


    class Table(nn.Module):
        def __init__(self, skip):
            super().__init__()
            self.table = nn.Parameter(_table(skip))
            self.proj = nn.Linear(600, 8)

        def forward(self, x):
            return self.proj(self.table[: x.shape[1]]) + x


    def columns():
        return Table(skip=None), _x()


    def columns_one_missed():
        return Table(skip=421), _x()
''')

# What each case was written to hold: its never-written parameters.
EXPECTED = {
    "bare": {"pos"},
    "trunc_normal": set(),
    "in_place_uniform": set(),
    "own_reset": set(),
    "reset_never_called": {"scale", "shift"},
    "new_empty_and_empty_like": {"a", "b", "c", "d"},
    "sliced": {"part"},
    "loaded": set(),
    "factories": set(),
    "written_otherwise": set(),
    "frozen": {"buffer_like"},
    "torch_layers": set(),
    "deep_copies": {"0.pos", "1.pos"},
    "tied": {"head.weight"},
    "columns": set(),
    "columns_one_missed": {"table"},
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bl012") / "bl012_cases.py"
    path.write_text(CASES)
    return path


def nan_truth(path: Path, case: str) -> set[str]:
    """The parameters holding NaN when the case is built with uninitialized memory filled
    with NaN (each tied parameter under its first name)."""
    import torch.utils.deterministic as deterministic

    spec = importlib.util.spec_from_file_location(f"bl012_truth_{case}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_filling = deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    deterministic.fill_uninitialized_memory = True
    try:
        assert torch.isnan(torch.empty(3)).all()  # the fill is on in this torch
        model = getattr(module, case)()[0]
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        deterministic.fill_uninitialized_memory = was_filling
    return {name for name, p in model.named_parameters() if torch.isnan(p).any()}


def flagged(path: Path, case: str, device: str | None) -> tuple[set[str], object]:
    from biaslint.engine import lint
    from biaslint.settings import Settings, TargetConfig

    result = lint(TargetConfig.of(target=f"{path}:{case}", device=device),
                  replace(Settings(), select=("BL012",)))
    assert result.error is None, result.error
    names = {f"{f.module}.{f.parameter}" if f.module else f.parameter
             for f in result.findings if f.code == "BL012"}
    return names, result


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_findings_are_the_parameters_nan_fill_finds(cases: Path, case: str):
    truth = nan_truth(cases, case)
    assert truth == EXPECTED[case]  # the case holds what it was written to hold
    real, _ = flagged(cases, case, None)
    assert real == truth


# On meta, biaslint runs reset_parameters() of a module nothing wrote (a deferred init): that
# one is not judged there, with the reason (the tied case: the Linear's weight replaced by an
# empty one); every other case gets the real run's findings.
META_DECLINED = {"reset_never_called": {""}, "tied": {"head"}}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_meta_gets_the_same_findings(cases: Path, case: str):
    meta, result = flagged(cases, case, "meta")
    declined = {layer for scope in result.rules if scope.code == "BL012"
                for layer, why in scope.unjudged}
    if case in META_DECLINED:
        assert meta == set() and declined == META_DECLINED[case]
        assert any("BL012" in note and "reset_parameters()" in note for note in result.notes)
    else:
        assert meta == EXPECTED[case] and declined == set()


def test_the_finding_names_the_allocating_line_and_the_fix(cases: Path):
    _, result = flagged(cases, "bare", None)
    (finding,) = result.findings
    line = next(n for n, text in enumerate(CASES.splitlines(), 1)
                if "self.pos = nn.Parameter(torch.empty" in text)
    assert finding.location is not None and finding.location.line == line
    assert finding.fix is not None
    assert finding.fix.code == "nn.init.trunc_normal_(self.pos, std=0.02)"
    assert "allocated by torch.empty" in finding.message


def test_a_partly_written_parameter_says_how_much(cases: Path):
    _, result = flagged(cases, "sliced", None)
    (finding,) = result.findings
    assert finding.data["unwritten"] == 16 and finding.data["values"] == 32


def test_a_model_built_elsewhere_is_not_judged(cases: Path):
    import biaslint

    spec = importlib.util.spec_from_file_location("bl012_held", cases)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, x = module.bare()
    report = biaslint.check(model, x, select=("BL012",))
    assert report.findings == []
    (scope,) = [s for s in report.result.rules if s.code == "BL012"]
    assert scope.unjudged and all("not recorded" in why for _, why in scope.unjudged)

    with biaslint.recording():
        model, x = module.bare()
    assert [f.parameter for f in biaslint.check(model, x, select=("BL012",)).findings] == ["pos"]
    # written after the recording ended: the record sees its bytes changed
    with torch.no_grad():
        model.pos.normal_()
    assert biaslint.check(model, x, select=("BL012",)).findings == []


def test_a_frozen_uninitialized_parameter_is_still_reported(lint_source):
    """The engine drops other rules' findings on frozen parameters (no training to lose); an
    uninitialized one is garbage in the forward, trained or not."""
    result = lint_source("""
        import torch
        import torch.nn as nn


        class Scaled(nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = nn.Parameter(torch.empty(8), requires_grad=False)
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                return self.fc(x) * self.scale


        def build():
            return Scaled(), torch.randn(2, 8)
        """, select=("BL012",))
    assert [(f.module, f.parameter) for f in result.findings] == [("", "scale")]


NAN_GARBAGE = """
    import torch
    import torch.nn as nn
    import torch.utils.deterministic as deterministic


    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.fc.weight = nn.Parameter(torch.empty(8, 8))  # never written
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(x)))


    def build():
        # what torch.empty may hand out on any machine: here NaN, every time
        was, filling = torch.are_deterministic_algorithms_enabled(), \\
            deterministic.fill_uninitialized_memory
        torch.use_deterministic_algorithms(True)
        deterministic.fill_uninitialized_memory = True
        try:
            model = Scaled()
        finally:
            torch.use_deterministic_algorithms(was)
            deterministic.fill_uninitialized_memory = filling
        assert torch.isnan(model.fc.weight).all()
        return model, torch.randn(2, 8)
    """


def test_nan_left_in_unwritten_memory_is_reported_not_unreadable(lint_source):
    """A never-written parameter holding NaN (what ``torch.empty`` may hand out) is BL012's
    finding, not a value nobody could read: with BL012 selected, the analysis is complete and
    the other value rules judge the rest; without it, nothing says what those entries are and
    the analysis is incomplete."""
    with_bl012 = lint_source(NAN_GARBAGE)
    assert ("fc", "weight") in {(f.module, f.parameter) for f in with_bl012.findings
                                if f.code == "BL012"}
    assert [f.code for f in with_bl012.findings] == ["BL012"]  # nothing measured of the NaN
    assert not [line for line in with_bl012.incomplete if "holding NaN" in line], \
        with_bl012.incomplete
    assert not with_bl012.incomplete, with_bl012.incomplete  # the measurements re-draw it
    from biaslint.settings import Settings

    without = lint_source(NAN_GARBAGE, settings=Settings(ignore=("BL012",)))
    assert [line for line in without.incomplete
            if "no call of the build wrote" in line and "fc.weight" in line], without.incomplete


LEFTOVER = """
    import ctypes

    import torch
    import torch.nn as nn


    def leftover(*shape, value):
        \"\"\"torch.empty holding what a freed tensor left there: ``value`` (written past
        torch, as the allocator's reuse does).\"\"\"
        t = torch.empty(*shape)
        src = torch.full(shape, value)
        ctypes.memmove(t.data_ptr(), src.data_ptr(), t.numel() * t.element_size())
        return t


    class Encoder(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.pos = nn.Parameter(leftover(1, 50, 32, value=value))
            self.proj = nn.Linear(32, 32)

        def forward(self, x):
            return self.proj(x + self.pos)


    def build():
        return Encoder(VALUE), torch.randn(2, 50, 32)
    """


@pytest.mark.parametrize("value", ["0.0", "1e28", "-3e30", "float('nan')"])
def test_what_the_memory_held_changes_no_other_finding(lint_source, value):
    """The same build gets the same findings whatever ``torch.empty`` handed out. Before, 1e28
    left in ``pos`` swamped ``proj``'s input: BL001 called ``proj.bias`` cancelled (measured)
    and BL015 said ``pos`` moved no output, on some runs and not others. Now the lint reads
    a fixed draw in the entries nothing wrote, and says so."""
    result = lint_source(LEFTOVER.replace("VALUE", value))
    assert [(f.code, f.module, f.parameter) for f in result.findings] == [("BL012", "", "pos")]
    assert not result.incomplete, result.incomplete
    assert [n for n in result.notes if "no call of the build wrote" in n and "pos" in n]


def test_a_held_model_keeps_what_its_memory_held(tmp_path):
    """``check()`` reads the draw while it lints and puts the memory's bytes back after: a
    model the caller holds comes back as it was."""
    import biaslint

    path = tmp_path / "leftover_model.py"
    path.write_text(textwrap.dedent(LEFTOVER.replace("VALUE", "1e28")))
    spec = importlib.util.spec_from_file_location("leftover_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with biaslint.recording():
        model, x = module.build()
    before = model.pos.detach().clone()
    report = biaslint.check(model, x)
    assert [(f.code, f.parameter) for f in report.findings] == [("BL012", "pos")]
    assert torch.equal(model.pos.detach(), before)
    # and the record still knows them for the next check
    assert [f.code for f in biaslint.check(model, x).findings] == ["BL012"]
