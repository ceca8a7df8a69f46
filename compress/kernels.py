"""Which kernels the runtime really runs: integer kernels vs float compute, after ONNX Runtime's own
graph optimization (CPU, 1 thread, ``graph_optimization: all``). Quantization stages use this to refuse
output that a runtime would execute as fake-quant in float."""
from __future__ import annotations

from pathlib import Path

#: op types of ORT's optimized graph that are integer kernels (any domain)
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QAttention", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "NhwcQLinearConv", "QLinearConvTranspose"
})
#: op types that compute in float (what quantization should have replaced)
FLOAT_COMPUTE_OPS = frozenset({
    "Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
    "Attention", "MultiHeadAttention",
})


#: integer op types that do a layer's main compute (a Conv/MatMul/Gemm that really runs in integer)
INTEGER_COMPUTE_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "NhwcQLinearConv", "QLinearConvTranspose", "MatMulNBits",
})


def compute_layers(op_counts: dict[str, int]) -> tuple[int, int]:
    """(compute layers running integer kernels, compute layers running in float) of an op histogram
    of a runtime's *optimized* graph: what executes, not what a quantizer annotated. Weight-only
    ``MatMulNBits`` counts as integer (its weights are; its activations are not)."""
    ints = sum(v for k, v in op_counts.items() if k in INTEGER_COMPUTE_OPS)
    floats = sum(v for k, v in op_counts.items() if k in FLOAT_COMPUTE_OPS)
    return ints, floats


def _check_target():
    """A target-like object for the check: ORT CPU, 1 thread, graph optimization 'all'."""
    from types import SimpleNamespace

    from compress.runtimes.timing import TimingPolicy

    return SimpleNamespace(name="kernel-check", runtime="onnxruntime", threads=1, inter_op_threads=1,
                           graph_optimization="all", providers=["CPUExecutionProvider"], batch_size=1,
                           timing=TimingPolicy())


def integer_kernel_counts(onnx_path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(integer op -> count, float compute op -> count) in ORT's CPU-optimized graph of ``onnx_path``."""
    from compress.runtimes import get_runtime

    ops = get_runtime("onnxruntime").optimized_op_counts(onnx_path, _check_target())
    ints = {k: v for k, v in ops.items() if k in INTEGER_OPS or k.startswith("QLinear")}
    floats = {k: v for k, v in ops.items() if k in FLOAT_COMPUTE_OPS}
    return ints, floats
