"""A small model that makes each of the seed mistakes biaslint finds.

    biaslint examples/mistakes.py:build --class-priors 0.9,0.05,0.03,0.02
"""

import torch
import torch.nn as nn


class Mistakes(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        # BL001: BatchNorm subtracts the per-channel mean, so this conv's bias cancels.
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        # BL004: PyTorch's default LSTM init leaves the forget-gate bias near 0.
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        # BL003: N(0, 1) weights ignore fan-in; the signal grows ~sqrt(fan_in/2) per layer.
        self.mlp = nn.Sequential(
            nn.Linear(32, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, 1.0)
        # BL002: a zero hidden layer with zero bias in front of a ReLU never learns.
        self.hidden = nn.Linear(256, 64)
        nn.init.zeros_(self.hidden.weight)
        nn.init.zeros_(self.hidden.bias)
        # BL005: with skewed class priors, a zero bias starts far from the class balance.
        self.head = nn.Linear(64, num_classes)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(images)))  # (B, 16, H, W)
        sequence = features.flatten(2).transpose(1, 2)  # (B, H*W, 16): pixels as a sequence
        out, _ = self.lstm(sequence)
        z = self.mlp(out[:, -1])
        z = torch.relu(self.hidden(z))
        return self.head(z)


def build():
    torch.manual_seed(0)  # the same numbers on every run
    return Mistakes(), torch.randn(2, 3, 8, 8)
