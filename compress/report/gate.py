"""Release gates: evaluate ``gates:`` from the pipeline against a report. Pure functions of data.

Plain metrics pass or fail on their value. Latency metrics (``latency: paired | quantile`` in the
registry, compress/report/metrics.py) decide from a confidence interval (compress/stats.py): pass when the
whole interval is inside the threshold, fail when the whole interval is outside, inconclusive otherwise.
:func:`measurement_decided` asks the same question of statistics still being collected, so the one
timing loop can extend a measurement until every latency gate is decided (or its budget ends).
"""
from __future__ import annotations

from typing import Any

from compress.report.metrics import METRICS
from compress.report.model import GateResult, Report
from compress.runtimes.timing import LatencyStats


def bound(gate: Any) -> tuple[str, float]:
    """(op, threshold) of a gate config."""
    if gate.max_regression_pct is not None:
        return "<=", gate.max_regression_pct
    return ("<=", gate.max) if gate.max is not None else (">=", gate.min)


def latency_interval(metric: str, stats: LatencyStats | None, ref_stats: LatencyStats | None,
                     confidence: float):
    """Confidence interval (``compress.stats.RatioCI``) of a latency metric, in the metric's unit; ``None``
    when the metric is not a latency metric or the statistics are missing."""
    from compress.runtimes.timing import paired_ratios
    from compress.stats import quantile_ci, ratio_ci

    spec = METRICS[metric]
    if spec.latency is None or stats is None:
        return None
    if spec.latency == "quantile":
        return quantile_ci(stats.samples_ms, spec.quantile, confidence)
    if ref_stats is None:
        return None
    ci = ratio_ci(paired_ratios(ref_stats, stats), confidence)  # speed-up: reference time / this time
    if metric == "speedup":
        return ci
    slow = ci.inverted()  # this time / reference time
    pct = (lambda v: None if v is None else (v - 1.0) * 100.0)
    return type(ci)(pct(slow.point), pct(slow.low), pct(slow.high), ci.n, ci.confidence)


def _decide(metric: str, op: str, threshold: float, observed: float | None, ci) -> str:
    from compress.stats import decide

    if ci is not None:
        return decide(ci, op, threshold)
    if observed is None:
        return "fail"
    return "pass" if (observed <= threshold if op == "<=" else observed >= threshold) else "fail"


def check_gates(report: Report, gates: list[Any], default_target: str) -> list[GateResult]:
    results = []
    for g in gates:
        target = g.target or default_target
        rec = report.record(g.stage)
        ref = report.reference(g.against)
        m, rm = rec.measurements.get(target), ref.measurements.get(target)
        spec = METRICS[g.metric]
        op, threshold = bound(g)
        common = dict(metric=g.metric, stage=rec.name, target=target, op=op, threshold=threshold, against=g.against,
                      unit=spec.unit)
        observed = spec.value(rec, m, ref, rm)
        if observed is None:
            results.append(GateResult(**common, observed=None, margin=None, passed=False,
                                      detail=f"{g.metric} was not measured (no labels or no latency)"))
            continue
        ci = latency_interval(g.metric, m.latency if m else None, rm.latency if rm else None, g.confidence)
        status = _decide(g.metric, op, threshold, observed, ci)
        margin = (threshold - observed) if op == "<=" else (observed - threshold)
        detail = ""
        if ci is not None:
            common.update(ci_low=_r(ci.low), ci_high=_r(ci.high), confidence=g.confidence, rounds=ci.n)
            if status == "inconclusive":
                detail = (f"the {g.confidence:.0%} interval straddles the threshold after {ci.n} "
                          f"{'paired rounds' if spec.latency == 'paired' else 'samples'}: give the target's "
                          f"timing more max_seconds, or a quieter machine")
        results.append(GateResult(**common, observed=round(observed, 6), margin=round(margin, 6),
                                  passed=status == "pass", status=status, detail=detail))
    return results


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def latency_questions(gates: list[Any], target: str, default_target: str, names: dict[str, str]) -> list[tuple]:
    """The latency gates on ``target`` as (metric, op, threshold, record name, reference name, confidence).

    ``names`` maps a gate's stage ('final', 'baseline', a stage name) and ``against`` to the runner's record
    names (the keys of the timed runners)."""
    out = []
    for g in gates:
        if (g.target or default_target) != target or METRICS[g.metric].latency is None:
            continue
        op, threshold = bound(g)
        out.append((g.metric, op, threshold, names[g.stage], names["baseline" if g.against is None else g.against],
                    g.confidence))
    return out


def measurement_decided(questions: list[tuple], stats: dict[str, LatencyStats]) -> bool:
    """True when every latency gate in ``questions`` is decided (pass or fail) by ``stats`` so far: the
    ``until`` of :func:`compress.runtimes.timing.measure_interleaved`."""
    for metric, op, threshold, name, ref, confidence in questions:
        ci = latency_interval(metric, stats.get(name), stats.get(ref), confidence)
        if ci is not None and _decide(metric, op, threshold, ci.point, ci) == "inconclusive":
            return False
    return True
