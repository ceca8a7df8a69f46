"""``quantize.ptq``: post-training INT8 quantization of weights *and* activations, calibrated on data.

Maps to one of two library calls on the float ONNX model (``backend:``):

* ``onnxruntime`` (default): ``onnxruntime.quantization.quant_pre_process`` then
  ``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ, per_channel=...,
  activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=...)``. It is the
  default because the deployment target is ONNX Runtime on x86 CPU: QDQ with *uint8 activations and
  int8 per-channel weights* (U8S8) is what ORT's session optimizer fuses into real integer kernels
  (QLinearConv / QGemm / QLinearMatMul ...); measured ~3.3x faster than FP32 on ResNet-18. Int8
  activations are supported but slower on x86 (a peer tool's int8-activation default ran ResNet-18 at
  0.89x of FP32), so they are never the default.
* ``nncf``: ``nncf.quantize(onnx.ModelProto, nncf.Dataset(...), preset=..., target_device=CPU,
  subset_size=..., fast_bias_correction=..., ignored_scope=nncf.IgnoredScope(names=...),
  advanced_parameters=AdvancedQuantizationParameters(...))`` on the same ONNX model. NNCF picks the
  activation/weight signedness itself (so ``activation_type``/``weight_type`` are rejected there) and
  adds bias correction.

A torch input is exported with the pipeline's ``export:`` settings (the exporters fold Conv+BatchNorm);
BatchNorm the exporter leaves is folded with ``transform.fold_bn``'s :func:`~compress.stages.fold_bn.fold`
and the model exported again; BatchNorm still left in the float graph is refused, because QDQ around an
unfolded BatchNorm runs several times slower in ORT. After quantizing, the model is opened in ONNX
Runtime (CPU, graph optimization ``all``) and its optimized graph must contain integer kernels: a model
that only carries fake-quant ops a runtime executes in float is an error. The facts name the weight and
activation precision of every Conv/MatMul/Gemm and count the integer and float compute kernels ORT runs;
"INT8 layers" in the log and the report are compute layers ORT *executes* as integer kernels in its
optimized graph (not what the quantizer annotated), and a result that runs mostly in float says so.

``reduce_range: auto`` (default) follows ORT's documented guidance for the CPU it runs on
(:func:`compress.runtimes.environment.int8_reduce_range`): 7-bit weights on x86 without VNNI, where
U8S8 can saturate; the log says which it picked and why. With ``backend: nncf`` it maps to
``AdvancedQuantizationParameters(overflow_fix=...)`` (``auto``: NNCF's own default).

``max_drop`` makes it accuracy-aware (:mod:`compress.accuracy_control`, onnxruntime backend): when the
quantized model loses more than ``max_drop`` (top-1 points with labels, else points of top-1 agreement
with the float model, or ``1 - cosine``), the sensitivity of each layer block is measured through the
measurement service (``ctx.measure.evaluate``, the runtime on the evaluation split) with the
calibration ranges computed once (``quantize_static(calibration_cache_path=...)``), the most sensitive
blocks stay in float (``nodes_to_exclude``) until the target holds, and the speed that cost is timed
(``ctx.measure.latency``, interleaved with the float and the fully quantized model).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from compress.stages.base import ONNX_FLOAT, ONNX_QUANTIZED, TORCH_FLOAT, Patterns, Stage, StageConfig

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.calibration import CalibrationSet
    from compress.context import StageContext

#: ops ONNX Runtime's QDQ propagation moves quantization across (so the consumer still gets int8 input)
_QDQ_TRANSPARENT = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})
_ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
#: calibration_method -> nncf RangeEstimatorParametersSet member (activations)
_NNCF_METHODS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE"}
_ORT_ONLY = ("activation_type", "weight_type", "percentile", "max_drop", "max_drop_metric", "sensitivity")
_NNCF_ONLY = ("preset", "fast_bias_correction", "model_type", "smooth_quant_alpha")


class QuantizePTQConfig(StageConfig):
    backend: Literal["onnxruntime", "nncf"] = Field(
        "onnxruntime", description="'onnxruntime': quantize_static, QDQ (the fast path for ORT on x86 CPU); "
        "'nncf': nncf.quantize on the ONNX model (adds bias correction).")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="onnxruntime backend: activation type. uint8 with int8 weights (U8S8) is the x86 fast "
        "path; int8 activations run slower on x86.")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="onnxruntime backend: weight type.")
    per_channel: bool = Field(True, description="Per-output-channel weight scales (per-tensor when false).")
    calibration_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="Activation range estimation: onnxruntime CalibrationMethod MinMax/Percentile/Entropy; "
        "nncf: minmax -> RangeEstimatorParametersSet.MINMAX, percentile -> MEAN_QUANTILE (entropy: onnxruntime only).")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="nncf backend: QuantizationPreset (performance: symmetric activations; mixed: "
        "asymmetric activations).")
    fast_bias_correction: bool = Field(True, description="nncf backend: fast (true) or full (false) bias correction.")
    ignored: Patterns = Field(
        default_factory=list, description="Regular expressions (re.search, as in every stage) on ONNX node names, "
        "e.g. '/fc/' or 'downsample', of nodes left in float: onnxruntime nodes_to_exclude / "
        "nncf IgnoredScope(names=...). Each must match a node.")
    samples: int | None = Field(None, ge=1, description="Calibration samples; overrides the pipeline's "
                                "calibration.samples.")
    preprocess: bool = Field(True, description="Run onnxruntime.quantization.quant_pre_process (shape inference, "
                             "Conv+BatchNorm fusion) on the float ONNX model first.")
    reduce_range: Literal["auto"] | bool = Field(
        "auto", description="7-bit weights. auto: true on x86 CPUs without VNNI (where ONNX Runtime documents that "
        "U8S8 can saturate), false otherwise; the run says which it picked. onnxruntime: quantize_static("
        "reduce_range=); nncf: overflow_fix enable/disable (auto: nncf's default).")
    percentile: float = Field(99.999, gt=50, le=100, description="calibration_method: percentile, onnxruntime "
                              "backend: the percentile kept (extra_options CalibPercentile).")
    model_type: Literal["default", "transformer"] = Field(
        "default", description="nncf backend: nncf.ModelType; transformer adds its patterns and SmoothQuant.")
    smooth_quant_alpha: float | None = Field(
        None, ge=-1, le=1, description="nncf backend with model_type: transformer: SmoothQuant alpha for MatMul "
        "(AdvancedSmoothQuantParameters(matmul=...); nncf's default 0.95; negative disables).")
    max_drop: float | None = Field(
        None, ge=0, description="Accuracy-aware PTQ (onnxruntime backend): the largest drop allowed vs the float "
        "model, in max_drop_metric's unit; the most sensitive layer blocks stay in float until it holds.")
    max_drop_metric: Literal["auto", "accuracy", "agreement", "cosine"] = Field(
        "auto", description="auto: accuracy (top-1 points) with labels, else agreement (points of top-1 agreement "
        "with the float model); cosine: 1 - output cosine.")
    sensitivity: Literal["block", "layer"] = Field(
        "block", description="max_drop: measure sensitivity per module block (fewer, faster) or per layer.")


    @model_validator(mode="after")
    def _backend_options(self) -> "QuantizePTQConfig":
        if self.backend == "nncf":
            wrong = [k for k in _ORT_ONLY if k in self.model_fields_set]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to backend: onnxruntime only (nncf chooses the "
                                 f"signedness itself): remove them or set backend: onnxruntime")
            if self.calibration_method not in _NNCF_METHODS:
                raise ValueError(f"calibration_method '{self.calibration_method}' is not available with backend: nncf "
                                 f"(it has {', '.join(_NNCF_METHODS)}); use backend: onnxruntime for entropy")
            if self.smooth_quant_alpha is not None and self.model_type != "transformer":
                raise ValueError("smooth_quant_alpha applies with model_type: transformer (nncf runs SmoothQuant for "
                                 "transformers only)")
        else:
            wrong = [k for k in _NNCF_ONLY if k in self.model_fields_set]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to backend: nncf only: remove them or set backend: nncf")
            if "percentile" in self.model_fields_set and self.calibration_method != "percentile":
                raise ValueError("percentile applies with calibration_method: percentile")
        return self

    def applied(self) -> dict[str, Any]:
        """The settings this backend actually uses (for the report)."""
        skip = _NNCF_ONLY if self.backend == "onnxruntime" else _ORT_ONLY
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}


def activation_precision(onnx_path: Path) -> dict[str, str]:
    """Per Conv/MatMul/Gemm node of a QDQ graph: the type its activation input is quantized to."""
    from compress import onnx_graph as og
    from compress.facts import weight_precision

    g = _load(onnx_path).graph
    inits, producers = og.initializers(g), og.producers(g)
    out: dict[str, str] = {}
    for node in g.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm", "ConvTranspose"):
            continue
        prod = producers.get(node.input[0])
        while prod is not None and prod.op_type in _QDQ_TRANSPARENT:  # ORT moves Q/DQ across these
            prod = producers.get(prod.input[0])
        if prod is not None and prod.op_type == "DequantizeLinear" and len(prod.input) > 2:
            out[node.name or node.input[1]] = weight_precision(prod.input[2], inits, producers, prod)
        elif prod is not None and prod.op_type == "DequantizeLinear":
            out[node.name or node.input[1]] = "uint8"  # no zero point: the ONNX default type
        else:
            out[node.name or node.input[1]] = "float32"
    return out


def _load(path: Path):
    from compress.onnx_graph import load

    return load(path)


def _ops(path: Path) -> dict[str, int]:
    from compress.onnx_graph import op_counts

    return op_counts(_load(path).graph)


class QuantizePTQ(Stage):
    """Post-training INT8 quantization (weights + activations) with calibration data."""

    type: ClassVar[str] = "quantize.ptq"
    Config = QuantizePTQConfig
    accepts = (TORCH_FLOAT, ONNX_FLOAT)
    produces = ONNX_QUANTIZED
    summary = "INT8 post-training quantization, calibrated (onnxruntime quantize_static QDQ, or nncf.quantize)."
    trains = False
    uses_calibration = True

    # ---------------------------------------------------------------------------------------------
    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import tempfile

        from compress.artifact import ONNX, save_onnx
        from compress.calibration import load_calibration
        from compress.runtimes.environment import int8_reduce_range

        cfg = self.config
        facts: dict[str, Any] = {"backend": cfg.backend, "settings": cfg.applied(), "input_kind": artifact.kind}
        reduce, why = int8_reduce_range(cfg.reduce_range)
        if cfg.backend == "nncf" and cfg.reduce_range == "auto":
            reduce, why = None, "reduce_range auto with backend nncf: nncf's own overflow_fix default (first layer)"
        facts["reduce_range"] = {"value": reduce, "why": why}
        ctx.log(why)
        out = ctx.work_dir / ONNX
        cal = load_calibration(ctx, samples=cfg.samples, sample_shape=artifact.input_shape[1:])  # fail fast
        with tempfile.TemporaryDirectory(prefix="compress-ptq-") as tmp:
            tmp = Path(tmp)
            src = float_onnx(artifact, ctx, tmp, facts)
            if cfg.preprocess:
                src = preprocess(src, tmp, self.type)
            self._refuse_batchnorm(src, artifact)
            check_ignored(src, cfg.ignored, self.type)
            name, fixed = self._input(_load(src))
            bs = fixed or cal.batch_size
            if fixed is not None and fixed < cal.batch_size:
                ctx.log(f"the model's batch size is fixed at {fixed}: calibrating {fixed} sample(s) at a time "
                        "(slower; export.dynamic_batch: true lets calibration use batches)")
            if cfg.backend == "onnxruntime" and cfg.calibration_method != "minmax" and not fixed:
                bs, cal = _equal_batches(cal, bs)
            batches = _exact_batches(cal, bs, fixed is not None)
            facts["calibration"] = {**cal.describe(), "batch_size": bs, "batches": len(batches)}
            ctx.log(f"calibrating on {cal.count} sample(s) in {len(batches)} batch(es) of {bs} ({cal.source}; "
                    f"fingerprint {cal.fingerprint[:12]})")
            if cfg.backend == "onnxruntime":
                ranges = tmp / "ranges.json"  # calibrate once; accuracy control re-quantizes from it

                def quantize(dst: Path, float_nodes: list[str]) -> str:
                    return self._quantize_ort(src, dst, name, batches, ctx, reduce, float_nodes, ranges)

                facts["library"] = quantize(out, [])
                if cfg.max_drop is not None:
                    self._accuracy_control(artifact, ctx, src, out, quantize, facts)
            else:
                facts["library"] = self._quantize_nncf(src, out, name, batches, ctx, reduce)
        precision = runtime_accounting(out, ctx, facts, self.type)
        return save_onnx(out, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision=precision, facts=facts)

    def _accuracy_control(self, artifact: "Artifact", ctx: "StageContext", src: Path, out: Path, quantize,
                          facts: dict[str, Any]) -> None:
        """``max_drop``: keep the most sensitive layer blocks in float until the target holds
        (:mod:`compress.accuracy_control`), measured through ``ctx.measure``; time what it cost."""
        import shutil

        from compress.accuracy_control import Objective, keep_sensitive_in_float, layer_groups, resolve_metric
        from compress.artifact import ONNX, save_onnx
        from compress.errors import StageError

        cfg = self.config
        m = getattr(ctx, "measure", None)
        if m is None:
            raise StageError("quantize.ptq: max_drop needs the measurement service (run it with `compress run`)")
        objective = Objective(resolve_metric(cfg.max_drop_metric, m.labels() is not None), cfg.max_drop)
        cand = ctx.work_dir / "candidates"

        def save(folder: Path, tag: str) -> "Artifact":
            return save_onnx(folder / ONNX, folder, like=artifact, producer=f"{ctx.stage_name}:{tag}",
                             precision="mixed")

        def build(float_nodes: list[str], tag: str) -> "Artifact":
            folder = cand / tag
            folder.mkdir(parents=True, exist_ok=True)
            quantize(folder / ONNX, float_nodes)
            return save(folder, tag)

        (cand / "all").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, cand / "all" / ONNX)
        all_q = save(cand / "all", "all")
        excluded = set(_match(cfg.ignored, [n.name for n in _load(src).graph.node]))
        nodes = [(n.name, n.op_type) for n in _load(src).graph.node if n.name and n.name not in excluded]
        (ref_score,) = m.evaluate([artifact], reference=artifact)
        try:
            res = keep_sensitive_in_float(layer_groups(nodes, cfg.sensitivity), build,
                                          lambda arts: m.evaluate(arts, reference=artifact), ref_score, all_q,
                                          objective, ctx.log)
            chosen = res.pop("artifact")
            timed = [artifact, all_q] + ([chosen] if chosen is not all_q else [])
            lat = m.latency(timed, label=f"timing the float, fully quantized and chosen model ({len(timed)})")
            res["speedup_all_quantized"] = round(m.speedup(lat[0], lat[1]), 3)
            res["speedup_chosen"] = round(m.speedup(lat[0], lat[-1]), 3)
            if chosen is not all_q:
                shutil.copyfile(chosen.path("onnx"), out)
        finally:
            shutil.rmtree(cand, ignore_errors=True)
        res["metric"] = objective.metric
        facts["accuracy_control"] = res
        kept = ", ".join(res["float_groups"]) or "none"
        ctx.log(f"accuracy control: {'met' if res['met'] else 'NOT met'} ({objective.describe()}): drop "
                f"{res['drop_all_quantized']:g} -> {res['drop']:g} with {len(res['float_nodes'])} layer(s) in float "
                f"({kept}); speed-up vs float {res['speedup_all_quantized']:.2f}x fully quantized -> "
                f"{res['speedup_chosen']:.2f}x chosen")

    # ---------------------------------------------------------------------------------------------
    @staticmethod
    def _refuse_batchnorm(src: Path, artifact: "Artifact") -> None:
        from compress.errors import StageError

        n = _ops(src).get("BatchNormalization", 0)
        if n:
            fix = ("add transform.fold_bn before this stage and make each BatchNorm directly follow a Conv/Linear"
                   if artifact.format == "torch" else
                   "keep preprocess: true (it fuses Conv+BatchNormalization), or fold BatchNorm before export "
                   "(transform.fold_bn)")
            raise StageError(f"quantize.ptq: the float model still has {n} BatchNormalization node(s) that could not "
                             f"be folded into a Conv/Gemm; QDQ around unfolded BatchNorm runs several times slower in "
                             f"ONNX Runtime", hint=fix)

    @staticmethod
    def _input(model) -> tuple[str, int | None]:
        """Name and fixed batch size (None when dynamic) of the model's first input."""
        inp = model.graph.input[0]
        dim0 = inp.type.tensor_type.shape.dim[0]
        return inp.name, (dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else None)

    # ---------------------------------------------------------------------------------------------
    def _quantize_ort(self, src: Path, out: Path, name: str, batches: list, ctx: "StageContext",
                      reduce_range: bool, float_nodes: list[str], ranges: Path | None = None) -> str:
        import onnxruntime
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        from compress.artifact import is_large_onnx
        from compress.errors import StageError

        cfg = self.config
        exclude = _match(cfg.ignored, [n.name for n in _load(src).graph.node]) + list(float_nodes)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(batches)

            def get_next(self):
                b = next(self._it, None)
                return None if b is None else _feed(b, name)

            def rewind(self):
                self._it = iter(batches)

        qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        with ctx.progress(f"calibrating ({cfg.calibration_method}) and quantizing with onnxruntime", 1) as bar:
            try:
                with _quiet():  # its histogram calibrators print to stdout
                    quantize_static(
                        str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        activation_type=qt[cfg.activation_type], weight_type=qt[cfg.weight_type],
                        nodes_to_exclude=exclude or None, reduce_range=reduce_range,
                        calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[cfg.calibration_method]),
                        calibration_cache_path=str(ranges) if ranges is not None else None,
                        extra_options={"CalibPercentile": cfg.percentile}
                        if cfg.calibration_method == "percentile" else None,
                        use_external_data_format=is_large_onnx(src))  # > 2 GB: weights beside the .onnx
            except Exception as e:  # noqa: BLE001
                raise StageError(f"quantize.ptq: onnxruntime quantize_static failed: {type(e).__name__}: "
                                 f"{_first_line(e)}", hint="try preprocess: true/false, per_channel: false, or "
                                 "backend: nncf") from e
            bar.update(1)
        if exclude and not float_nodes:
            ctx.log(f"left {len(exclude)} node(s) in float (ignored)")
        return (f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, "
                f"{'U' if cfg.activation_type == 'uint8' else 'S'}8{'S' if cfg.weight_type == 'int8' else 'U'}8, "
                f"{'per-channel' if cfg.per_channel else 'per-tensor'}, {_ORT_METHODS[cfg.calibration_method]}, "
                f"reduce_range={reduce_range}, {len(batches)} calibration batch(es))")

    def _quantize_nncf(self, src: Path, out: Path, name: str, batches: list, ctx: "StageContext",
                       reduce_range: bool | None) -> str:
        import logging

        import nncf
        import onnx
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           AdvancedSmoothQuantParameters, OverflowFix,
                                                           QuantizationParameters)
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        from compress.artifact import write_onnx
        from compress.errors import StageError

        cfg = self.config
        nncf.set_log_level(logging.ERROR)
        model = onnx.load(str(src))  # with its external data, if any: nncf needs the weights
        extra: dict[str, Any] = {}
        if reduce_range is not None:
            extra["overflow_fix"] = OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE
        if cfg.smooth_quant_alpha is not None:
            extra["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant_alpha)
        adv = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=cfg.per_channel),
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet,
                                                       _NNCF_METHODS[cfg.calibration_method]), **extra)
        preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
        with ctx.progress(f"calibrating ({cfg.calibration_method}) and quantizing with nncf", 1) as bar:
            try:
                with _quiet():  # its own progress bars would interleave with ours
                    q = nncf.quantize(
                        model, nncf.Dataset(batches, lambda b: _feed(b, name)), preset=preset[cfg.preset],
                        target_device=nncf.TargetDevice.CPU, subset_size=len(batches),
                        model_type=nncf.ModelType.TRANSFORMER if cfg.model_type == "transformer" else None,
                        fast_bias_correction=cfg.fast_bias_correction,
                        ignored_scope=nncf.IgnoredScope(names=_match(cfg.ignored, [n.name for n in model.graph.node]))
                        if cfg.ignored else None,
                        advanced_parameters=adv)
            except Exception as e:  # noqa: BLE001
                raise StageError(f"quantize.ptq: nncf.quantize failed: {type(e).__name__}: {_first_line(e)}",
                                 hint="try backend: onnxruntime") from e
            bar.update(1)
        write_onnx(q, out)
        return (f"nncf {nncf.__version__} quantize on ONNX (preset {cfg.preset}, target CPU, "
                f"{'per-channel' if cfg.per_channel else 'per-tensor'} weights, "
                f"{_NNCF_METHODS[cfg.calibration_method]}, "
                f"{'fast ' if cfg.fast_bias_correction else ''}bias correction, "
                f"{len(batches)} calibration batch(es))")



