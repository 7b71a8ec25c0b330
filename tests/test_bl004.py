"""BL004 LSTM forget-gate bias: every layer and direction, numbers checked against the params."""

from __future__ import annotations

import pytest
import torch

from biaslint.findings import Severity
from biaslint.load import load_target
from biaslint.rules.bl004_lstm_forget_bias import LstmForgetGateBias, forget_biases
from biaslint.settings import Settings


@pytest.fixture(autouse=True)
def _seeded():
    """Random init and random inputs, but the same ones on every run."""
    torch.manual_seed(0)


def test_bad_example_names_every_layer_and_direction(lint_source):
    result = lint_source(LstmForgetGateBias.bad_example, select=("BL004",))
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert finding.severity == Severity.WARNING
    for where in ("layer 0", "layer 0 reverse", "layer 1", "layer 1 reverse"):
        assert where in finding.data["forget_bias_means"]
    assert "layer 1 reverse" in finding.message
    assert finding.fix.code == "biaslint.init.forget_gate_bias_(model, 1.0)"
    assert finding.location is not None and finding.location.line == 5  # construction site


def test_good_example_is_quiet(lint_source):
    assert lint_source(LstmForgetGateBias.good_example, select=("BL004",)).findings == ()


def test_reported_means_are_the_parameters(write_target):
    """The numbers in the message are bias_ih[H:2H] + bias_hh[H:2H], averaged."""
    from biaslint.engine import lint_loaded
    from biaslint.settings import TargetConfig

    source = '''
import torch.nn as nn

def build():
    return nn.LSTM(8, 16, num_layers=2, proj_size=4)
'''
    target = write_target(source)
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target=target), Settings(select=("BL004",)))
    lstm = loaded.model
    means = result.findings[0].data["forget_bias_means"]
    for k in range(2):
        ih, hh = getattr(lstm, f"bias_ih_l{k}"), getattr(lstm, f"bias_hh_l{k}")
        expected = float((ih[16:32] + hh[16:32]).detach().mean())
        assert means[f"layer {k}"] == pytest.approx(expected, abs=1e-6)
        assert f"{expected:.3g}" in result.findings[0].message


def test_message_claim_about_memory_is_measured():
    """'keeps only sigmoid(b)**10 of the cell state after 10 steps': with zero input and hidden
    weights the cell state decays by exactly sigmoid(forget bias) per step."""
    cell = torch.nn.LSTMCell(4, 8)
    with torch.no_grad():
        for p in (cell.weight_ih, cell.weight_hh):
            p.zero_()
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
        cell.bias_ih[0:8] = -20.0  # input gate shut, so only the forget gate acts on c
    h, c = torch.zeros(1, 8), torch.ones(1, 8)
    with torch.no_grad():
        for _ in range(10):
            h, c = cell(torch.zeros(1, 4), (h, c))
    assert float(c.mean()) == pytest.approx(0.5 ** 10, rel=1e-3)


@pytest.mark.parametrize("ctor", ["nn.LSTMCell(8, 16)", "nn.LSTM(8, 16, proj_size=4)"])
def test_cells_and_projections_are_flagged(lint_source, ctor):
    source = f"import torch.nn as nn\n\ndef build():\n    return nn.Sequential({ctor})\n"
    result = lint_source(source, select=("BL004",))
    assert len(result.findings) == 1


def test_bias_free_lstm_is_flagged(lint_source):
    source = "import torch.nn as nn\n\ndef build():\n    return nn.LSTM(8, 16, bias=False)\n"
    result = lint_source(source, select=("BL004",))
    assert len(result.findings) == 1
    assert "bias=False" in result.findings[0].message
    assert result.findings[0].data == {"bias": False}


def test_gru_is_quiet(lint_source):
    source = "import torch.nn as nn\n\ndef build():\n    return nn.GRU(8, 16, num_layers=2)\n"
    assert lint_source(source, select=("BL004",)).findings == ()


def test_only_low_layers_are_named_and_user_init_is_quoted(lint_source):
    source = '''
import torch.nn as nn
from biaslint.init import forget_gate_bias_

def build():
    lstm = nn.LSTM(8, 16, num_layers=2)
    forget_gate_bias_(lstm, 1.0)
    nn.init.zeros_(lstm.bias_ih_l1)
    return lstm
'''
    result = lint_source(source, select=("BL004",))
    assert len(result.findings) == 1
    means = result.findings[0].data["forget_bias_means"]
    assert means["layer 0"] == pytest.approx(1.0)
    assert "layer 1 " in result.findings[0].message and "layer 0 " not in result.findings[0].message
    assert "nn.init.zeros_" in result.findings[0].message


def test_threshold_option(lint_source):
    source = '''
import torch.nn as nn
from biaslint.init import forget_gate_bias_

def build():
    return forget_gate_bias_(nn.LSTM(8, 16), 0.7)
'''
    assert lint_source(source, select=("BL004",)).findings == ()
    strict = Settings(rule_options={"BL004": {"min_forget_bias": 0.9}})
    assert len(lint_source(source, select=("BL004",), settings=strict).findings) == 1


def test_applying_the_fix_line_silences_it(lint_source):
    finding = lint_source(LstmForgetGateBias.bad_example, select=("BL004",)).findings[0]
    fixed = LstmForgetGateBias.bad_example.replace(
        "    return nn.LSTM(input_size=32, hidden_size=64, num_layers=2, bidirectional=True)",
        "    model = nn.LSTM(input_size=32, hidden_size=64, num_layers=2, bidirectional=True)\n"
        "    import biaslint.init\n"
        f"    {finding.fix.code}\n    return model")
    assert lint_source(fixed, select=("BL004",)).findings == ()


