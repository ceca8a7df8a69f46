"""torch vs ONNX Runtime parity for the export used by the runner and the export.onnx stage."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress import zoo
from compress.errors import StageError
from compress.export import ExportConfig, export_onnx


@pytest.mark.parametrize("exporter,opset", [("legacy", 17), ("dynamo", 18)])
def test_parity_within_1e4(tmp_path, exporter, opset):
    model = zoo.get("resnet20")(in_channels=1).eval()
    path = export_onnx(model, (1, 1, 8, 8), tmp_path / "m.onnx", ExportConfig(exporter=exporter, opset=opset))
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)  # batch 5: dynamic axis works
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert not (tmp_path / "m.onnx.data").exists()  # one self-contained file


def test_export_failure_is_one_clear_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu(x).numpy()  # not exportable

    with pytest.raises(StageError) as e:
        export_onnx(Bad(), (1, 3), tmp_path / "m.onnx", ExportConfig())
    assert "failed to export" in str(e.value) and "\n" not in str(e.value)


def test_dynamo_needs_opset_18():
    with pytest.raises(ValueError, match="opset >= 18"):
        ExportConfig(exporter="dynamo", opset=17)
