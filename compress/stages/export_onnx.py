"""``export.onnx``: turn the torch model into the ONNX file that is deployed.

Maps to ``torch.onnx.export`` through :func:`compress.export.export_onnx`, then checks parity: the
exported model runs, through the measurement service, in the pipeline's first ONNX-running target (ONNX
Runtime by default) on evaluation samples, every input fed, and must match torch within ``atol`` +
``rtol`` (otherwise the stage fails rather than ship a model that computes something else).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from compress.export import ExportConfig
from compress.stages.base import ONNX_FLOAT, TORCH_FLOAT, Stage, StageConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.artifact import Artifact
    from compress.context import StageContext


class ExportOnnxConfig(ExportConfig, StageConfig):
    parity_samples: int = Field(32, ge=0, description="Eval samples compared torch vs the ONNX model on the "
                                "first target that runs ONNX (0 = skip).")
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)


def parity(model, onnx_path, feeds, ctx: "StageContext") -> tuple[float, "np.ndarray", "np.ndarray", str]:
    """(max |torch - runtime|, torch output, runtime output, target name) on ``feeds``; the ONNX file runs
    through the measurement service on the pipeline's first ONNX-running target, with its options."""
    import numpy as np
    import torch

    from compress.data.dataset import take

    tensors = [torch.from_numpy(a) for a in (feeds.values() if isinstance(feeds, dict) else [feeds])]
    with torch.no_grad():
        ref = model(*tensors).numpy()
    target = ctx.measure.onnx_target()
    got = ctx.measure.infer(onnx_path, take(feeds, slice(None)), target)
    return float(np.abs(ref - got).max()), ref, got, target.name


class ExportOnnx(Stage):
    """Export to ONNX (legacy or dynamo exporter) and verify torch/runtime parity."""

    type: ClassVar[str] = "export.onnx"
    Config = ExportOnnxConfig
    accepts = (TORCH_FLOAT,)
    produces = ONNX_FLOAT
    trains = False
    summary = "Export to ONNX (torch.onnx.export) and check parity in the first ONNX target runtime."

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import numpy as np

        from compress.artifact import ONNX, save_onnx
        from compress.errors import StageError
        from compress.export import export_onnx

        cfg = self.config
        model = ctx.load_torch(artifact)
        path = export_onnx(model, artifact.input_specs, ctx.work_dir / ONNX,
                           ExportConfig(exporter=cfg.exporter, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch))
        facts = {"exporter": cfg.exporter, "opset": cfg.opset}
        if cfg.parity_samples:
            from compress.data.dataset import n_samples, take

            x, _ = ctx.dataset.split_feeds("eval")
            k = cfg.parity_samples if cfg.dynamic_batch else artifact.input_shape[0]
            x = take(x, np.arange(min(k, n_samples(x))))
            err, ref, got, on = parity(model, path, x, ctx)
            facts["parity_max_abs_diff"] = err
            facts["parity_target"] = on
            if not np.allclose(ref, got, atol=cfg.atol, rtol=cfg.rtol):
                raise StageError(f"export.onnx: the ONNX model on target '{on}' differs from torch by up to "
                                 f"{err:.3g} (atol {cfg.atol}, rtol {cfg.rtol})",
                                 hint="try the other exporter or opset, or loosen atol/rtol if expected")
            ctx.log(f"exported with the {cfg.exporter} exporter, opset {cfg.opset}; parity on '{on}' max |diff| "
                    f"{err:.2e}")
        return save_onnx(path, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision="float32",
                         facts=facts)
