"""quantize.qat: NNCF QAT on a tiny CNN -> QDQ ONNX that ONNX Runtime runs with integer kernels."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

from compress.cli import main  # noqa: E402
from compress.errors import StageError  # noqa: E402
from compress.stages.base import ONNX_FLOAT, ONNX_QUANTIZED, TORCH_FLOAT  # noqa: E402
from compress.stages.quantize_qat import QuantizeQAT, QuantizeQATConfig  # noqa: E402

SHAPE = (1, 1, 8, 8)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    from compress.data import DataConfig, load_dataset

    return load_dataset(DataConfig(source="digits", seed=0, limit=900), ".")


@pytest.fixture(scope="module")
def float_artifact(digits, tmp_path_factory):
    """A tiny_cnn (width 8) trained on digits, saved as a torch artifact."""
    import torch

    from compress import zoo
    from compress.artifact import Artifact, save_torch
    from compress.training import TrainConfig, train

    kwargs = {"num_classes": 10, "in_channels": 1, "width": 8}
    torch.manual_seed(0)
    model = zoo.get("tiny_cnn")(**kwargs)
    train(model, digits, TrainConfig(epochs=30, lr=3e-3, threads=1))
    tmp = tmp_path_factory.mktemp("float")
    stub = Artifact(format="torch", precision="float32", dir=tmp, files={}, file_hashes={}, input_shape=SHAPE,
                    recipe={"callable": zoo.ZOO["tiny_cnn"], "kwargs": kwargs})
    return save_torch(model, tmp / "art", like=stub, producer="baseline")


def run_stage(art, digits, work: Path, **config):
    from compress.calibration import CalibrationConfig
    from compress.context import StageContext
    from compress.export import ExportConfig

    work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(dataset=digits, work_dir=work, export=ExportConfig(), base_dir=Path("."),
                       calibration=CalibrationConfig(), stage_name="qat", log=lambda m: None)
    return QuantizeQAT(QuantizeQATConfig.model_validate(config)).run(art, ctx)


def ort_accuracy(path: Path, digits) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x, y = digits.split("eval")
    pred = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)
    return 100.0 * float((pred == y).mean())


@pytest.fixture(scope="module")
def qat(float_artifact, digits, tmp_path_factory):
    return run_stage(float_artifact, digits, tmp_path_factory.mktemp("qat"),
                     train={"epochs": 3, "lr": 1e-3, "threads": 1, "eval_every": "epoch"})


def test_qat_exports_int8_that_ort_runs_with_integer_kernels(qat, float_artifact, digits):
    import onnx

    assert qat.kind == ONNX_QUANTIZED and qat.precision == "int8"
    path = qat.path("onnx")
    assert path == qat.dir / "model.onnx" and path.is_file()
    assert not (qat.dir / "qdq_fake.onnx").exists()
    f = qat.facts
    assert f["integer_ops"].get("QLinearConv") == 2
    assert f["bn_folded"] == 2
    # weights are stored as int8 initializers, and facts say so per layer
    convs = {k: v for k, v in f["layer_precision"].items() if "Conv" in k}
    assert len(convs) == 2 and set(convs.values()) == {"int8"}
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer) >= 2
    # dynamic batch, and the input name of the artifact
    x = np.ascontiguousarray(digits.split("eval")[0][:5])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == float_artifact.input_name
    assert sess.run(None, {"input": x})[0].shape == (5, 10)


def test_qat_accuracy_holds_and_facts_record_the_recovery(qat, digits):
    f = qat.facts
    fl, ptq, after = f["accuracy_float_torch"], f["accuracy_ptq_torch"], f["accuracy_qat_torch"]
    assert fl > 70  # the float model learned something
    assert after >= fl - 3 and after >= ptq - 0.5  # QAT does not collapse, and is not worse than PTQ
    assert abs(ort_accuracy(qat.path("onnx"), digits) - after) <= 2.0  # ORT INT8 agrees with torch fake-quant
    hist = f["training"]
    assert hist["kd"] is True  # distillation from the float model is on by default
    assert len(hist["eval_curve"]) == 3 and hist["steps"] == hist["planned_steps"]
    assert f["calibration_samples"] == len(digits.splits["calibration"])


def test_training_defaults_survive_a_partial_override():
    cfg = QuantizeQATConfig.model_validate({"train": {"epochs": 1}})
    assert cfg.train.epochs == 1 and cfg.train.lr == 1e-3 and cfg.train.distill is not None
    assert QuantizeQATConfig.model_validate({"train": {"distill": None}}).train.distill is None
    with pytest.raises(Exception, match="extra"):
        QuantizeQATConfig.model_validate({"bits": 4})


def test_kinds():
    cfg = QuantizeQATConfig()
    assert QuantizeQAT.reject_reason(cfg, TORCH_FLOAT) is None
    assert QuantizeQAT.output_kind(cfg, TORCH_FLOAT) == ONNX_QUANTIZED
    assert "already quantized" in QuantizeQAT.reject_reason(cfg, ONNX_QUANTIZED)
    assert "float torch model" in QuantizeQAT.reject_reason(cfg, ONNX_FLOAT)


def test_ignored_pattern_that_matches_nothing_is_a_clear_error(float_artifact, digits, tmp_path):
    with pytest.raises(StageError, match="no_such_layer") as e:
        run_stage(float_artifact, digits, tmp_path / "w", ignored=["no_such_layer"], train={"steps": 1})
    assert "model/fc/linear/0" in str(e.value)  # the hint lists the op names


def test_ignored_keeps_a_layer_float(float_artifact, digits, tmp_path):
    art = run_stage(float_artifact, digits, tmp_path / "w", ignored=["fc/"], train={"steps": 2, "threads": 1})
    prec = art.facts["layer_precision"]
    assert [v for k, v in prec.items() if "fc" in k] == ["float32"]
    assert [v for k, v in prec.items() if "Conv" in k] == ["int8", "int8"]


def test_no_integer_kernels_is_an_error(float_artifact, digits, tmp_path):
    with pytest.raises(StageError, match="no integer kernels"):
        run_stage(float_artifact, digits, tmp_path / "w", ignored=["conv2d", "fc/"], train={"steps": 1})


@pytest.mark.parametrize("first", ["quantize.qat", "quantize.ptq", "export.onnx"])
def test_validate_rejects_qat_after_quantize_or_export(first, tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("\n".join([
        "name: t",
        "model: {zoo: tiny_cnn, kwargs: {num_classes: 10, in_channels: 1}, input_shape: [1, 1, 8, 8]}",
        "stages:",
        f"  - {{name: first, type: {first}}}",
        "  - {name: second, type: quantize.qat}",
        f"output: {{dir: '{tmp_path / 'run'}', cache_dir: '{tmp_path / 'cache'}'}}",
    ]))
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 2, res.output
    assert "quantize.qat" in res.output and "torch/float" in res.output


def test_validate_accepts_the_shipped_pipeline():
    res = CliRunner().invoke(main, ["validate", str(REPO / "pipelines" / "qat.yaml")])
    assert res.exit_code == 0, res.output
    assert "onnx/quantized" in res.output
