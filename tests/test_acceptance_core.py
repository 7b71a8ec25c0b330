"""The core issue's acceptance cases, run through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys

ZERO_MLP = """\
import torch.nn as nn


def build():
    model = nn.Sequential(
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    return model
"""


def test_zero_hidden_layers_exit_1_naming_both_construction_lines(cli, write_target):
    target = write_target(ZERO_MLP, stem="zero_mlp")
    result = cli(target, "--format", "json")
    assert result.exit_code == 1
    findings = json.loads(result.output)["results"][0]["findings"]
    by_module = {f["module"]: f for f in findings if f["code"] == "BL002"}
    assert by_module["0"]["line"] == 6 and by_module["2"]["line"] == 8
    assert all(f["file"] == "zero_mlp.py" for f in by_module.values())
    text = cli(target)
    assert "zero_mlp.py:6:" in text.output and "zero_mlp.py:8:" in text.output


def test_conv_without_bias_bn_relu_is_clean(cli, write_target):
    target = write_target("""
import torch.nn as nn
def build():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
""")
    result = cli(target, "--input-shape", "2,3,16,16")
    assert result.exit_code == 0, result.output


def test_resnet18_is_clean_with_full_coverage(cli):
    result = cli("torchvision.models:resnet18", "--input-shape", "2,3,64,64", "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["schema_version"] == 1
    entry = payload["results"][0]
    assert entry["coverage"]["ratio"] == 1.0 and entry["findings"] == []


def test_help_version_and_rules_do_not_import_torch():
    probe = ("import sys; from biaslint.cli import main\n"
             "for args in (['--help'], ['--version'], ['rules'], ['rule', 'BL002']):\n"
             "    try:\n"
             "        main(args)\n"
             "    except SystemExit as exit:\n"
             "        assert exit.code in (0, None), (args, exit.code)\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH"), proc.stdout[-300:]


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "biaslint", "--version"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "biaslint" in proc.stdout


def test_select_ignore_and_fail_on(cli, write_target):
    target = write_target(ZERO_MLP)
    assert cli(target, "--ignore", "BL002").exit_code == 0
    assert cli(target, "--select", "BL00", "--ignore", "BL002").exit_code == 0
    assert cli(target, "--select", "BL002").exit_code == 1
    # the findings here are errors: failing only on errors still fails
    assert cli(target, "--select", "BL002", "--fail-on", "error").exit_code == 1


def test_warning_only_findings_pass_with_fail_on_error(cli, write_target):
    target = write_target("""
import torch.nn as nn
def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 4))
    nn.init.zeros_(model[2].weight)
    return model
""")
    result = cli(target, "--select", "BL002", "--format", "json")
    findings = json.loads(result.output)["results"][0]["findings"]
    assert [f["severity"] for f in findings] == ["warning"]
    assert result.exit_code == 1
    assert cli(target, "--select", "BL002", "--fail-on", "error").exit_code == 0
