"""This machine's peak multiply-accumulate rate per precision on a target: the denominator of a record's
*efficiency* (MACs ÷ p50 ÷ peak), so a report says how far from the hardware's limit a model runs.

The micro-benchmark is one 3x3 convolution (64 → 64 channels at 28x28, 28.9 M MACs), in float32
and as integer ``QLinearConv`` (uint8 activations, int8 weights: the x86 fast path), built as ONNX
artifacts and timed like every record: through the measurement service (``Measure.latency``, the one
timing loop, interleaved, the target's runtime and threads). Peak = MACs / the fastest call: a peak is a
best case, and on a shared machine the p50 of a multi-millisecond call mostly measures the neighbours
(on our loaded box the p50-based float32 "peak" came out below what ResNet-20 reached). The result is cached
per environment fingerprint (CPU model, ISA flags, cores, runtime versions) and target, so a machine
measures it once. It is a practical peak (what the runtime's best kernel reaches on a friendly shape),
not the datasheet number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.artifact import ONNX, Artifact, save_onnx
from compress.cache import cache_key

C, HW, K = 64, 28, 3
MACS = C * C * K * K * HW * HW  # per inference, batch 1 ('same' padding)
VERSION = 2  # bump when the micro-benchmark changes


def _model(precision: str):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, HW, HW])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, C, HW, HW])
    w = rng.standard_normal((C, C, K, K)).astype(np.float32) * 0.05
    pads = [K // 2] * 4
    if precision == "float32":
        inits = [numpy_helper.from_array(w, "w")]
        nodes = [helper.make_node("Conv", ["input", "w"], ["output"], pads=pads)]
    else:
        q = lambda v, dt: numpy_helper.from_array(np.array(v, dtype=dt), None)  # noqa: E731
        inits = [numpy_helper.from_array(np.clip(np.round(w / 0.002), -127, 127).astype(np.int8), "w_q")]
        for name, v, dt in (("x_s", 0.02, np.float32), ("x_z", 128, np.uint8), ("w_s", 0.002, np.float32),
                            ("w_z", 0, np.int8), ("y_s", 0.05, np.float32), ("y_z", 128, np.uint8)):
            t = q(v, dt)
            t.name = name
            inits.append(t)
        nodes = [helper.make_node("QuantizeLinear", ["input", "x_s", "x_z"], ["xq"]),
                 helper.make_node("QLinearConv", ["xq", "x_s", "x_z", "w_q", "w_s", "w_z", "y_s", "y_z"], ["yq"],
                                  pads=pads),
                 helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["output"])]
    graph = helper.make_graph(nodes, f"peak_{precision}", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _artifact(cache, precision: str) -> Artifact:
    import onnx

    key = cache_key(step="peak-model", precision=precision, version=VERSION)
    art = cache.get_artifact(key)
    if art is not None:
        return art

    def build(wd: Path) -> Artifact:
        onnx.save(_model(precision), str(wd / ONNX))
        stub = Artifact(format="onnx", precision="float32", dir=wd, files={}, file_hashes={},
                        input_shape=(1, C, HW, HW), input_name="input")
        return save_onnx(wd / ONNX, wd, like=stub, producer="peak", precision=precision)

    return cache.build_artifact(key, build, f"the {precision} peak micro-benchmark")


def machine_key(env: dict[str, Any]) -> dict[str, Any]:
    """The parts of the environment fingerprint that decide the peak."""
    return {k: env.get(k) for k in ("cpu_model", "cpu_flags", "usable_cores", "cpu_quota_cores", "packages")}


def peak(measure, target: Any, env: dict[str, Any]) -> dict[str, Any]:
    """``{"gmacs": {"float32": .., "int8": ..}, "macs": .., "model": ..}`` for ``target`` on this machine."""
    target = measure.target(target)
    cache = measure.cache
    key = cache_key(step="peak", version=VERSION, machine=machine_key(env),
                    target=target.model_dump(mode="json", exclude={"name", "timing"}))
    hit = cache.get_json(key)
    if hit is not None:
        return hit
    arts = [_artifact(cache, p) for p in ("float32", "int8")]
    stats = measure.latency(arts, target, label=f"peak MAC rate on {target.name} (float32, int8 conv)",
                            names=["float32", "int8"])
    if any(s is None for s in stats):  # the target's runtime runs no ONNX (e.g. torch): no peak to compare with
        return {"gmacs": {}, "macs": MACS, "na": f"{target.runtime} does not run the ONNX micro-benchmark"}
    out = {"gmacs": {p: round(MACS / (s.min_ms * 1e-3) / 1e9, 3) for p, s in zip(("float32", "int8"), stats)},
           "macs": MACS, "model": f"Conv {C}->{C} {K}x{K} at {HW}x{HW}, batch 1 (float32; QLinearConv U8S8)"}
    cache.put_json(key, out)
    return out


def efficiency(macs: int | None, p50_ms: float | None, precision: str, gmacs: dict[str, float]) -> float | None:
    """MACs ÷ p50 ÷ peak for the artifact's precision (integer and mixed artifacts: the int8 peak)."""
    if not macs or not p50_ms:
        return None
    rate = gmacs.get("float32" if precision in ("float32", "float16", "bfloat16") else "int8")
    return round(macs / (p50_ms * 1e-3) / 1e9 / rate, 4) if rate else None
