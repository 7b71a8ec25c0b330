"""biaslint.init helpers, checked by the quantity each one fixes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from biaslint.init import forget_gate_bias_, prior_bias_, prior_logits
from biaslint.rules.bl004_lstm_forget_bias import forget_biases
from biaslint.rules.bl005_class_prior_bias import excess_loss


@pytest.mark.parametrize("kwargs", [
    dict(num_layers=1), dict(num_layers=3, bidirectional=True), dict(num_layers=2, proj_size=8),
])
def test_forget_gate_bias_sets_every_layer_and_direction(kwargs):
    lstm = nn.LSTM(16, 32, **kwargs)
    before = {n: p.detach().clone() for n, p in lstm.named_parameters()}
    assert forget_gate_bias_(lstm, 1.0) is lstm
    means = forget_biases(lstm)
    assert len(means) == lstm.num_layers * (2 if lstm.bidirectional else 1)
    assert all(math.isclose(m, 1.0, abs_tol=1e-6) for m in means.values())
    for name, param in lstm.named_parameters():
        if name.startswith("bias"):  # the other three gates are untouched
            for rows in (slice(0, 32), slice(64, 128)):
                assert torch.equal(param[rows], before[name][rows])
        else:
            assert torch.equal(param, before[name])


def test_forget_gate_bias_measured_gate_opens():
    """The gate the LSTM computes really moves from ~sigmoid(0) to ~sigmoid(1)."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(16, 64)
    x, h = torch.randn(512, 16), torch.randn(512, 64) * 0.1

    @torch.no_grad()
    def forget_gate() -> float:
        gates = (F.linear(x, cell.weight_ih, cell.bias_ih)
                 + F.linear(h, cell.weight_hh, cell.bias_hh))
        return float(torch.sigmoid(gates[:, 64:128]).mean())

    assert abs(forget_gate() - 0.5) < 0.05
    forget_gate_bias_(cell, 1.0)
    assert forget_biases(cell) == {"cell": pytest.approx(1.0)}
    assert abs(forget_gate() - 1 / (1 + math.exp(-1))) < 0.05


def test_forget_gate_bias_finds_lstms_inside_a_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 8, num_layers=2))
    forget_gate_bias_(model, 2.0)
    assert all(math.isclose(m, 2.0) for m in forget_biases(model[1]).values())


def test_forget_gate_bias_rejects_bias_free_and_missing():
    with pytest.raises(ValueError, match="bias=False"):
        forget_gate_bias_(nn.LSTM(4, 8, bias=False))
    with pytest.raises(ValueError, match="no nn.LSTM"):
        forget_gate_bias_(nn.GRU(4, 8))


def test_prior_bias_softmax_removes_excess_loss():
    priors = (0.9, 0.09, 0.01)
    head = nn.Linear(32, 3)
    assert excess_loss(head.bias.detach().unsqueeze(0), torch.tensor(priors), "softmax") > 0.5
    prior_bias_(head, priors)
    assert excess_loss(head.bias.detach().unsqueeze(0), torch.tensor(priors), "softmax") < 1e-9
    # Measured: the mean cross-entropy on labels drawn from the priors equals their entropy.
    torch.manual_seed(0)
    nn.init.zeros_(head.weight)
    labels = torch.multinomial(torch.tensor(priors), 200_000, replacement=True)
    with torch.no_grad():
        logits = head(torch.randn(len(labels), 32))
    entropy = -sum(p * math.log(p) for p in priors)
    assert abs(float(F.cross_entropy(logits, labels)) - entropy) < 0.01


def test_prior_bias_counts_equal_probabilities():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    prior_bias_(a, (900, 90, 10))
    prior_bias_(b, (0.9, 0.09, 0.01))
    assert torch.allclose(a.bias, b.bias)


def test_prior_bias_sigmoid_binary_and_multilabel():
    head = nn.Linear(8, 1)
    prior_bias_(head, (0.99, 0.01), head="sigmoid")
    assert float(head.bias.detach()) == pytest.approx(math.log(0.01 / 0.99), abs=1e-6)  # -4.6
    assert float(torch.sigmoid(head.bias.detach())) == pytest.approx(0.01)
    multi = nn.Conv2d(8, 3, 1)
    rates = (0.01, 0.2, 0.5)
    prior_bias_(multi, rates, head="sigmoid")
    assert torch.allclose(torch.sigmoid(multi.bias.double()),
                          torch.tensor(rates, dtype=torch.float64), atol=1e-6)
    assert excess_loss(multi.bias.detach().unsqueeze(0), torch.tensor(rates), "sigmoid") < 1e-9


def test_prior_bias_errors():
    with pytest.raises(ValueError, match="bias=True"):
        prior_bias_(nn.Linear(4, 3, bias=False), (0.5, 0.3, 0.2))
    with pytest.raises(ValueError, match="3 outputs but 2 priors"):
        prior_bias_(nn.Linear(4, 3), (0.5, 0.5))
    with pytest.raises(ValueError, match="rates"):
        prior_logits((3, 5), "sigmoid", outputs=2)


def test_zero_prior_gets_a_finite_bias():
    logits = prior_logits((0.5, 0.5, 0.0))
    assert torch.isfinite(logits).all()
    assert float(torch.softmax(logits, 0)[2]) < 1e-7
