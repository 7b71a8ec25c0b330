"""The rule registry. Adding a rule: one new file in this folder and one line below."""

from __future__ import annotations

from biaslint.rules.base import Option, Rule, RuleContext
from biaslint.rules.bl001_redundant_bias import RedundantBias
from biaslint.rules.bl002_zero_constant_weight import ZeroConstantWeight
from biaslint.rules.bl003_fan_in_blind_init import FanInBlindInit
from biaslint.rules.bl004_lstm_forget_bias import LstmForgetGateBias
from biaslint.rules.bl005_class_prior_bias import ClassPriorBias
from biaslint.rules.bl006_attention_saturated import AttentionSoftmaxSaturated
from biaslint.rules.bl007_bias_kills_units import BiasKillsUnits
from biaslint.rules.bl008_regression_bias import RegressionBiasIgnoresTarget
from biaslint.rules.bl009_initial_loss import InitialLossAboveChance
from biaslint.rules.bl010_unused_parameters import UnusedParameters
from biaslint.rules.bl011_weight_decay_on_bias import WeightDecayOnBias
from biaslint.rules.bl012_uninitialized_parameter import UninitializedParameter
from biaslint.rules.bl013_implausible_norm_epsilon import ImplausibleNormEpsilon
from biaslint.rules.bl014_uniform_attention import UniformAttention
from biaslint.rules.bl015_parameter_without_gradient import ParameterWithoutGradient
from biaslint.rules.bl100_unused_suppression import UnusedSuppression

REGISTRY: tuple[type[Rule], ...] = (
    RedundantBias,
    ZeroConstantWeight,
    FanInBlindInit,
    LstmForgetGateBias,
    ClassPriorBias,
    AttentionSoftmaxSaturated,
    BiasKillsUnits,
    RegressionBiasIgnoresTarget,
    InitialLossAboveChance,
    UnusedParameters,
    WeightDecayOnBias,
    UninitializedParameter,
    ImplausibleNormEpsilon,
    UniformAttention,
    ParameterWithoutGradient,
    UnusedSuppression,
)


def all_rules() -> list[type[Rule]]:
    return sorted(REGISTRY, key=lambda r: r.code)


def rule_by_code(code: str) -> type[Rule] | None:
    for rule in REGISTRY:
        if rule.code == code.upper():
            return rule
    return None


def selected(select: tuple[str, ...], ignore: tuple[str, ...]) -> list[type[Rule]]:
    """Rules whose code starts with a selected prefix and with no ignored prefix."""
    result = []
    for rule in all_rules():
        if select and not any(rule.code.startswith(p.upper()) for p in select):
            continue
        if any(rule.code.startswith(p.upper()) for p in ignore):
            continue
        result.append(rule)
    return result


__all__ = ["Option", "Rule", "RuleContext", "REGISTRY", "all_rules", "rule_by_code", "selected"]
