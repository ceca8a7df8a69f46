"""An ONNX model saved with external data (weights in a side file, as torch's dynamo exporter writes them
and as every model above 2 GB must be) is an artifact that owns all its files: the chain copies them,
sha256 covers them, and an INT8 chain runs through to measurements on two runtimes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from compress.artifact import Artifact, onnx_external_files, save_onnx, write_onnx
from compress.export import ExportConfig, export_onnx
from conftest import FAST_TIMING, write_yaml


@pytest.fixture
def external_onnx(tmp_path):
    """tiny_cnn exported, then re-saved with every tensor in ``weights/cnn.bin`` beside the .onnx."""
    from compress.zoo import get

    torch.manual_seed(0)
    src = export_onnx(get("tiny_cnn")(num_classes=10, in_channels=1, width=8).eval(), [1, 1, 8, 8],
                      tmp_path / "plain.onnx", ExportConfig())
    folder = tmp_path / "user"
    (folder / "weights").mkdir(parents=True)
    onnx.save_model(onnx.load(str(src)), str(folder / "cnn.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/cnn.bin", size_threshold=0)
    assert onnx_external_files(folder / "cnn.onnx") == ["weights/cnn.bin"]
    assert (folder / "cnn.onnx").stat().st_size < (folder / "weights" / "cnn.bin").stat().st_size
    return folder / "cnn.onnx"


def test_artifact_owns_and_hashes_the_external_data(external_onnx, tmp_path):
    from compress.artifact import copy_onnx

    dst = tmp_path / "art"
    copy_onnx(external_onnx, dst)
    stub = Artifact(format="onnx", precision="float32", dir=dst, files={}, file_hashes={}, input_shape=(1, 1, 8, 8))
    art = save_onnx(dst / "model.onnx", dst, like=stub, producer="test", precision="float32")
    assert set(art.files.values()) == {"model.onnx", "weights/cnn.bin"}
    h = art.hash
    data = dst / "weights" / "cnn.bin"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="missing or changed"):  # sha256 covers the side file too
        Artifact.read(dst)
    assert Artifact.read(dst, verify=False).hash == h  # the hash names the files as they were recorded


def test_large_models_are_written_with_external_data(tmp_path, monkeypatch):
    from compress import artifact

    model = onnx.load(str(export_onnx(torch.nn.Linear(64, 64), [1, 64], tmp_path / "l.onnx", ExportConfig())))
    monkeypatch.setattr(artifact, "LARGE_ONNX_BYTES", 1000)  # stand-in for 2 GB
    write_onnx(model, tmp_path / "big.onnx")
    assert onnx_external_files(tmp_path / "big.onnx") == ["big.onnx.data"]
    assert artifact.is_large_onnx(tmp_path / "big.onnx")


def test_external_data_model_runs_through_an_int8_chain(external_onnx, tmp_path):
    from compress.cli import main

    cfg = {
        "name": "extdata",
        "model": {"onnx": str(external_onnx), "input_shape": [1, 1, 8, 8]},
        "data": {"source": "digits", "limit": 300},
        "evaluation": {"max_samples": 32},
        "calibration": {"samples": 32},
        "targets": [{"name": "ort", "timing": FAST_TIMING},
                    {"name": "ov", "runtime": "openvino", "timing": FAST_TIMING}],
        "stages": [{"name": "int8", "type": "quantize.ptq"}],
        "output": {"dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
    }
    moved = tmp_path / "elsewhere"  # the pipeline may live anywhere: the artifact copies the side file
    shutil.copytree(external_onnx.parent, moved)
    cfg["model"]["onnx"] = str(moved / "cnn.onnx")
    r = CliRunner().invoke(main, ["run", str(write_yaml(tmp_path / "p.yaml", cfg))], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    base_dir = tmp_path / "cache" / "artifacts"
    manifests = [json.loads(p.read_text()) for p in base_dir.glob("*/artifact.json")]
    baseline = next(m for m in manifests if m["hash"] == rep["baseline"]["artifact"]["hash"])
    assert baseline["files"] == {"onnx": "model.onnx", "onnx_data0": "weights/cnn.bin"}
    assert set(baseline["file_hashes"]) == {"onnx", "onnx_data0"}
    for rec in (rep["baseline"], *rep["stages"]):
        for t in ("ort", "ov"):
            m = rec["measurements"][t]
            assert m["latency"]["p50_ms"] > 0 and m["accuracy"] is not None
    assert rep["stages"][0]["measurements"]["ort"]["kernels"]["integer"]
    assert rep["stages"][0]["measurements"]["ov"]["kernels"]["integer"]
    np.testing.assert_allclose(rep["stages"][0]["measurements"]["ort"]["cosine"], 1.0, atol=0.02)
