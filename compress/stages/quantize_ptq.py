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
activation precision of every Conv/MatMul/Gemm and count the integer and float compute kernels ORT runs.
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
_ORT_ONLY = ("activation_type", "weight_type")
_NNCF_ONLY = ("preset", "fast_bias_correction")


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
        else:
            wrong = [k for k in _NNCF_ONLY if k in self.model_fields_set]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} apply to backend: nncf only: remove them or set backend: nncf")
        return self

    def applied(self) -> dict[str, Any]:
        """The settings this backend actually uses (for the report)."""
        skip = _NNCF_ONLY if self.backend == "onnxruntime" else _ORT_ONLY
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}


def activation_precision(onnx_path: Path) -> dict[str, str]:
    """Per Conv/MatMul/Gemm node of a QDQ graph: the type its activation input is quantized to."""
    import onnx

    from compress.facts import _weight_precision

    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    out: dict[str, str] = {}
    for node in g.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm", "ConvTranspose"):
            continue
        prod = producers.get(node.input[0])
        while prod is not None and prod.op_type in _QDQ_TRANSPARENT:  # ORT moves Q/DQ across these
            prod = producers.get(prod.input[0])
        if prod is not None and prod.op_type == "DequantizeLinear" and len(prod.input) > 2:
            out[node.name or node.input[1]] = _weight_precision(prod.input[2], inits, producers, prod)
        elif prod is not None and prod.op_type == "DequantizeLinear":
            out[node.name or node.input[1]] = "uint8"  # no zero point: the ONNX default type
        else:
            out[node.name or node.input[1]] = "float32"
    return out


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in _load(path).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


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
        from compress.errors import StageError
        from compress.facts import onnx_facts

        cfg = self.config
        facts: dict[str, Any] = {"backend": cfg.backend, "settings": cfg.applied(), "input_kind": artifact.kind}
        out = ctx.work_dir / ONNX
        cal = load_calibration(ctx, samples=cfg.samples, sample_shape=artifact.input_shape[1:])  # fail fast
        with tempfile.TemporaryDirectory(prefix="compress-ptq-") as tmp:
            tmp = Path(tmp)
            src = self._float_onnx(artifact, ctx, tmp, facts)
            if cfg.preprocess:
                src = self._preprocess(src, tmp)
            self._refuse_batchnorm(src, artifact)
            self._check_ignored(src)
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
            quantize = self._quantize_ort if cfg.backend == "onnxruntime" else self._quantize_nncf
            facts["library"] = quantize(src, out, name, batches, ctx)

        from compress.kernels import integer_kernel_counts

        ints, floats = integer_kernel_counts(out)
        facts["integer_op_types"] = ints
        facts["integer_ops"] = sum(ints.values())
        facts["float_compute_op_types"] = floats
        facts["float_compute_ops_left"] = sum(floats.values())
        if not ints:
            found = ", ".join(f"{k} x{v}" for k, v in floats.items()) or "float ops"
            raise StageError(f"quantize.ptq: ONNX Runtime's optimized graph has no integer kernels (only {found}): "
                             "the model would run as fake-quant in float",
                             hint="check ignored: patterns; with backend: nncf try backend: onnxruntime")
        of = onnx_facts(out)
        layers = of["layer_precision"]
        acts = activation_precision(out)
        facts["layer_precision"] = {k: {"weights": v, "activations": acts.get(k, "float32")}
                                    for k, v in layers.items()}
        ints8 = ("int8", "uint8")
        quantized = sorted(k for k, v in facts["layer_precision"].items()
                           if v["weights"] in ints8 and v["activations"] in ints8)
        left = sorted(k for k in layers if k not in quantized)
        facts["quantized_layers"] = len(quantized)
        facts["float_layers"] = left
        precision = "int8" if not left else "mixed"
        ctx.log(f"{len(quantized)} of {len(layers)} layer(s) INT8 (weights and activations); ORT kernels: "
                + ", ".join(f"{k} x{v}" for k, v in ints.items())
                + (f"; float compute ops left: {', '.join(f'{k} x{v}' for k, v in floats.items())}" if floats else ""))
        return save_onnx(out, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision=precision, facts=facts)

    # ---------------------------------------------------------------------------------------------
    def _float_onnx(self, artifact: "Artifact", ctx: "StageContext", tmp: Path, facts: dict[str, Any]) -> Path:
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
        path = export_onnx(model, artifact.input_shape, tmp / "float.onnx", ctx.export, artifact.input_name)
        if not _ops(path).get("BatchNormalization"):
            return path
        try:
            gm, counts = fold(model)
        except StageError:  # not traceable by torch.fx: the BatchNorm check below refuses with the fix
            return path
        facts["bn_folded"] = counts["folded"]
        ctx.log(f"folded {counts['folded']} BatchNorm layer(s) the exporter left before quantization")
        return export_onnx(gm, artifact.input_shape, tmp / "float.onnx", ctx.export, artifact.input_name)

    def _preprocess(self, src: Path, tmp: Path) -> Path:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from compress.errors import StageError

        dst = tmp / "preprocessed.onnx"
        try:
            quant_pre_process(str(src), str(dst))
        except Exception as e:  # noqa: BLE001
            raise StageError(f"quantize.ptq: onnxruntime quant_pre_process failed: {type(e).__name__}: "
                             f"{_first_line(e)}", hint="set preprocess: false") from e
        return dst

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

    def _check_ignored(self, src: Path) -> None:
        from compress.errors import StageError

        if not self.config.ignored:
            return
        names = [n.name for n in _load(src).graph.node]
        unmatched = [p for p in self.config.ignored if not _match([p], names)]
        if unmatched:
            raise StageError(f"quantize.ptq: ignored pattern(s) {', '.join(map(repr, unmatched))} match no node of "
                             f"the float ONNX graph (patterns match from the start of the node name)",
                             hint=f"node names look like {names[0]!r} ... {names[-1]!r}")

    # ---------------------------------------------------------------------------------------------
    def _quantize_ort(self, src: Path, out: Path, name: str, batches: list, ctx: "StageContext") -> str:
        import onnxruntime
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        from compress.errors import StageError

        cfg = self.config
        exclude = _match(cfg.ignored, [n.name for n in _load(src).graph.node])

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(batches)

            def get_next(self):
                b = next(self._it, None)
                return None if b is None else {name: b}

            def rewind(self):
                self._it = iter(batches)

        qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        with ctx.progress(f"calibrating ({cfg.calibration_method}) and quantizing with onnxruntime", 1) as bar:
            try:
                with _quiet():  # its histogram calibrators print to stdout
                    quantize_static(
                        str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        activation_type=qt[cfg.activation_type], weight_type=qt[cfg.weight_type],
                        nodes_to_exclude=exclude or None,
                        calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[cfg.calibration_method]))
            except Exception as e:  # noqa: BLE001
                raise StageError(f"quantize.ptq: onnxruntime quantize_static failed: {type(e).__name__}: "
                                 f"{_first_line(e)}", hint="try preprocess: true/false, per_channel: false, or "
                                 "backend: nncf") from e
            bar.update(1)
        if exclude:
            ctx.log(f"left {len(exclude)} node(s) in float (ignored)")
        return (f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, "
                f"{'U' if cfg.activation_type == 'uint8' else 'S'}8{'S' if cfg.weight_type == 'int8' else 'U'}8, "
                f"{'per-channel' if cfg.per_channel else 'per-tensor'}, {_ORT_METHODS[cfg.calibration_method]}, "
                f"{len(batches)} calibration batch(es))")

    def _quantize_nncf(self, src: Path, out: Path, name: str, batches: list, ctx: "StageContext") -> str:
        import logging

        import nncf
        import onnx
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        from compress.errors import StageError

        cfg = self.config
        nncf.set_log_level(logging.ERROR)
        model = onnx.load(str(src), load_external_data=False)
        adv = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=cfg.per_channel),
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet,
                                                       _NNCF_METHODS[cfg.calibration_method]))
        preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
        with ctx.progress(f"calibrating ({cfg.calibration_method}) and quantizing with nncf", 1) as bar:
            try:
                with _quiet():  # its own progress bars would interleave with ours
                    q = nncf.quantize(
                        model, nncf.Dataset(batches, lambda b: {name: b}), preset=preset[cfg.preset],
                        target_device=nncf.TargetDevice.CPU, subset_size=len(batches),
                        fast_bias_correction=cfg.fast_bias_correction,
                        ignored_scope=nncf.IgnoredScope(names=_match(cfg.ignored, [n.name for n in model.graph.node]))
                        if cfg.ignored else None,
                        advanced_parameters=adv)
            except Exception as e:  # noqa: BLE001
                raise StageError(f"quantize.ptq: nncf.quantize failed: {type(e).__name__}: {_first_line(e)}",
                                 hint="try backend: onnxruntime") from e
            bar.update(1)
        onnx.save(q, str(out))
        return (f"nncf {nncf.__version__} quantize on ONNX (preset {cfg.preset}, target CPU, "
                f"{'per-channel' if cfg.per_channel else 'per-tensor'} weights, "
                f"{_NNCF_METHODS[cfg.calibration_method]}, "
                f"{'fast ' if cfg.fast_bias_correction else ''}bias correction, "
                f"{len(batches)} calibration batch(es))")


def _exact_batches(cal: "CalibrationSet", bs: int, fixed: bool) -> list:
    """Batches of ``bs`` samples; for a fixed-batch model the tail is padded by repeating samples."""
    import numpy as np

    out = list(cal.batches(bs))
    if out and fixed and len(out[-1]) < bs:
        last = out[-1]
        out[-1] = np.concatenate([last, np.repeat(last[-1:], bs - len(last), axis=0)])
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
