"""The residual family (ResNet basic blocks): per-stage depth and per-stage width multiplier, and the
input resolution. The first block of every stage has a 1x1 projection shortcut, so all subnets share
one structure."""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.search.elastic import (SharedWeightSpace, WeightSharing, conv_bn_act, conv_out, make_divisible, resize, run_cba)
from compress.search.space import Block, Config, SearchSpace

SMALL_STAGES = [[16, 1], [32, 2], [64, 2]]  # ResNet-20's stages


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = conv_bn_act(cin, cout, 3, stride, act="relu")
        self.conv2 = conv_bn_act(cout, cout, 3, 1, act=None)
        self.down = conv_bn_act(cin, cout, 1, stride, act=None) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = self.down(x) if self.down is not None else x
        return F.relu(self.conv2(self.conv1(x)) + sc)

    def forward_active(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        sc = run_cba(self.down, x, cout) if self.down is not None else x
        return F.relu(run_cba(self.conv2, run_cba(self.conv1, x, cout), cout) + sc)


class ResNetS(nn.Module):
    def __init__(self, config: Config, in_channels: int = 1, num_classes: int = 10, input_size: int = 32,
                 stages: list[list[int]] | None = None, stem_channels: int = 16):
        super().__init__()
        self.input_size, self.resolution = input_size, config["res"]
        self.stage_spec = [tuple(s) for s in (stages or SMALL_STAGES)]
        self.stem = conv_bn_act(in_channels, stem_channels, 3, 1, act="relu")
        cin, blocks = stem_channels, []
        for i, (c, stride) in enumerate(self.stage_spec):
            cout = make_divisible(c * config[f"w{i}"])
            blocks.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1, b == 0)
                                          for b in range(config[f"d{i}"])]))
            cin = cout
        self.stages = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolution != self.input_size:
            x = resize(x, self.resolution)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SuperResNet(WeightSharing, ResNetS):
    """The largest network; ``activate(config)`` makes the next forwards run that subnet (shared weights)."""

    def forward_active(self, x: torch.Tensor, c: Config) -> torch.Tensor:
        x = self.stem(x)
        for i, (ch, _) in enumerate(self.stage_spec):
            cout = make_divisible(ch * c[f"w{i}"])
            for b in range(c[f"d{i}"]):
                x = self.stages[i][b].forward_active(x, cout)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.fc.weight[:, :x.shape[1]], self.fc.bias)


def build(config: Config, **kw: Any) -> ResNetS:
    return ResNetS(config, **kw)


def block(kind: str, **kw: Any) -> nn.Module:
    """Latency-table block: resize | stem | basic | head."""
    if kind == "resize":
        from compress.search.mbnet import _Resize

        return _Resize(kw["size"])
    if kind == "stem":
        return conv_bn_act(kw["cin"], kw["cout"], 3, 1, act="relu")
    if kind == "basic":
        return BasicBlock(kw["cin"], kw["cout"], kw["stride"], kw["project"])
    if kind == "head":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(kw["cin"], kw["classes"]))
    raise ValueError(f"unknown block kind '{kind}'")


class ResidualSpace(SharedWeightSpace, SearchSpace):
    name = "residual"
    supernet_class = SuperResNet
    build = staticmethod(build)

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 32,
                 stages: list[list[int]] | None = None, stem_channels: int = 16, depths: list[int] = (1, 2, 3),
                 widths: list[float] = (0.5, 0.75, 1.0), resolutions: list[int] | None = None):
        self.kwargs = dict(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                           stages=[list(s) for s in (stages or SMALL_STAGES)], stem_channels=stem_channels)
        self.depths, self.widths = sorted(depths), sorted(widths)
        self.resolutions = sorted(resolutions or [input_size])

    def choices(self) -> dict[str, list[Any]]:
        ch: dict[str, list[Any]] = {"res": list(self.resolutions)}
        for i in range(len(self.kwargs["stages"])):
            ch[f"d{i}"], ch[f"w{i}"] = list(self.depths), list(self.widths)
        return ch

    def covering_configs(self) -> list[Config]:
        """Per resolution, every combination of stage widths at full depth covers every block."""
        n = len(self.kwargs["stages"])
        out = []
        for r in self.resolutions:
            for ws in itertools.product(self.widths, repeat=n):
                c = {"res": r}
                for i, w in enumerate(ws):
                    c[f"d{i}"], c[f"w{i}"] = max(self.depths), w
                out.append(c)
        return out

    def blocks(self, config: Config) -> list[Block]:
        k, c, fn = self.kwargs, self.canonical(config), "compress.search.resnet:block"
        h, out = c["res"], []
        if h != k["input_size"]:
            out.append(Block("resize", {"callable": fn, "kwargs": {"kind": "resize", "size": h}},
                             (1, k["in_channels"], k["input_size"], k["input_size"])))
        out.append(Block("stem", {"callable": fn, "kwargs": {"kind": "stem", "cin": k["in_channels"],
                                                             "cout": k["stem_channels"]}}, (1, k["in_channels"], h, h)))
        cin = k["stem_channels"]
        for i, (ch, stride) in enumerate(k["stages"]):
            cout = make_divisible(ch * c[f"w{i}"])
            for b in range(c[f"d{i}"]):
                st = stride if b == 0 else 1
                kw = {"kind": "basic", "cin": cin, "cout": cout, "stride": st, "project": b == 0}
                out.append(Block("basic", {"callable": fn, "kwargs": kw}, (1, cin, h, h)))
                h, cin = conv_out(h, st), cout
        out.append(Block("head", {"callable": fn, "kwargs": {"kind": "head", "cin": cin, "classes": k["num_classes"]}},
                         (1, cin, h, h)))
        return out

