"""quantize.weights: weight-only INT4/INT8 of MatMul layers (onnxruntime MatMulNBits / nncf.compress_weights)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from compress.artifact import ONNX, Artifact, build_module, save_onnx, save_torch
from compress.context import StageContext
from compress.data import DataConfig, load_dataset, make_synthetic
from compress.errors import StageError
from compress.export import ExportConfig, export_onnx
from compress.facts import onnx_facts
from compress.stages import quantize_weights as qw
from compress.stages.quantize_weights import QuantizeWeights, QuantizeWeightsConfig

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")

SHAPE = (1, 1, 8, 8)
RECIPE = {"callable": "compress.zoo.transformer:transformer",
          "kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 8, "dim": 32, "depth": 1, "heads": 2}}
CNN = {"callable": "compress.zoo.tiny:tiny_cnn", "kwargs": {"num_classes": 10, "in_channels": 1, "width": 8}}


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(source="digits", limit=600), Path("."))


def _torch_artifact(recipe, folder: Path, ds=None, steps: int = 0) -> Artifact:
    import torch

    from compress.artifact import import_callable
    from compress.training import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: more threads only contend on a shared box
    try:
        torch.manual_seed(0)
        model = import_callable(recipe["callable"])(**recipe["kwargs"])
        if steps:
            train(model, ds, TrainConfig(steps=steps, batch_size=32, lr=1e-3, seed=0))
    finally:
        torch.set_num_threads(threads)
    stub = Artifact(format="torch", precision="float32", dir=folder, files={}, file_hashes={}, input_shape=SHAPE,
                    recipe=recipe)
    return save_torch(model, folder, like=stub, producer="baseline")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory) -> Artifact:
    """A dim-32, depth-1 row transformer trained briefly on 600 digits: a torch/float artifact."""
    return _torch_artifact(RECIPE, tmp_path_factory.mktemp("baseline"), digits, steps=1000)


@pytest.fixture(scope="module")
def float_onnx(trained, tmp_path_factory) -> Artifact:
    folder = tmp_path_factory.mktemp("float")
    export_onnx(build_module(trained), SHAPE, folder / ONNX, ExportConfig())
    return save_onnx(folder / ONNX, folder, like=trained, producer="export", precision="float32")


def _ctx(ds, work: Path) -> StageContext:
    work.mkdir(parents=True, exist_ok=True)
    return StageContext(dataset=ds, work_dir=work, export=ExportConfig(), base_dir=work, stage_name="int4",
                        log=lambda m: None)


def _run(art: Artifact, ds, work: Path, **cfg) -> Artifact:
    return QuantizeWeights(QuantizeWeightsConfig(**cfg)).run(art, _ctx(ds, work))


def _accuracy(path: Path, ds) -> float:
    x, y = ds.split("eval")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1) == y).mean() * 100)


@pytest.fixture(scope="module")
def float_acc(float_onnx, digits) -> float:
    acc = _accuracy(float_onnx.path("onnx"), digits)
    assert acc > 80, f"the test model did not learn the digits ({acc:.1f}%)"
    return acc


def _dequantize(node, inits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W_hat, per-element |scale|, integer code q - zero point), each [K, N], of a 4-bit MatMulNBits node.

    Layout (com.microsoft.MatMulNBits): B is uint8 [N, blocks, block_size / 2], two 4-bit values per
    byte, low nibble first, blocks along K; scales [N, blocks] (or flat); zero points packed the same
    way as B, [N, ceil(blocks / 2)], default 8 when absent.
    """
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    k, n, bs = a["K"], a["N"], a["block_size"]
    blocks = -(-k // bs)
    b = numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks, bs // 2)
    q = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, blocks, bs).astype(np.float32)
    scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks, 1)
    if len(node.input) > 3 and node.input[3]:
        zp = numpy_helper.to_array(inits[node.input[3]]).reshape(n, -1)
        zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks].reshape(n, blocks, 1)
    else:
        zp = np.full((n, blocks, 1), 8.0)
    w = ((q - zp) * scales).reshape(n, blocks * bs)[:, :k].T
    step = np.broadcast_to(np.abs(scales), (n, blocks, bs)).reshape(n, blocks * bs)[:, :k].T
    code = (q - zp).reshape(n, blocks * bs)[:, :k].T
    return w, step, code


def _float_weights(path: Path) -> dict[str, np.ndarray]:
    """Original MatMul weight per node name."""
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.name: inits[n.input[1]] for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


# -- onnxruntime backend ------------------------------------------------------------------------------


