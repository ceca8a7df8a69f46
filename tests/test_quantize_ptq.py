"""quantize.ptq (INT8 PTQ via onnxruntime quantize_static / nncf.quantize) and calibration sets."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from compress.artifact import ONNX, Artifact, save_onnx, save_torch
from compress.calibration import (
    CalibrationConfig,
    calibration_fingerprint,
    load_calibration,
    read_calibration_set,
    write_calibration_set,
)
from compress.context import StageContext
from compress.data import DataConfig, load_dataset
from compress.errors import ConfigError, StageError
from compress.export import ExportConfig, export_onnx
from compress.kernels import integer_kernel_counts
from compress.stages.quantize_ptq import QuantizePTQ, QuantizePTQConfig

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 1, 8, 8)
RECIPE = {"callable": "compress.zoo.tiny:tiny_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "width": 16}}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(source="digits", limit=600), Path("."))


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory) -> Artifact:
    """A tiny CNN trained on 600 digits: a torch/float artifact."""
    import torch

    from compress.artifact import import_callable
    from compress.training import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: more threads only contend on a shared box
    try:
        torch.manual_seed(0)
        model = import_callable(RECIPE["callable"])(**RECIPE["kwargs"])
        train(model, digits, TrainConfig(steps=300, batch_size=32, lr=0.01, seed=0))
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("baseline")
    stub = Artifact(format="torch", precision="float32", dir=folder, files={}, file_hashes={}, input_shape=SHAPE,
                    recipe=RECIPE)
    return save_torch(model, folder, like=stub, producer="baseline")


@pytest.fixture(scope="module")
def float_onnx(trained, tmp_path_factory) -> Artifact:
    """The trained model exported to ONNX (BN folded by the exporter): an onnx/float artifact."""
    from compress.artifact import build_module

    folder = tmp_path_factory.mktemp("float")
    export_onnx(build_module(trained), SHAPE, folder / ONNX, ExportConfig())
    return save_onnx(folder / ONNX, folder, like=trained, producer="export", precision="float32")


def _ctx(ds, work: Path, **cal) -> StageContext:
    work.mkdir(parents=True, exist_ok=True)
    return StageContext(dataset=ds, work_dir=work, export=ExportConfig(), base_dir=work,
                        calibration=CalibrationConfig(**{"samples": 48, **cal}), stage_name="ptq",
                        log=lambda m: None)


def _ort_accuracy(path: Path, ds) -> float:
    import onnxruntime as ort

    x, y = ds.split("eval")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)
    return 100.0 * float((pred == y).mean())


# -- quantization itself --------------------------------------------------------------------------


def test_per_tensor_weight_error_is_within_half_a_step(float_onnx, digits, tmp_path):
    cfg = QuantizePTQConfig(per_channel=False, preprocess=False)
    art = QuantizePTQ(cfg).run(float_onnx, _ctx(digits, tmp_path / "q"))
    fm = onnx.load(str(float_onnx.path("onnx")))
    qm = onnx.load(str(art.path("onnx")))
    f_init = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
    q_init = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    q_prod = {o: n for n in qm.graph.node for o in n.output}
    f_nodes = {n.name: n for n in fm.graph.node}
    checked = 0
    for node in qm.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = q_prod[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q, scale = q_init[dq.input[0]], q_init[dq.input[1]]
        zp = q_init[dq.input[2]] if len(dq.input) > 2 else np.zeros_like(q)
        assert q.dtype == np.int8 and scale.size == 1, "per-tensor int8 weights expected"
        w = f_init[f_nodes[node.name].input[1]]
        deq = (q.astype(np.float32) - zp.astype(np.float32)) * scale
        assert deq.shape == w.shape
        err = np.abs(deq - w).max()
        assert err <= float(scale) / 2 + 1e-6, f"{node.name}: error {err} > step/2 {float(scale) / 2}"
        assert err > 0  # it really is quantized
        checked += 1
    assert checked == 3  # two Conv + the Gemm head


def test_int8_graph_has_integer_kernels_and_facts(trained, digits, tmp_path):
    art = QuantizePTQ(QuantizePTQConfig()).run(trained, _ctx(digits, tmp_path / "q"))
    assert art.kind == "onnx/quantized" and art.precision == "int8"
    assert art.path("onnx") == tmp_path / "q" / ONNX
    ints, floats = integer_kernel_counts(art.path("onnx"))
    assert ints.get("QLinearConv") == 2 and not floats
    f = art.facts
    assert f["integer_ops"] == sum(ints.values()) and f["float_compute_ops_left"] == 0
    assert f["quantized_layers"] == 3 and f["float_layers"] == []
    assert {v["weights"] for v in f["layer_precision"].values()} == {"int8"}
    # U8S8 default: uint8 activations into every layer after the first (whose input is signed data)
    assert f["layer_precision"]["/fc/Gemm"]["activations"] == "uint8"
    cal = f["calibration"]
    assert cal["samples"] == 48 and len(cal["fingerprint"]) == 64
    assert cal["fingerprint"] == calibration_fingerprint(digits, CalibrationConfig(samples=48))
    assert f["settings"]["activation_type"] == "uint8" and "preset" not in f["settings"]


@pytest.mark.parametrize("backend", ["onnxruntime", "nncf"])
def test_ignored_layers_stay_float_on_both_backends(backend, trained, digits, tmp_path):
    # the same pattern means the same thing on both backends (re.search on ONNX node names)
    art = QuantizePTQ(QuantizePTQConfig(backend=backend, ignored=["fc/"])).run(trained, _ctx(digits, tmp_path / "a"))
    assert art.precision == "mixed" and "/fc/Gemm" in art.facts["float_layers"]


def test_ignored_layers_stay_float_and_unmatched_patterns_fail(trained, digits, tmp_path):
    art = QuantizePTQ(QuantizePTQConfig(ignored=["/fc/"])).run(trained, _ctx(digits, tmp_path / "a"))
    assert art.precision == "mixed" and art.facts["float_layers"] == ["/fc/Gemm"]
    assert art.facts["float_compute_ops_left"] == 1
    with pytest.raises(StageError, match="match no node"):
        QuantizePTQ(QuantizePTQConfig(ignored=["nothing-like-this"])).run(trained, _ctx(digits, tmp_path / "b"))


@pytest.mark.parametrize("backend", ["onnxruntime", "nncf"])
def test_both_backends_keep_accuracy(backend, trained, float_onnx, digits, tmp_path):
    ref = _ort_accuracy(float_onnx.path("onnx"), digits)
    assert ref > 80, f"the test model is undertrained ({ref:.1f}%)"
    art = QuantizePTQ(QuantizePTQConfig(backend=backend)).run(trained, _ctx(digits, tmp_path / "q"))
    acc = _ort_accuracy(art.path("onnx"), digits)
    assert abs(ref - acc) <= 5.0, f"{backend}: {ref:.1f}% -> {acc:.1f}%"
    assert art.facts["backend"] == backend and art.facts["integer_ops"] > 0
    assert art.facts["library"].startswith("nncf" if backend == "nncf" else "onnxruntime")


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_gets_equal_batches(method, trained, digits, tmp_path):
    # 48 samples in batches of 32 would leave a short batch that ORT's histogram collector rejects
    art = QuantizePTQ(QuantizePTQConfig(calibration_method=method)).run(trained, _ctx(digits, tmp_path / "q"))
    cal = art.facts["calibration"]
    assert (cal["samples"], cal["batch_size"], cal["batches"]) == (48, 24, 2)
    assert art.facts["integer_ops"] > 0 and method.capitalize() in art.facts["library"]


def test_fixed_batch_model_is_calibrated_at_its_batch_size(trained, digits, tmp_path):
    from compress.artifact import build_module

    folder = tmp_path / "fixed"
    export_onnx(build_module(trained), (4, 1, 8, 8), folder / ONNX, ExportConfig(dynamic_batch=False))
    stub = Artifact(format="onnx", precision="float32", dir=folder, files={}, file_hashes={}, input_shape=(4, 1, 8, 8))
    art = save_onnx(folder / ONNX, folder, like=stub, producer="export", precision="float32")
    q = QuantizePTQ(QuantizePTQConfig()).run(art, _ctx(digits, tmp_path / "q", samples=10))
    cal = q.facts["calibration"]
    assert (cal["samples"], cal["batch_size"], cal["batches"]) == (10, 4, 3)  # last batch padded to 4
    assert q.facts["integer_ops"] > 0


def test_unfoldable_batchnorm_is_refused(digits, tmp_path):
    c = 1
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["input", "s", "b", "m", "v"], ["bn"]),
         helper.make_node("Conv", ["bn", "W"], ["y"], pads=[1, 1, 1, 1])],
        "bn_first", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(a, n) for a, n in [
            (np.full(c, 2.0, np.float32), "s"), (np.zeros(c, np.float32), "b"), (np.ones(c, np.float32), "m"),
            (np.ones(c, np.float32), "v"), (np.ones((4, 1, 3, 3), np.float32) / 9, "W")]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save(model, str(folder / ONNX))
    stub = Artifact(format="onnx", precision="float32", dir=folder, files={}, file_hashes={}, input_shape=SHAPE)
    art = save_onnx(folder / ONNX, folder, like=stub, producer="test", precision="float32")
    with pytest.raises(StageError, match="BatchNormalization") as ei:
        QuantizePTQ(QuantizePTQConfig()).run(art, _ctx(digits, tmp_path / "q"))
    assert "slower" in str(ei.value)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, needle", [
    ({"per_chanel": True}, "per_chanel"),
    ({"activation_type": "int16"}, "activation_type"),
    ({"backend": "tensorrt"}, "backend"),
    ({"backend": "nncf", "calibration_method": "entropy"}, "not available with backend: nncf"),
    ({"backend": "nncf", "activation_type": "uint8"}, "backend: onnxruntime only"),
    ({"preset": "mixed"}, "backend: nncf only"),
    ({"ignored": ["(unclosed"]}, "not a valid regular expression"),
    ({"samples": 0}, "samples"),
])
def test_config_errors(raw, needle):
    with pytest.raises(ValidationError) as ei:
        QuantizePTQConfig.model_validate(raw)
    assert needle in str(ei.value)


def test_applied_settings_per_backend():
    ort = QuantizePTQConfig().applied()
    assert "preset" not in ort and ort["activation_type"] == "uint8" and ort["weight_type"] == "int8"
    nn = QuantizePTQConfig(backend="nncf", preset="mixed").applied()
    assert nn["preset"] == "mixed" and "activation_type" not in nn


PIPE = """\
model:
  zoo: tiny_cnn
  kwargs: {{num_classes: 10, in_channels: 1}}
  input_shape: [1, 1, 8, 8]
  train: {{steps: 150, batch_size: 32, lr: 0.01}}