# -------------------------------------------------------------------------------------------------
# Shared by the ONNX quantization stages (quantize.ptq, quantize.dynamic)


def float_onnx(artifact: "Artifact", ctx: "StageContext", tmp: Path, facts: dict[str, Any]) -> Path:
    """The float ONNX file to quantize: the input's own, or an export of the torch input.

    Both exporters fold Conv+BatchNorm in eval mode (keeping readable node names); only when a
    BatchNormalization node survives is the model folded with ``transform.fold_bn``'s logic and
    exported again."""
    if artifact.format == "onnx":
        return artifact.path("onnx")
    from compress.errors import StageError
    from compress.export import export_onnx
    from compress.stages.fold_bn import fold

    model = ctx.load_torch(artifact)
    path = export_onnx(model, artifact.input_specs, tmp / "float.onnx", ctx.export)
    if not _ops(path).get("BatchNormalization"):
        return path
    try:
        gm, counts = fold(model)
    except StageError:  # not traceable by torch.fx: the BatchNorm check refuses with the fix
        return path
    facts["bn_folded"] = counts["folded"]
    ctx.log(f"folded {counts['folded']} BatchNorm layer(s) the exporter left before quantization")
    return export_onnx(gm, artifact.input_specs, tmp / "float.onnx", ctx.export)