def test_int4_ort_writes_matmulnbits_with_configured_attributes(trained, float_onnx, digits, float_acc, tmp_path):
    out = _run(trained, digits, tmp_path / "q", bits=4, group_size=16, accuracy_level=4)  # torch input: exported
    assert out.kind == "onnx/quantized" and out.precision == "int4"
    assert out.path("onnx") == tmp_path / "q" / ONNX
    model = onnx.load(str(out.path("onnx")))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    float_matmuls = _float_weights(float_onnx.path("onnx"))
    assert len(nbits) == len(float_matmuls) == out.facts["quantized_layers"] > 0
    for node in nbits:
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        assert (a["bits"], a["block_size"], a["accuracy_level"]) == (4, 16, 4)
    inits = {i.name for i in model.graph.initializer}
    assert not [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    # facts: bits and group per layer, the head (2-D Linear -> Gemm) left float, weights shrunk
    layers = out.facts["layers"]
    assert all(v["bits"] == 4 and v["group_size"] == 16 and v["accuracy_level"] == 4
               for v in layers.values() if v["op"] == "MatMulNBits")
    assert out.facts["float_layers"] == ["/head/Gemm"]
    assert out.facts["weight_bytes_quantized"] < 0.3 * out.facts["weight_bytes_fp32"]
    assert out.facts["weight_ratio"] == pytest.approx(
        out.facts["weight_bytes_quantized"] / out.facts["weight_bytes_fp32"], abs=1e-4)
    precisions = onnx_facts(out.path("onnx"))["layer_precision"]
    assert sum(p == "int4" for p in precisions.values()) == len(nbits)
    # accuracy measured in ONNX Runtime on real digits stays within a few points of float
    assert _accuracy(out.path("onnx"), digits) >= float_acc - 3.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_dequantized_weights_within_half_a_step(float_onnx, digits, tmp_path, symmetric):
    """Round-to-nearest: every dequantized weight is within half a quantization step of the float weight,
    except, for symmetric INT4, values clipped to code +7: the scale maps the block's largest magnitude to
    -8, so the short end of [-8, 7] clips by at most one step. Asymmetric [0, 15] has no such end."""
    out = _run(float_onnx, digits, tmp_path / "q", bits=4, group_size=16, symmetric=symmetric)
    model = onnx.load(str(out.path("onnx")))
    inits = {i.name: i for i in model.graph.initializer}
    original = _float_weights(float_onnx.path("onnx"))
    checked = 0
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        w = original[node.name.removesuffix("_Q4")]
        w_hat, step, code = _dequantize(node, inits)
        assert w_hat.shape == w.shape
        err = np.abs(w - w_hat)
        clipped = (code == 7) if symmetric else np.zeros_like(code, dtype=bool)
        assert np.all(err[~clipped] <= step[~clipped] / 2 * (1 + 1e-5) + 1e-7), node.name
        assert np.all(err[clipped] <= step[clipped] * (1 + 1e-5) + 1e-7), node.name
        assert np.abs(w - w_hat).max() > 0  # it really is quantized
        checked += 1
    assert checked == out.facts["quantized_layers"]


def _single_matmul(tmp: Path, k: int, n: int, seed: int = 0) -> tuple[Artifact, np.ndarray]:
    """An onnx/float artifact computing input [B, 1, 4, K] @ W [K, N]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, size=(k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"], name="mm")], "mm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, k])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 4, n])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tmp.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(tmp / ONNX))
    stub = Artifact(format="onnx", precision="float32", dir=tmp, files={}, file_hashes={}, input_shape=(1, 1, 4, k))
    return save_onnx(tmp / ONNX, tmp, like=stub, producer="test", precision="float32"), w


def test_ort_output_matches_numpy_on_dequantized_weights(tmp_path):
    """ORT's MatMulNBits (float compute, accuracy_level 0) equals x @ W_hat, and x @ W within the step bound."""
    k, n = 64, 24
    art, w = _single_matmul(tmp_path / "f", k, n)
    ds = make_synthetic(64, (1, 4, k), num_classes=None)
    out = _run(art, ds, tmp_path / "q", bits=4, group_size=32, accuracy_level=0)
    model = onnx.load(str(out.path("onnx")))
    node = next(x for x in model.graph.node if x.op_type == "MatMulNBits")
    assert not any(a.name == "accuracy_level" and a.i != 0 for a in node.attribute)
    w_hat, step, _ = _dequantize(node, {i.name: i for i in model.graph.initializer})
    x = ds.x[:16]
    got = ort.InferenceSession(str(out.path("onnx")), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, x @ w_hat, rtol=1e-4, atol=1e-4)
    bound = np.abs(x) @ step  # |x (W - W_hat)| <= |x| |W - W_hat| <= |x| step (half a step unless clipped)
    assert np.all(np.abs(got - x @ w) <= bound + 1e-4)
    assert out.facts["layers"]["mm_Q4"]["K"] == k and out.facts["weight_ratio"] < 0.3


def test_int8_and_ignored_layers(float_onnx, digits, float_acc, tmp_path):
    out = _run(float_onnx, digits, tmp_path / "q", bits=8, ignored=["mlp"])
    assert out.precision == "int8"
    bits = {n: v["bits"] for n, v in out.facts["layers"].items()}
    assert {b for n, b in bits.items() if "mlp" in n} == {32}
    assert {b for n, b in bits.items() if "attn" in n} == {8}
    assert sorted(out.facts["ignored_layers"]) == sorted(n for n in _float_weights(float_onnx.path("onnx"))
                                                          if "mlp" in n)
    assert _accuracy(out.path("onnx"), digits) >= float_acc - 1.0


def test_ignored_pattern_that_matches_nothing_fails(float_onnx, digits, tmp_path):
    with pytest.raises(StageError, match="matches no MatMul/Gemm layer"):
        _run(float_onnx, digits, tmp_path / "q", ignored=["no_such_layer"])


# -- nncf backend -------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_nncf_int4_loads_in_ort_with_configured_accuracy_level(float_onnx, digits, float_acc, tmp_path, symmetric):
    out = _run(float_onnx, digits, tmp_path / "q", backend="nncf", bits=4, symmetric=symmetric, group_size=16,
               accuracy_level=4)
    model = onnx.load(str(out.path("onnx")))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert nbits
    for node in nbits:
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        assert (a["bits"], a["block_size"], a["accuracy_level"]) == (4, 16, 4)
    repairs = out.facts["nncf_repairs"]
    assert repairs["accuracy_level_set"] == len(nbits)  # nncf 3.4 writes 0
    assert repairs["zero_points_packed"] == (0 if symmetric else len(nbits))
    # nncf converts the Gemm head too; only the K=8 embedding (no group >= 16 divides 8) falls back to INT8
    assert out.facts["float_layers"] == []
    assert out.facts["layers_by_bits"]["int8"] == 1 and out.precision == "mixed"
    assert _accuracy(out.path("onnx"), digits) >= float_acc - 3.0


def test_nncf_asym_output_that_ort_cannot_load_is_a_stage_error(float_onnx, digits, tmp_path, monkeypatch):
    """Without packing nncf's one-byte-per-block zero points ORT refuses the model: say so in one line."""
    real = qw._repair_nncf

    def no_packing(model, level):
        inits = {i.name: i for i in model.graph.initializer}
        saved = {n.input[3]: onnx.TensorProto() for n in model.graph.node
                 if n.op_type == "MatMulNBits" and len(n.input) > 3 and n.input[3]}
        for name, t in saved.items():
            t.CopyFrom(inits[name])
        result = real(model, level)
        for name, t in saved.items():
            inits[name].CopyFrom(t)
        return result

    monkeypatch.setattr(qw, "_repair_nncf", no_packing)
    with pytest.raises(StageError, match="target .*onnxruntime.* cannot run the nncf output") as e:
        _run(float_onnx, digits, tmp_path / "q", backend="nncf", symmetric=False, group_size=16)
    assert "\n" not in e.value.message


def test_nncf_ratio_mixes_int4_and_int8(float_onnx, digits, float_acc, tmp_path):
    out = _run(float_onnx, digits, tmp_path / "q", backend="nncf", ratio=0.5, group_size=16)
    counts = out.facts["layers_by_bits"]
    assert out.precision == "mixed" and counts["int4"] >= 1 and counts["int8"] >= 2
    assert _accuracy(out.path("onnx"), digits) >= float_acc - 3.0


# -- nothing to quantize ------------------------------------------------------------------------------


def test_cnn_without_matmul_is_a_clear_stage_error(digits, tmp_path):
    art = _torch_artifact(CNN, tmp_path / "cnn")
    with pytest.raises(StageError, match="exported as Gemm") as e:
        _run(art, digits, tmp_path / "q")
    assert "quantize.ptq" in e.value.hint and "Conv" in e.value.message
    assert not (tmp_path / "q" / ONNX).exists()


def test_conv_only_onnx_is_a_clear_stage_error(digits, tmp_path):
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"], name="conv")], "c",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 6, 6])], [w])
    folder = tmp_path / "conv"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / ONNX))
    stub = Artifact(format="onnx", precision="float32", dir=folder, files={}, file_hashes={}, input_shape=SHAPE)
    art = save_onnx(folder / ONNX, folder, like=stub, producer="test", precision="float32")
    for backend in ("onnxruntime", "nncf"):
        with pytest.raises(StageError, match="has none; its 1 Conv") as e:
            _run(art, digits, tmp_path / backend, backend=backend)
        assert "quantize.ptq" in e.value.hint


