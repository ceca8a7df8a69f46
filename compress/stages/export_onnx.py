"""``export.onnx``: turn the torch model into the ONNX file that is deployed.

Maps to ``torch.onnx.export`` through :func:`compress.export.export_onnx`, then checks parity: the
exported model runs in ONNX Runtime on evaluation samples and must match torch within ``atol`` +
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
    parity_samples: int = Field(32, ge=0, description="Eval samples compared torch vs ONNX Runtime (0 = skip).")
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)


def parity(model, onnx_path, x) -> tuple[float, "np.ndarray", "np.ndarray"]:
    """(max |torch - onnxruntime|, torch output, ORT output) over the batch ``x``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.abs(ref - got).max()), ref, got


class ExportOnnx(Stage):
    """Export to ONNX (legacy or dynamo exporter) and verify torch/ONNX Runtime parity."""

    type: ClassVar[str] = "export.onnx"
    Config = ExportOnnxConfig
    accepts = (TORCH_FLOAT,)
    produces = ONNX_FLOAT
    trains = False
    summary = "Export to ONNX (torch.onnx.export) and check parity with ONNX Runtime."

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import numpy as np

        from compress.artifact import ONNX, save_onnx
        from compress.errors import StageError
        from compress.export import export_onnx

        cfg = self.config
        model = ctx.load_torch(artifact)
        path = export_onnx(model, artifact.input_shape, ctx.work_dir / ONNX,
                           ExportConfig(exporter=cfg.exporter, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch),
                           artifact.input_name)
        facts = {"exporter": cfg.exporter, "opset": cfg.opset}
        if cfg.parity_samples:
            x, _ = ctx.dataset.split("eval")
            x = x[: cfg.parity_samples] if cfg.dynamic_batch else x[: artifact.input_shape[0]]
            err, ref, got = parity(model, path, np.ascontiguousarray(x))
            facts["parity_max_abs_diff"] = err
            if not np.allclose(ref, got, atol=cfg.atol, rtol=cfg.rtol):
                raise StageError(f"export.onnx: ONNX Runtime output differs from torch by up to {err:.3g} "
                                 f"(atol {cfg.atol}, rtol {cfg.rtol})",
                                 hint="try the other exporter or opset, or loosen atol/rtol if expected")
            ctx.log(f"exported with the {cfg.exporter} exporter, opset {cfg.opset}; parity max |diff| {err:.2e}")
        return save_onnx(path, ctx.work_dir, like=artifact, producer=ctx.stage_name, precision="float32",
                         facts=facts)
