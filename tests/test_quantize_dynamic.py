"""quantize.dynamic: onnxruntime quantize_dynamic on MatMul layers and embedding tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from compress.artifact import ONNX, Artifact, save_onnx
from compress.context import StageContext
from compress.data import make_synthetic
from compress.evaluation import fidelity
from compress.export import ExportConfig
from compress.stages.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig


def _embedder(folder: Path) -> Artifact:
    """Token ids -> embedding (a 2000 x 64 table) -> 2 MatMul layers -> 10 outputs, as ONNX."""
    import torch
    from torch import nn

    class Embedder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(2000, 64)
            self.fc1 = nn.Linear(64, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, ids):
            h = self.emb(ids)  # (N, T, 64): 3-D, so Linear exports as MatMul
            return self.fc2(torch.relu(self.fc1(h))).mean(1)

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    ids = torch.zeros(1, 16, dtype=torch.int64)
    torch.onnx.export(Embedder().eval(), (ids,), str(folder / ONNX), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "n"}}, dynamo=False)
    stub = Artifact(format="onnx", precision="float32", dir=folder, files={}, file_hashes={}, input_shape=(1, 16))
    return save_onnx(folder / ONNX, folder, like=stub, producer="baseline", precision="float32")


def _run(art: Artifact, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(art.path("onnx")), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def test_dynamic_quantizes_matmuls_and_the_embedding_table(tmp_path):
    base = _embedder(tmp_path / "float")
    ds = make_synthetic(64, (16,), num_classes=None)
    logs: list[str] = []
    ctx = StageContext(dataset=ds, work_dir=tmp_path / "out", export=ExportConfig(), base_dir=tmp_path,
                       stage_name="dyn", log=logs.append)
    ctx.work_dir.mkdir()
    out = QuantizeDynamic(QuantizeDynamicConfig()).run(base, ctx)
    assert out.kind == "onnx/quantized" and out.precision == "int8"
    assert out.facts["embeddings_quantized"] == 1  # Gather on an 8-bit table
    assert out.facts["int8_layers_runtime"] == 2 and out.facts["float_layers_runtime"] == 0
    assert out.size_bytes < 0.35 * base.size_bytes  # table and weights stored in 8 bits
    assert any("reduce_range auto" in m for m in logs)
    assert any("2 of 2 compute layer(s) run as INT8 kernels" in m for m in logs)
    ids = np.random.default_rng(0).integers(0, 2000, size=(50, 16)).astype(np.int64)
    f = fidelity(_run(out, ids), _run(base, ids))
    assert f["cosine"] > 0.99 and f["agreement"] >= 90  # 8-bit weights: small, bounded error
    # without Gather, the table stays float (and the file is much larger)
    ctx2 = StageContext(dataset=ds, work_dir=tmp_path / "out2", export=ExportConfig(), base_dir=tmp_path,
                        stage_name="dyn", log=logs.append)
    ctx2.work_dir.mkdir()
    no_emb = QuantizeDynamic(QuantizeDynamicConfig(op_types=["MatMul"])).run(base, ctx2)
    assert no_emb.facts["embeddings_quantized"] == 0 and no_emb.size_bytes > 2 * out.size_bytes
    g = onnx.load(str(no_emb.path("onnx"))).graph
    assert any(n.op_type == "DynamicQuantizeLinear" for n in g.node)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        QuantizeDynamicConfig(op_types=["Softmax"])
    with pytest.raises(ValidationError):
        QuantizeDynamicConfig(bits=4)
    assert QuantizeDynamicConfig(reduce_range=False).reduce_range is False
