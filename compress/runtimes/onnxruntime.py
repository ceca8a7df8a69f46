"""ONNX Runtime backend (``runtime: onnxruntime``). onnxruntime is imported inside methods only.

Integer execution is verified on ORT's *optimized* graph (written with ``optimized_model_filepath``):
``QLinearConv``/``MatMulInteger``/``MatMulNBits``... are integer kernels, ``Conv``/``MatMul``/``Gemm`` float.
"""
from __future__ import annotations

import importlib.metadata
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from compress.errors import ConfigError, StageError
from compress.runtimes.base import Feeds, Runtime, Session, TargetBase, as_feeds, onnx_path

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnxruntime as ort

    from compress.artifact import Artifact

__all__ = ["OnnxRuntime", "OrtSession", "OrtTarget", "INTEGER_OPS", "FLOAT_COMPUTE_OPS"]

#: op types of ORT's optimized graph that are integer kernels (any domain)
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QAttention", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "NhwcQLinearConv", "QLinearConvTranspose",
    "MatMulNBits",  # weight-only 4/8-bit; with accuracy_level 4 its compute is int8 too
})
#: op types that compute in float (what quantization should have replaced)
FLOAT_COMPUTE_OPS = frozenset({
    "Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
    "Attention", "MultiHeadAttention",
})
_LEVELS = ("disable", "basic", "extended", "all")


