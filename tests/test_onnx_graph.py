"""The one ONNX graph walk: a layer's weight input back to the tensor that stores it."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress import onnx_graph as og
from compress.facts import onnx_facts
from compress.stages.quantize_weights import weight_layers


def _graph(tmp_path):
    """x @ T(DQ(w_q)) for a QDQ int8 weight, x @ w for a float one, and x @ x^T (nothing stored)."""
    w_q = numpy_helper.from_array(np.arange(-8, 8, dtype=np.int8).reshape(4, 4), "w_q")
    scale = numpy_helper.from_array(np.full((4,), 0.1, dtype=np.float32), "w_scale")
    zp = numpy_helper.from_array(np.zeros((4,), dtype=np.int8), "w_zp")
    w_f = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w_f")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq", axis=0),
        helper.make_node("Transpose", ["w_dq"], ["w_t"], name="t"),
        helper.make_node("MatMul", ["x", "w_t"], ["a"], name="mm_int8"),
        helper.make_node("MatMul", ["a", "w_f"], ["b"], name="mm_float"),
        helper.make_node("Transpose", ["b"], ["bt"], name="bt"),
        helper.make_node("MatMul", ["b", "bt"], ["y"], name="mm_act"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [w_q, scale, zp, w_f])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return model, path


def test_weight_source_follows_transpose_and_dequantize(tmp_path):
    model, _ = _graph(tmp_path)
    inits, prods = og.initializers(model.graph), og.producers(model.graph)
    q = og.weight_source("w_t", inits, prods)
    assert q.stored == "w_q" and q.dequantize is not None and q.dequantize.name == "dq"
    assert q.precision(inits) == "int8"
    assert sorted(q.stored_tensors(inits)) == ["w_q", "w_scale", "w_zp"]
    f = og.weight_source("w_f", inits, prods)
    assert f.stored == "w_f" and f.dequantize is None and f.precision(inits) == "float32"
    a = og.weight_source("bt", inits, prods)  # computed from activations: nothing stored
    assert a.stored is None and a.precision(inits) == "activation" and a.stored_tensors(inits) == []


def test_facts_and_weight_table_agree_on_the_walk(tmp_path):
    model, path = _graph(tmp_path)
    facts = onnx_facts(path)
    assert facts["layer_precision"] == {"mm_int8": "int8", "mm_float": "float32", "mm_act": "activation"}
    assert facts["ops"] == {"DequantizeLinear": 1, "MatMul": 3, "Transpose": 2}
    layers = weight_layers(model)
    assert set(layers) == {"mm_int8", "mm_float"}  # activation x activation is not a weight layer
    assert layers["mm_int8"]["bits"] == 8 and layers["mm_int8"]["weight_bytes"] == 16 + 16 + 4
    assert layers["mm_float"]["bits"] == 32 and layers["mm_float"]["weight_bytes"] == 64
