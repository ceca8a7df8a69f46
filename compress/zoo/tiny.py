"""A tiny CNN for fast unit tests."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyCNN", "tiny_cnn"]


class TinyCNN(nn.Module):
    """Conv-BN-ReLU x2, global average pool, Linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 8) -> TinyCNN:
    """Build a :class:`TinyCNN` (~1.4k params at the defaults)."""
    return TinyCNN(num_classes=num_classes, in_channels=in_channels, width=width)
