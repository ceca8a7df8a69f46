"""EfficientNet-B0 (Tan & Le, 2019): MBConv blocks with squeeze-excitation and SiLU."""

from __future__ import annotations

import math

import torch
from torch import nn

from compress.zoo.mobilenet import ConvBNAct, make_divisible

__all__ = ["EfficientNet", "MBConv", "SqueezeExcitation", "efficientnet_b0"]


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool -> 1x1 reduce -> SiLU -> 1x1 expand -> sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, kxk depthwise, SE, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = make_divisible(in_ch * expand_ratio)
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.SiLU))
        layers += [
            ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, max(1, in_ch // 4)),
            ConvBNAct(hidden, out_ch, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


class EfficientNet(nn.Module):
    """EfficientNet backbone built from the B0 stage table, scaled by width/depth multipliers."""

    #: (expand ratio, kernel, first stride, in channels, out channels, repeats)
    STAGES = [
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    ]

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        small_input: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        stem_ch = ch(self.STAGES[0][3])
        features: list[nn.Module] = [ConvBNAct(in_channels, stem_ch, 3, 1 if small_input else 2, act=nn.SiLU)]
        first_strided = True
        for t, k, s, cin, cout, n in self.STAGES:
            if s == 2 and first_strided:
                first_strided = False
                if small_input:  # keep resolution for 8x8..32x32 inputs
                    s = 1
            in_ch, out_ch = ch(cin), ch(cout)
            blocks = []
            for i in range(int(math.ceil(n * depth_mult))):
                blocks.append(MBConv(in_ch if i == 0 else out_ch, out_ch, k, s if i == 0 else 1, t))
            features.append(nn.Sequential(*blocks))
        last_in = ch(self.STAGES[-1][4])
        last_ch = 4 * last_in
        features.append(ConvBNAct(last_in, last_ch, 1, act=nn.SiLU))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_ch, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(x)


def efficientnet_b0(
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    small_input: bool = False,
) -> EfficientNet:
    """EfficientNet-B0 (~5.29M params at 1000 classes).

    ``small_input=True`` sets the stem and the first strided stage to stride 1
    (total downsampling 8x instead of 32x) so 8x8..32x32 inputs work.
    """
    return EfficientNet(num_classes, in_channels, width_mult, depth_mult, small_input)