# -- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    ({"group_size": 24}, "power of two >= 16"),
    ({"group_size": 8}, "power of two >= 16"),
    ({"ratio": 0.5}, "needs backend: nncf"),
    ({"backend": "nncf", "ratio": 0.5, "bits": 8}, "needs bits: 4"),
    ({"ratio": 0}, "greater than 0"),
    ({"bits": 2}, "Input should be 4 or 8"),
    ({"accuracy_level": 5}, "accuracy_level"),
    ({"ignored": ["("]}, "not a valid regular expression"),
    ({"blocksize": 32}, "Extra inputs are not permitted"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValidationError, match=message):
        QuantizeWeightsConfig(**bad)


def test_config_defaults_are_the_fast_path():
    cfg = QuantizeWeightsConfig()
    assert (cfg.backend, cfg.bits, cfg.symmetric, cfg.group_size, cfg.accuracy_level, cfg.ratio) == \
        ("onnxruntime", 4, True, 32, 4, 1.0)
    assert all(f.description for f in QuantizeWeightsConfig.model_fields.values())


def _pipeline(tmp: Path, stages: list[dict], **extra) -> Path:
    cfg = {
        "name": "int4-test",
        "model": {"zoo": "transformer", "kwargs": RECIPE["kwargs"], "input_shape": list(SHAPE),
                  "train": {"steps": 300, "batch_size": 32, "lr": 0.001}},
        "data": {"source": "digits", "limit": 600},
        "targets": [{"name": "ort", "timing": {"warmup_runs": 1, "warmup_seconds": 0.0, "min_runs": 3,
                                               "max_runs": 20, "min_seconds": 0.005, "max_seconds": 1.0}}],
        "stages": stages,
        "output": {"dir": str(tmp / "run"), "cache_dir": str(tmp / "cache")},
        **extra,
    }
    path = tmp / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_validate_rejects_quantize_weights_twice(tmp_path):
    from compress.cli import main

    q = {"type": "quantize.weights", "config": {"bits": 4, "accuracy_level": 4}}
    ok = CliRunner().invoke(main, ["validate", str(_pipeline(tmp_path, [q]))])
    assert ok.exit_code == 0, ok.output
    res = CliRunner().invoke(main, ["validate", str(_pipeline(tmp_path, [q, dict(q)]))])
    assert res.exit_code == 2
    assert "already quantized" in res.output and "stages[1]" in res.output
    bad = CliRunner().invoke(main, ["validate", str(_pipeline(tmp_path, [{"type": "quantize.weights",
                                                                          "config": {"ratio": 0.5}}]))])
    assert bad.exit_code == 2 and "needs backend: nncf" in bad.output


