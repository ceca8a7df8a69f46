"""``quantize.dynamic``: dynamic INT8 quantization for Linear/MatMul-heavy models (transformers).

Maps to ``onnxruntime.quantization.quantize_dynamic(float.onnx, out.onnx, op_types_to_quantize=...,
per_channel=..., reduce_range=..., weight_type=QuantType.QInt8, nodes_to_exclude=...)``: weights are
stored as 8-bit integers, activations are quantized at run time per batch (``DynamicQuantizeLinear``),
and ORT runs the products as integer kernels (``MatMulInteger`` / ``DynamicQuantizeMatMul``). No
calibration data is needed. ``Gather`` in ``op_types`` stores embedding tables as 8-bit too (Gather
on uint8 data, then ``DequantizeLinear``), so the embedding table — often the largest tensor of a
small transformer — shrinks with the rest.

Per-channel weights are the default: on transformers they keep the outputs closer to FP32 than
per-tensor at the same speed (numbers: README, "Dynamic INT8"). ``Conv`` is allowed but not the
default: ``ConvInteger`` is slow on x86 (use ``quantize.ptq`` for CNNs). The legacy exporter writes
2-D ``nn.Linear`` as ``Gemm``, which ORT's dynamic quantizer does not handle; those stay float and the
log says how many.

``reduce_range: auto`` follows the CPU (:func:`compress.runtimes.environment.int8_reduce_range`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from compress.stages.base import ONNX_FLOAT, ONNX_QUANTIZED, TORCH_FLOAT, Patterns, Stage, StageConfig

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.context import StageContext

OpType = Literal["MatMul", "Attention", "Gather", "EmbedLayerNormalization", "LSTM", "Conv"]


class QuantizeDynamicConfig(StageConfig):
    per_channel: bool = Field(True, description="Per-output-channel weight scales (more faithful than per-tensor "
                              "on transformers at the same speed).")
    op_types: list[OpType] = Field(
        default_factory=lambda: ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
        min_length=1, description="Op types to quantize (quantize_dynamic op_types_to_quantize). Gather: "
        "embedding tables stored as 8-bit. Conv (ConvInteger) is slow on x86: use quantize.ptq for CNNs.")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight type (QuantType.QInt8/QUInt8).")
    reduce_range: Literal["auto"] | bool = Field(
        "auto", description="7-bit weights; auto: true on x86 without VNNI, false otherwise (the run says which).")
    ignored: Patterns = Field(default_factory=list, description="Regular expressions (re.search) on ONNX node "
                              "names of nodes left in float (nodes_to_exclude). Each must match a node.")
    preprocess: bool = Field(True, description="Run onnxruntime.quantization.quant_pre_process first.")


class QuantizeDynamic(Stage):
    """Dynamic INT8: 8-bit weights, activations quantized at run time (no calibration)."""

    type: ClassVar[str] = "quantize.dynamic"
    Config = QuantizeDynamicConfig
    accepts = (TORCH_FLOAT, ONNX_FLOAT)
    produces = ONNX_QUANTIZED
    summary = "Dynamic INT8 for MatMul-heavy models and embeddings (onnxruntime quantize_dynamic)."
    trains = False

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import tempfile

        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from compress.artifact import ONNX, save_onnx
        from compress.errors import StageError
        from compress.runtimes.environment import int8_reduce_range
        from compress.stages.quantize_ptq import (_first_line, _load, _match, check_ignored, float_onnx, preprocess,
                                                  runtime_accounting)

        cfg = self.config
        facts: dict[str, Any] = {"settings": cfg.model_dump(mode="json"), "input_kind": artifact.kind}
        reduce, why = int8_reduce_range(cfg.reduce_range)
        facts["reduce_range"] = {"value": reduce, "why": why}
        ctx.log(why)
        out = ctx.work_dir / ONNX
        with tempfile.TemporaryDirectory(prefix="compress-dyn-") as tmp:
            tmp = Path(tmp)
            src = float_onnx(artifact, ctx, tmp, facts)
            if cfg.preprocess:
                src = preprocess(src, tmp, self.type)
            check_ignored(src, cfg.ignored, self.type)
            graph = _load(src).graph
            exclude = _match(cfg.ignored, [n.name for n in graph.node])
            gemms = sum(1 for n in graph.node if n.op_type == "Gemm")
            qt = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[cfg.weight_type]
            with ctx.progress("quantizing (dynamic INT8) with onnxruntime", 1) as bar:
                try:
                    quantize_dynamic(str(src), str(out), op_types_to_quantize=list(cfg.op_types),
                                     per_channel=cfg.per_channel, reduce_range=reduce, weight_type=qt,
                                     nodes_to_exclude=exclude or None)
                except Exception as e:  # noqa: BLE001
                    raise StageError(f"quantize.dynamic: onnxruntime quantize_dynamic failed: {type(e).__name__}: "
                                     f"{_first_line(e)}", hint="try preprocess: false or fewer op_types") from e
                bar.update(1)
        facts["library"] = (f"onnxruntime {onnxruntime.__version__} quantize_dynamic ({', '.join(cfg.op_types)}, "
                            f"{'per-channel' if cfg.per_channel else 'per-tensor'}, {cfg.weight_type} weights, "
                            f"reduce_range={reduce})")
        facts["embeddings_quantized"] = _quantized_gathers(out)
        if facts["embeddings_quantized"]:
            ctx.log(f"{facts['embeddings_quantized']} embedding table(s) (Gather) stored as 8-bit")
        if gemms:
            ctx.log(f"{gemms} Gemm node(s) (2-D Linear from the legacy exporter) stay float: ORT's dynamic "
                    "quantizer handles MatMul, not Gemm")
        precision = runtime_accounting(out, ctx, facts, self.type)
        return save_onnx(out, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision=precision, facts=facts)


def _quantized_gathers(path: Path) -> int:
    """Gather nodes whose data input is an 8-bit initializer (a quantized embedding table)."""
    import onnx

    from compress.onnx_graph import load

    g = load(path).graph
    int8 = {i.name for i in g.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    return sum(1 for n in g.node if n.op_type == "Gather" and n.input and n.input[0] in int8)
