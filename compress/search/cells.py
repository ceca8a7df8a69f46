"""Two search spaces with one interface, as stand-alone networks and as templates for a supernet.

* **Cells** (DARTS, Liu et al. 2019): a stem, then normal (``N``) and reduction (``R``) cells stacked by a
  fixed ``layout`` such as ``"NRN"``. A cell has two inputs (the two previous cells' outputs, 1x1-projected)
  and ``nodes`` intermediate nodes; node ``i`` sums two operations applied to earlier states; the cell's
  output concatenates its nodes. Edges leaving the two inputs of a reduction cell have stride 2. The eight
  operations of DARTS are available (:data:`CELL_OPS`). A genotype is
  ``{"normal": [[op, input], ...], "reduce": [...]}`` with two ``[op, input]`` pairs per node.
* **Inverted residual** (ProxylessNAS / FBNet): a stem, a fixed schedule of stages ``[channels, layers,
  stride]`` whose every layer is an MBConv of a chosen kernel and expansion (``mb_k5_e3``) or ``skip``
  (identity, only where stride 1 and the width does not change), then a 1x1 head. A genotype is the list
  of one op name per layer.

:func:`cell_network` and :func:`ir_network` build the stand-alone networks from a genotype: they are the
``module:callable`` of a searched architecture's torch artifact. The classes take an edge/layer factory
so that :mod:`compress.search.darts` builds the supernet from the same template with mixed operations.
:func:`single_op` builds one operation alone (what the latency table times).

Imports torch: import it only inside functions of light modules.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
from torch import nn

from compress.zoo.mobilenet import ConvBNAct, InvertedResidual

#: the eight DARTS operations, in the order of the paper's code
CELL_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
            "dil_conv_3x3", "dil_conv_5x5")
SKIP_OPS = ("skip_connect", "skip")
IR_SKIP = "skip"
_MB = re.compile(r"^mb_k(\d+)_e(\d+)$")


# -- cell operations ---------------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise dilated kxk -> pointwise 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two stacked dilation-1 :class:`DilConv` (the first one strided), as in DARTS."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool = True) -> None:
        super().__init__(DilConv(c_in, c_in, k, stride, pad, 1, affine), DilConv(c_in, c_out, k, 1, pad, 1, affine))


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset strided 1x1 convolutions (the stride-2 ``skip_connect``).

    Each half has its own BatchNorm (per-channel, so the same as one BatchNorm after the concatenation)
    so that ``transform.fold_bn`` can fold both into their convolutions."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out // 2, affine=affine)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out - c_out // 2, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return torch.cat([self.bn1(self.conv1(x)), self.bn2(self.conv2(x[:, :, 1:, 1:]))], dim=1)


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape (only ever used inside a supernet)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


def cell_op(name: str, c: int, stride: int, affine: bool = True) -> nn.Module:
    """One DARTS operation on ``c`` channels (``stride`` 1 or 2)."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        k = int(name[-1])
        return SepConv(c, c, k, stride, k // 2, affine)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(name[-1])
        return DilConv(c, c, k, stride, k - 1, 2, affine)
    raise ValueError(f"unknown cell operation '{name}': use one of {', '.join(CELL_OPS)}")


def ir_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """``skip`` (identity) or ``mb_k<kernel>_e<expand>`` (an MBConv; residual when the shapes match)."""
    if name == IR_SKIP:
        if stride != 1 or c_in != c_out:
            raise ValueError("'skip' needs stride 1 and the same width in and out")
        return nn.Identity()
    m = _MB.match(name)
    if not m:
        raise ValueError(f"unknown inverted-residual operation '{name}': use 'skip' or 'mb_k<k>_e<e>'")
    return InvertedResidual(c_in, c_out, stride, int(m.group(2)), kernel_size=int(m.group(1)))


def ir_candidates(kernels: Sequence[int], expands: Sequence[int], c_in: int, c_out: int, stride: int,
                  skip: bool = True) -> list[str]:
    """The operations a layer may take: every kernel x expansion, plus ``skip`` where it is possible."""
    ops = [f"mb_k{k}_e{e}" for k in kernels for e in expands]
    return ops + [IR_SKIP] if skip and stride == 1 and c_in == c_out else ops


def single_op(space: str, op: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """One operation alone, as it appears in a stand-alone network (for the per-operation latency table)."""
    return (cell_op(op, c_in, stride) if space == "cells" else ir_op(op, c_in, c_out, stride)).eval()


# -- templates ---------------------------------------------------------------------------------------

#: make_edge(node, input, stride, tag) -> module; ``tag`` is the op name (stand-alone) or edge index
EdgeFactory = Callable[[int, int, int, Any], nn.Module]


class Cell(nn.Module):
    """A DARTS cell; ``wiring[i]`` lists node ``i``'s incoming ``(input index, tag)`` (0, 1: the cell inputs)."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 wiring: Sequence[Sequence[tuple[int, Any]]], make_edge: EdgeFactory, affine: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine)
        self.inputs = [[int(j) for j, _ in node] for node in wiring]
        self.edges = nn.ModuleList(make_edge(i, int(j), 2 if reduction and int(j) < 2 else 1, tag)
                                   for i, node in enumerate(wiring) for j, tag in node)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        k = 0
        for ins in self.inputs:
            acc = None
            for j in ins:
                out = self.edges[k](states[j])
                k += 1
                acc = out if acc is None else acc + out
            states.append(acc)
        return torch.cat(states[2:], dim=1)


class CellNetwork(nn.Module):
    """Stem -> cells stacked by ``layout`` (``N`` normal, ``R`` reduction: half resolution, double width)
    -> global pool -> linear. ``wiring(kind)`` and ``make_edge(kind, cell, c)`` give each cell's edges."""

    def __init__(self, num_classes: int, in_channels: int, c: int, layout: str, nodes: int,
                 wiring: Callable[[str], Sequence[Sequence[tuple[int, Any]]]],
                 make_edge: Callable[[str, int, int], EdgeFactory], affine: bool = True,
                 stem_multiplier: int = 3) -> None:
        super().__init__()
        c_curr = stem_multiplier * c
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, c
        cells, red_prev = [], False
        for i, kind in enumerate(layout):
            red = kind == "R"
            if red:
                c_curr *= 2
            kind_name = "reduce" if red else "normal"
            cells.append(Cell(c_pp, c_p, c_curr, red, red_prev, wiring(kind_name), make_edge(kind_name, i, c_curr),
                              affine))
            red_prev = red
            c_pp, c_p = c_p, nodes * c_curr
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(self.pool(s1), 1))


class IRNetwork(nn.Module):
    """Stem 3x3 -> ``stages`` of ``[channels, layers, stride]`` layers from ``make_layer(index, c_in, c_out,
    stride)`` -> 1x1 head -> global pool -> linear."""

    def __init__(self, num_classes: int, in_channels: int, stem: int, stages: Sequence[Sequence[int]], head: int,
                 make_layer: Callable[[int, int, int, int], nn.Module]) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem, 3, 1)
        layers, c = [], stem
        for c_out, n, s in stages:
            for i in range(int(n)):
                layers.append(make_layer(len(layers), c, int(c_out), int(s) if i == 0 else 1))
                c = int(c_out)
        self.layers = nn.Sequential(*layers)
        self.head = ConvBNAct(c, head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.head(self.layers(self.stem(x)))), 1))


