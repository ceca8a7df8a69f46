"""Which kernels a runtime really runs: integer kernels vs float compute, as the runtime of ``target``
executes the model (ONNX Runtime: its optimized graph; OpenVINO: the compiled model's runtime layers and
their execution precisions). Quantization stages use this to refuse output that a runtime would execute
as fake-quant in float."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.runtimes.onnxruntime import FLOAT_COMPUTE_OPS, INTEGER_OPS

if TYPE_CHECKING:  # pragma: no cover
    from compress.runtimes.base import TargetBase

__all__ = ["integer_kernel_counts", "compute_layers", "INTEGER_OPS", "INTEGER_COMPUTE_OPS", "FLOAT_COMPUTE_OPS"]


#: integer op types that do a layer's main compute (a Conv/MatMul/Gemm that really runs in integer)
INTEGER_COMPUTE_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "NhwcQLinearConv", "QLinearConvTranspose", "MatMulNBits",
})


def compute_layers(op_counts: dict[str, int]) -> tuple[int, int]:
    """(compute layers running integer kernels, compute layers running in float) of an op histogram
    of a runtime's *optimized* graph: what executes, not what a quantizer annotated. Weight-only
    ``MatMulNBits`` counts as integer (its weights are; its activations are not)."""
    from compress.runtimes.openvino import COMPUTE_LAYERS, INT_PRECISIONS

    ints = floats = 0
    for k, v in op_counts.items():
        layer, _, prec = k.partition("@")  # OpenVINO: "Convolution@u8" (runtime layer @ execution precision)
        if k in INTEGER_COMPUTE_OPS or (prec and layer in COMPUTE_LAYERS and prec.startswith(INT_PRECISIONS)):
            ints += v
        elif k in FLOAT_COMPUTE_OPS or (prec and layer in COMPUTE_LAYERS):
            floats += v
    return ints, floats


def integer_kernel_counts(onnx_path: Path, target: "TargetBase | None" = None) -> tuple[dict[str, int], dict[str, int]]:
    """(integer kernel -> count, float compute kernel -> count) of ``onnx_path`` on ``target`` (default:
    ONNX Runtime on CPU with its defaults: 1 thread, graph optimization 'all')."""
    from compress.runtimes import get_runtime
    from compress.runtimes.onnxruntime import OrtTarget

    target = target or OrtTarget(name="kernel-check")
    return get_runtime(target.runtime).integer_kernels(Path(onnx_path), target)
