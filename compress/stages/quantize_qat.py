"""``quantize.qat``: INT8 quantization-aware training with NNCF, exported as QDQ ONNX.

Maps to ``nncf.quantize(torch_model, nncf.Dataset(batches))`` (insert fake quantizers, initialise their
ranges on the calibration batches: this is the PTQ starting point) -> :func:`compress.training.train`
(fine-tune the fake-quantized model; by default distilling from the float input model) ->
``nncf.strip(..., strip_format=StripFormat.NATIVE)`` (torch FakeQuantize modules) ->
``torch.onnx.export(..., dynamo=False)`` (QuantizeLinear/DequantizeLinear pairs; the dynamo exporter
fails on NNCF models) -> ONNX Runtime at *basic* optimization level writes the file with the weight
QuantizeLinear nodes folded into int8 initializers (``int8_weights``), so the file holds real INT8
weights. The stage then checks that ONNX Runtime, fully optimized, runs integer kernels (QLinearConv,
...) and fails otherwise: a QDQ model that runs as fake-quant in float is no speed-up.

BatchNorm is folded into the convolutions first (``fold_bn``): quantizers around an unfolded BatchNorm
keep a float Conv+BN in the graph, which runs slower than FP32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from compress.stages.base import ONNX_QUANTIZED, TORCH_FLOAT, Patterns, Stage, StageConfig
from compress.training import DistillConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import numpy as np
    import torch

    from compress.artifact import Artifact
    from compress.context import StageContext
    from compress.export import ExportConfig

class QATTrainConfig(TrainConfig):
    """:class:`~compress.training.TrainConfig` with QAT defaults: short, small learning rate, KD on."""

    epochs: float = Field(3, gt=0, description="Passes over data.train (fractions allowed).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate. 1e-3: across seeds it recovered 100-103% of the "
                      "PTQ loss where 1e-4 recovered 59-89% (benchmarks/qat_lr.py, reports/qat_lr.md).")
    distill: DistillConfig | None = Field(
        default_factory=DistillConfig,
        description="KD from the float input model (on by default for QAT); null trains on labels only.")


class QuantizeQATConfig(StageConfig):
    train: QATTrainConfig = Field(default_factory=QATTrainConfig, description="The fine-tune of the "
                                  "fake-quantized model (compress.training.train).")
    samples: int | None = Field(None, ge=1, description="Calibration samples that initialise the quantizer "
                                "ranges (default: calibration.samples).")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="nncf QuantizationPreset: 'performance' = symmetric weights and activations "
        "(u8 after ReLU, the fast path on x86); 'mixed' = asymmetric activations.")
    weights_per_channel: bool = Field(True, description="Per-output-channel weight scales (false: one scale "
                                      "per tensor).")
    ignored: Patterns = Field(default_factory=list, description="Regular expressions searched in NNCF op names "
                               "(like 'model/fc/linear/0' or 'model/conv2d/0') whose ops stay float, e.g. 'fc/' or "
                               "'conv2d/0$'; each must match an op (the error lists them).")
    fold_bn: bool = Field(True, description="Fold BatchNorm into the preceding Conv/Linear before quantizing "
                          "(needed for fast INT8 kernels).")
    int8_weights: bool = Field(True, description="Store weights as int8 initializers (ONNX Runtime basic-level "
                               "constant folding of the weight QuantizeLinear); false keeps float weights + Q/DQ.")


def _plain(module: "torch.nn.Module") -> "torch.nn.Module":
    """Wrap a ``torch.fx.GraphModule`` so nncf takes its torch backend (it sends GraphModules to the
    experimental FX backend, which fails on these models)."""
    import torch

    class Plain(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    return Plain(module)


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def store_int8_weights(src: "Path", dst: "Path") -> None:
    """Write ``src`` to ``dst`` through ONNX Runtime's basic-level (portable) optimizer, which folds
    ``QuantizeLinear(float weight)`` into int8 initializers; keep only the opset imports nodes use."""
    import onnx

    from compress.runtimes import get_runtime
    from compress.runtimes.onnxruntime import OrtTarget

    # a graph rewrite, not a measurement: ORT's portable 'basic' level, whatever the pipeline's targets
    get_runtime("onnxruntime").optimize(src, OrtTarget(name="fold-int8-weights", graph_optimization="basic"), dst)
    model = onnx.load(str(dst))
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def quantize_torch(model: "torch.nn.Module", calibration: "np.ndarray", batch_size: int,
                   cfg: QuantizeQATConfig) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Fold BN (a copy of ``model``) and ``nncf.quantize`` it on ``calibration`` in batches: the trainable
    fake-quantized model, i.e. the PTQ starting point of QAT. Returns ``(model, facts)``."""
    import copy

    import nncf
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    from compress.errors import StageError
    from compress.stages.fold_bn import fold

    student = copy.deepcopy(model).eval()
    facts: dict[str, Any] = {}
    if cfg.fold_bn:
        student, counts = fold(student)
        facts["bn_folded"] = counts["folded"]
    batches = [torch.from_numpy(calibration[i:i + batch_size]) for i in range(0, len(calibration), batch_size)]
    facts["calibration_samples"] = int(len(calibration))
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=cfg.weights_per_channel))
    # nncf anchors patterns at the start of the name (re.match); ours search anywhere in it
    ignored = nncf.IgnoredScope(patterns=[f".*(?:{p})" for p in cfg.ignored], validate=True) if cfg.ignored else None
    student = _plain(student)
    try:
        qmodel = nncf.quantize(student, nncf.Dataset(batches), preset=nncf.QuantizationPreset(cfg.preset),
                               subset_size=len(batches), ignored_scope=ignored, advanced_parameters=advanced)
    except Exception as e:  # noqa: BLE001 - nncf's own exception types vary; one clear line
        hint, msg = "the model must be traceable by nncf's torch backend", _one_line(e)
        for p in cfg.ignored:
            msg = msg.replace(f".*(?:{p})", p)
        if cfg.ignored:
            names = _op_names(student, batches[0][:1])
            hint = "each 'ignored' pattern must match an op name"
            hint += f"; the ops are: {', '.join(names)}" if names else ""
        raise StageError(f"quantize.qat: nncf.quantize failed: {msg}", hint=hint) from e
    return qmodel, facts


