"""Report data model. Renderers read this; nothing else writes report files."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    speedup_ci: list[float] | None = Field(None, description="Confidence interval [low, high] of "
                                           "speedup_vs_baseline (sign test on the paired per-round ratios).")
    speedup_rounds: int = Field(0, description="Paired interleaving rounds behind speedup_vs_baseline.")
    efficiency: float | None = Field(None, description="MACs / p50 / this machine's peak MAC rate for the "
                                     "artifact's precision on this target (0..1).")
    vs_reference: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per released reference (gate `against`): fidelity of this "
        "artifact's outputs vs the reference's on the same data (agreement, cosine).")
    accuracy: float | None = Field(None, description="Top-1 %, exported artifact in the target runtime.")
    accuracy_top5: float | None = Field(None, description="Top-5 % (classification with labels, > 5 classes).")
    metric: float | None = Field(None, description="The user metric (evaluation.metric), when one is set.")
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
    kernels: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="{'integer': {...}, 'float': {...}}: compute kernels as the runtime "
        "executes them (ORT: optimized graph ops; OpenVINO: runtime layer@precision).")
    na: str | None = Field(None, description="Why this artifact has no numbers on this target (its runtime does "
                           "not run the artifact's format, e.g. an ONNX-only artifact on a torch target).")


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
    status: Literal["pass", "fail", "inconclusive"] | None = Field(
        None, description="Latency gates decide from the confidence interval: inconclusive when it straddles "
        "the threshold after the measurement's budget.")
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    rounds: int | None = Field(None, description="Paired rounds (or samples) behind the interval.")
    against: str | None = Field(None, description="The released model compared with, when not the baseline.")
    unit: str = ""
    detail: str = ""

    @model_validator(mode="after")
    def _status(self) -> "GateResult":
        if self.status is None:
            self.status = "pass" if self.passed else "fail"
        return self


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
    evaluation: dict[str, Any] = Field(default_factory=dict, description="The task (what quality means for "
                                       "these outputs), the user metric's name, the split and sample count.")
    baseline: StageRecord
    stages: list[StageRecord] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    references: list[StageRecord] = Field(
        default_factory=list, description="Released models named by gates' `against`, re-measured here; "
        "facts['source_environment'] holds where a reference report was measured.")
    peak: dict[str, Any] = Field(default_factory=dict, description="Per target: this machine's measured peak "
                                 "MAC rate (GMAC/s) per precision, the denominator of `efficiency`.")

    def records(self) -> list[StageRecord]:
        return [self.baseline, *self.stages]

    def reference(self, against: str | None) -> StageRecord:
        """The record relative metrics compare with: the baseline, or the released model ``against``."""
        if against is None:
            return self.baseline
        for r in self.references:
            if r.name == against:
                return r
        raise KeyError(against)

    def record(self, name: str) -> StageRecord:
        if name == "final":
            return self.stages[-1] if self.stages else self.baseline
        for r in self.records():
            if r.name == name:
                return r
        raise KeyError(name)