class OrtTarget(TargetBase):
    """An ONNX Runtime target."""

    runtime: Literal["onnxruntime"] = "onnxruntime"
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"],
                                 description="Execution providers in order; a requested one that is not used fails.")
    threads: int = Field(1, ge=0, description="Intra-op threads (0 = runtime default). 1 gives stable timings.")
    inter_op_threads: int = Field(1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    session_config: dict[str, str] = Field(
        default_factory=dict,
        description="Session config entries passed to SessionOptions.add_session_config_entry, e.g. "
        "{'session.x64quantprecision': '1'}: on x86 without VNNI, U8S8 kernels that do not saturate "
        "(full 8-bit weights keep their accuracy, at a measured cost in speed).")


def _opt_level(level: str) -> "ort.GraphOptimizationLevel":
    import onnxruntime as ort

    return {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]


def _providers(target: OrtTarget) -> list[str]:
    import onnxruntime as ort

    requested = list(target.providers)
    have = ort.get_available_providers()
    missing = [p for p in requested if p not in have]
    if missing:
        raise ConfigError(
            f"target {target.name!r}: execution provider(s) {', '.join(missing)} "
            f"not available in onnxruntime {ort.__version__}",
            hint=f"available providers: {', '.join(have)}",
        )
    return requested


def session_options(target: OrtTarget) -> "ort.SessionOptions":
    import onnxruntime as ort

    if target.graph_optimization not in _LEVELS:  # a model_construct'ed target skips validation
        raise ConfigError(f"target {target.name!r}: unknown graph_optimization {target.graph_optimization!r}",
                          hint=f"one of: {', '.join(_LEVELS)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(target.threads)
    so.inter_op_num_threads = int(target.inter_op_threads)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _opt_level(target.graph_optimization)
    so.log_severity_level = 3  # errors only; ORT warnings would drown the CLI output
    for key, value in target.session_config.items():
        so.add_session_config_entry(str(key), str(value))
    return so


def _create(path: Path, target: OrtTarget, so: "ort.SessionOptions") -> tuple["ort.InferenceSession", list[str]]:
    import onnxruntime as ort

    providers = _providers(target)
    if not path.is_file():
        raise StageError(f"ONNX model not found: {path}")
    try:  # a path (not bytes) so that external data next to the file is found
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise StageError(f"onnxruntime could not load {path}: {str(e).strip().splitlines()[0] if str(e) else e}") \
            from e
    used = sess.get_providers()
    fell_back = [p for p in providers if p not in used]
    if fell_back:
        raise StageError(
            f"onnxruntime did not use requested provider(s) {', '.join(fell_back)} for {path}; "
            f"it runs with {', '.join(used)}",
            hint="check the provider's drivers/libraries, or change target.providers",
        )
    return sess, providers


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64",
               "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


class OrtSession(Session):
    def __init__(self, sess: "ort.InferenceSession", info: dict[str, Any]):
        self._sess = sess
        outputs = sess.get_outputs()
        self.inputs = [{"name": i.name, "shape": list(i.shape), "dtype": _ORT_DTYPES.get(i.type, i.type)}
                       for i in sess.get_inputs()]
        self._output_names = [outputs[0].name]
        self.info = {
            **info,
            "input_name": self.input_name,
            "input_shape": list(self.inputs[0]["shape"]),
            "input_type": sess.get_inputs()[0].type,
            "inputs": self.inputs,
            "output_name": outputs[0].name,
        }

    def infer(self, x: Feeds) -> "np.ndarray":
        if self._sess is None:
            raise StageError("inference on a closed onnxruntime session")
        return self._sess.run(self._output_names, as_feeds(x, self.input_names))[0]

    def runner(self, x: Feeds) -> Callable[[], object]:
        run, outs, feed = self._sess.run, self._output_names, as_feeds(x, self.input_names)
        return lambda: run(outs, feed)

    def close(self) -> None:
        self._sess = None  # ORT frees the session when the last reference goes


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    Target = OrtTarget
    formats = ("onnx",)
    requires = "onnxruntime"
    summary = "ONNX Runtime (providers, threads, graph optimization level)"

    def open(self, model: "Artifact | Path", target: OrtTarget, *, base_dir: Path | None = None) -> OrtSession:
        import onnxruntime as ort

        so = session_options(target)
        sess, requested = _create(onnx_path(model), target, so)
        info = {
            "runtime": self.name,
            "runtime_version": ort.__version__,
            "providers": sess.get_providers(),
            "providers_requested": requested,
            "graph_optimization": target.graph_optimization,
            "intra_op_threads": so.intra_op_num_threads,
            "inter_op_threads": so.inter_op_num_threads,
            "execution_mode": "sequential",
        }
        return OrtSession(sess, info)

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        out = {"onnxruntime": ort.__version__}
        try:
            out["onnx"] = importlib.metadata.version("onnx")
        except importlib.metadata.PackageNotFoundError:
            pass
        return out

    def optimize(self, model: "Artifact | Path", target: OrtTarget, out: Path) -> Path:
        """Write ORT's optimized graph of ``model`` for ``target`` to ``out`` (what ORT will execute)."""
        so = session_options(target)
        so.optimized_model_filepath = str(out)
        sess, _ = _create(onnx_path(model), target, so)
        del sess
        if not out.is_file():
            raise StageError(f"onnxruntime wrote no optimized model for {onnx_path(model)}")
        return out

    def optimized_op_counts(self, model: "Artifact | Path", target: OrtTarget) -> dict[str, int]:
        import onnx

        with tempfile.TemporaryDirectory(prefix="compress-ort-opt-") as tmp:
            out = self.optimize(model, target, Path(tmp) / "optimized.onnx")
            graph = onnx.load(str(out), load_external_data=False).graph
        counts: Counter[str] = Counter()
        _count_ops(graph, counts)
        return dict(sorted(counts.items()))

    def classify_kernels(self, ops: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        ints = {k: v for k, v in ops.items() if k in INTEGER_OPS or k.startswith("QLinear")}
        floats = {k: v for k, v in ops.items() if k in FLOAT_COMPUTE_OPS}
        return ints, floats


def _count_ops(graph: Any, counts: Counter[str]) -> None:
    """Count node op_types (any domain, keyed by op_type), descending into subgraphs (If/Loop/Scan)."""
    import onnx

    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _count_ops(attr.g, counts)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _count_ops(g, counts)
