"""Weight sharing, written once for every built-in family.

Networks are built from plain layers (``conv_bn_act`` = Conv2d + BatchNorm2d [+ activation]) so an
extracted subnet is an ordinary model that torch-pruning, fx-based BN folding and ONNX export handle.
The supernet is the *largest* network; :func:`run_cba` runs one ``conv_bn_act`` at a smaller active size
by slicing its weights (leading output/input channels, centre of the kernel), and
:func:`slice_state` cuts a supernet state dict down to a standalone subnet by the same rule, so an
extracted subnet computes exactly what the supernet computes with that config active.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def make_divisible(v: float, divisor: int = 4) -> int:
    """Round ``v`` to a multiple of ``divisor`` (at least ``divisor``; never below 90% of ``v``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_act(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: str | None = "relu6"
                ) -> "nn.Sequential":
    from torch import nn

    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act is not None:
        raise ValueError(f"unknown activation '{act}'")
    return nn.Sequential(*layers)


def run_cba(seq: "nn.Sequential", x: "torch.Tensor", cout: int | None = None, k: int | None = None,
            depthwise: bool = False) -> "torch.Tensor":
    """Run ``conv_bn_act`` ``seq`` on ``x`` with ``cout`` output channels and a ``k`` x ``k`` kernel
    (the leading channels and the centre of the kernel of the full-size layer)."""
    import torch.nn.functional as F

    conv, bn = seq[0], seq[1]
    cin = x.shape[1]
    cout = cin if depthwise else (cout or conv.out_channels)
    k = k or conv.kernel_size[0]
    w = conv.weight[:cout] if depthwise else conv.weight[:cout, :cin]
    kmax = conv.kernel_size[0]
    if k < kmax:
        o = (kmax - k) // 2
        w = w[:, :, o:o + k, o:o + k]
    y = F.conv2d(x, w, None, conv.stride, k // 2, 1, cin if depthwise else 1)
    y = F.batch_norm(y, bn.running_mean[:cout], bn.running_var[:cout], bn.weight[:cout], bn.bias[:cout],
                     bn.training, bn.momentum if bn.momentum is not None else 0.1, bn.eps)
    return seq[2](y) if len(seq) > 2 else y


def slice_tensor(src: "torch.Tensor", shape: tuple[int, ...]) -> "torch.Tensor":
    """Leading entries on every dim, except the centre on the two kernel dims of a 4-D conv weight."""
    out = src
    for d, n in enumerate(shape):
        if out.shape[d] == n:
            continue
        if src.dim() == 4 and d >= 2:
            o = (out.shape[d] - n) // 2
            out = out.narrow(d, o, n)
        else:
            out = out.narrow(d, 0, n)
    return out.clone()


def slice_state(model: "nn.Module", supernet_state: dict) -> None:
    """Load into ``model`` (a standalone subnet) the slices of ``supernet_state`` with the same names."""
    own = model.state_dict()
    missing = [k for k in own if k not in supernet_state]
    if missing:
        raise KeyError(f"the supernet has no weights for {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict({k: slice_tensor(supernet_state[k], tuple(v.shape)) for k, v in own.items()})


class WeightSharing:
    """Mixin for a supernet built as its largest subnet (put it first among the bases): ``activate(config)``
    makes the next forwards run that subnet with the shared weights, ``activate(None)`` the whole network.
    The network class gives ``input_size`` (the resolution its data comes at); the supernet implements
    ``forward_active(x, config)`` on ``x`` already resized to the subnet's resolution."""

    active: dict | None = None

    def activate(self, config: dict | None) -> None:
        self.active = config

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        c = self.active
        if c is None:
            return super().forward(x)
        if c["res"] != self.input_size:
            x = resize(x, c["res"])
        return self.forward_active(x, c)


class SharedWeightSpace:
    """Mixin for a built-in search space (before ``SearchSpace`` among the bases) whose supernet is
    ``supernet_class(largest config, **kwargs)`` and whose standalone subnets are ``build(config, **kwargs)``
    (a module-level function, so an artifact recipe can name it): ``supernet``, ``extract`` (the subnet with
    the supernet's weights sliced in, :func:`slice_state`) and ``recipe`` written once for every family."""

    supernet_class: type
    build: staticmethod
    kwargs: dict

    def supernet(self) -> "nn.Module":
        return self.supernet_class(self.largest(), **self.kwargs)

    def extract(self, supernet: "nn.Module", config: dict) -> "nn.Module":
        model = self.build(self.canonical(config), **self.kwargs)
        slice_state(model, supernet.state_dict())
        return model.eval()

    def recipe(self, config: dict) -> dict:
        fn = self.build
        return {"callable": f"{fn.__module__}:{fn.__name__}", "kwargs": {"config": self.canonical(config), **self.kwargs}}


def resize(x: "torch.Tensor", size: int) -> "torch.Tensor":
    import torch.nn.functional as F

    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def conv_out(h: int, stride: int) -> int:
    """Spatial size after a 'same'-padded conv with odd kernel and ``stride``."""
    return -(-h // stride)
