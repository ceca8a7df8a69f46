"""torch -> ONNX export, shared by the runner (to measure torch artifacts) and the ``export.onnx`` stage.

Maps to ``torch.onnx.export``: ``exporter: legacy`` is ``dynamo=False`` (fast; the one that exports
NNCF-quantized modules), ``exporter: dynamo`` needs onnxscript and opset >= 18; we always pass
``external_data=False`` so the model is one self-contained file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class ExportConfig(BaseModel):
    """How torch artifacts become ONNX (for measurement and the ``export.onnx`` stage)."""

    model_config = ConfigDict(extra="forbid")

    exporter: Literal["legacy", "dynamo"] = Field(
        "legacy", description="'legacy' (TorchScript-based, fast, exports NNCF-quantized models) or 'dynamo'.")
    opset: int = Field(17, ge=11, le=23, description="ONNX opset (the dynamo exporter needs >= 18).")
    dynamic_batch: bool = True

    @model_validator(mode="after")
    def _dynamo_opset(self) -> "ExportConfig":
        if self.exporter == "dynamo" and self.opset < 18:
            raise ValueError("the dynamo exporter needs opset >= 18 (it would silently raise it): set opset: 18")
        return self


def export_onnx(model: "torch.nn.Module", input_shape: tuple[int, ...], path: Path, cfg: ExportConfig,
                input_name: str = "input") -> Path:
    import onnx
    import torch

    model.eval()
    example = torch.zeros(*input_shape)
    dynamic = {input_name: {0: "batch"}, "output": {0: "batch"}} if cfg.dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if cfg.exporter == "legacy":
                torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=["output"],
                                  opset_version=cfg.opset, dynamic_axes=dynamic, do_constant_folding=True,
                                  dynamo=False)
            else:
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if cfg.dynamic_batch else None
                torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=["output"],
                                  opset_version=cfg.opset, dynamic_shapes=shapes, dynamo=True,
                                  external_data=False, verbose=False)
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - any exporter failure is one clear stage error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"model failed to export to ONNX ({cfg.exporter} exporter, opset {cfg.opset}): {first}",
                         hint="try export.exporter: dynamo (or legacy), or a different export.opset") from e
    return path
