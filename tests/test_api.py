"""``biaslint.check(model)`` on a model already built, ``biaslint.recording()``, ``Report``."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
import torch.nn as nn

import biaslint
from biaslint.errors import ConfigError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 14 * 14, 10))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _line_of(text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(Net)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_check_an_already_built_model_points_at_its_class_source() -> None:
    model = Net()
    report = biaslint.check(model, torch.randn(4, 3, 16, 16))
    [finding] = report.findings
    assert finding.code == "BL001" and finding.module == "conv"
    assert finding.location.file.endswith("test_api.py")
    assert finding.location.line == _line_of("self.conv = nn.Conv2d")
    assert any("construction was not recorded" in n for n in report.result.notes)
    # the fix is found at that line too
    assert finding.fix is not None and "bias=False" in finding.fix.code


def test_a_layer_inside_a_torch_container_points_at_the_container_line() -> None:
    model = Net()
    with torch.no_grad():
        model.head[1].weight.normal_(0, 1)  # no recording: the site is the class source
        model.head[1].bias.fill_(5.0)
    report = biaslint.check(model, torch.randn(4, 3, 16, 16), select=["BL003", "BL007"])
    located = {f.module: f.location.line for f in report.findings}
    assert located, report
    assert set(located.values()) == {_line_of("self.head = nn.Sequential")}


def test_recording_gives_the_lines_that_built_and_initialized() -> None:
    with biaslint.recording():
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 16), nn.BatchNorm1d(16))
        build_line = _this_line() - 2
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, 1.0)
    report = biaslint.check(model, torch.randn(32, 16), select=["BL001"])
    [finding] = report.findings
    assert finding.module == "2" and finding.location.line == build_line + 1
    assert not any("construction was not recorded" in n for n in report.result.notes)


def _this_line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_recording_in_a_notebook_cell_gives_the_cells_line() -> None:
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        cell = textwrap.dedent("""\
            import torch, torch.nn as nn, biaslint
            with biaslint.recording():
                model = nn.Sequential(
                    nn.Conv2d(3, 8, 3),
                    nn.BatchNorm2d(8),
                )
            report = biaslint.check(model, torch.randn(2, 3, 8, 8))
        """)
        outcome = shell.run_cell(cell)
        assert outcome.success, outcome.error_in_exec
        report = shell.user_ns["report"]
        [finding] = report.findings
        assert finding.code == "BL001"
        assert finding.location.line == 4  # the cell's line that built the conv
        import linecache

        assert "nn.Conv2d(3, 8, 3)" in linecache.getline(finding.location.file, 4)
        assert "nn.Conv2d(3, 8, 3)" in str(report)  # the text report quotes the cell
        html = report._repr_html_()
        assert "<svg" in html and "BL001" in html and "nn.Conv2d(3, 8, 3)" in html
    finally:
        InteractiveShell.clear_instance()


def test_report_forms() -> None:
    report = biaslint.check(Net(), torch.randn(4, 3, 16, 16))
    assert not report.ok and report.exit_code == 1
    text = str(report)
    assert "BL001" in text and "conv" in text
    payload = json.loads(report.to_json())
    [result] = payload["results"]
    assert result["findings"][0]["code"] == "BL001"
    assert [p["layer"] for p in result["signal"]["points"]] == ["conv", "bn", "head.1"]
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.count('class="mark act') == 3
    assert "biaslint.Report" in repr(report)


def test_clean_model_is_ok_and_settings_apply() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert biaslint.check(model, torch.randn(4, 8)).ok
    bad = Net()
    assert biaslint.check(bad, torch.randn(4, 3, 16, 16), ignore=["BL001"]).ok
    assert biaslint.check(bad, torch.randn(4, 3, 16, 16), fail_on="error").ok
    assert biaslint.check(bad, torch.randn(4, 3, 16, 16), severity={"BL001": "error"},
                          fail_on="error").findings[0].severity.name == "ERROR"
    with pytest.raises(ConfigError, match="unknown setting"):
        biaslint.check(bad, torch.randn(1, 3, 16, 16), selct=["BL001"])
    with pytest.raises(ConfigError, match="matches no rule"):
        biaslint.check(bad, torch.randn(1, 3, 16, 16), select=["BL999"])
    with pytest.raises(ConfigError, match="nn.Module"):
        biaslint.check("mymodel:build")


def test_without_inputs_it_says_what_it_did_not_judge() -> None:
    report = biaslint.check(Net())
    assert report.findings == [] or all(f.code != "BL007" for f in report.findings)
    notes = " ".join(report.result.notes)
    assert "no example inputs" in notes


def test_example_input_array_is_used() -> None:
    model = Net()
    model.example_input_array = torch.randn(2, 3, 16, 16)
    assert [f.code for f in biaslint.check(model).findings] == ["BL001"]


def test_forward_that_fails_is_an_error_not_a_pass() -> None:
    report = biaslint.check(Net(), torch.randn(2, 5))
    assert not report.ok and report.exit_code == 2
    assert "forward failed" in report.result.error


def test_check_leaves_the_model_alone() -> None:
    model, x = Net(), torch.randn(4, 3, 16, 16)
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    biaslint.check(model, x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training and all(p.grad is None for p in model.parameters())


def test_target_string(write_target) -> None:
    target = write_target("""
        import torch, torch.nn as nn
        def build():
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), torch.randn(2, 3, 8, 8)
    """)
    report = biaslint.check_target(target)
    assert [f.code for f in report.findings] == ["BL001"] and report.exit_code == 1


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, biaslint; print('torch' in sys.modules, 'biaslint.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