def test_forget_biases_direction_keys():
    lstm = torch.nn.LSTM(4, 8, num_layers=3, bidirectional=True)
    assert list(forget_biases(lstm)) == ["layer 0", "layer 0 reverse", "layer 1",
                                          "layer 1 reverse", "layer 2", "layer 2 reverse"]


HAND_WRITTEN = '''
import torch
import torch.nn as nn

class Cell(nn.Module):
    def __init__(self, n_in, hidden):
        super().__init__()
        self.x2g = nn.Linear(n_in, 4 * hidden)
        self.h2g = nn.Linear(hidden, 4 * hidden)

    def forward(self, x, h, c):
        i, f, g, o = (self.x2g(x) + self.h2g(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

def build():
    cell = Cell(8, 16)
    {extra}
    return cell
'''


def test_hand_written_cell_is_found_and_the_gate_measured(write_target):
    from biaslint.engine import lint_loaded
    from biaslint.settings import TargetConfig

    target = write_target(HAND_WRITTEN.format(extra=""))
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target=target), Settings(select=("BL004",)))
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert finding.data["rows"] == "16:32" and finding.data["layers"] == ["h2g", "x2g"]
    cell = loaded.model
    bias = (cell.x2g.bias + cell.h2g.bias)[16:32].detach()
    assert finding.data["forget_bias_mean"] == pytest.approx(float(bias.mean()), abs=1e-6)
    # Applying the fix line to both Linears' rows moves the measured gate to ~sigmoid(1).
    with torch.no_grad():
        cell.x2g.bias[16:32] = 1.0
        cell.h2g.bias[16:32] = 0.0
        x, h = torch.randn(512, 8), torch.zeros(512, 16)
        f = torch.sigmoid((cell.x2g(x) + cell.h2g(h))[:, 16:32])
    assert float(f.mean()) == pytest.approx(0.73, abs=0.06)


def test_hand_written_cell_with_forget_bias_is_quiet(lint_source):
    extra = "nn.init.constant_(cell.x2g.bias[16:32], 1.0); nn.init.zeros_(cell.h2g.bias)"
    result = lint_source(HAND_WRITTEN.format(extra=extra), select=("BL004",))
    assert result.findings == ()


def test_gru_like_sigmoid_products_are_not_lstm_cells(lint_source):
    source = '''
import torch
import torch.nn as nn

class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.gates = nn.Linear(8, 16)

    def forward(self, x):
        a, b = self.gates(x).chunk(2, dim=-1)
        return torch.sigmoid(a) * torch.tanh(b)

def build():
    return Gated()
'''
    assert lint_source(source, select=("BL004",)).findings == ()


PER_GATE = '''
import torch
import torch.nn as nn

class Scratch(nn.Module):
    """One Linear per gate, as textbooks write the cell (d2l): W_x* with a bias, W_h* without."""

    def __init__(self, d=8, hidden=16):
        super().__init__()
        self.hidden = hidden
        self.W_xi, self.W_hi = nn.Linear(d, hidden), nn.Linear(hidden, hidden, bias=False)
        self.W_xf, self.W_hf = nn.Linear(d, hidden), nn.Linear(hidden, hidden, bias=False)
        self.W_xo, self.W_ho = nn.Linear(d, hidden), nn.Linear(hidden, hidden, bias=False)
        self.W_xc, self.W_hc = nn.Linear(d, hidden), nn.Linear(hidden, hidden, bias=False)

    def forward(self, xs):
        H = xs.new_zeros(xs.shape[1], self.hidden)
        C = xs.new_zeros(xs.shape[1], self.hidden)
        for x in xs:
            I = torch.sigmoid(self.W_xi(x) + self.W_hi(H))
            F = torch.sigmoid(self.W_xf(x) + self.W_hf(H))
            O = torch.sigmoid(self.W_xo(x) + self.W_ho(H))
            G = torch.tanh(self.W_xc(x) + self.W_hc(H))
            C = F * C + I * G
            H = O * torch.tanh(C)
        return H

def build():
    cell = Scratch()
    {extra}
    return cell, torch.randn(4, 3, 8)
'''


@pytest.mark.parametrize("forget_bias", [None, 1.0])
def test_a_cell_with_one_linear_per_gate_is_judged_by_its_measured_gate(write_target,
                                                                         forget_bias):
    from biaslint.engine import lint_loaded
    from biaslint.settings import TargetConfig

    extra = "" if forget_bias is None else \
        f"nn.init.constant_(cell.W_xf.bias, {forget_bias})"
    target = write_target(PER_GATE.format(extra=extra))
    loaded = load_target(target)
    result = lint_loaded(loaded, TargetConfig(target=target), Settings(select=("BL004",)))
    cell = loaded.model
    with torch.no_grad():  # the forget gate at the first step, measured
        x = torch.randn(512, 8)
        gate = torch.sigmoid(cell.W_xf(x) + cell.W_hf(torch.zeros(512, 16)))
    closed = float(torch.logit(gate.mean())) < 0.5
    assert len(result.findings) == int(closed)
    if closed:
        [finding] = result.findings
        assert finding.module == "W_xf" and finding.data["layers"] == ["W_hf", "W_xf"]
        assert finding.fix.code == "nn.init.constant_(model.W_xf.bias[0:16], 1.0)"
