"""Runtimes as plug-ins: typed per-runtime target options, OpenVINO running QDQ INT8 as integer kernels,
the torch runtime on torch artifacts, and a third-party runtime registered through the entry-point group."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from compress.cli import main
from compress.config import load_pipeline, parse_target
from compress.errors import ConfigError
from compress.runtimes import available, get_runtime, registry
from compress.runtimes.onnxruntime import OrtTarget
from compress.runtimes.openvino import OpenVinoTarget
from compress.runtimes.torch import TorchTarget
from conftest import tiny_pipeline, write_yaml


# -- typed options ---------------------------------------------------------------------------------

def test_builtin_runtimes_are_registered_and_available():
    assert {"onnxruntime", "openvino", "torch"} <= set(registry())
    assert all(available(n) for n in ("onnxruntime", "openvino", "torch"))


@pytest.mark.parametrize("runtime,bad_key", [("onnxruntime", "device"), ("openvino", "graph_optimization"),
                                             ("torch", "streams")])
def test_each_runtime_rejects_keys_it_does_not_know(tmp_path, runtime, bad_key):
    t = {"name": "t", "runtime": runtime, bad_key: 1}
    p = write_yaml(tmp_path / "p.yaml", tiny_pipeline(tmp_path, targets=[t]))
    with pytest.raises(ConfigError) as ei:
        load_pipeline(p)
    msg = str(ei.value)
    assert f"unknown key '{bad_key}' for runtime '{runtime}'" in msg and "targets[0]" in msg
    assert "p.yaml:" in msg  # points into the file
    with pytest.raises(ConfigError, match=bad_key):
        parse_target(t)


def test_targets_validate_into_their_runtime_model(tmp_path):
    targets = [{"name": "ort"}, {"name": "ov", "runtime": "openvino", "threads": 1, "precision": "f32"},
               {"name": "pt", "runtime": "torch", "mode": "eager"}]
    cfg = load_pipeline(write_yaml(tmp_path / "p.yaml", tiny_pipeline(tmp_path, targets=targets))).config
    assert [type(t) for t in cfg.targets] == [OrtTarget, OpenVinoTarget, TorchTarget]
    assert cfg.targets[0].runtime == "onnxruntime"  # the default runtime
    assert cfg.targets[1].precision == "f32" and cfg.targets[1].options()["precision"] == "f32"


def test_unknown_runtime_has_a_did_you_mean(tmp_path):
    p = write_yaml(tmp_path / "p.yaml", tiny_pipeline(tmp_path, targets=[{"name": "x", "runtime": "openvin"}]))
    r = CliRunner().invoke(main, ["validate", str(p)])
    assert r.exit_code == 2 and "did you mean 'openvino'" in r.output


def test_openvino_precision_hint_is_explicit_and_checked():
    assert OpenVinoTarget(name="ov").precision == "f32"  # never silently bf16
    with pytest.raises(Exception, match="precision"):
        OpenVinoTarget(name="ov", precision="int8")


# -- OpenVINO and torch on real models ----------------------------------------------------------------

@pytest.fixture(scope="module")
def conv_models(tmp_path_factory):
    """A tiny CNN as FP32 ONNX and as ORT QDQ INT8 (U8S8, per channel)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    from compress.export import ExportConfig, export_onnx

    export_onnx(m, [1, 3, 16, 16], d / "f.onnx", ExportConfig())
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.standard_normal((4, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(d / "f.onnx"), str(d / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return m, d / "f.onnx", d / "q.onnx"


def test_openvino_runs_qdq_int8_as_integer_kernels(conv_models):
    model, f32, q = conv_models
    rt = get_runtime("openvino")
    t = OpenVinoTarget(name="ov")
    ints, floats = rt.integer_kernels(q, t)
    assert ints and not floats, (ints, floats)  # every Convolution/FullyConnected runs u8/i8
    assert all(k.split("@")[1] in ("u8", "i8") for k in ints)
    f_ints, f_floats = rt.integer_kernels(f32, t)
    assert not f_ints and f_floats  # the float model computes in f32
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with rt.open(f32, t) as sess:
        assert sess.info["inference_precision"] == "f32" and sess.info["threads"] == 1
        got = sess.infer(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_torch_runtime_runs_torch_artifacts_only(tmp_path):
    from compress.artifact import Artifact, save_torch

    torch.manual_seed(0)
    m = nn.Linear(4, 3).eval()
    stub = Artifact(format="torch", precision="float32", dir=tmp_path, files={}, file_hashes={}, input_shape=(1, 4),
                    recipe={"callable": "torch.nn:Linear", "kwargs": {"in_features": 4, "out_features": 3}})
    art = save_torch(m, tmp_path / "a", like=stub, producer="test")
    rt = get_runtime("torch")
    assert rt.runs("torch") and not rt.runs("onnx")
    x = np.ones((2, 4), np.float32)
    before = torch.get_num_threads()
    with rt.open(art, TorchTarget(name="pt", threads=1)) as sess:
        np.testing.assert_allclose(sess.infer(x), m(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
        sess.runner(x)()
    assert torch.get_num_threads() == before  # the thread setting is put back after each call


def test_ort_target_from_parse_target_opens_a_session(conv_models):
    _, f32, _ = conv_models
    t = parse_target({"name": "ort", "graph_optimization": "basic"})
    with get_runtime(t.runtime).open(Path(f32), t) as sess:
        assert sess.info["graph_optimization"] == "basic"


def test_bench_compares_onnx_files_interleaved_on_two_runtimes(conv_models, tmp_path):
    import json

    from conftest import FAST_TIMING

    _, f32, q = conv_models
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", str(f32), str(q), "-t", "threads=1", "-t",
                                  "{runtime: openvino, threads: 1, timing: " + json.dumps(FAST_TIMING) + "}",
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert [t["runtime"] for t in res["targets"]] == ["onnxruntime", "openvino"]
    assert "AVX2" in res["environment"]["isa"] or res["environment"]["isa"]
    for t in res["targets"]:
        first, second = t["results"]
        assert first["speedup"] == 1.0 and second["rounds"] >= 1 and second["speedup"] > 0
        assert second["speedup_iqr"][0] <= second["speedup"] <= second["speedup_iqr"][1]
    assert "speed-up" in r.output and str(q) in r.output


def test_bench_rejects_a_bad_target_in_one_line(conv_models):
    _, f32, q = conv_models
    r = CliRunner().invoke(main, ["bench", str(f32), str(q), "-t", "runtime=openvino,graph_optimization=all"])
    assert r.exit_code == 2 and "graph_optimization" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["bench", str(f32), "missing.onnx"])
    assert r.exit_code == 2 and "missing.onnx" in r.output


def _providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


@pytest.mark.skipif("CUDAExecutionProvider" not in _providers(), reason="no GPU (onnxruntime-gpu with CUDA)")
def test_cuda_target_runs_when_a_gpu_is_present(conv_models):
    """GPU execution providers are targets like any other; skipped on CPU-only machines."""
    model, f32, _ = conv_models
    t = parse_target({"name": "cuda", "providers": ["CUDAExecutionProvider"]})
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with get_runtime("onnxruntime").open(f32, t) as sess:
        assert sess.info["providers"][0] == "CUDAExecutionProvider"
        got = sess.infer(x)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-3, rtol=1e-3)
    from compress.runtimes.environment import accelerators

    assert accelerators([t]) == "onnxruntime CUDAExecutionProvider"


def test_environment_names_the_instruction_set_and_accelerators():
    from compress.runtimes.environment import accelerators, fingerprint, isa

    assert isa({"avx2", "fma"}, "x86_64") == "x86_64 AVX2 FMA (no AVX-512, no VNNI, no AMX)"
    assert isa({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"}, "x86_64") == \
        "x86_64 AVX2 FMA AVX-512+BW AVX-512 VNNI AMX"
    assert isa({"avx2", "avx_vnni"}, "x86_64") == "x86_64 AVX2 AVX-VNNI (no AVX-512, no AMX)"
    cpu_only = [OrtTarget(name="o"), OpenVinoTarget(name="v"), TorchTarget(name="t")]
    assert accelerators(cpu_only) is None
    assert accelerators([OpenVinoTarget(name="g", device="GPU")]) == "openvino GPU"
    fp = fingerprint(gpu="onnxruntime CUDAExecutionProvider")
    assert fp["isa"].startswith(fp["machine"]) and fp["gpu"] == "onnxruntime CUDAExecutionProvider"
