"""ONNX Runtime backend. Imported only at run time (via ``get_runtime("onnxruntime")``)."""
from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from compress.errors import ConfigError, StageError
from compress.runtimes.base import Runtime, Session

__all__ = ["OnnxRuntime", "OrtSession", "OPT_LEVELS"]

log = logging.getLogger(__name__)

OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_DEFAULT_PROVIDERS = ["CPUExecutionProvider"]


def _providers(target: Any) -> list[str]:
    requested = list(getattr(target, "providers", None) or _DEFAULT_PROVIDERS)
    have = ort.get_available_providers()
    missing = [p for p in requested if p not in have]
    if missing:
        raise ConfigError(
            f"target {getattr(target, 'name', '?')!r}: execution provider(s) {', '.join(missing)} "
            f"not available in onnxruntime {ort.__version__}",
            hint=f"available providers: {', '.join(have)}",
        )
    return requested


def _session_options(target: Any) -> ort.SessionOptions:
    level = getattr(target, "graph_optimization", "all")
    if level not in OPT_LEVELS:
        raise ConfigError(
            f"target {getattr(target, 'name', '?')!r}: unknown graph_optimization {level!r}",
            hint=f"one of: {', '.join(OPT_LEVELS)}",
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(getattr(target, "threads", 0))
    so.inter_op_num_threads = int(getattr(target, "inter_op_threads", 0))
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = OPT_LEVELS[level]
    so.log_severity_level = 3  # errors only; ORT warnings would drown the CLI output
    return so


def _create(onnx_path: Path, target: Any, so: ort.SessionOptions) -> tuple[ort.InferenceSession, list[str]]:
    onnx_path = Path(onnx_path)
    providers = _providers(target)
    if not onnx_path.is_file():
        raise StageError(f"ONNX model not found: {onnx_path}")
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise StageError(f"onnxruntime could not load {onnx_path}: {e}") from e
    used = sess.get_providers()
    fell_back = [p for p in providers if p not in used]
    if fell_back:
        raise StageError(
            f"onnxruntime did not use requested provider(s) {', '.join(fell_back)} for {onnx_path}; "
            f"it runs with {', '.join(used)}",
            hint="check the provider's drivers/libraries, or change target.providers",
        )
    return sess, providers


class OrtSession(Session):
    def __init__(self, sess: ort.InferenceSession, info: dict[str, Any]):
        self._sess = sess
        inputs = sess.get_inputs()
        outputs = sess.get_outputs()
        self.input_name = inputs[0].name
        self._output_names = [outputs[0].name]
        self.info = {
            **info,
            "input_name": self.input_name,
            "input_shape": list(inputs[0].shape),
            "input_type": inputs[0].type,
            "output_name": outputs[0].name,
        }

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self._sess is None:
            raise StageError("inference on a closed onnxruntime session")
        return self._sess.run(self._output_names, {self.input_name: x})[0]

    def runner(self, x: np.ndarray) -> Callable[[], object]:
        run, outs, feed = self._sess.run, self._output_names, {self.input_name: x}
        return lambda: run(outs, feed)

    def close(self) -> None:
        self._sess = None  # ORT frees the session when the last reference goes


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def open(self, onnx_path: Path, target: Any) -> OrtSession:
        so = _session_options(target)
        sess, requested = _create(onnx_path, target, so)
        info = {
            "runtime": self.name,
            "runtime_version": ort.__version__,
            "providers": sess.get_providers(),
            "providers_requested": requested,
            "graph_optimization": getattr(target, "graph_optimization", "all"),
            "intra_op_threads": so.intra_op_num_threads,
            "inter_op_threads": so.inter_op_num_threads,
            "execution_mode": "sequential",
        }
        return OrtSession(sess, info)

    def versions(self) -> dict[str, str]:
        out = {"onnxruntime": ort.__version__}
        try:
            out["onnx"] = importlib.metadata.version("onnx")
        except importlib.metadata.PackageNotFoundError:
            pass
        return out

    def optimized_op_counts(self, onnx_path: Path, target: Any) -> dict[str, int]:
        import onnx

        so = _session_options(target)
        with tempfile.TemporaryDirectory(prefix="compress-ort-opt-") as tmp:
            out = Path(tmp) / "optimized.onnx"
            so.optimized_model_filepath = str(out)
            sess, _ = _create(onnx_path, target, so)
            del sess
            if not out.is_file():
                raise StageError(f"onnxruntime wrote no optimized model for {onnx_path}")
            model = onnx.load(str(out), load_external_data=False)
        counts: Counter[str] = Counter()
        _count_ops(model.graph, counts)
        return dict(sorted(counts.items()))


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
