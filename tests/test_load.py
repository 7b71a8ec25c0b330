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
