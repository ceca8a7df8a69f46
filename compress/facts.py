"""Measured facts about a model: parameters, MACs, size, sparsity, per-layer precision.

MACs come from torch-pruning's ``tp.utils.count_ops_and_params`` (we do not count ops ourselves);
ONNX facts come from the graph's initializers.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch


def torch_facts(model: "torch.nn.Module", inputs: "tuple[int, ...] | list[dict[str, Any]]") -> dict[str, Any]:
    """``inputs``: an artifact's ``input_specs`` (every input fed, batch 1) or one float input's shape."""
    import torch
    import torch_pruning as tp

    from compress.export import _specs, example_inputs

    example = tuple(example_inputs(_specs(list(inputs), "input"), batch=1))
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"params": int(params), "macs": int(macs), "sparsity": round(zeros / total, 6) if total else 0.0}


def onnx_facts(path: Path) -> dict[str, Any]:
    """Params (initializer elements), op histogram and the weight precision of each Conv/MatMul/Gemm."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    params = 0
    for init in graph.initializer:
        params += int(np.prod(init.dims)) if init.dims else 1
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    producers = {o: n for n in graph.node for o in n.output}
    layers: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv",
                            "QLinearMatMul", "MatMulNBits"):
            w = node.input[3] if node.op_type.startswith("QLinear") else node.input[1]
            layers[node.name or w] = _weight_precision(w, inits, producers, node)
    zeros = total = 0
    for name, init in inits.items():
        if len(init.dims) >= 2:
            arr = numpy_helper.to_array(init)
            zeros += int((arr == 0).sum())
            total += arr.size
    return {"params": params, "ops": dict(sorted(ops.items())), "layer_precision": layers,
            "sparsity": round(zeros / total, 6) if total else 0.0}


def _weight_precision(name: str, inits, producers, node) -> str:
    from onnx import TensorProto

    if node.op_type == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return f"int{bits}"
    seen = 0
    while name not in inits and name in producers and seen < 4:
        prod = producers[name]
        if prod.op_type == "DequantizeLinear":
            name = prod.input[0]
        elif prod.op_type in ("Transpose", "Reshape", "Cast", "Identity"):
            name = prod.input[0]
        else:
            break
        seen += 1
    if name not in inits:
        return "activation"
    dtype = inits[name].data_type
    return {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT8: "int8",
            TensorProto.UINT8: "uint8", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4",
            TensorProto.BFLOAT16: "bfloat16"}.get(dtype, str(dtype))
