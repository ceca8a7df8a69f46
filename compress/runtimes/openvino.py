"""OpenVINO backend (``runtime: openvino``). openvino is imported inside methods only.

Maps to ``openvino.Core().compile_model(model, device, config)`` with the target's ``INFERENCE_NUM_THREADS``,
``NUM_STREAMS``, ``PERFORMANCE_HINT`` and ``INFERENCE_PRECISION_HINT``. The precision hint is always set
(default ``f32``): OpenVINO otherwise picks bf16 on CPUs that have it, and a float baseline would silently
run in bf16. ONNX files (QDQ INT8 included: OpenVINO's low-precision transformations turn
QuantizeLinear/DequantizeLinear around Conv/MatMul into integer kernels) are read directly; :meth:`prepare`
converts them to OpenVINO IR (``ov.convert_model`` + ``ov.save_model(compress_to_fp16=False)``), cached by the
measurement service. Integer execution is verified on the *compiled* model's runtime graph: each layer's
``layerType`` and ``runtimePrecision`` (``u8``/``i8`` for integer kernels).
"""
from __future__ import annotations

import importlib.metadata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from compress.errors import StageError
from compress.runtimes.base import Feeds, Runtime, Session, TargetBase, as_feeds

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.artifact import Artifact

__all__ = ["OpenVino", "OpenVinoTarget", "OpenVinoSession"]

IR_XML, IR_BIN = "model.xml", "model.bin"
#: runtime layer types that do the heavy compute (what INT8 should turn into integer kernels)
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution",
                            "GroupDeconvolution", "ConvolutionBackpropData", "FullyConnectedCompressed"})
INT_PRECISIONS = ("u8", "i8", "u4", "i4")


class OpenVinoTarget(TargetBase):
    """An OpenVINO target (CPU by default)."""

    runtime: Literal["openvino"] = "openvino"
    device: str = Field("CPU", description="OpenVINO device name (CPU, GPU, ...).")
    threads: int = Field(1, ge=0, description="INFERENCE_NUM_THREADS (0 = OpenVINO's default).")
    streams: int = Field(1, ge=1, description="NUM_STREAMS (1 for batch-1 latency).")
    precision: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="INFERENCE_PRECISION_HINT, always set: f32 keeps a float model in float32 (OpenVINO "
        "would pick bf16 on CPUs that have it). INT8 layers of a quantized model still run in int8.")
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    cpu_pinning: bool = Field(False, description="ENABLE_CPU_PINNING (CPU device). Off by default: on a shared or "
                              "small machine a pinned inference thread waits for its core (p90 ~15x p50 measured "
                              "on a loaded 2-core box); on a dedicated machine pinning can help.")


def _config(target: OpenVinoTarget) -> dict[str, str]:
    cfg = {"PERFORMANCE_HINT": target.performance_hint, "NUM_STREAMS": str(target.streams),
           "INFERENCE_PRECISION_HINT": target.precision}
    if target.device.upper().startswith("CPU"):
        cfg["ENABLE_CPU_PINNING"] = "YES" if target.cpu_pinning else "NO"
    if target.threads:
        cfg["INFERENCE_NUM_THREADS"] = str(target.threads)
    return cfg


def _model_file(model: "Artifact | Path") -> Path:
    if isinstance(model, (str, Path)):
        return Path(model)
    if model.format == "openvino":
        return model.path("xml")
    if model.format == "onnx":
        return model.path("onnx")
    raise StageError(f"openvino cannot run a {model.format} artifact")


def _ov_dtype(t: Any) -> str:
    name = str(t.get_type_name()) if hasattr(t, "get_type_name") else str(t)
    return {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "boolean": "bool", "u8": "uint8",
            "i8": "int8", "f64": "float64"}.get(name, name)


class OpenVinoSession(Session):
    def __init__(self, compiled: Any, info: dict[str, Any]):
        self._compiled = compiled
        self._req = compiled.create_infer_request()
        self.inputs = []
        for i, port in enumerate(compiled.inputs):
            names = port.get_names()
            name = port.get_any_name() if names else f"input{i}"
            shape = [d.get_length() if d.is_static else str(d) for d in port.get_partial_shape()]
            self.inputs.append({"name": name, "shape": shape, "dtype": _ov_dtype(port.get_element_type())})
        self.info = {**info, "input_name": self.input_name, "input_shape": self.inputs[0]["shape"],
                     "inputs": self.inputs}

    def infer(self, x: Feeds) -> "np.ndarray":
        if self._req is None:
            raise StageError("inference on a closed openvino session")
        self._req.infer(as_feeds(x, self.input_names))
        return self._req.get_output_tensor(0).data.copy()

    def runner(self, x: Feeds) -> Callable[[], object]:
        req, feeds = self._req, as_feeds(x, self.input_names)
        return lambda: req.infer(feeds)

    def close(self) -> None:
        self._req = None
        self._compiled = None


