"""Release gates: evaluate ``gates:`` from the pipeline against a report. Pure functions of data."""
from __future__ import annotations

from typing import Any

from compress.report.model import GateResult, Report, StageRecord


def metric_value(report: Report, rec: StageRecord, metric: str, target: str) -> float | None:
    """The value of ``metric`` for one stage record on one target (``None`` when not measurable)."""
    m = rec.measurements.get(target)
    base = report.baseline.measurements.get(target)
    if metric == "accuracy":
        return m.accuracy if m else None
    if metric == "accuracy_drop":
        if not (m and base) or m.accuracy is None or base.accuracy is None:
            return None
        return round(base.accuracy - m.accuracy, 4)
    if metric in ("agreement", "agreement_top5", "cosine", "cosine_p1", "relative_error"):  # evaluation.FIDELITY
        return getattr(m, metric) if m else None
    if metric == "latency_p50_ms":
        return m.latency.p50_ms if m and m.latency else None
    if metric == "latency_p90_ms":
        return m.latency.p90_ms if m and m.latency else None
    if metric == "speedup":
        return m.speedup_vs_baseline if m else None
    if metric == "size_mb":
        return rec.artifact.size_bytes / 1e6
    if metric == "size_ratio":
        return rec.artifact.size_bytes / report.baseline.artifact.size_bytes
    if metric in ("params", "macs"):
        return getattr(rec.artifact, metric)
    raise KeyError(metric)


def check_gates(report: Report, gates: list[Any], default_target: str) -> list[GateResult]:
    results = []
    for g in gates:
        target = g.target or default_target
        rec = report.record(g.stage)
        observed = metric_value(report, rec, g.metric, target)
        op, threshold = ("<=", g.max) if g.max is not None else (">=", g.min)
        if observed is None:
            results.append(GateResult(metric=g.metric, stage=rec.name, target=target, op=op, threshold=threshold,
                                      observed=None, margin=None, passed=False,
                                      detail=f"{g.metric} was not measured (no labels or no latency)"))
            continue
        margin = (threshold - observed) if op == "<=" else (observed - threshold)
        results.append(GateResult(metric=g.metric, stage=rec.name, target=target, op=op, threshold=threshold,
                                  observed=round(observed, 6), margin=round(margin, 6), passed=margin >= 0))
    return results
