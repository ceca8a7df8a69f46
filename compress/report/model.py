"""Report data model. Renderers read this; nothing else writes report files."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.runtimes.timing import LatencyStats

SCHEMA_VERSION = 1


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measurement(_M):
    """One artifact on one target: latency from the runtime, quality from the exported artifact."""

    target: str
    latency: LatencyStats | None = None
    speedup_vs_baseline: float | None = None
    speedup_vs_previous: float | None = None
    accuracy: float | None = Field(None, description="Top-1 %, exported artifact in the target runtime.")
    agreement: float | None = Field(None, description="Top-1 agreement with the baseline, %.")
    cosine: float | None = Field(None, description="Mean cosine similarity of outputs vs the baseline.")
    agreement_top5: float | None = Field(None, description="% of samples whose baseline top-1 is in this top 5.")
    cosine_p1: float | None = Field(None, description="Worst 1%: mean cosine of the worst 1% of samples vs the baseline.")
    relative_error: float | None = Field(None, description="Mean ||out - baseline|| / ||baseline|| per sample.")
    vs_input: dict[str, float | None] = Field(
        default_factory=dict, description="Fidelity vs the stage's own input (same metrics as above; the "
        "regression check reads these).")
    n_eval: int = 0
    session: dict[str, Any] = Field(default_factory=dict)
    optimized_ops: dict[str, int] = Field(default_factory=dict,
                                          description="Op types after the runtime's own graph optimization.")


class ArtifactInfo(_M):
    hash: str
    format: str
    precision: str
    onnx_path: str
    size_bytes: int
    params: int | None = None
    macs: int | None = None
    sparsity: float | None = None
    layer_precision: dict[str, str] = Field(default_factory=dict)


class StageRecord(_M):
    name: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    cache_hit: bool = False
    seconds: float = 0.0
    artifact: ArtifactInfo
    measurements: dict[str, Measurement] = Field(default_factory=dict)
    facts: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class GateResult(_M):
    metric: str
    stage: str
    target: str
    op: Literal["<=", ">="]
    threshold: float
    observed: float | None
    margin: float | None = Field(None, description="How far inside (+) or outside (-) the threshold.")
    passed: bool
    detail: str = ""


class Report(_M):
    schema_version: int = SCHEMA_VERSION
    tool_version: str
    pipeline: str
    pipeline_name: str
    created_at: str
    status: Literal["passed", "gate_failed", "unstable"] = "passed"
    environment: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    targets: list[dict[str, Any]] = Field(default_factory=list)
    baseline: StageRecord
    stages: list[StageRecord] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def records(self) -> list[StageRecord]:
        return [self.baseline, *self.stages]

    def record(self, name: str) -> StageRecord:
        if name == "final":
            return self.stages[-1] if self.stages else self.baseline
        for r in self.records():
            if r.name == name:
                return r
        raise KeyError(name)
