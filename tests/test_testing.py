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


def _bias_then_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))


def test_a_model_of_library_classes_built_outside_recording_is_named_and_located():
    """Built outside ``recording()`` from torch classes only, the model has no line of the user's
    class to point at: the findings point at the line that called ``assert_clean`` (not
    ``<unknown>``) and the target is named after the test that checks it."""
    with pytest.raises(AssertionError) as info:
        assert_clean(_bias_then_bn(), images())  # the line the finding points at
    message = str(info.value)
    line = inspect.currentframe().f_lineno - 2  # the assert_clean call
    assert "<unknown>" not in message, message
    assert message.startswith(f"tests/test_testing.py:{line}:"), message
    assert ("Sequential (tests/test_testing.py::test_a_model_of_library_classes_built_outside_"
            "recording_is_named_and_located): 1 warning") in message, message


SCRIPT = '''\
import torch
import torch.nn as nn

from biaslint.testing import assert_clean


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))

    def forward(self, x):
        return self.stem(x)


for model in (Net(), nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))):
    try:
        assert_clean(model, torch.randn(2, 3, 8, 8))
    except AssertionError as error:
        print(error)
'''


def test_outside_pytest_the_target_is_named_by_its_class_and_where_it_was_defined(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "check_models.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "check_models.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "<unknown>" not in out, out
    assert "Net (check_models.py:7): 1 warning" in out, out  # the class's own line
    assert "check_models.py:10:" in out  # the line of the user's class that built the layer
    # torch classes only: the line that called assert_clean names and locates it
    assert "Sequential (check_models.py:18): 1 warning" in out, out
    assert "check_models.py:18:" in out.split("Net (")[1], out
