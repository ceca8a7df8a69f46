"""``quantize.weights``: weight-only INT4 / INT8 quantization of MatMul (Linear) layers; activations stay float.

Maps to one of two library calls on the float ONNX model (a torch input is exported first with the
pipeline's ``export:`` settings):

* ``backend: onnxruntime`` (default) -> ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer(
  model, nodes_to_exclude=..., algo_config=DefaultWeightOnlyQuantConfig(block_size=group_size,
  is_symmetric=symmetric, accuracy_level=accuracy_level, bits=bits, quant_format=QOperator))``: every
  ``MatMul`` with a constant weight becomes a ``com.microsoft.MatMulNBits`` node (round-to-nearest,
  block-wise along K; a K smaller than the block is zero-padded). ``Gemm`` nodes are skipped: the legacy
  exporter writes a Linear applied to a 2-D tensor as ``Gemm``, so such layers stay float.
* ``backend: nncf`` -> ``nncf.compress_weights(model, mode=INT4_SYM|INT4_ASYM|INT8_SYM|INT8_ASYM, ratio=,
  group_size=, all_layers=, ignored_scope=, advanced_parameters=AdvancedCompressionParameters(
  group_size_fallback_mode=ADJUST, min_adjusted_group_size=16))``: data-free (weight-error sensitivity for
  ``ratio < 1``); 4-bit layers become ``MatMulNBits`` (opset < 21) and ``Gemm`` is converted too; the
  INT8 layers (``bits: 8`` or the backup share of ``ratio < 1``) are per-channel ``DequantizeLinear ->
  MatMul``, i.e. float compute. A layer whose K is not a multiple of ``group_size`` gets the largest
  power-of-two group >= 16 dividing K, else INT8 (nncf's ADJUST fallback); facts list the bits per layer.
  Two repairs of nncf 3.4's output, both recorded in the facts: it writes ``accuracy_level=0`` on every
  ``MatMulNBits``, which we set to the configured level; its INT4_ASYM zero points are one byte per
  block (shape ``[N, blocks]``) where ONNX Runtime 1.32 wants two 4-bit values per byte (``[N,
  ceil(blocks/2)]``, low nibble first) and refuses to load the model, so we pack them.

``accuracy_level`` is the ``MatMulNBits`` compute type in ONNX Runtime: 0 = unset (float32 compute, the
kernel's default), 1 = fp32, 2 = fp16, 3 = bf16, 4 = int8 (activations quantized per block on the fly,
integer dot products). On x86 CPUs 4 is the fast path; with 0 the 4-bit model runs *slower* than float
here (pipelines/int4.yaml's transformer, batch 1: 0.79-0.84x of FP32 with 0, 1.55-1.63x with 4; see
benchmarks/int4_accuracy_level.py). Small MatMuls gain little either way (dim 128: ~0.95x with 4).

With ``embeddings: true`` (default; onnxruntime backend, 4 bits) the quantizer's ``op_types_to_quantize``
also includes ``Gather``: embedding tables become ``com.microsoft.GatherBlockQuantized`` (4-bit blocks
along the embedding dimension), so weight-only quantization shrinks them too.

The output is checked to load and run in ONNX Runtime; the stage fails if no weight was quantized
(Conv-only models, or Linear layers exported as Gemm with the onnxruntime backend: use quantize.ptq).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.stages.base import ONNX_FLOAT, ONNX_QUANTIZED, TORCH_FLOAT, Patterns, Stage, StageConfig

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from compress.artifact import Artifact
    from compress.context import StageContext

WEIGHT_OPS = ("MatMul", "Gemm")


class QuantizeWeightsConfig(StageConfig):
    backend: Literal["onnxruntime", "nncf"] = Field(
        "onnxruntime", description="'onnxruntime': MatMulNBitsQuantizer (every MatMul, same bits; Gemm is "
        "skipped). 'nncf': nncf.compress_weights (also converts Gemm; supports ratio < 1).")
    bits: Literal[4, 8] = Field(4, description="Weight bits. 4 = INT4 block-wise; 8 = INT8 (onnxruntime: "
                                "block-wise MatMulNBits; nncf: per-channel DequantizeLinear, group_size unused).")
    symmetric: bool = Field(True, description="Symmetric (no zero point) or asymmetric (per-block zero point) "
                            "weight quantization.")
    group_size: int = Field(32, description="Block size along K (input features) sharing one scale: a power of "
                            "two >= 16. Smaller = more accurate and larger (scales are float32).")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="ONNX Runtime MatMulNBits compute type: 4 = int8 compute (the fast path on x86 CPU), "
        "0 = unset/float32 (slower than the float model on this CPU), 1 fp32, 2 fp16, 3 bf16.")
    ratio: float = Field(1.0, gt=0, le=1, description="nncf only: share of the layers (by weight size) in 4-bit, "
                         "the rest INT8 per-channel (picked by weight quantization error). 1 = all 4-bit.")
    all_layers: bool = Field(True, description="nncf only: also put the first and the last MatMul/Gemm in 4-bit "
                             "(false keeps them INT8, nncf's own default). onnxruntime always quantizes every "
                             "MatMul not ignored.")
    ignored: Patterns = Field(default_factory=list, description="Regular expressions (re.search) on ONNX node "
                               "names of MatMul/Gemm layers to keep float, e.g. '/head/'. Each must match a layer.")
    embeddings: bool = Field(True, description="onnxruntime backend, bits: 4: also store embedding tables (Gather on "
                             "a constant table) block-wise in 4 bits (GatherBlockQuantized), so the often largest "
                             "tensor shrinks too. ORT quantizes Gather to 4 bits only; for 8-bit tables use "
                             "quantize.dynamic.")

    @field_validator("group_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 16 or v & (v - 1):
            raise ValueError(f"group_size must be a power of two >= 16 (16, 32, 64, 128, ...), got {v}")
        return v


    @model_validator(mode="after")
    def _combinations(self) -> "QuantizeWeightsConfig":
        if self.ratio < 1 and self.backend != "nncf":
            raise ValueError(f"ratio {self.ratio:g} (mixed INT4/INT8) needs backend: nncf; onnxruntime's "
                             "MatMulNBitsQuantizer gives every MatMul the same bits (use ratio: 1 or backend: nncf)")
        if self.ratio < 1 and self.bits != 4:
            raise ValueError(f"ratio {self.ratio:g} is the share of layers in 4-bit: it needs bits: 4 (got bits: 8)")
        return self


# --------------------------------------------------------------------------------------------------
# graph helpers (onnx imported lazily by the callers' functions)


def weight_layers(model: "onnx.ModelProto") -> dict[str, dict[str, Any]]:
    """Every MatMul/Gemm/MatMulNBits with a constant weight: bits, group size, stored weight bytes."""
    from compress.onnx_graph import attrs, init_bytes, initializers, weight_source
    from compress.onnx_graph import producers as producers_of

    graph = model.graph
    inits, producers = initializers(graph), producers_of(graph)
    layers: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type == "MatMulNBits":
            a = attrs(node)
            stored = [x for x in node.input[1:4] if x in inits]  # B, scales, zero points (not g_idx, bias)
            layers[name] = {"op": node.op_type, "bits": int(a.get("bits", 4)), "group_size": int(a["block_size"]),
                            "accuracy_level": int(a.get("accuracy_level", 0)), "K": int(a["K"]), "N": int(a["N"]),
                            "zero_points": len(node.input) > 3 and bool(node.input[3]),
                            "weight_bytes": sum(init_bytes(inits[x]) for x in stored)}
        elif node.op_type in WEIGHT_OPS and len(node.input) > 1:
            src = weight_source(node.input[1], inits, producers)
            if src.stored is None:
                continue  # activation x activation (attention scores)
            info: dict[str, Any] = {"op": node.op_type,
                                    "weight_bytes": sum(init_bytes(inits[x]) for x in src.stored_tensors(inits))}
            dq = src.dequantize
            if dq is None:
                info["bits"] = 32
            else:
                block = int(attrs(dq).get("block_size", 0))
                info.update(bits=4 if src.precision(inits) in ("int4", "uint4") else 8,
                            group_size=block or "per-channel", zero_points=len(dq.input) > 2 and bool(dq.input[2]))
            layers[name] = info
    return layers


def _check_ignored(patterns: list[str], names: list[str]) -> list[str]:
    """Layer names matched by the ``ignored`` regexes; every pattern must match at least one layer."""
    from compress.errors import StageError

    matched: list[str] = []
    for p in patterns:
        hits = [n for n in names if re.search(p, n)]
        if not hits:
            example = names[0] if names else "(none)"
            raise StageError(f"quantize.weights: ignored pattern '{p}' matches no MatMul/Gemm layer",
                             hint=f"layer names look like '{example}'; see the baseline's layer_precision in "
                             "the report")
        matched += [h for h in hits if h not in matched]
    return matched


# --------------------------------------------------------------------------------------------------
# backends


def _ort_quantize(model: "onnx.ModelProto", cfg: QuantizeWeightsConfig, exclude: list[str]) -> "onnx.ModelProto":
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # the module calls logging.basicConfig(level=INFO) on import: keep the process' logging as it was
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    old = log.level
    log.setLevel(logging.WARNING)
    try:
        inits = {i.name for i in model.graph.initializer}
        tables = any(n.op_type == "Gather" and n.input and n.input[0] in inits for n in model.graph.node)
        # only with a real embedding table: asking for Gather makes the quantizer raise the opset to 21
        ops = ("MatMul", "Gather") if cfg.embeddings and cfg.bits == 4 and tables else ("MatMul",)
        algo = DefaultWeightOnlyQuantConfig(block_size=cfg.group_size, is_symmetric=cfg.symmetric,
                                            accuracy_level=cfg.accuracy_level, quant_format=QuantFormat.QOperator,
                                            op_types_to_quantize=ops, bits=cfg.bits)
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=algo)
        quantizer.process()
        return quantizer.model.model
    finally:
        log.setLevel(old)


def _nncf_quantize(model: "onnx.ModelProto", cfg: QuantizeWeightsConfig, exclude: list[str]) -> "onnx.ModelProto":
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from compress.errors import StageError

    mode = {(4, True): nncf.CompressWeightsMode.INT4_SYM, (4, False): nncf.CompressWeightsMode.INT4_ASYM,
            (8, True): nncf.CompressWeightsMode.INT8_SYM, (8, False): nncf.CompressWeightsMode.INT8_ASYM}
    kwargs: dict[str, Any] = {"mode": mode[(cfg.bits, cfg.symmetric)]}
    if exclude:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(exclude))
    if cfg.bits == 4:  # nncf's INT8 modes are per-channel and take none of these
        kwargs.update(ratio=cfg.ratio, group_size=cfg.group_size, all_layers=cfg.all_layers,
                      advanced_parameters=AdvancedCompressionParameters(
                          group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16))
    nlog = logging.getLogger("nncf")
    old = nlog.level
    nlog.setLevel(logging.WARNING)  # its bit-width table goes to stdout; the facts carry the same
    try:
        return nncf.compress_weights(model, **kwargs)
    except Exception as e:  # noqa: BLE001 - nncf raises many types; one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"quantize.weights: nncf.compress_weights failed: {type(e).__name__}: {first}",
                         hint="try backend: onnxruntime, another group_size, or ignore the failing layers") from e
    finally:
        nlog.setLevel(old)


def _repair_nncf(model: "onnx.ModelProto", accuracy_level: int) -> dict[str, int]:
    """Set accuracy_level on MatMulNBits and pack one-byte-per-block 4-bit zero points (see the docstring)."""
    import numpy as np
    from onnx import helper, numpy_helper

    from compress.onnx_graph import attrs, initializers

    inits = initializers(model.graph)
    set_level = packed = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        levels = [a for a in node.attribute if a.name == "accuracy_level"]
        if levels:
            if levels[0].i != accuracy_level:
                levels[0].i = accuracy_level
                set_level += 1
        else:
            node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
            set_level += 1
        a = attrs(node)
        if a.get("bits", 4) == 4 and len(node.input) > 3 and node.input[3] in inits:
            zp = inits[node.input[3]]
            blocks = -(-int(a["K"]) // int(a["block_size"]))
            arr = numpy_helper.to_array(zp)
            if arr.dtype == np.uint8 and arr.shape == (int(a["N"]), blocks) and blocks > 1:
                if blocks % 2:
                    arr = np.pad(arr, ((0, 0), (0, 1)))
                arr = (arr[:, 0::2] & 0xF) | ((arr[:, 1::2] & 0xF) << 4)
                zp.CopyFrom(numpy_helper.from_array(arr.astype(np.uint8), zp.name))
                packed += 1
    return {"accuracy_level_set": set_level, "zero_points_packed": packed}


def _no_weights_error(layers: dict[str, dict[str, Any]], cfg: QuantizeWeightsConfig, ignored: list[str],
                      convs: int):
    from compress.errors import StageError

    conv_note = f"; its {convs} Conv layer(s) are out of scope for weight-only quantization" if convs else ""
    gemms = [n for n, v in layers.items() if v["op"] == "Gemm"]
    matmuls = [n for n, v in layers.items() if v["op"] == "MatMul"]
    if layers and set(ignored) >= set(layers):
        return StageError("quantize.weights: every MatMul/Gemm layer is in 'ignored'; nothing to quantize",
                          hint="narrow the ignored patterns")
    if gemms and not matmuls and cfg.backend == "onnxruntime":
        return StageError(f"quantize.weights: weight-only INT4 applies to MatMul; this model's Linear layers "
                          f"exported as Gemm ({len(gemms)} Gemm, 0 MatMul with constant weights), which "
                          f"onnxruntime's MatMulNBitsQuantizer skips{conv_note}",
                          hint="use backend: nncf (it converts Gemm), apply Linear to 3-D inputs, or use "
                          "quantize.ptq for INT8")
    return StageError("quantize.weights: weight-only INT4 applies to MatMul/Gemm weights and this model has none"
                      f"{conv_note}; nothing was quantized",
                      hint="use quantize.ptq for INT8 Conv models")


class QuantizeWeights(Stage):
    """Weight-only INT4/INT8 of MatMul layers (ONNX Runtime MatMulNBits or NNCF compress_weights)."""

    type: ClassVar[str] = "quantize.weights"
    Config = QuantizeWeightsConfig
    accepts = (TORCH_FLOAT, ONNX_FLOAT)
    produces = ONNX_QUANTIZED
    trains = False
    summary = ("Weight-only INT4/INT8 of MatMul layers (onnxruntime MatMulNBitsQuantizer or "
               "nncf.compress_weights); activations stay float.")


    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import tempfile

        import onnx

        from compress.artifact import ONNX, save_onnx, write_onnx

        cfg = self.config
        with tempfile.TemporaryDirectory(prefix="compress-qw-") as tmp:
            if artifact.format == "torch":
                from compress.export import export_onnx

                src = export_onnx(ctx.load_torch(artifact), artifact.input_specs, Path(tmp) / "float.onnx",
                                  ctx.export)
            else:
                src = artifact.path("onnx")
            model = onnx.load(str(src))
        convs = sum(n.op_type == "Conv" for n in model.graph.node)
        before = weight_layers(model)
        float_layers = {n: v for n, v in before.items() if v["bits"] == 32}
        excluded = _check_ignored(cfg.ignored, list(float_layers))
        candidates = [n for n, v in float_layers.items() if n not in excluded
                      and (v["op"] == "MatMul" or cfg.backend == "nncf")]
        if not candidates:
            raise _no_weights_error(float_layers, cfg, excluded, convs)

        group = "per-channel" if cfg.backend == "nncf" and cfg.bits == 8 else cfg.group_size
        ctx.log(f"{cfg.backend}: {cfg.bits}-bit {'sym' if cfg.symmetric else 'asym'} weights, group {group}, "
                f"accuracy_level {cfg.accuracy_level}; {len(candidates)} candidate layer(s)")
        repairs: dict[str, int] = {}
        if cfg.backend == "onnxruntime":
            out = _ort_quantize(model, cfg, excluded)
        else:
            out = _nncf_quantize(model, cfg, excluded)
            repairs = _repair_nncf(out, cfg.accuracy_level)

        after = weight_layers(out)
        quantized = {n: v for n, v in after.items() if v["bits"] < 32}
        if not quantized:
            raise _no_weights_error(float_layers, cfg, excluded, convs)
        path = ctx.work_dir / ONNX
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        write_onnx(out, path)
        self._check_loads(path, artifact, ctx)

        bits = sorted({v["bits"] for v in quantized.values()})
        precision = "mixed" if len(bits) > 1 else f"int{bits[0]}"
        w_before = sum(v["weight_bytes"] for v in float_layers.values())
        w_after = sum(v["weight_bytes"] for v in after.values())
        facts: dict[str, Any] = {
            "backend": cfg.backend, "bits": cfg.bits, "symmetric": cfg.symmetric, "group_size": group,
            "accuracy_level": cfg.accuracy_level, "ratio": cfg.ratio,
            "quantized_layers": len(quantized),
            "layers_by_bits": {f"int{b}": sum(v["bits"] == b for v in quantized.values()) for b in bits},
            "float_layers": [n for n, v in after.items() if v["bits"] == 32],
            "ignored_layers": excluded,
            "weight_bytes_fp32": w_before, "weight_bytes_quantized": w_after,
            "weight_ratio": round(w_after / w_before, 4) if w_before else None,
            "layers": after,
        }
        if repairs:
            facts["nncf_repairs"] = repairs
        facts["embeddings_quantized"] = sum(n.op_type == "GatherBlockQuantized" for n in out.graph.node)
        if facts["embeddings_quantized"]:
            ctx.log(f"{facts['embeddings_quantized']} embedding table(s) stored in 4 bits (GatherBlockQuantized)")
        by_bits = ", ".join(f"{k}: {v}" for k, v in facts["layers_by_bits"].items())
        left = f", {len(facts['float_layers'])} left float" if facts["float_layers"] else ""
        ctx.log(f"quantized {len(quantized)} layer(s) ({by_bits}{left}); MatMul/Gemm weights "
                f"{w_before / 1e6:.2f} MB -> {w_after / 1e6:.2f} MB ({facts['weight_ratio']:.1%})")
        if precision != f"int{cfg.bits}" and cfg.ratio == 1 and cfg.all_layers:
            ctx.log(f"note: some layers fell back to INT8 (K not divisible by a group >= 16): precision '{precision}'")
        return save_onnx(path, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision=precision, facts=facts)

    def _check_loads(self, path: Path, artifact: "Artifact", ctx: "StageContext") -> None:
        """Run the result on a few samples in the pipeline's first ONNX-running target (through the
        measurement service, with the target's options): MatMulNBits shape errors surface here."""
        from compress.errors import CompressError, StageError

        target = ctx.measure.onnx_target()
        try:
            ctx.measure.infer(path, target=target, n=4)
        except Exception as e:  # noqa: BLE001
            msg = e.message if isinstance(e, CompressError) else (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StageError(f"quantize.weights: target '{target.name}' ({target.runtime}) cannot run the "
                             f"{self.config.backend} output: {msg}",
                             hint="try symmetric: true or backend: onnxruntime") from e
