"""``biaslint.testing.assert_clean``: passes (returning the report) on a clean model, raises
AssertionError with the text report otherwise."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

from biaslint.api import Report
from biaslint.errors import ConfigError
from biaslint.testing import assert_clean


class CleanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).relu()


class BiasBeforeBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # bias=True, cancelled by the BatchNorm
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stem(x)).relu()


class FailingForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this forward always fails")


def _line_of(cls: type, text: str) -> int:
    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, line in enumerate(lines) if text in line)


def images() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8)


def test_clean_model_passes_and_returns_the_report():
    report = assert_clean(CleanNet(), images())
    assert isinstance(report, Report)
    assert report.ok and report.findings == []
    assert report.signal is None  # signal=False by default: no extra forward and backward


def test_bad_model_raises_with_the_text_report():
    with pytest.raises(AssertionError) as info:
        assert_clean(BiasBeforeBN(), images())
    message = str(info.value)
    assert "BL001" in message
    assert "'stem'" in message and "'norm'" in message
    assert f"test_testing.py:{_line_of(BiasBeforeBN, 'self.stem =')}" in message
    assert "fix:" in message and "bias=False" in message
    assert message == str(_report_of(BiasBeforeBN())).rstrip("\n")


def _report_of(model: nn.Module) -> Report:
    from biaslint.api import check

    return check(model, images(), signal=False)


def test_ignore_and_select_are_honored():
    assert assert_clean(BiasBeforeBN(), images(), ignore="BL001").findings == []
    assert assert_clean(BiasBeforeBN(), images(), select=["BL003", "BL005"]).ok
    with pytest.raises(AssertionError, match="BL001"):
        assert_clean(BiasBeforeBN(), images(), select=["BL001"])
    with pytest.raises(AssertionError, match="BL001"):
        assert_clean(BiasBeforeBN(), images(), ignore=["BL003"])


def test_fail_on_error_lets_a_warning_pass():
    report = assert_clean(BiasBeforeBN(), images(), fail_on="error")
    assert [f.code for f in report.findings] == ["BL001"]  # still reported, not failing


def test_a_failing_forward_is_not_clean():
    with pytest.raises(AssertionError, match="this forward always fails"):
        assert_clean(FailingForward(), torch.randn(2, 4))


def test_unknown_codes_and_settings_are_errors_not_passes():
    with pytest.raises(ConfigError, match="BL999"):
        assert_clean(CleanNet(), images(), ignore="BL999")
    with pytest.raises(ConfigError, match="selectt"):
        assert_clean(CleanNet(), images(), selectt="BL001")


TARGETS = """
import torch
import torch.nn as nn


def good():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    return model, torch.randn(4, 3, 8, 8)


def bad():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    return model, torch.randn(4, 3, 8, 8)


def broken():
    raise ValueError("the build is broken")
"""


def test_target_strings(write_target):
    good = write_target(TARGETS, attr="good")
    stem = good.split(":")[0]
    report = assert_clean(good)
    assert report.ok and report.results[0].target == good
    with pytest.raises(AssertionError) as info:
        assert_clean(f"{stem}:bad")
    assert "BL001" in str(info.value) and f"{stem}:12:" in str(info.value)
    assert assert_clean(f"{stem}:bad", ignore="BL001").ok
    with pytest.raises(AssertionError, match="the build is broken"):
        assert_clean(f"{stem}:broken")
    with pytest.raises(TypeError, match="example_inputs"):
        assert_clean(good, images())