def test_pipeline_end_to_end_reports_int4(tmp_path):
    from compress.cli import main

    path = _pipeline(tmp_path, [{"name": "int4", "type": "quantize.weights",
                                 "config": {"bits": 4, "group_size": 16, "accuracy_level": 4}}],
                     gates=[{"metric": "accuracy_drop", "max": 5.0}])
    res = CliRunner().invoke(main, ["run", "-q", str(path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    stage = report["stages"][0]
    assert stage["artifact"]["precision"] == "int4"
    assert stage["facts"]["accuracy_level"] == 4 and stage["facts"]["quantized_layers"] >= 6
    assert stage["facts"]["weight_ratio"] < 0.3  # MatMul weights; the whole tiny file is ~0.5 (LayerNorm, ...)
    assert stage["facts"]["onnx_ops"].get("MatMulNBits", 0) == stage["facts"]["quantized_layers"]
    assert "int4" in stage["artifact"]["layer_precision"].values()


def test_int4_also_shrinks_the_embedding_table(tmp_path):
    """embeddings: true (default) stores a Gather's constant table as 4-bit GatherBlockQuantized."""
    from test_quantize_dynamic import _embedder

    base = _embedder(tmp_path / "float")
    from compress.data.dataset import _build_named

    ids = {"input": np.random.default_rng(1).integers(0, 2000, size=(32, 16))}  # token ids, kept int64
    ds = _build_named(ids, None, DataConfig(), where="test", source_desc="token ids")
    out = QuantizeWeights(QuantizeWeightsConfig()).run(base, _ctx(ds, tmp_path / "q"))
    plain = QuantizeWeights(QuantizeWeightsConfig(embeddings=False)).run(base, _ctx(ds, tmp_path / "q2"))
    assert out.facts["embeddings_quantized"] == 1 and plain.facts["embeddings_quantized"] == 0
    assert out.size_bytes < 0.25 * base.size_bytes < plain.size_bytes  # the 2000 x 64 table dominates
    ids = np.random.default_rng(0).integers(0, 2000, size=(8, 16)).astype(np.int64)
    run = [ort.InferenceSession(str(a.path("onnx")), providers=["CPUExecutionProvider"]).run(None, {"input": ids})[0]
           for a in (base, out)]
    np.testing.assert_allclose(run[1], run[0], atol=0.1)  # 4-bit blocks: small, bounded error
