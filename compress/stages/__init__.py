"""The stage registry: one table from ``type`` to ``"module:Class"``, imported lazily, plus the
``compress.stages`` entry-point group for plugins (``[project.entry-points."compress.stages"]``)."""
from __future__ import annotations

import difflib
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from compress.stages.base import Stage

BUILTIN: dict[str, str] = {
    "transform.fold_bn": "compress.stages.fold_bn:FoldBatchNorm",
    "export.onnx": "compress.stages.export_onnx:ExportOnnx",
    "quantize.ptq": "compress.stages.quantize_ptq:QuantizePTQ",
    "quantize.dynamic": "compress.stages.quantize_dynamic:QuantizeDynamic",
    "quantize.qat": "compress.stages.quantize_qat:QuantizeQAT",
    "quantize.weights": "compress.stages.quantize_weights:QuantizeWeights",
    "prune.structured": "compress.stages.prune_structured:PruneStructured",
    "prune.magnitude": "compress.stages.prune_magnitude:PruneMagnitude",
    "distill.kd": "compress.stages.distill_kd:DistillKD",
    "search.nas": "compress.stages.search_nas:SearchNAS",
    "search.darts": "compress.stages.search_darts:SearchDarts",
}


@lru_cache(maxsize=1)
def registry() -> dict[str, str]:
    """Built-in stages plus plugins registered under the ``compress.stages`` entry-point group."""
    from compress.plugins import plugin_table

    return plugin_table(BUILTIN, "compress.stages")


def suggest(name: str) -> str:
    """A 'did you mean' hint for an unknown stage type."""
    close = difflib.get_close_matches(name, list(registry()), n=1, cutoff=0.5)
    known = ", ".join(sorted(registry()))
    return f"did you mean '{close[0]}'? known types: {known}" if close else f"known types: {known}"


def get_stage(type_name: str) -> "type[Stage]":
    table = registry()
    if type_name not in table:
        raise KeyError(f"unknown stage type '{type_name}': {suggest(type_name)}")
    from compress.plugins import load_object

    return load_object(table[type_name])
