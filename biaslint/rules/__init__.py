"""The rule registry. Adding a rule: one new file in this folder and one line below.

``REGISTRY`` holds the built-in rules. A project's own rules (``biaslint.rules.plugins``) take
part while a ``plugged(...)`` block is open: ``all_rules``, ``rule_by_code`` and ``selected``
see them beside the built-in ones, so selection, suppressions, severities, options, the pages
and the reports treat them alike.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from biaslint.errors import ConfigError
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
from biaslint.rules.bl016_init_without_effect import InitWithoutEffect
from biaslint.rules.bl017_init_ignores_config import InitIgnoresConfig
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
    InitWithoutEffect,
    InitIgnoresConfig,
    UnusedSuppression,
)


class _Plugged:
    """The plugin rules taking part now (``plugged``)."""

    rules: tuple[type[Rule], ...] = ()


@contextmanager
def plugged(rules: Sequence[type[Rule]]) -> Iterator[None]:
    """``rules`` (validated ``Rule`` subclasses, ``biaslint.rules.plugins.load_plugins``) take
    part beside the built-in ones and those of any enclosing block, until the block ends."""
    before = _Plugged.rules
    added = tuple(r for r in rules if r not in before and r not in REGISTRY)
    codes = {r.code: r for r in (*REGISTRY, *before)}
    for rule in added:
        other = codes.setdefault(rule.code, rule)
        if other is not rule:
            raise ConfigError(f"rule code {rule.code} is taken twice: by {origin(other)} and by "
                              f"{origin(rule)}; give one of them another code")
    _Plugged.rules = before + added
    try:
        yield
    finally:
        _Plugged.rules = before


def origin(rule: type[Rule]) -> str:
    """Where a rule comes from, for messages: "biaslint" or its class's qualified name."""
    if rule in REGISTRY:
        return f"biaslint ({rule.__name__})"
    return f"{rule.__module__}.{rule.__qualname__}"


def is_builtin(rule: type[Rule]) -> bool:
    return rule in REGISTRY


def all_rules() -> list[type[Rule]]:
    """The built-in rules and the plugin rules taking part, by code."""
    return sorted((*REGISTRY, *_Plugged.rules), key=lambda r: r.code)


def rule_by_code(code: str) -> type[Rule] | None:
    for rule in all_rules():
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


__all__ = ["Option", "Rule", "RuleContext", "REGISTRY", "all_rules", "is_builtin", "origin",
           "plugged", "rule_by_code", "selected"]
