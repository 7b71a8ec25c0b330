"""BL005 classifier bias vs class priors: the excess initial loss is measured, not just computed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biaslint.engine import lint_loaded
from biaslint.errors import PriorsError
from biaslint.findings import Severity
from biaslint.load import load_target
from biaslint.rules.bl005_class_prior_bias import ClassPriorBias
from biaslint.settings import Settings, TargetConfig

PRIORS = (0.9, 0.09, 0.01)


@pytest.fixture(autouse=True)
def _seeded():
    """Random init and random inputs, but the same ones on every run."""
    torch.manual_seed(0)


@pytest.fixture
def lint_model(write_target):
    def run(source: str, settings: Settings | None = None, **config):
        target = write_target(source)
        loaded = load_target(target, config.pop("input_shapes", ()))
        result = lint_loaded(loaded, TargetConfig.of(target=target, **config),
                             settings or Settings(select=("BL005",)))
        return loaded.model, result

    return run


def measured_excess(logits: torch.Tensor, priors, samples: int = 400_000) -> float:
    """Mean cross-entropy on labels drawn from the priors, minus the priors' entropy."""
    torch.manual_seed(0)
    p = torch.tensor(priors, dtype=torch.float64)
    labels = torch.multinomial(p, samples, replacement=True)
    rows = logits.double()[torch.randint(len(logits), (samples,))]
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return float(F.cross_entropy(rows, labels)) - entropy


def test_no_priors_no_finding(lint_model):
    _, result = lint_model(ClassPriorBias.bad_example)
    assert result.findings == ()


def test_bad_example_excess_matches_measured_loss(lint_model):
    model, result = lint_model(ClassPriorBias.bad_example, class_priors=PRIORS)
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert finding.severity == Severity.WARNING and finding.module == "2"
    bias = model[2].bias.detach().unsqueeze(0)
    measured = measured_excess(bias, PRIORS)
    assert finding.data["excess_from_bias"] == pytest.approx(measured, abs=0.01)
    assert f"{finding.data['excess_from_bias']:.3g} nats" in finding.message
    assert "[2.27, -0.04, -2.23]" in finding.message  # log priors, centred
    assert finding.fix.code == "biaslint.init.prior_bias_(model[2], (0.9, 0.09, 0.01))"


def test_good_example_is_quiet_and_measures_about_zero(lint_model):
    model, result = lint_model(ClassPriorBias.good_example, class_priors=PRIORS)
    assert result.findings == ()
    assert abs(measured_excess(model[2].bias.detach().unsqueeze(0), PRIORS)) < 0.01


def test_actual_logits_measure_what_the_bias_is_responsible_for(lint_model):
    from biaslint.init import prior_bias_

    model, result = lint_model(ClassPriorBias.bad_example, class_priors=PRIORS,
                               input_shapes=((4096, 20),))
    assert len(result.findings) == 1
    finding = result.findings[0]
    fixable = finding.data["excess_fixable_on_logits"]
    assert f"removes {fixable:.3g}" in finding.message
    torch.manual_seed(1)
    x = torch.randn(4096, 20)
    with torch.no_grad():
        before = measured_excess(model(x), PRIORS)
        prior_bias_(model[2], PRIORS)
        after = measured_excess(model(x), PRIORS)
    assert before == pytest.approx(finding.data["excess_from_logits"], rel=0.1)
    assert before - after == pytest.approx(fixable, rel=0.15)
    assert after < 0.1


def test_spread_from_large_weights_is_not_blamed_on_a_correct_bias(lint_model):
    source = '''
import torch.nn as nn
from biaslint.init import prior_bias_

def build():
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    prior_bias_(model[2], (0.9, 0.09, 0.01))
    nn.init.normal_(model[2].weight, std=1.0)
    return model
'''
    model, result = lint_model(source, class_priors=PRIORS, input_shapes=((4096, 20),))
    assert result.findings == ()
    with torch.no_grad():
        logits = model(torch.randn(4096, 20))
    assert measured_excess(logits, PRIORS) > 0.1  # real, but no bias can remove it


