"""Named, typed model inputs: a tiny two-input model (a float vector + int64 token ids) exports with both
inputs, calibrates with both, quantizes, and is measured on several targets; integer inputs are never cast
or normalised; the offline text source and the zoo text encoder (input_ids + attention_mask)."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compress.calibration import CalibrationConfig, load_calibration
from compress.data import DataConfig, load_dataset
from compress.errors import ConfigError
from compress.export import ExportConfig, export_onnx
from conftest import FAST_TIMING, write_yaml

USER_MODEL = '''
import torch
from torch import nn


class TwoInputs(nn.Module):
    """forward(x: float32 (N, 4), ids: int64 (N, 3)) -> logits (N, 3)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 16)
        self.emb = nn.Embedding(10, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x, ids):
        return self.head(torch.relu(self.lin(x) + self.emb(ids).mean(1)))


def build():
    return TwoInputs()


def data():
    """A dict named after the model inputs, labels under 'labels' (the class is in the ids)."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10, size=(300, 3)).astype(np.int64)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    return {"x": x, "ids": ids, "labels": (ids[:, 0] % 3).astype(np.int64)}
'''
SPECS = [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}, {"name": "ids", "shape": ["batch", 3], "dtype": "int64"}]


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    (tmp_path / "twoin.py").write_text(textwrap.dedent(USER_MODEL))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("twoin", None)
    import twoin

    yield twoin
    sys.modules.pop("twoin", None)


def test_two_input_export_runs_with_both_inputs(user_model, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = user_model.build().eval()
    path = export_onnx(model, SPECS, tmp_path / "m.onnx", ExportConfig())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("x", "tensor(float)"), ("ids", "tensor(int64)")]
    assert sess.get_inputs()[0].shape[0] == "batch"  # symbolic batch axis
    d = user_model.data()
    x, ids = d["x"][:7], d["ids"][:7]
    got = sess.run(None, {"x": x, "ids": ids})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)


def test_named_data_keeps_integer_inputs_and_calibrates_with_both(user_model, tmp_path):
    cfg = DataConfig(source="callable", callable="twoin:data", normalize="standard")
    ds = load_dataset(cfg, tmp_path, inputs=SPECS)
    assert ds.input_names == ["x", "ids"] and ds.y is not None and ds.num_classes == 3
    assert ds.inputs["ids"].dtype == np.int64  # never cast to float ...
    np.testing.assert_array_equal(ds.inputs["ids"], user_model.data()["ids"])  # ... nor normalised
    cal = load_calibration(ds, CalibrationConfig(samples=20, batch_size=8))
    batches = list(cal.batches())
    assert cal.count == 20 and len(batches) == 3
    assert all(set(b) == {"x", "ids"} and b["ids"].dtype == np.int64 for b in batches)
    assert cal.describe()["sample_shape"] == {"x": [4], "ids": [3]}
    from compress.data.dataset import _build_named

    bad = {"x": np.zeros((10, 4), np.float32), "ids": np.zeros((10, 3), np.float32)}
    with pytest.raises(ConfigError, match="declares int64"):  # float data for an integer input is refused
        _build_named(bad, None, cfg, where="data", source_desc="t", dtypes={"x": "float32", "ids": "int64"})


def test_two_input_pipeline_exports_quantizes_and_measures_every_target(user_model, tmp_path):
    from compress.cli import main

    np.savez(tmp_path / "data.npz", **user_model.data())
    cfg = {
        "name": "twoin",
        "model": {"callable": "twoin:build", "inputs": SPECS,
                  "train": {"steps": 30, "batch_size": 32, "lr": 0.01}},
        "data": {"source": "npz", "path": "data.npz"},
        "calibration": {"samples": 32, "batch_size": 16},
        "targets": [{"name": "ort", "timing": FAST_TIMING},
                    {"name": "ov", "runtime": "openvino", "timing": FAST_TIMING},
                    {"name": "pt", "runtime": "torch", "timing": FAST_TIMING}],
        "stages": [{"name": "export", "type": "export.onnx"},
                   {"name": "int8", "type": "quantize.ptq", "config": {"preprocess": False}}],
        "output": {"dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
    }
    r = CliRunner().invoke(main, ["run", str(write_yaml(tmp_path / "p.yaml", cfg))], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [i["name"] for i in rep["data"]["inputs"]] == ["x", "ids"]
    assert rep["stages"][0]["facts"]["parity_max_abs_diff"] < 1e-4  # parity fed both inputs
    int8 = rep["stages"][1]
    assert int8["facts"]["calibration"]["sample_shape"] == {"x": [4], "ids": [3]}
    for t in ("ort", "ov"):
        m = int8["measurements"][t]
        assert m["kernels"]["integer"] and m["latency"]["n"] >= FAST_TIMING["min_runs"]
        assert m["accuracy"] is not None and m["cosine"] > 0.9
    pt = rep["baseline"]["measurements"]["pt"]
    assert pt["latency"]["p50_ms"] > 0 and pt["accuracy"] == pytest.approx(rep["baseline"]["measurements"]["ort"]
                                                                           ["accuracy"])
    assert int8["measurements"]["pt"]["na"] and int8["measurements"]["pt"]["latency"] is None  # n/a, not an error


def test_model_inputs_or_input_shape_not_both(tmp_path):
    from compress.config import ModelConfig

    with pytest.raises(Exception, match="exactly one of model.input_shape"):
        ModelConfig(zoo="tiny_cnn", input_shape=[1, 1, 8, 8], inputs=SPECS)
    m = ModelConfig(zoo="text_encoder", inputs=[{"name": "input_ids", "shape": ["batch", 16], "dtype": "int64"},
                                                {"name": "attention_mask", "shape": ["batch", 16], "dtype": "int64"}])
    assert m.input_shape == [1, 16] and m.input_name == "input_ids" and m.named_inputs()
    with pytest.raises(Exception, match="only the batch axis may be symbolic"):
        ModelConfig(zoo="tiny_cnn", inputs=[{"name": "x", "shape": ["batch", "seq"]}])
    with pytest.raises(Exception, match="dtype"):
        ModelConfig(zoo="tiny_cnn", inputs=[{"name": "x", "shape": [1, 4], "dtype": "int8"}])


def test_text_source_is_real_text_with_int64_tokens():
    ds = load_dataset(DataConfig(source="text", limit=400), ".", inputs=[
        {"name": "input_ids", "dtype": "int64"}, {"name": "attention_mask", "dtype": "int64"}])
    ids, mask = ds.inputs["input_ids"], ds.inputs["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (400, 32)
    assert (ids[:, 0] == 2).all()  # [CLS]
    assert set(np.unique(mask)) == {0, 1} and ((ids == 0) == (mask == 0)).all()  # padding is masked
    assert ds.num_classes == 4 and set(np.unique(ds.y)) == {0, 1, 2, 3}
    assert float((ids == 1).sum() / mask.sum()) < 0.2  # mostly known words: a vocabulary of the text itself
    assert "docstrings" in ds.source_desc


def test_text_encoder_exports_with_input_ids_and_attention_mask(tmp_path):
    import onnxruntime as ort

    from compress.zoo import get

    torch.manual_seed(0)
    model = get("text_encoder")(vocab_size=50, seq_len=8, num_classes=3, dim=16, heads=2).eval()
    specs = [{"name": "input_ids", "shape": ["batch", 8], "dtype": "int64"},
             {"name": "attention_mask", "shape": ["batch", 8], "dtype": "int64"}]
    path = export_onnx(model, specs, tmp_path / "t.onnx", ExportConfig())
    ids = np.array([[2, 5, 7, 0, 0, 0, 0, 0], [2, 9, 9, 9, 9, 3, 1, 4]], np.int64)
    mask = (ids != 0).astype(np.int64)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)
    # padding does not change the output: the mask is honoured
    ids2 = ids.copy()
    ids2[0, 3:] = 7
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(ids2), torch.from_numpy(mask)).numpy()[0], ref[0],
                                   atol=1e-5)


def test_embedding_task_and_user_metric_on_the_text_encoder(tmp_path, monkeypatch):
    """An encoder whose output is an embedding (no head): no accuracy; cosine / relative error vs the
    baseline, and a user metric named in the report, on two runtimes."""
    from compress.cli import main

    (tmp_path / "mymetric.py").write_text("import numpy as np\n\ndef mean_norm(outputs, labels):\n"
                                          "    return float(np.linalg.norm(outputs, axis=1).mean())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {
        "name": "embed",
        "model": {"zoo": "text_encoder", "kwargs": {"vocab_size": 2000, "seq_len": 32, "num_classes": 0, "dim": 32,
                                                    "heads": 2, "depth": 1},
                  "inputs": [{"name": "input_ids", "shape": ["batch", 32], "dtype": "int64"},
                             {"name": "attention_mask", "shape": ["batch", 32], "dtype": "int64"}]},
        "data": {"source": "text", "limit": 200},
        "evaluation": {"task": "embedding", "metric": "mymetric:mean_norm", "max_samples": 32},
        "targets": [{"name": "ort", "timing": FAST_TIMING}, {"name": "pt", "runtime": "torch", "timing": FAST_TIMING}],
        "stages": [{"name": "export", "type": "export.onnx"}],
        "output": {"dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
    }
    r = CliRunner().invoke(main, ["run", str(write_yaml(tmp_path / "p.yaml", cfg))], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    assert "quality (embedding)" in r.output and "mymetric:mean_norm" in r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["evaluation"]["task"] == "embedding" and rep["evaluation"]["metric"] == "mymetric:mean_norm"
    base, exp = rep["baseline"]["measurements"], rep["stages"][0]["measurements"]
    assert exp["pt"]["na"]  # the exported ONNX is n/a on the torch target
    assert all(m["accuracy"] is None and m["metric"] > 0 for m in (*base.values(), exp["ort"]))
    assert exp["ort"]["cosine"] == pytest.approx(1.0, abs=1e-5) and exp["ort"]["relative_error"] < 1e-3
    assert base["ort"]["metric"] == pytest.approx(base["pt"]["metric"], rel=1e-4)  # same model, two runtimes
    assert "Quality (embedding)" in (tmp_path / "run" / "report.md").read_text()


def test_qat_refuses_named_inputs_in_one_line(user_model, tmp_path):
    from compress.artifact import Artifact, save_torch
    from compress.context import StageContext
    from compress.errors import StageError
    from compress.stages.quantize_qat import QuantizeQAT

    stub = Artifact(format="torch", precision="float32", dir=tmp_path, files={}, file_hashes={}, input_shape=(1, 4),
                    input_name="x", inputs=tuple(SPECS), recipe={"callable": "twoin:build", "kwargs": {}})
    art = save_torch(user_model.build(), tmp_path / "a", like=stub, producer="test")
    ds = load_dataset(DataConfig(source="callable", callable="twoin:data"), tmp_path, inputs=SPECS)
    ctx = StageContext(dataset=ds, work_dir=tmp_path / "w", export=ExportConfig(), base_dir=tmp_path)
    with pytest.raises(StageError, match="named inputs") as e:
        QuantizeQAT(QuantizeQAT.Config()).run(art, ctx)
    assert "\n" not in str(e.value)
