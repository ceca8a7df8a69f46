"""The gate metric registry: one table from a metric's name to the function that computes it, its unit
and what it is compared with. The pipeline config's ``GateMetric`` type, ``compress schema``, the README
table and the gate evaluator are all made from this table, so a metric cannot exist in one and not the
other.

``reference`` below is the record a relative metric compares with: the pipeline's baseline, or, for a
gate with ``against:``, the released model re-measured on this machine.

Latency metrics are *statistical*: their value comes with a confidence interval (``compress.stats``)
and the gate decides pass / fail / inconclusive from the interval, not the point estimate.
Light module (pydantic models only): config validation imports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

from compress.evaluation import FIDELITY

if TYPE_CHECKING:  # pragma: no cover
    from compress.report.model import Measurement, StageRecord

_INF = float("inf")
#: fidelity metric -> (bounds, kind) for gate thresholds
_FIDELITY_BOUNDS = {"agreement": ((0, 100), "percent"), "agreement_top5": ((0, 100), "percent"),
                    "cosine": ((-1, 1), "a cosine similarity"), "cosine_p1": ((-1, 1), "a cosine similarity"),
                    "relative_error": ((0, _INF), "a ratio")}
Value = Callable[["StageRecord", "Measurement | None", "StageRecord", "Measurement | None"], "float | None"]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    doc: str
    value: Value
    #: "paired": CI of the paired per-round ratio vs the reference; "quantile": CI of this record's own
    #: latency quantile; None: a plain number (no interval)
    latency: Literal["paired", "quantile"] | None = None
    quantile: float = 0.5
    #: compared with a reference (the baseline, or ``against:``), so ``against`` applies
    relative: bool = False
    #: the values a gate threshold can take, and what they are (config validation reads it)
    bounds: tuple[float, float] = (-_INF, _INF)
    kind: str = ""


def _acc_drop(rec, m, ref, rm):
    if not (m and rm) or m.accuracy is None or rm.accuracy is None:
        return None
    return round(rm.accuracy - m.accuracy, 4)


def _fidelity(field: str) -> Value:
    def value(rec, m, ref, rm):
        if m is None:
            return None
        if ref.name == "baseline" or ref.name == rec.name:
            return getattr(m, field)
        return (m.vs_reference.get(ref.name) or {}).get(field)  # fidelity vs a released model
    return value


def _speedup(rec, m, ref, rm):
    from compress.runtimes.timing import paired_speedup

    if not (m and rm and m.latency and rm.latency):
        return None
    return paired_speedup(rm.latency, m.latency)


def _regression_pct(rec, m, ref, rm):
    s = _speedup(rec, m, ref, rm)
    return None if not s else (1.0 / s - 1.0) * 100.0


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("accuracy", "%", "top-1 accuracy of the exported artifact in the target runtime",
           lambda rec, m, ref, rm: m.accuracy if m else None, bounds=(0, 100), kind="top-1 in percent"),
    Metric("accuracy_drop", "points", "top-1 points lost vs the reference (baseline, or `against`)",
           _acc_drop, relative=True, bounds=(-100, 100), kind="percentage points"),
    *[Metric(name, "%" if name.startswith("agreement") else "", f"{doc.rstrip('.')} ({'higher' if higher else 'lower'} is better)", _fidelity(name), relative=True,
             bounds=_FIDELITY_BOUNDS[name][0], kind=_FIDELITY_BOUNDS[name][1])
      for name, (higher, doc) in FIDELITY.items()],  # compress/evaluation.py
    Metric("latency_p50_ms", "ms", "median latency",
           lambda rec, m, ref, rm: m.latency.p50_ms if m and m.latency else None, latency="quantile",
           bounds=(0, _INF), kind="milliseconds"),
    Metric("latency_p90_ms", "ms", "90th-percentile latency",
           lambda rec, m, ref, rm: m.latency.p90_ms if m and m.latency else None, latency="quantile", quantile=0.9,
           bounds=(0, _INF), kind="milliseconds"),
    Metric("latency_p50", "%", "latency regression vs the reference in percent, (time / reference time - 1) * 100 "
           "from paired interleaved rounds; use with max_regression_pct", _regression_pct, latency="paired",
           relative=True),
    Metric("speedup", "x", "reference time / this time, median of paired interleaved rounds", _speedup,
           latency="paired", relative=True, bounds=(0, _INF), kind="a ratio"),
    Metric("size_mb", "MB", "deployable file size", lambda rec, m, ref, rm: rec.artifact.size_bytes / 1e6,
           bounds=(0, _INF), kind="megabytes"),
    Metric("size_ratio", "", "file size / reference file size",
           lambda rec, m, ref, rm: rec.artifact.size_bytes / ref.artifact.size_bytes, relative=True,
           bounds=(0, _INF), kind="a ratio"),
    Metric("params", "", "parameter count", lambda rec, m, ref, rm: rec.artifact.params, bounds=(0, _INF),
           kind="a count"),
    Metric("macs", "", "multiply-accumulates per inference", lambda rec, m, ref, rm: rec.artifact.macs,
           bounds=(0, _INF), kind="a count"),
]}


def names() -> tuple[str, ...]:
    return tuple(METRICS)


def markdown_table() -> str:
    """The README's gate metric table, made from the registry (a test keeps the README in sync)."""
    rows = ["| metric | unit | meaning | interval |", "|---|---|---|---|"]
    for m in METRICS.values():
        ci = {"paired": "paired rounds", "quantile": "order statistics", None: "—"}[m.latency]
        rows.append(f"| `{m.name}` | {m.unit or '—'} | {m.doc.replace('|', chr(92) + '|')} | {ci} |")
    return "\n".join(rows)
