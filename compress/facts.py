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
    from onnx import numpy_helper

    from compress import onnx_graph as og

    graph = og.load(path, weights=True).graph
    inits, producers = og.initializers(graph), og.producers(graph)
    params = sum(int(np.prod(i.dims)) if i.dims else 1 for i in graph.initializer)
    layers: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger", "QLinearConv",
                            "QLinearMatMul", "MatMulNBits"):
            w = node.input[3] if node.op_type.startswith("QLinear") else node.input[1]
            layers[node.name or w] = weight_precision(w, inits, producers, node)
    zeros = total = 0
    for init in inits.values():
        if len(init.dims) >= 2:
            arr = numpy_helper.to_array(init)
            zeros += int((arr == 0).sum())
            total += arr.size
    return {"params": params, "ops": og.op_counts(graph), "layer_precision": layers,
            "sparsity": round(zeros / total, 6) if total else 0.0}


def weight_precision(name: str, inits, producers, node) -> str:
    """The element type ``node``'s weight input ``name`` is stored in (``int4`` for MatMulNBits's ``bits``)."""
    from compress.onnx_graph import weight_source

    if node.op_type == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return f"int{bits}"
    return weight_source(name, inits, producers).precision(inits)
