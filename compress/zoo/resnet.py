"""ResNets (He et al., 2016): CIFAR-style ResNet-20 and ImageNet ResNet-18."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet20"]


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers with an identity (or 1x1 Conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` stages.

    Args:
        layers: number of blocks per stage.
        widths: output channels per stage; every stage after the first halves
            the spatial resolution.
        stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 maxpool) or
            ``"cifar"`` (3x3 stride-1 conv, no pooling).
    """

    def __init__(
        self,
        layers: list[int],
        widths: list[int],
        num_classes: int,
        in_channels: int = 3,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(layers) != len(widths):
            raise ValueError("layers and widths must have the same length")
        in_planes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, in_planes, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, in_planes, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)

        stages = []
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNet:
    """CIFAR ResNet-20: 3x3 stem, 3 stages of 3 blocks (widths w/2w/4w), ~0.27M params."""
    return ResNet([3, 3, 3], [width, 2 * width, 4 * width], num_classes, in_channels, stem="cifar")


def resnet18(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, width: int = 64
) -> ResNet:
    """ImageNet ResNet-18 (~11.69M params at 1000 classes).

    ``small_input=True`` swaps the 7x7/2 stem and maxpool for a 3x3/1 stem so
    tiny images (8x8 to 32x32) keep enough spatial resolution.
    """
    return ResNet(
        [2, 2, 2, 2],
        [width, 2 * width, 4 * width, 8 * width],
        num_classes,
        in_channels,
        stem="cifar" if small_input else "imagenet",
    )