def ir_layer_shapes(stem: int, stages: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """``(c_in, c_out, stride)`` of every layer of the inverted-residual template."""
    out, c = [], stem
    for c_out, n, s in stages:
        for i in range(int(n)):
            out.append((c, int(c_out), int(s) if i == 0 else 1))
            c = int(c_out)
    return out


# -- stand-alone builders (the recipe of a searched architecture) ----------------------------------


def _check_genotype(genotype: dict, nodes: int) -> None:
    for kind in ("normal", "reduce"):
        pairs = genotype.get(kind)
        if not isinstance(pairs, list) or len(pairs) != 2 * nodes:
            raise ValueError(f"genotype['{kind}'] must list 2 [op, input] pairs per node ({2 * nodes}), got {pairs!r}")
        for n, (op, j) in enumerate(pairs):
            if not 0 <= int(j) < 2 + n // 2:
                raise ValueError(f"genotype['{kind}'][{n}]: node {n // 2} cannot read state {j}")
            cell_op(op, 8, 1)  # raises on an unknown name


def cell_network(genotype: dict, num_classes: int = 10, in_channels: int = 1, c: int = 8, layout: str = "NRN",
                 nodes: int = 3) -> CellNetwork:
    """The stand-alone network of a cell genotype (affine BatchNorm, no mixed operations)."""
    _check_genotype(genotype, nodes)

    def wiring(kind: str):
        pairs = genotype[kind]
        return [[(int(j), op) for op, j in pairs[2 * i:2 * i + 2]] for i in range(nodes)]

    def make_edge(kind: str, cell: int, width: int) -> EdgeFactory:
        return lambda node, j, stride, op: cell_op(op, width, stride)

    return CellNetwork(num_classes, in_channels, c, layout, nodes, wiring, make_edge, affine=True)


def ir_network(genotype: Sequence[str], num_classes: int = 10, in_channels: int = 1, stem: int = 16,
               stages: Sequence[Sequence[int]] = ((16, 1, 1), (24, 2, 2), (32, 2, 2)), head: int = 64) -> IRNetwork:
    """The stand-alone network of an inverted-residual genotype (one op name per layer)."""
    shapes = ir_layer_shapes(stem, stages)
    if len(genotype) != len(shapes):
        raise ValueError(f"the genotype names {len(genotype)} layers, the stages have {len(shapes)}")
    return IRNetwork(num_classes, in_channels, stem, stages, head,
                     lambda i, c_in, c_out, s: ir_op(genotype[i], c_in, c_out, s))


def skip_share(space: str, genotype: Any) -> float:
    """Share of the derived operations that are skips (the symptom of DARTS's collapse)."""
    ops = [op for kind in ("normal", "reduce") for op, _ in genotype[kind]] if space == "cells" else list(genotype)
    return sum(op in SKIP_OPS for op in ops) / max(len(ops), 1)

