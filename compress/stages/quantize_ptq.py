"""``quantize.ptq``: placeholder while it is being written (raises at run time)."""
from __future__ import annotations

from typing import ClassVar

from compress.stages.base import ONNX_FLOAT, ONNX_QUANTIZED, TORCH_FLOAT, Stage, StageConfig


class QuantizePTQConfig(StageConfig):
    pass


class QuantizePTQ(Stage):
    type: ClassVar[str] = "quantize.ptq"
    Config = QuantizePTQConfig
    accepts = (TORCH_FLOAT, ONNX_FLOAT)
    summary = "(in progress)"

    @classmethod
    def output_kind(cls, config, input_kind: str) -> str:
        return ONNX_QUANTIZED

    def run(self, artifact, ctx):
        raise NotImplementedError("quantize.ptq is being written")
