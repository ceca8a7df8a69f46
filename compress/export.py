"""torch -> ONNX export, shared by the runner (to measure torch artifacts) and the ``export.onnx`` stage.

Maps to ``torch.onnx.export``: ``exporter: legacy`` is ``dynamo=False`` (fast; the one that exports
NNCF-quantized modules), ``exporter: dynamo`` needs onnxscript and opset >= 18; we always pass
``external_data=False`` so the model is one self-contained file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

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


def example_inputs(specs: "list[dict[str, Any]]", batch: int | None = None) -> "list[torch.Tensor]":
    """One example tensor per input spec (``{name, shape, dtype}``; a symbolic batch axis reads as 1): zeros
    for float inputs, ones for integer and bool inputs (a valid token id and an all-ones attention mask)."""
    import torch

    out = []
    for s in specs:
        shape = [s["shape"][0] if isinstance(s["shape"][0], int) else 1, *s["shape"][1:]]
        if batch is not None:
            shape[0] = batch
        dtype = getattr(torch, "bool" if s.get("dtype") == "bool" else s.get("dtype", "float32"))
        out.append(torch.zeros(*shape, dtype=dtype) if dtype.is_floating_point else torch.ones(*shape, dtype=dtype))
    return out


def _specs(inputs: "Sequence[int] | list[dict[str, Any]]", input_name: str) -> list[dict[str, Any]]:
    if inputs and isinstance(inputs[0], dict):
        return [dict(s) for s in inputs]  # type: ignore[arg-type]
    return [{"name": input_name, "shape": list(inputs), "dtype": "float32"}]


def export_onnx(model: "torch.nn.Module", inputs: "Sequence[int] | list[dict[str, Any]]", path: Path,
                cfg: ExportConfig, input_name: str = "input") -> Path:
    """Export ``model`` to one self-contained ONNX file. ``inputs`` is an artifact's ``input_specs``
    (``[{name, shape, dtype}]``, fed positionally in that order) or, as a shorthand, one float input's shape."""
    import onnx
    import torch

    model.eval()
    specs = _specs(inputs, input_name)
    names = [s["name"] for s in specs]
    example = tuple(example_inputs(specs))
    dynamic = {**{n: {0: "batch"} for n in names}, "output": {0: "batch"}} if cfg.dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if cfg.exporter == "legacy":
                torch.onnx.export(model, example, str(path), input_names=names, output_names=["output"],
                                  opset_version=cfg.opset, dynamic_axes=dynamic, do_constant_folding=True,
                                  dynamo=False)
            else:
                batch = torch.export.Dim("batch", min=1, max=4096)
                shapes = tuple({0: batch} for _ in names) if cfg.dynamic_batch else None
                torch.onnx.export(model, example, str(path), input_names=names, output_names=["output"],
                                  opset_version=cfg.opset, dynamic_shapes=shapes, dynamo=True,
                                  external_data=False, verbose=False)
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - any exporter failure is one clear stage error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"model failed to export to ONNX ({cfg.exporter} exporter, opset {cfg.opset}): {first}",
                         hint="try export.exporter: dynamo (or legacy), or a different export.opset") from e
    return path