class OpenVino(Runtime):
    name = "openvino"
    Target = OpenVinoTarget
    formats = ("onnx", "openvino")
    requires = "openvino"
    summary = "OpenVINO (device, threads, streams, explicit INFERENCE_PRECISION_HINT)"

    def prepare_key(self, artifact: "Artifact", target: OpenVinoTarget) -> dict[str, Any] | None:
        if artifact.format != "onnx":
            return None
        return {"convert": "ov.convert_model+ov.save_model(compress_to_fp16=False)"}

    def prepare(self, artifact: "Artifact", target: OpenVinoTarget, work_dir: Path) -> "Artifact":
        """ONNX -> OpenVINO IR (weights kept in float32: ``compress_to_fp16=False``)."""
        import openvino as ov

        from compress.artifact import save_files

        try:
            ov_model = ov.convert_model(str(artifact.path("onnx")))
            ov.save_model(ov_model, str(work_dir / IR_XML), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001 - a model OpenVINO cannot convert: one line
            raise StageError(f"openvino could not convert {artifact.path('onnx')}: {_first_line(e)}") from e
        return save_files(work_dir, {"xml": IR_XML, "bin": IR_BIN}, fmt="openvino", like=artifact,
                          producer=f"{artifact.producer}:openvino-ir", precision=artifact.precision,
                          parent=artifact.hash)

    def _compile(self, model: "Artifact | Path", target: OpenVinoTarget) -> tuple[Any, Any]:
        import openvino as ov

        path = _model_file(model)
        if not path.is_file():
            raise StageError(f"model not found: {path}")
        core = ov.Core()
        if target.device.split(":")[0].split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            from compress.errors import ConfigError

            raise ConfigError(f"target {target.name!r}: OpenVINO device {target.device!r} is not available",
                              hint=f"available devices: {', '.join(core.available_devices)}")
        try:
            compiled = core.compile_model(str(path), target.device, _config(target))
        except Exception as e:  # noqa: BLE001
            raise StageError(f"openvino could not compile {path}: {_first_line(e)}") from e
        return core, compiled

    def open(self, model: "Artifact | Path", target: OpenVinoTarget, *, base_dir: Path | None = None) -> OpenVinoSession:
        import openvino as ov

        core, compiled = self._compile(model, target)
        info = {
            "runtime": self.name,
            "runtime_version": ov.get_version(),
            "device": target.device,
            "device_name": _safe(lambda: core.get_property(target.device, "FULL_DEVICE_NAME")),
            "inference_precision": _safe(lambda: compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()),
            "precision_requested": target.precision,
            "threads": _safe(lambda: int(compiled.get_property("INFERENCE_NUM_THREADS"))),
            "streams": _safe(lambda: int(compiled.get_property("NUM_STREAMS"))),
            "performance_hint": str(_safe(lambda: compiled.get_property("PERFORMANCE_HINT"))),
            "cpu_pinning": _safe(lambda: bool(compiled.get_property("ENABLE_CPU_PINNING"))),
            "model_format": _model_file(model).suffix.lstrip("."),
        }
        return OpenVinoSession(compiled, info)

    def versions(self) -> dict[str, str]:
        try:
            return {"openvino": importlib.metadata.version("openvino")}
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            return {}

    def runtime_layers(self, model: "Artifact | Path", target: OpenVinoTarget) -> list[tuple[str, str]]:
        """(layer type, runtime precision) of every layer of the compiled model's runtime graph."""
        _, compiled = self._compile(model, target)
        out = []
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
            prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else ""
            out.append((layer, prec.lower()))
        return out

    def optimized_op_counts(self, model: "Artifact | Path", target: OpenVinoTarget) -> dict[str, int]:
        """Runtime layer types of the compiled model, keyed ``Type`` or ``Type@precision`` for compute layers."""
        counts: Counter[str] = Counter()
        for layer, prec in self.runtime_layers(model, target):
            counts[f"{layer}@{prec}" if layer in COMPUTE_LAYERS and prec else layer] += 1
        return dict(sorted(counts.items()))

    def classify_kernels(self, ops: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        ints: dict[str, int] = {}
        floats: dict[str, int] = {}
        for key, n in ops.items():
            layer, _, prec = key.partition("@")
            if layer in COMPUTE_LAYERS and prec:
                (ints if prec.startswith(INT_PRECISIONS) else floats)[key] = n
        return ints, floats


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - an optional property this device does not report
        return None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
