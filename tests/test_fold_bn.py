"""BN folding equals the unfolded model within float32 rounding, and replays from the artifact."""
from __future__ import annotations

import pytest
import torch

from compress import zoo
from compress.stages.fold_bn import fold


def _with_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so folding is actually exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name,kwargs,shape", [
    ("tiny_cnn", {"in_channels": 1}, (4, 1, 8, 8)),
    ("resnet20", {"in_channels": 3}, (2, 3, 16, 16)),
    ("mobilenetv2", {"num_classes": 10, "small_input": True}, (2, 3, 16, 16)),
])
def test_folded_equals_unfolded(name, kwargs, shape):
    model = _with_stats(zoo.get(name)(**kwargs))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    folded, counts = fold(model)
    with torch.no_grad():
        got = folded(x)
    assert counts["folded"] > 0 and counts["not_folded"] == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    # float32 rounding: relative to the output scale
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), (got - ref).abs().max()


def test_bn_after_non_conv_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    _with_stats(model)
    folded, counts = fold(model)
    assert counts["folded"] == 0 and counts["not_folded"] == ["2"]
    x = torch.randn(2, 1, 6, 6)
    assert torch.allclose(folded(x), model(x), atol=1e-6)


def test_linear_bn1d_is_folded():
    model = _with_stats(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3)))
    folded, counts = fold(model)
    x = torch.randn(4, 5)
    assert counts["folded"] == 1
    assert torch.allclose(folded(x), model(x), atol=1e-5)