def preprocess(src: Path, tmp: Path, stage: str) -> Path:
    """``onnxruntime.quantization.quant_pre_process`` (shape inference, Conv+BatchNorm fusion)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from compress.errors import StageError

    dst = tmp / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(dst))
    except Exception as e:  # noqa: BLE001
        raise StageError(f"{stage}: onnxruntime quant_pre_process failed: {type(e).__name__}: "
                         f"{_first_line(e)}", hint="set preprocess: false") from e
    return dst


def check_ignored(src: Path, patterns: list[str], stage: str) -> None:
    """Every ``ignored`` pattern must match a node of the float graph."""
    from compress.errors import StageError

    if not patterns:
        return
    names = [n.name for n in _load(src).graph.node]
    unmatched = [p for p in patterns if not _match([p], names)]
    if unmatched:
        raise StageError(f"{stage}: ignored pattern(s) {', '.join(map(repr, unmatched))} match no node of "
                         f"the float ONNX graph (patterns are regular expressions searched in node names)",
                         hint=f"node names look like {names[0]!r} ... {names[-1]!r}")


def runtime_accounting(out: Path, ctx: "StageContext", facts: dict[str, Any], stage: str) -> str:
    """What the runtime will *execute* (the pipeline's first ONNX target, through the measurement service:
    ONNX Runtime's optimized graph, OpenVINO's compiled layer precisions): integer vs float compute kernels,
    beside what the quantizer annotated. Refuses a model with no integer kernel at all; says loudly when
    most compute layers run in float. Returns the artifact precision ("int8" or "mixed")."""
    from compress.errors import StageError
    from compress.facts import onnx_facts
    from compress.kernels import compute_layers

    ints, floats, on = ctx.measure.onnx_kernels(out)
    facts["kernels_checked_on"] = on
    facts["integer_op_types"] = ints
    facts["integer_ops"] = sum(ints.values())
    facts["float_compute_op_types"] = floats
    facts["float_compute_ops_left"] = sum(floats.values())
    if not ints:
        found = ", ".join(f"{k} x{v}" for k, v in floats.items()) or "float ops"
        raise StageError(f"{stage}: {on} runs no integer kernels (only {found}): "
                         "the model would run as fake-quant in float",
                         hint="check ignored: patterns and op types; with backend: nncf try backend: onnxruntime")
    n_int, n_float = compute_layers({**ints, **floats})
    facts["int8_layers_runtime"] = n_int
    facts["float_layers_runtime"] = n_float
    layers = onnx_facts(out)["layer_precision"]
    acts = activation_precision(out)
    facts["layer_precision"] = {k: {"weights": v, "activations": acts.get(k, "float32")} for k, v in layers.items()}
    ints8 = ("int8", "uint8")
    annotated = sorted(k for k, v in facts["layer_precision"].items()
                       if v["weights"] in ints8 and v["activations"] in ints8)
    facts["quantized_layers"] = len(annotated)  # what the quantizer annotated (weights and activations)
    facts["float_layers"] = sorted(k for k in layers if k not in annotated)
    total = n_int + n_float
    ctx.log(f"{n_int} of {total} compute layer(s) run as INT8 kernels on {on} ("
            + ", ".join(f"{k} x{v}" for k, v in ints.items())
            + (f"; float: {', '.join(f'{k} x{v}' for k, v in floats.items())}" if floats else "")
            + (f"); the quantizer annotated {len(annotated)} of {len(layers)}" if annotated else ")"))
    if n_float > n_int:
        facts["mostly_float"] = True
        ctx.log(f"WARNING: the output runs MOSTLY IN FLOAT: {n_float} of {total} compute layers are float kernels "
                f"on {on}, whatever the quantizer annotated")
    return "int8" if n_float == 0 else "mixed"

def _feed(batch: Any, name: str) -> dict:
    """A calibration batch as the model's feed: named inputs as they are, one array under ``name``."""
    return dict(batch) if isinstance(batch, dict) else {name: batch}


def _exact_batches(cal: "CalibrationSet", bs: int, fixed: bool) -> list:
    """Batches of ``bs`` samples; for a fixed-batch model the tail is padded by repeating samples."""
    import numpy as np

    from compress.data.dataset import n_samples, take

    out = list(cal.batches(bs))
    if out and fixed and n_samples(out[-1]) < bs:
        k = n_samples(out[-1])
        out[-1] = take(out[-1], np.minimum(np.arange(bs), k - 1))
    return out


def _equal_batches(cal: "CalibrationSet", bs: int) -> tuple[int, "CalibrationSet"]:
    """ORT's histogram calibrators (percentile, entropy) need batches of one size: the largest batch
    size <= ``bs`` dividing the sample count, or else whole batches of ``bs`` (the tail is dropped)."""
    n = cal.count
    if n <= bs:
        return n, cal
    div = max(d for d in range(1, bs + 1) if n % d == 0)
    if div * 2 >= bs:
        return div, cal
    return bs, cal.head(n - n % bs)


def _match(patterns: list[str], names: list[str]) -> list[str]:
    return [n for n in names if any(re.search(p, n) for p in patterns)]


def _quiet():
    """Swallow what a library prints to stdout (our own progress display stays on)."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