data: {{source: digits, limit: 400}}
{calibration}
stages:
{stages}
output: {{dir: {out}, cache_dir: {cache}}}
"""


def _pipeline(tmp_path: Path, stages: str, calibration: str = "") -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(PIPE.format(stages=textwrap.indent(stages, "  "), calibration=calibration,
                             out=tmp_path / "run", cache=tmp_path / "cache"))
    return p


@pytest.mark.parametrize("second", ["quantize.ptq", "transform.fold_bn"])
def test_validate_rejects_stages_after_quantization(tmp_path, second):
    from compress.cli import main

    p = _pipeline(tmp_path, f"- {{name: q, type: quantize.ptq}}\n- {{name: again, type: {second}}}\n")
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"stages[1] ({second} 'again')" in out
    assert "already quantized" in out and "receives onnx/quantized" in out


def test_validate_accepts_float_chain(tmp_path):
    from compress.cli import main

    p = _pipeline(tmp_path, "- {name: fold, type: transform.fold_bn}\n- {name: q, type: quantize.ptq}\n")
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 0, res.output
    assert "final artifact onnx/quantized" in res.output


def test_calibration_split_and_path_are_exclusive():
    with pytest.raises(ValidationError, match="calibration.split does not apply"):
        CalibrationConfig(path="x.npz", split="train")


# -- calibration sets -----------------------------------------------------------------------------


def test_shipped_digits_set_is_valid_and_disjoint_from_eval():
    x, man = read_calibration_set(REPO / "calibration" / "digits-8x8")
    assert x.shape == (128, 1, 8, 8) and x.dtype == np.float32
    assert man["count"] == 128 and man["sample_shape"] == [1, 8, 8]
    assert -1.0 <= x.min() and x.max() <= 1.0  # normalize: standard
    ds = load_dataset(DataConfig(source="digits"), Path("."))
    ev = {r.tobytes() for r in ds.split("eval")[0]}
    cal = {r.tobytes() for r in ds.split("calibration")[0]}
    rows = [r.tobytes() for r in x]
    assert all(r in cal for r in rows)
    assert not any(r in ev for r in rows)


def test_manifest_sha_mismatch_is_a_config_error(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "set"
    write_calibration_set(folder, rng.normal(size=(10, 1, 8, 8)), name="t", source="random", preprocessing="none")
    x, man = read_calibration_set(folder)
    assert x.shape == (10, 1, 8, 8) and man["name"] == "t"
    # corrupt the data file: the sha256 check must catch it
    np.savez(folder / "samples.npz", x=rng.normal(size=(10, 1, 8, 8)).astype(np.float32))
    with pytest.raises(ConfigError, match="sha256"):
        read_calibration_set(folder)


def test_manifest_shape_and_count_mismatch(tmp_path):
    folder = tmp_path / "set"
    write_calibration_set(folder, np.zeros((4, 1, 8, 8), np.float32), name="t", source="s", preprocessing="none")
    man = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**man, "sample_shape": [3, 8, 8]}))
    with pytest.raises(ConfigError, match="sample_shape"):
        read_calibration_set(folder)
    (folder / "manifest.json").write_text(json.dumps({**man, "count": 5}))
    with pytest.raises(ConfigError, match="count 5"):
        read_calibration_set(folder)
    (folder / "manifest.json").write_text(json.dumps({**man, "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        read_calibration_set(folder)


def test_path_relative_to_base_dir_subset_and_fingerprint(digits, tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    cfg = CalibrationConfig(path="cal.npz", samples=20, seed=3)
    a = load_calibration(digits, cfg, tmp_path)
    b = load_calibration(digits, cfg, tmp_path)
    c = load_calibration(digits, cfg.model_copy(update={"seed": 4}), tmp_path)
    assert a.count == 20 and a.fingerprint == b.fingerprint != c.fingerprint
    assert all(any(np.array_equal(r, s) for s in x) for r in a.x)  # drawn from the file
    assert sum(len(bt) for bt in a.batches(8)) == 20
    with pytest.raises(ConfigError, match="the model takes"):
        load_calibration(digits, cfg, tmp_path, sample_shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="not found"):
        load_calibration(digits, CalibrationConfig(path="missing.npz"), tmp_path)


@pytest.mark.integration
def test_pipeline_with_shipped_calibration_set(tmp_path):
    """End to end: the YAML points at calibration/digits-8x8; the report carries the stage's facts."""
    from compress.cli import main

    cal = f"calibration: {{path: {REPO / 'calibration' / 'digits-8x8'}, samples: 64}}"
    p = _pipeline(tmp_path, "- {name: q, type: quantize.ptq}\n", calibration=cal)
    res = CliRunner().invoke(main, ["run", "-q", str(p)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    st = report["stages"][-1]
    assert st["artifact"]["precision"] == "int8"
    assert st["facts"]["calibration"]["samples"] == 64
    assert "digits-8x8" in st["facts"]["calibration"]["source"]
    assert st["measurements"]["ort-cpu"]["optimized_ops"].get("QLinearConv") == 2
