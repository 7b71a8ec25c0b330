"""The same model with every mistake mended; biaslint reports nothing.

    biaslint examples/clean.py:build --class-priors 0.9,0.05,0.03,0.02
"""

import torch
import torch.nn as nn

from biaslint.init import forget_gate_bias_, prior_bias_

PRIORS = (0.9, 0.05, 0.03, 0.02)


class Clean(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, bias=False)  # BatchNorm supplies the shift
        self.bn = nn.BatchNorm2d(16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        forget_gate_bias_(self.lstm, 1.0)
        self.mlp = nn.Sequential(
            nn.Linear(32, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        self.hidden = nn.Linear(256, 64)
        nn.init.kaiming_normal_(self.hidden.weight, nonlinearity="relu")
        self.head = nn.Linear(64, num_classes)
        prior_bias_(self.head, PRIORS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(images)))
        sequence = features.flatten(2).transpose(1, 2)
        out, _ = self.lstm(sequence)
        z = self.mlp(out[:, -1])
        z = torch.relu(self.hidden(z))
        return self.head(z)


def build():
    torch.manual_seed(0)  # the same numbers on every run
    return Clean(), torch.randn(2, 3, 8, 8)
