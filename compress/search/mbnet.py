"""The inverted-residual family (MobileNetV2 / OFA-MobileNetV3 style): per-stage depth, per-block expand
ratio and kernel size, a global width multiplier and the input resolution.

The network sees the pipeline's input (``input_size``) and, when the chosen resolution differs, resizes
it first (bilinear), so every subnet takes the same input as the baseline.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.search.elastic import (SharedWeightSpace, WeightSharing, conv_bn_act, conv_out, make_divisible, resize, run_cba)
from compress.search.space import Block, Config, SearchSpace

#: (base channels, first stride) per stage; a small-image default (digits, CIFAR-sized inputs)
SMALL_STAGES = [[16, 1], [24, 2], [32, 2], [48, 1]]
#: MobileNetV2's stages at 224 (stem stride 2)
IMAGENET_STAGES = [[24, 2], [32, 2], [64, 2], [96, 1], [160, 2], [320, 1]]


class MBBlock(nn.Module):
    """1x1 expand -> k x k depthwise (stride) -> 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: float, kernel: int, hidden: int | None = None,
                 residual: bool | None = None):
        super().__init__()
        hidden = int(round(cin * expand)) if hidden is None else hidden  # explicit: a channel-pruned block
        self.use_res = stride == 1 and cin == cout if residual is None else residual
        self.expand = conv_bn_act(cin, hidden, 1)
        self.dw = conv_bn_act(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn_act(hidden, cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.use_res else out

    def forward_active(self, x: torch.Tensor, cout: int, expand: float, kernel: int) -> torch.Tensor:
        h = run_cba(self.expand, x, int(round(x.shape[1] * expand)))
        h = run_cba(self.dw, h, k=kernel, depthwise=True)
        out = run_cba(self.project, h, cout)
        return x + out if self.use_res else out


class MBNet(nn.Module):
    """A standalone network of the family for one ``config`` (plain layers only)."""

    def __init__(self, config: Config, in_channels: int = 1, num_classes: int = 10, input_size: int = 32,
                 stages: list[list[int]] | None = None, stem_channels: int = 16, stem_stride: int = 1,
                 head_channels: int = 128):
        super().__init__()
        self.spec = _Spec(in_channels, num_classes, input_size, stages or SMALL_STAGES, stem_channels, stem_stride,
                          head_channels)
        s = self.spec
        self.resolution, self.input_size = config["res"], input_size
        w = config["width"]
        cin = s.channels(s.stem_channels, w)
        self.stem = conv_bn_act(in_channels, cin, 3, stem_stride)
        blocks = []
        for i, (c, stride) in enumerate(s.stages):
            cout = s.channels(c, w)
            stage = []
            for b in range(config[f"d{i}"]):
                stage.append(MBBlock(cin, cout, stride if b == 0 else 1, config[f"e{i}_{b}"], config[f"k{i}_{b}"]))
                cin = cout
            blocks.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(blocks)
        self.head = conv_bn_act(cin, head_channels, 1)
        self.classifier = nn.Linear(head_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolution != self.input_size:
            x = resize(x, self.resolution)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.head(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SuperMBNet(WeightSharing, MBNet):
    """The largest network; ``activate(config)`` makes the next forwards run that subnet (shared weights)."""

    def forward_active(self, x: torch.Tensor, c: Config) -> torch.Tensor:
        s, w = self.spec, c["width"]
        x = run_cba(self.stem, x, s.channels(s.stem_channels, w))
        for i, (ch, _) in enumerate(s.stages):
            cout = s.channels(ch, w)
            for b in range(c[f"d{i}"]):
                x = self.stages[i][b].forward_active(x, cout, c[f"e{i}_{b}"], c[f"k{i}_{b}"])
        x = run_cba(self.head, x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _Spec:
    def __init__(self, in_channels, num_classes, input_size, stages, stem_channels, stem_stride, head_channels):
        self.in_channels, self.num_classes, self.input_size = in_channels, num_classes, input_size
        self.stages = [tuple(s) for s in stages]
        self.stem_channels, self.stem_stride, self.head_channels = stem_channels, stem_stride, head_channels

    @staticmethod
    def channels(c: int, width: float) -> int:
        return make_divisible(c * width)


def build(config: Config, **space_kwargs: Any) -> MBNet:
    """Artifact recipe: the standalone subnet for ``config`` (weights are loaded afterwards)."""
    return MBNet(config, **space_kwargs)


def block(kind: str, **kw: Any) -> nn.Module:
    """Artifact recipe of one latency-table block (``kind``: resize | stem | mb | head)."""
    if kind == "resize":
        return _Resize(kw["size"])
    if kind == "stem":
        return conv_bn_act(kw["cin"], kw["cout"], 3, kw["stride"])
    if kind == "mb":
        return MBBlock(kw["cin"], kw["cout"], kw["stride"], kw["expand"], kw["kernel"], kw.get("hidden"),
                       kw.get("residual"))
    if kind == "head":
        return _Head(kw["cin"], kw["hidden"], kw["classes"])
    raise ValueError(f"unknown block kind '{kind}'")


class _Resize(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x):
        return resize(x, self.size)


class _Head(nn.Module):
    def __init__(self, cin: int, hidden: int, classes: int):
        super().__init__()
        self.head = conv_bn_act(cin, hidden, 1)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


class InvertedResidualSpace(SharedWeightSpace, SearchSpace):
    """Per stage: depth from ``depths``; per block: ``expands`` and ``kernels``; global ``widths`` and
    ``resolutions``. ``stages`` lists [base channels, first stride]."""

    name = "inverted_residual"
    supernet_class = SuperMBNet
    build = staticmethod(build)

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 32,
                 stages: list[list[int]] | None = None, stem_channels: int = 16, stem_stride: int = 1,
                 head_channels: int = 128, depths: list[int] = (1, 2, 3), expands: list[float] = (3, 4, 6),
                 kernels: list[int] = (3, 5, 7), widths: list[float] = (1.0,), resolutions: list[int] | None = None):
        self.kwargs = dict(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                           stages=[list(s) for s in (stages or SMALL_STAGES)], stem_channels=stem_channels,
                           stem_stride=stem_stride, head_channels=head_channels)
        self.depths, self.expands, self.kernels = sorted(depths), sorted(expands), sorted(kernels)
        self.widths = sorted(widths)
        self.resolutions = sorted(resolutions or [input_size])
        self.spec = _Spec(**self.kwargs)

    def choices(self) -> dict[str, list[Any]]:
        ch: dict[str, list[Any]] = {"res": list(self.resolutions), "width": list(self.widths)}
        for i in range(len(self.spec.stages)):
            ch[f"d{i}"] = list(self.depths)
            for b in range(max(self.depths)):
                ch[f"e{i}_{b}"] = list(self.expands)
                ch[f"k{i}_{b}"] = list(self.kernels)
        return ch

    def active_genes(self, config: Config) -> set[str]:
        act = {"res", "width"}
        for i in range(len(self.spec.stages)):
            act.add(f"d{i}")
            act.update(f"{p}{i}_{b}" for b in range(config[f"d{i}"]) for p in ("e", "k"))
        return act

    def covering_configs(self) -> list[Config]:
        """Configs whose blocks cover every block of the space: per resolution, width, expand and kernel, all
        stages at full depth with that expand/kernel everywhere (first and later blocks of every stage)."""
        out = []
        for r, w, e, k in itertools.product(self.resolutions, self.widths, self.expands, self.kernels):
            c = {"res": r, "width": w}
            for i in range(len(self.spec.stages)):
                c[f"d{i}"] = max(self.depths)
                for b in range(max(self.depths)):
                    c[f"e{i}_{b}"], c[f"k{i}_{b}"] = e, k
            out.append(c)
        return out

    def blocks(self, config: Config, model: MBNet | None = None) -> list[Block]:
        """The blocks ``config`` runs; with ``model`` (the config's network after a structured prune, say) the
        channel counts are read from its layers instead of computed from the config."""
        s, c = self.spec, self.canonical(config)
        fn, w, h = "compress.search.mbnet:block", c["width"], c["res"]
        out = []
        if h != s.input_size:
            out.append(Block("resize", {"callable": fn, "kwargs": {"kind": "resize", "size": h}},
                             (1, s.in_channels, s.input_size, s.input_size)))
        cin = s.channels(s.stem_channels, w) if model is None else model.stem[0].out_channels
        out.append(Block("stem", {"callable": fn, "kwargs": {"kind": "stem", "cin": s.in_channels, "cout": cin,
                                                             "stride": s.stem_stride}}, (1, s.in_channels, h, h)))
        h = conv_out(h, s.stem_stride)
        for i, (ch, stride) in enumerate(s.stages):
            cout = s.channels(ch, w)
            for b in range(c[f"d{i}"]):
                st = stride if b == 0 else 1
                kw = {"kind": "mb", "cin": cin, "cout": cout, "stride": st, "expand": c[f"e{i}_{b}"],
                      "kernel": c[f"k{i}_{b}"]}
                if model is not None:
                    blk = model.stages[i][b]
                    kw["cout"] = cout = blk.project[0].out_channels
                    if blk.expand[0].out_channels != int(round(cin * kw["expand"])):
                        kw["hidden"] = blk.expand[0].out_channels
                    if blk.use_res != (st == 1 and cin == cout):
                        kw["residual"] = blk.use_res
                out.append(Block("mb", {"callable": fn, "kwargs": kw}, (1, cin, h, h)))
                h, cin = conv_out(h, st), cout
        hidden = s.head_channels if model is None else model.head[0].out_channels
        out.append(Block("head", {"callable": fn, "kwargs": {"kind": "head", "cin": cin, "hidden": hidden,
                                                             "classes": s.num_classes}}, (1, cin, h, h)))
        return out
