"""Loading targets: the accepted forms, construction sites, init provenance, patch restoration."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from biaslint.errors import TargetError
from biaslint.load import load_target

SITES = """\
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(
            8, 4,
        )
        nn.init.normal_(self.fc.weight, 0.0, 1.0)
        self.fc.bias.data.fill_(0.5)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def build():
    return Net()
"""


def test_construction_sites_and_init_calls_point_at_user_lines(write_target):
    loaded = load_target(write_target(SITES, stem="sitesmodel"))
    sites = loaded.module_sites
    assert sites["conv"].line == 7 and sites["conv"].file == "sitesmodel.py"
    assert sites["fc"].line == 8 and sites["fc"].end_line == 10  # the whole multi-line call
    assert sites[""].line == 19  # Net() inside build()
    assert sites["conv"].col == 21  # 1-based column of the call
    weight = loaded.param_inits["fc.weight"]
    assert weight.by_user and weight.name == "nn.init.normal_" and weight.location.line == 11
    assert "1" in weight.args
    bias = loaded.param_inits["fc.bias"]
    assert bias.by_user and bias.name == "Tensor.fill_" and bias.location.line == 12
    default = loaded.param_inits["conv.weight"]
    assert not default.by_user and default.location.line == 7  # PyTorch's default, at the layer


def test_library_models_point_at_the_library_line():
    loaded = load_target("torchvision.models:vgg11_bn")
    site = loaded.module_sites["features.0"]
    assert site.file.endswith("torchvision/models/vgg.py")


def test_patches_are_restored_even_when_the_build_raises(write_target):
    before = (nn.Module.__init__, nn.init.normal_, torch.Tensor.normal_, torch.Tensor.zero_)
    target = write_target("def build():\n    raise ValueError('boom')\n")
    with pytest.raises(TargetError, match="ValueError: boom"):
        load_target(target)
    assert (nn.Module.__init__, nn.init.normal_, torch.Tensor.normal_, torch.Tensor.zero_) == before


@pytest.mark.parametrize("source,attr,has_inputs", [
    ("import torch.nn as nn\ndef build():\n    return nn.Linear(2, 2)\n", "build", False),
    ("import torch, torch.nn as nn\ndef build():\n    return nn.Linear(2, 2), torch.randn(3, 2)\n",
     "build", True),
    ("import torch, torch.nn as nn\ndef build():\n"
     "    return nn.Linear(2, 2), (torch.randn(3, 2),)\n",
     "build", True),
    ("import torch, torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n"
     "        super().__init__()\n        self.l = nn.Linear(2, 2)\n"
     "    def forward(self, input):\n        return self.l(input)\n"
     "def build():\n    return M(), {'input': torch.randn(3, 2)}\n", "build", True),
    ("import torch.nn as nn\nclass M(nn.Linear):\n    def __init__(self):\n"
     "        super().__init__(2, 2)\n", "M", False),
    ("import torch.nn as nn\nmodel = nn.Linear(2, 2)\n", "model", False),
    ("import torch, torch.nn as nn\npair = (nn.Linear(2, 2), torch.randn(1, 2))\n", "pair", True),
])
def test_target_forms(write_target, source, attr, has_inputs):
    loaded = load_target(write_target(source, attr=attr))
    assert isinstance(loaded.model, nn.Module)
    assert (loaded.inputs is not None) == has_inputs


def test_module_level_instances_get_construction_sites(write_target):
    loaded = load_target(write_target("import torch.nn as nn\n\nmodel = nn.Linear(2, 2)\n",
                                      attr="model", stem="instancemodel"))
    assert loaded.module_sites[""].line == 3


def test_dotted_module_target_and_input_shape():
    loaded = load_target("torchvision.models:resnet18", ((2, 3, 32, 32),))
    assert loaded.inputs is not None and loaded.inputs.args[0].shape == (2, 3, 32, 32)


LAZY = """
import torch
import torch.nn as nn


def build():
    model = nn.Sequential(nn.LazyConv2d(8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(3))
    return model, torch.randn(2, 3, 6, 6)


def no_inputs():
    return nn.Sequential(nn.LazyLinear(3))
"""


@pytest.mark.parametrize("device", [None, "meta"])
def test_lazy_modules_get_their_parameters_from_a_first_forward(write_target, device):
    """A build returning lazy modules not yet run (their parameters do not exist) is linted:
    biaslint runs the first forward, in eval mode without gradients, so nothing moves the
    running statistics, and the layers are judged where they were written."""
    from biaslint.engine import lint_loaded
    from biaslint.settings import Settings, TargetConfig

    target = write_target(LAZY)
    loaded = load_target(target, device=device)
    model = loaded.model
    assert type(model[0]) is nn.Conv2d and model[0].weight.shape == (8, 3, 3, 3)
    assert type(model[4]) is nn.Linear and model[4].weight.shape == (3, 128)
    assert model.training and all(m.training for m in model.modules())
    if device is None:
        assert torch.equal(model[1].running_mean, torch.zeros(8))
        assert int(model[1].num_batches_tracked) == 0
    assert any("lazy modules LazyConv2d '0', LazyLinear '4'" in n for n in loaded.notes)
    result = lint_loaded(loaded, TargetConfig(target), Settings(select=("BL001",)))
    (finding,) = result.findings
    assert finding.module == "0" and finding.location.line == 7


def test_lazy_modules_without_example_inputs_are_said_in_one_line(cli, write_target):
    result = cli(write_target(LAZY, attr="no_inputs"), "--cold")
    assert result.exit_code == 2, (result.output, result.stderr)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "LazyLinear '0'" in errors[0] and "--input-shape" in errors[0]
    given = cli(write_target(LAZY, attr="no_inputs"), "--cold", "--input-shape", "2,5",
                "--select", "BL001")
    assert given.exit_code == 0, (given.output, given.stderr)


def test_check_of_a_model_with_lazy_modules_says_what_to_do():
    from biaslint.api import check
    from biaslint.errors import ConfigError

    with pytest.raises(ConfigError, match="LazyLinear '0'.*run one forward"):
        check(nn.Sequential(nn.LazyLinear(3)), torch.randn(2, 4))


def test_lazy_modules_of_a_model_the_build_puts_on_meta_are_made_there(write_target):
    """A build that makes its model on the meta device itself is built again with the init laws
    recorded; its lazy modules get their first forward on meta inputs both times."""
    target = write_target("""
import torch
import torch.nn as nn


def build():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                              nn.LazyLinear(4))
    return model, torch.randn(2, 3, 6, 6)
""")
    loaded = load_target(target)
    assert type(loaded.model[4]) is nn.Linear and loaded.model[4].weight.is_meta
    assert loaded.model[4].weight.shape == (4, 128)
    assert sum("lazy modules LazyLinear '4'" in n for n in loaded.notes) == 1, loaded.notes
