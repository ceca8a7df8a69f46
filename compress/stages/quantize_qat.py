"""``quantize.qat``: placeholder while it is being written (raises at run time)."""
from __future__ import annotations

from typing import ClassVar

from compress.stages.base import ONNX_FLOAT, ONNX_QUANTIZED, TORCH_FLOAT, Stage, StageConfig


class QuantizeQATConfig(StageConfig):
    pass


class QuantizeQAT(Stage):
    type: ClassVar[str] = "quantize.qat"
    Config = QuantizeQATConfig
    accepts = (TORCH_FLOAT, ONNX_FLOAT)
    summary = "(in progress)"

    @classmethod
    def output_kind(cls, config, input_kind: str) -> str:
        return ONNX_QUANTIZED

    def run(self, artifact, ctx):
        raise NotImplementedError("quantize.qat is being written")
