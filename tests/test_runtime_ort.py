"""ONNX Runtime backend on a tiny MatMul + Add + Relu model (dynamic batch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError
from onnx import TensorProto, helper, numpy_helper

from compress.errors import ConfigError, StageError
from compress.runtimes import RUNTIMES, TimingPolicy, available, get_runtime, measure
from compress.runtimes.environment import fingerprint
from compress.runtimes.onnxruntime import OrtTarget

W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0) - 0.5
B = np.array([0.1, -0.2, 0.3], dtype=np.float32)
LEVELS = ["disable", "basic", "extended", "all"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("ort") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def target(level: str = "all", providers=("CPUExecutionProvider",), **kw) -> OrtTarget:
    base = dict(
        name="cpu-1t", runtime="onnxruntime", threads=1, inter_op_threads=1,
        graph_optimization=level, providers=list(providers), batch_size=2,
        timing=TimingPolicy(),
    )
    base.update(kw)
    return OrtTarget(**base)


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0.0)


def test_registry():
    assert "onnxruntime" in RUNTIMES
    assert available("onnxruntime")
    assert not available("no-such-runtime")
    rt = get_runtime("onnxruntime")
    assert rt.name == "onnxruntime"
    with pytest.raises(ConfigError, match="onnxruntime"):  # lists the known ones
        get_runtime("no-such-runtime")
    v = rt.versions()
    assert v["onnxruntime"] and v["onnx"] == onnx.__version__


@pytest.mark.parametrize("level", LEVELS)
def test_infer_matches_numpy(tiny_model, level):
    rt = get_runtime("onnxruntime")
    rng = np.random.default_rng(0)
    with rt.open(tiny_model, target(level)) as sess:
        assert sess.input_name == "x"
        for batch in (1, 2, 5):  # dynamic batch
            x = rng.standard_normal((batch, 4)).astype(np.float32)
            y = sess.infer(x)
            assert y.shape == (batch, 3)
            np.testing.assert_allclose(y, reference(x), rtol=1e-5, atol=1e-6)
        info = sess.info
        assert info["providers"] == ["CPUExecutionProvider"]
        assert info["graph_optimization"] == level
        assert info["intra_op_threads"] == 1 and info["inter_op_threads"] == 1
        assert info["runtime"] == "onnxruntime" and info["runtime_version"]
        assert info["execution_mode"] == "sequential"
    with pytest.raises(StageError):  # closed by the context manager
        sess.infer(x)
    sess.close()  # twice is harmless


def test_optimized_op_counts(tiny_model):
    rt = get_runtime("onnxruntime")
    assert rt.optimized_op_counts(tiny_model, target("disable")) == {"MatMul": 1, "Add": 1, "Relu": 1}
    counts = {lvl: rt.optimized_op_counts(tiny_model, target(lvl)) for lvl in LEVELS[1:]}
    for c in counts.values():
        assert c and all(isinstance(k, str) and v >= 1 for k, v in c.items())
        assert sum(c.values()) < 3  # something got fused
    # extended/all fuse Gemm + Relu into com.microsoft FusedGemm, keyed by op_type alone
    assert "FusedGemm" in counts["all"]


def test_missing_provider_names_the_available_ones(tiny_model):
    rt = get_runtime("onnxruntime")
    t = target(providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ConfigError) as ei:
        rt.open(tiny_model, t)
    msg = str(ei.value)
    assert "NoSuchExecutionProvider" in msg and "CPUExecutionProvider" in msg
    with pytest.raises(ConfigError):
        rt.optimized_op_counts(tiny_model, t)


def test_bad_inputs(tiny_model, tmp_path):
    rt = get_runtime("onnxruntime")
    with pytest.raises(ValidationError, match="graph_optimization"):  # typed options: rejected on construction
        target("turbo")
    with pytest.raises(ConfigError, match="graph_optimization"):  # and by the runtime if constructed unchecked
        rt.open(tiny_model, OrtTarget.model_construct(name="x", graph_optimization="turbo", threads=1,
                                                      inter_op_threads=1, providers=["CPUExecutionProvider"]))
    with pytest.raises(StageError, match="not found"):
        rt.open(tmp_path / "missing.onnx", target())
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(StageError):
        rt.open(junk, target())


def test_session_runner_plugs_into_the_timing_loop(tiny_model):
    rt = get_runtime("onnxruntime")
    pol = TimingPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=5, max_runs=10,
                       min_seconds=0.0, max_seconds=2.0, block=5)
    with rt.open(tiny_model, target()) as sess:
        st = measure(sess.runner(np.ones((2, 4), np.float32)), pol)
    assert st.n == 5 and st.warmup_runs == 2 and st.p50_ms > 0  # counts only, never wall-clock values


def test_fingerprint_is_descriptive_and_hostname_free():
    import socket

    fp = fingerprint({"intra_op": 1, "inter_op": 1})
    for key in ("cpu_model", "physical_cores", "logical_cores", "cpu_flags", "python", "platform",
                "packages", "thread_env", "threads"):
        assert key in fp
    assert fp["threads"] == {"intra_op": 1, "inter_op": 1}
    assert fp["packages"]["onnxruntime"] == get_runtime("onnxruntime").versions()["onnxruntime"]
    assert set(fp["thread_env"]) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in repr(fp)
    fp["cpu_flags"].append("bogus")  # callers mutating the result don't corrupt the cache
    assert "bogus" not in fingerprint()["cpu_flags"]


def test_session_config_entries_reach_ort():
    """session_config is a pass-through to SessionOptions.add_session_config_entry (e.g. the non-saturating
    U8S8 kernels of x86 without VNNI); an empty one sets nothing."""
    from compress.runtimes.onnxruntime import session_options

    so = session_options(OrtTarget(name="p", session_config={"session.x64quantprecision": "1"}))
    assert so.get_session_config_entry("session.x64quantprecision") == "1"
    plain = session_options(OrtTarget(name="q"))
    with pytest.raises(Exception):
        plain.get_session_config_entry("session.x64quantprecision")