def test_sigmoid_head_with_two_priors(lint_model):
    source = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Linear(20, 1), nn.Sigmoid())
'''
    model, result = lint_model(source, class_priors=(0.99, 0.01))
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert "[-4.60]" in finding.message and "head='sigmoid'" in finding.fix.code
    b = float(model[0].bias.detach())
    # BCE on labels with positive rate 0.01 minus the binary entropy.
    p = 0.01
    bce = -(p * F.logsigmoid(torch.tensor(b)) + (1 - p) * F.logsigmoid(torch.tensor(-b)))
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert finding.data["excess_from_bias"] == pytest.approx(float(bce) - entropy, abs=1e-6)

    fixed = source.replace("    return nn.Sequential(nn.Linear(20, 1), nn.Sigmoid())",
                           "    model = nn.Sequential(nn.Linear(20, 1), nn.Sigmoid())\n"
                           "    import biaslint.init\n"
                           f"    {finding.fix.code}\n    return model")
    _, result = lint_model(fixed, class_priors=(0.99, 0.01))
    assert result.findings == ()


def test_multilabel_sigmoid_head(lint_model):
    from biaslint.run.priors import parse_priors

    source = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Linear(20, 3))
'''
    rates = parse_priors("0.01,0.2,0.5")
    _, result = lint_model(source, class_priors=rates, head="sigmoid")
    assert len(result.findings) == 1
    assert result.findings[0].data["head"] == "sigmoid"
    with pytest.raises(PriorsError, match="positive rates"):
        lint_model(source, class_priors=parse_priors("10,200,500"), head="sigmoid")


def test_head_through_log_softmax_and_flatten(lint_model):
    source = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3), nn.LogSoftmax(dim=1))
'''
    _, result = lint_model(source, class_priors=PRIORS)
    assert [f.module for f in result.findings] == ["4"]


def test_threshold_is_an_option(lint_model):
    lenient = Settings(select=("BL005",), rule_options={"BL005": {"max_excess_nats": 5.0}})
    _, result = lint_model(ClassPriorBias.bad_example, settings=lenient, class_priors=PRIORS)
    assert result.findings == ()


def test_uniform_priors_with_zero_bias_are_quiet(lint_model):
    source = '''
import torch.nn as nn

def build():
    head = nn.Linear(16, 10)
    nn.init.zeros_(head.bias)
    return head
'''
    _, result = lint_model(source, class_priors=tuple([0.1] * 10))
    assert result.findings == ()


def test_head_without_bias_is_flagged(lint_model):
    source = "import torch.nn as nn\n\ndef build():\n    return nn.Linear(16, 3, bias=False)\n"
    _, result = lint_model(source, class_priors=PRIORS)
    assert len(result.findings) == 1 and "has no bias" in result.findings[0].message


def test_wrong_length_for_every_head_is_an_error(lint_model, cli, write_target):
    with pytest.raises(PriorsError, match="4 values"):
        lint_model(ClassPriorBias.bad_example, class_priors=(0.25,) * 4)
    target = write_target(ClassPriorBias.bad_example)
    result = cli(target, "--select", "BL005", "--class-priors", "1,1,1,1")
    assert result.exit_code == 2
    assert "no classifier head matches" in result.stderr


def test_cli_priors_from_file(cli, write_target, tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("0\n" * 90 + "1\n" * 9 + "2\n")
    target = write_target(ClassPriorBias.bad_example)
    result = cli(target, "--select", "BL005", "--class-priors", f"@{path}")
    assert result.exit_code == 1
    assert "BL005" in result.stdout


def test_one_output_sigmoid_head_accepts_a_single_positive_rate(lint_model):
    from biaslint.run.priors import parse_priors

    source = "import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(8, 1))\n"
    _, result = lint_model(source, class_priors=parse_priors("0.01"), head="sigmoid")
    assert len(result.findings) == 1 and "[-4.60]" in result.findings[0].message