def _op_names(model: "torch.nn.Module", example: "torch.Tensor") -> list[str]:
    """NNCF's names of the operations of ``model`` (what ``ignored`` patterns match), best effort."""
    try:
        from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

        graph = build_nncf_graph(model, example)
        return [n.node_name for n in graph.get_all_nodes() if not n.node_type.startswith("nncf_model_")]
    except Exception:  # noqa: BLE001 - only used to improve an error message
        return []


def export_quantized(qmodel: "torch.nn.Module", input_shape: tuple[int, ...], input_name: str, out: "Path",
                     export: "ExportConfig", *, int8_weights: bool = True) -> "Path":
    """``nncf.strip`` (NATIVE) -> legacy-exporter QDQ ONNX at ``out`` (weights folded to int8 if asked)."""
    import nncf
    import torch

    from compress.errors import StageError
    from compress.export import ExportConfig, export_onnx

    if export.opset < 13:
        raise StageError(f"quantize.qat: per-channel QDQ needs ONNX opset >= 13, export.opset is {export.opset}",
                         hint="set export.opset: 17")
    stripped = nncf.strip(qmodel, do_copy=True, strip_format=nncf.StripFormat.NATIVE,
                          example_input=torch.zeros(*input_shape))
    raw = out.with_name("qdq_fake.onnx") if int8_weights else out
    export_onnx(stripped, input_shape, raw,
                ExportConfig(exporter="legacy", opset=export.opset, dynamic_batch=export.dynamic_batch), input_name)
    if int8_weights:
        try:
            store_int8_weights(raw, out)
        except Exception as e:  # noqa: BLE001
            raise StageError(f"quantize.qat: onnxruntime could not fold the int8 weights: {_one_line(e)}",
                             hint="set int8_weights: false") from e
        finally:
            raw.unlink(missing_ok=True)
    return out


