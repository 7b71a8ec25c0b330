"""Findings grouped by their cause (``engine.causes``, ``report.groups``): one config value, one
init call with its arguments, one constructor line is said once in every format, with the count,
the layers in short form and one fix; JSON keeps every member. A config cause is claimed only
when the draw provably follows the value: the tests measure that on real tensors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from biaslint.findings import Cause, Finding, Location, Severity
from biaslint.report.groups import groups_of, short_layers

# Six Linear+BatchNorm pairs built by one line in a loop: six BL001 findings with one cause.
LOOP = """\
import torch
import torch.nn as nn


def build():
    layers = []
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU()]
    return nn.Sequential(*layers), (torch.randn(8, 16),)
"""

# A config of the user's own whose init scale the model's init reads; the user sets it to 1.0
# where the class's default is 0.02.
OWN_CONFIG = """\
import torch
import torch.nn as nn


class Config:
    def __init__(self, width=256, depth=4, init_std=0.02):
        self.width = width
        self.depth = depth
        self.init_std = init_std


class Net(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(nn.Linear(config.width, config.width)
                                    for _ in range(config.depth))
        self.norms = nn.ModuleList(nn.LayerNorm(config.width) for _ in range(config.depth))
        for block in self.blocks:
            nn.init.normal_(block.weight, std=READ)
            nn.init.zeros_(block.bias)

    def forward(self, x):
        for block, norm in zip(self.blocks, self.norms):
            x = x + block(norm(x))
        return x


def build(std=1.0):
    config = Config(init_std=std)
    return Net(config), (torch.randn(8, 256),)
"""


def finding(module: str, cause: Cause | None, code: str = "BL003",
            severity: Severity = Severity.WARNING) -> Finding:
    return Finding(code=code, name="n", severity=severity, module=module, module_type="Linear",
                   message=f"m {module}", location=Location("m.py", 3, 1), parameter="weight",
                   cause=cause)


def test_short_layers_ranges_and_patterns():
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(80)] + ["lm_head"]
    assert short_layers(names) == "model.layers.{0..79}.mlp.down_proj, lm_head"
    assert short_layers(["a.1.w", "a.3.w", "a.7.w"]) == "a.{1,3,7}.w"
    assert short_layers([f"c.{i}" for i in range(0, 40, 3)]) == "c.{14 of 0..39}"
    # Two numbers: the ranges' product would claim layers that are not there; the count says.
    assert short_layers(["b.0.e.0", "b.1.e.1"]) == "b.{0..1}.e.{0..1} (2 of them)"
    assert short_layers([f"x{i}" for i in range(9)], limit=3).endswith("and 6 more patterns")


def test_groups_need_the_same_rule_severity_and_cause():
    one = Cause(kind="init", key="init a", text="a")
    other = Cause(kind="init", key="init b", text="b")
    findings = [finding("l0", one), finding("l1", one), finding("l2", other),
                finding("l3", one, severity=Severity.ERROR), finding("l4", one, code="BL002"),
                finding("l5", None), finding("l6", None), finding("l7", one)]
    groups = groups_of(findings)
    assert [[f.module for f in g.members] for g in groups] == [
        ["l0", "l1", "l3", "l7"], ["l2"], ["l4"], ["l5"], ["l6"]]
    # the worst severity leads, with the count of each, and the example is one of the worst
    assert groups[0].severity is Severity.ERROR
    assert groups[0].headline().startswith("4 layers, 1 error, 3 warnings (a); e.g. l3: m l3")
    assert groups[1].headline() == "m l2"  # a group of one reads as its finding


def test_parameters_of_one_layer_are_counted_as_parameters():
    """Three unused parameters of the root are one layer: the group counts and names them as
    parameters, not as "3 layers; e.g. <root>" over "<root>, <root>, <root>"."""
    line = Cause(kind="line", key="line m.py:3", text="")
    findings = [replace(finding("", line, code="BL010"), parameter=p) for p in ("mix", "rel")]
    findings.append(replace(finding("block", line, code="BL010"), parameter="t"))
    (group,) = groups_of(findings)
    assert group.noun == "parameters" and group.layers == ["mix", "rel", "block.t"]
    assert group.headline().startswith("3 parameters; e.g. <root>: ")
    layers = groups_of([finding("l0", line), finding("l1", line)])[0]
    assert layers.noun == "layers" and layers.layers == ["l0", "l1"]


def test_one_constructor_line_is_one_group_in_every_format(cli, write_target, tmp_path):
    target = write_target(LOOP)
    files = {fmt: tmp_path / f"report.{fmt}" for fmt in
             ("json", "sarif", "github", "gitlab", "rdjson", "junit")}
    args = [arg for fmt, path in files.items() for arg in ("--format", f"{fmt}={path}")]
    result = cli(target, "--select", "BL001", *args)
    assert result.exit_code == 1, result.output
    # text: one block with the count, the layers in short form and one fix
    assert result.output.count("BL001 [") == 1
    assert "6 layers" in result.output and "layers (6): {0,3,6,9,12,15}" in result.output
    assert result.output.count("fix:") == 1
    report = json.loads(files["json"].read_text())["results"][0]
    assert len(report["findings"]) == 6  # every member kept
    [group] = report["groups"]
    assert group["count"] == 6 and group["members"] == list(range(6))
    assert group["cause"]["kind"] == "line"
    assert {f["cause"]["key"] for f in report["findings"]} == {group["cause"]["key"]}
    sarif = json.loads(files["sarif"].read_text())["runs"][0]["results"]
    assert len(sarif) == 1 and sarif[0]["properties"]["count"] == 6
    assert len(sarif[0]["locations"][0]["logicalLocations"]) == 6
    assert len([line for line in files["github"].read_text().splitlines()
                if line.startswith("::")]) == 1
    assert len(json.loads(files["gitlab"].read_text())) == 1
    assert len(json.loads(files["rdjson"].read_text())["diagnostics"]) == 1
    junit = files["junit"].read_text()
    assert junit.count("BL001 [") == 1 and "6 layers: {0,3,6,9,12,15}" in junit


def _stds(source: str, write_target, std: float) -> list[float]:
    """The measured spread of each block's weight, built on real tensors."""
    import importlib.util

    target = write_target(source)
    spec = importlib.util.spec_from_file_location("measured", target.split(":")[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, _ = module.build(std)
    return [float(block.weight.std()) for block in model.blocks]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_config_value_the_init_reads_is_the_cause(cli, write_target, device):
    source = OWN_CONFIG.replace("READ", "config.init_std")
    # The truth, measured: the weights' spread follows init_std.
    assert all(abs(s - 1.0) < 0.1 for s in _stds(source, write_target, 1.0))
    assert all(abs(s - 0.02) < 0.002 for s in _stds(source, write_target, 0.02))
    target = write_target(source)
    result = cli(target, "--select", "BL003", "--device", device, "--format", "json")
    report = json.loads(result.stdout)["results"][0]
    assert len(report["findings"]) == 4
    [group] = report["groups"]
    assert group["count"] == 4
    cause = group["cause"]
    assert cause["kind"] == "config" and "Config.init_std = 1.0" in cause["text"]
    stem = target.split(":")[0]
    # The user's line that set it: ``config = Config(init_std=std)`` in build().
    assert cause["location"]["file"] == stem and cause["location"]["line"] == 30
    assert group["fix"] == f"set `init_std` near 0.02 (Config's default) at {stem}:30"
    text = cli(target, "--select", "BL003", "--device", device)
    assert text.output.count("BL003 [") == 1 and "init_std" in text.output


def test_a_config_value_the_init_does_not_read_is_not_the_cause(cli, write_target):
    # The draw is a literal 1.0 that happens to equal the config's value: the spread does not
    # follow init_std (measured), so the cause is the init call, not the config.
    source = OWN_CONFIG.replace("READ", "1.0")
    assert all(abs(s - 1.0) < 0.1 for s in _stds(source, write_target, 0.02))
    target = write_target(source)
    result = cli(target, "--select", "BL003", "--format", "json")
    report = json.loads(result.stdout)["results"][0]
    [group] = report["groups"]
    assert group["count"] == 4 and group["cause"]["kind"] == "init"
    assert "init_std" not in json.dumps(report["groups"])


def test_a_default_config_value_is_not_the_cause(cli, write_target):
    # initializer scale left at its default: nothing the user changed to point at.
    source = OWN_CONFIG.replace("READ", "config.init_std * 50").replace(
        "def build(std=1.0)", "def build(std=0.02)")
    target = write_target(source)
    report = json.loads(cli(target, "--select", "BL003", "--format", "json").stdout)
    [group] = report["results"][0]["groups"]
    assert group["cause"]["kind"] == "init"


def test_transformers_initializer_range_names_the_users_line(cli, write_target):
    pytest.importorskip("transformers")
    target = write_target("""\
        from transformers import LlamaConfig, LlamaForCausalLM


        def build():
            config = LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                 initializer_range=1.0)
            return LlamaForCausalLM(config)
        """)
    result = cli(target, "--device", "meta", "--input-shape", "2,8:int", "--select", "BL003")
    assert result.exit_code == 1
    blocks = [line for line in result.output.splitlines() if "BL003 [" in line]
    assert len(blocks) == 1
    assert blocks[0].startswith(f"{target.split(':')[0]}:5:")
    assert "LlamaConfig.initializer_range = 1.0" in blocks[0]
    assert "set `initializer_range` near 0.02 (LlamaConfig's default)" in result.output
    assert "site-packages" not in result.output


@pytest.mark.slow
def test_the_readme_70b_example_is_one_group_on_a_screen(cli, monkeypatch):
    """The README's Llama-3-70B with ``initializer_range=1.0`` (benchmarks/big_models.py, the
    published config written in code), linted on meta: 561 BL003 findings are one group that
    names the attribute and the line that set it, and the report fits on a screen."""
    pytest.importorskip("transformers")
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parent.parent / "benchmarks")
    monkeypatch.syspath_prepend(".")
    result = cli("big_models:llama3_70b_initializer_range_1", "--device", "meta")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) <= 40
    [head] = [line for line in lines if " BL003 [" in line]
    assert head.startswith("big_models.py:84:") and " 561 layers" in head
    assert "LlamaConfig.initializer_range = 1.0 set at big_models.py:84" in head
    assert "fix: set `initializer_range` near 0.02 (LlamaConfig's default) at big_models.py:84" \
        in result.output
    assert "site-packages" not in result.output
