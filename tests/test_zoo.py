"""Tests for the model zoo (compress.zoo)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress import zoo

# name -> (builder kwargs, input shape) chosen to keep forward passes fast.
SMALL = {
    "tiny_cnn": (dict(num_classes=10, in_channels=1), (2, 1, 8, 8)),
    "resnet20": (dict(num_classes=10, in_channels=3), (2, 3, 16, 16)),
    "resnet18": (dict(num_classes=10, in_channels=1, small_input=True, width=16), (2, 1, 8, 8)),
    "mobilenetv2": (dict(num_classes=10, in_channels=1, width_mult=0.5, small_input=True), (2, 1, 8, 8)),
    "efficientnet_b0": (dict(num_classes=10, in_channels=1, width_mult=0.5, small_input=True), (2, 1, 8, 8)),
    "transformer": (dict(num_classes=10, in_channels=1, image_size=8), (2, 1, 8, 8)),
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


TEXT = {"text_encoder"}  # two int64 inputs: tested in tests/test_multi_input.py


def test_registry_complete():
    assert set(zoo.names()) == set(SMALL) | TEXT
    assert zoo.names() == sorted(zoo.ZOO)
    for name in zoo.names():
        assert callable(zoo.get(name))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shape(name):
    torch.manual_seed(0)
    kwargs, shape = SMALL[name]
    model = zoo.get(name)(**kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == (shape[0], kwargs["num_classes"])
    assert torch.isfinite(out).all()


def test_forward_default_input_sizes():
    """The standard (non-small) stems still work on their native resolutions."""
    with torch.no_grad():
        assert zoo.get("resnet18")(num_classes=5, width=8).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        m = zoo.get("mobilenetv2")(num_classes=5, width_mult=0.25).eval()
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        e = zoo.get("efficientnet_b0")(num_classes=5, width_mult=0.25, depth_mult=0.5).eval()
        assert e(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize(
    "name,expected,rel",
    [
        ("resnet18", 11.69e6, 0.01),
        ("mobilenetv2", 3.50e6, 0.02),
        ("efficientnet_b0", 5.29e6, 0.03),
    ],
)
def test_param_count_imagenet(name, expected, rel):
    assert _params(zoo.get(name)(num_classes=1000)) == pytest.approx(expected, rel=rel)


def test_param_count_resnet20():
    assert _params(zoo.get("resnet20")(num_classes=10)) == pytest.approx(0.27e6, rel=0.03)


def test_kaiming_bn_init():
    model = zoo.get("resnet20")()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


def _export(model: torch.nn.Module, shape: tuple[int, ...], path) -> None:
    with warnings.catch_warnings():  # the legacy exporter warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.randn(*shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet20", "transformer"])
def test_onnx_parity(name, tmp_path):
    torch.manual_seed(0)
    kwargs, shape = SMALL[name]
    model = zoo.get(name)(**kwargs).eval()
    path = tmp_path / f"{name}.onnx"
    _export(model, shape, path)
    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # differs from the export batch: the batch axis is dynamic
        x = torch.randn(batch, *shape[1:])
        with torch.no_grad():
            ref = model(x).numpy()
        (got,) = sess.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_transformer_onnx_matmul_initializers(tmp_path):
    kwargs, shape = SMALL["transformer"]
    model = zoo.get("transformer")(**kwargs).eval()
    path = tmp_path / "transformer.onnx"
    _export(model, shape, path)
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    # embed + per block (q, k, v, out, fc1, fc2) at least.
    depth = 2
    assert len(weight_matmuls) >= 1 + 6 * depth


def test_unknown_name_suggests():
    with pytest.raises(KeyError) as exc:
        zoo.get("resnet2")
    msg = str(exc.value)
    assert "did you mean" in msg and "resnet20" in msg
    for name in zoo.names():
        assert name in msg


def test_import_is_light():
    code = "import sys, compress.zoo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