class QuantizeQAT(Stage):
    """INT8 quantization-aware training (NNCF): quantize, fine-tune, strip, export QDQ ONNX."""

    type: ClassVar[str] = "quantize.qat"
    Config = QuantizeQATConfig
    accepts = (TORCH_FLOAT,)
    produces = ONNX_QUANTIZED
    summary = "INT8 quantization-aware training (nncf.quantize -> compress.training.train -> nncf.strip -> QDQ ONNX)."
    uses_calibration = True

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        from compress.artifact import ONNX, save_onnx
        from compress.errors import StageError
        from compress.facts import onnx_facts
        from compress.training import accuracy, total_steps, train

        specs = artifact.input_specs
        if len(specs) > 1 or specs[0]["dtype"] != "float32":
            raise StageError(f"quantize.qat: the model takes named inputs ({', '.join(s['name'] for s in specs)}); "
                             f"QAT supports one float input so far",
                             hint="use quantize.ptq, quantize.dynamic or quantize.weights, which feed every input")
        cfg = self.config
        teacher = ctx.load_torch(artifact)
        labelled = ctx.dataset.y is not None and len(ctx.dataset.splits["eval"]) > 0
        calib = ctx.calibration_samples(cfg.samples)
        bs = ctx.calibration.batch_size if ctx.calibration else 32
        qmodel, facts = quantize_torch(teacher, calib, bs, cfg)
        if labelled:
            facts["accuracy_float_torch"] = round(accuracy(teacher, ctx.dataset), 4)
            facts["accuracy_ptq_torch"] = round(accuracy(qmodel, ctx.dataset), 4)

        steps = total_steps(cfg.train, len(ctx.dataset.splits["train"]))
        try:
            with ctx.progress("QAT fine-tune", steps) as bar:
                hist = train(qmodel, ctx.dataset, cfg.train, teacher=teacher,
                             progress=lambda s, t, info: bar.update(1, **info))
        except ValueError as e:
            raise StageError(f"quantize.qat: {e}", hint="set train.distill or give data with labels") from e
        facts["training"] = hist
        if labelled:
            facts["accuracy_qat_torch"] = round(accuracy(qmodel, ctx.dataset), 4)
        ctx.log(f"QAT: {hist['steps']} steps in {hist['seconds']} s"
                + (f"; torch accuracy float {facts['accuracy_float_torch']}% -> after nncf.quantize "
                   f"{facts['accuracy_ptq_torch']}% -> after QAT {facts['accuracy_qat_torch']}%" if labelled else ""))

        out = export_quantized(qmodel, artifact.input_shape, artifact.input_name, ctx.work_dir / ONNX,
                               ctx.export, int8_weights=cfg.int8_weights)
        facts.update({"exporter": "legacy", "opset": ctx.export.opset})
        integer, floats, on = ctx.measure.onnx_kernels(out)
        facts["integer_ops"] = integer
        facts["float_compute_ops_left"] = floats
        facts["kernels_checked_on"] = on
        if not integer:
            raise StageError(f"quantize.qat: {on} runs no integer kernels on the exported model (it would "
                             "execute the fake-quantized graph in float)",
                             hint="keep fold_bn: true and check that 'ignored' does not exclude every layer")
        facts["layer_precision"] = onnx_facts(out)["layer_precision"]
        ctx.log(f"{on} integer kernels: " + ", ".join(f"{k} x{v}" for k, v in integer.items()))
        return save_onnx(out, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision="int8", facts=facts)
