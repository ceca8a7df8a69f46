"""Reading ONNX graphs, written once: every module that inspects an exported or quantized model (the facts,
``quantize.ptq``'s precision accounting, ``quantize.weights``'s layer table, the release check) walks it
through these helpers instead of its own copy.

The one walk that matters: from a layer's weight input back to the tensor that stores it, through what
exporters and quantizers put in between (Transpose/Reshape/Cast/Identity, and a QDQ ``DequantizeLinear``),
so "what precision are this layer's weights kept in" has one answer everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: ops a stored weight passes through on its way to the layer that uses it (besides DequantizeLinear)
WEIGHT_TRANSPARENT = frozenset({"Transpose", "Reshape", "Cast", "Identity"})
#: at most this many such ops are followed (exporters put one or two; a longer chain is a computed input)
MAX_HOPS = 4


def load(path: Path | str, weights: bool = False) -> "onnx.ModelProto":
    """The model at ``path``; without its external weight files unless ``weights`` (structure only is cheap)."""
    import onnx

    return onnx.load(str(path), load_external_data=weights)


def op_counts(graph: "onnx.GraphProto") -> dict[str, int]:
    """How many nodes of each op type the (top-level) graph has, sorted by op type."""
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def producers(graph: "onnx.GraphProto") -> dict[str, "onnx.NodeProto"]:
    """Output name -> the node that produces it."""
    return {o: n for n in graph.node for o in n.output}


def initializers(graph: "onnx.GraphProto") -> dict[str, "onnx.TensorProto"]:
    return {i.name: i for i in graph.initializer}


def attrs(node: "onnx.NodeProto") -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def init_bytes(init: "onnx.TensorProto") -> int:
    """Stored bytes of an initializer (packed 4-bit tensors count half a byte per element)."""
    import numpy as np
    from onnx import TensorProto, helper

    if init.raw_data:
        return len(init.raw_data)
    n = int(np.prod(init.dims)) if init.dims else 1
    if init.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (n + 1) // 2
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize


def dtype_name(data_type: int) -> str:
    """``float32``, ``int8``, ``uint4``, ... for an ONNX tensor element type."""
    from onnx import TensorProto

    return {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT8: "int8",
            TensorProto.UINT8: "uint8", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4",
            TensorProto.BFLOAT16: "bfloat16"}.get(data_type, str(data_type))


@dataclass
class WeightSource:
    """Where a layer's weight input comes from: ``stored`` is the initializer holding its values (None when
    the input is computed from activations, e.g. attention scores), ``dequantize`` the QDQ node on the way
    (None when the weight is stored in float)."""

    stored: str | None
    dequantize: "onnx.NodeProto | None" = None

    def precision(self, inits: dict[str, "onnx.TensorProto"]) -> str:
        """The stored element type (``activation`` when nothing is stored)."""
        return dtype_name(inits[self.stored].data_type) if self.stored is not None else "activation"

    def stored_tensors(self, inits: dict[str, "onnx.TensorProto"]) -> list[str]:
        """Every initializer the weight costs on disk: the values and, when quantized, its scales and zero
        points."""
        if self.dequantize is not None:
            return [i for i in self.dequantize.input if i in inits]
        return [self.stored] if self.stored is not None else []


def weight_source(name: str, inits: dict[str, "onnx.TensorProto"],
                  producers: dict[str, "onnx.NodeProto"]) -> WeightSource:
    """Follow the tensor ``name`` (a layer's weight input) back to the initializer that stores it."""
    dq = None
    hops = 0
    while name not in inits and name in producers and hops < MAX_HOPS:
        prod = producers[name]
        if prod.op_type == "DequantizeLinear":
            dq = dq or prod
        elif prod.op_type not in WEIGHT_TRANSPARENT:
            break
        name = prod.input[0]
        hops += 1
    return WeightSource(name if name in inits else None, dq)
