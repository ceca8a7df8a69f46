"""The one timing loop every runtime shares.

Rules this module follows (and why):

* There is exactly one loop, :func:`measure_interleaved`; :func:`measure` is its
  single-runner case.  Runtimes never time anything themselves, they hand us a
  zero-argument callable.
* Configurations are compared *interleaved in one process*: runner A does
  ``block`` timed calls, then runner B, ... and the order is rotated every round,
  so slow drift of a shared, noisy machine (thermal, neighbours, frequency
  scaling) hits every runner alike.  Compare runners by the ratio of their
  medians.
* Warm-up calls are never part of the samples.

Stopping rule (checked after every round):

    every runner has ``n >= min_runs`` samples AND
    (its own timed time ``sum(samples) >= min_seconds`` OR ``n >= max_runs``)

and, when the caller passes ``until``, also ``until(stats so far)`` is true: the measurement
*extends itself* round by round until the caller's question is answered (e.g. a confidence interval
excludes a gate threshold), within the caps below.

Two hard caps end sampling earlier:

* a runner never gets more than ``max_runs`` samples (it simply sits out the
  remaining rounds while the others catch up);
* sampling (warm-up excluded) stops once the wall time since sampling began is
  ``>= max_seconds * len(runners)``.  The cap is checked before every timed call,
  so it is overshot by at most one call; every runner always gets at least one
  sample.  If the cap ends sampling before ``min_runs`` a warning is logged.

Warm-up (per runner, before any sampling): at least ``warmup_runs`` calls AND at
least ``warmup_seconds`` of that runner's own call time; as a safety valve for
very slow models a runner's warm-up also ends once it has used ``max_seconds``
(after at least one call).

This module imports only the standard library and pydantic: config validation
imports it, and that must stay light.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TimingPolicy", "LatencyStats", "measure", "measure_interleaved", "paired_ratios", "paired_speedup",
           "percentile"]

log = logging.getLogger(__name__)


class TimingPolicy(BaseModel):
    """How long and how often to time a runner. All durations in seconds."""

    model_config = ConfigDict(extra="forbid")

    warmup_runs: int = Field(10, ge=0, description="untimed calls per runner before sampling (at least)")
    warmup_seconds: float = Field(0.2, ge=0, description="untimed call time per runner before sampling (at least)")
    min_runs: int = Field(30, ge=1, description="samples per runner (at least, unless max_seconds hits first)")
    max_runs: int = Field(2000, ge=1, description="samples per runner (at most)")
    min_seconds: float = Field(1.0, ge=0, description="timed call time per runner (at least, unless max_runs hits)")
    max_seconds: float = Field(15.0, gt=0, description="wall-time cap for sampling, per runner")
    block: int = Field(5, ge=1, description="timed calls per runner per interleaving round")
    cv_threshold: float = Field(0.15, gt=0, description="robust coefficient of variation (1.4826*MAD/median) above "
                                "which a result is flagged unstable; robust so that rare OS hiccups do not flag "
                                "sub-millisecond models")
    clock: Literal["wall", "thread_cpu"] = Field(
        "wall", description="'wall': time.perf_counter (what users experience). 'thread_cpu': time.thread_time, "
        "the CPU time of the timing thread: immune to preemption on an oversubscribed machine, valid only when "
        "the runtime computes in the calling thread (1 intra-op thread); the time caps then count CPU time.")

    @model_validator(mode="after")
    def _check_ranges(self) -> "TimingPolicy":
        if self.min_runs > self.max_runs:
            raise ValueError(f"min_runs ({self.min_runs}) must be <= max_runs ({self.max_runs})")
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds ({self.min_seconds}) must be <= max_seconds ({self.max_seconds})")
        return self


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """``q``-th percentile (0..100) of already-sorted values, linear interpolation.

    Same definition as ``numpy.percentile(..., method="linear")`` (numpy's default).
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    pos = (n - 1) * (q / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    # numpy's _lerp: pick the formulation that is exact at the ends
    if frac >= 0.5:
        return b - (b - a) * (1.0 - frac)
    return a + (b - a) * frac


class LatencyStats(BaseModel):
    """Summary of one runner's timed calls (milliseconds). ``samples_ms`` keeps the raw data."""

    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float  # population standard deviation (ddof=0, like numpy.std)
    min_ms: float
    max_ms: float
    cv: float  # std_ms / mean_ms (classic; sensitive to rare outliers)
    robust_cv: float = 0.0  # 1.4826 * MAD / median
    unstable: bool  # robust_cv > cv_threshold
    warmup_runs: int  # untimed calls made before sampling
    samples_ms: list[float]
    rounds: list[int] = Field(default_factory=list, description="interleaving round of each sample (pairs samples "
                              "of different runners taken at the same time; see paired_speedup)")

    @classmethod
    def from_samples(
        cls, samples_ms: Sequence[float], warmup_runs: int, cv_threshold: float
    ) -> "LatencyStats":
        samples = [float(s) for s in samples_ms]
        if not samples:
            raise ValueError("LatencyStats.from_samples needs at least one sample")
        s = sorted(samples)
        n = len(s)
        mean = math.fsum(s) / n
        var = math.fsum((v - mean) ** 2 for v in s) / n
        std = math.sqrt(var)
        cv = std / mean if mean > 0 else (0.0 if std == 0 else math.inf)
        med = percentile(s, 50)
        mad = percentile(sorted(abs(v - med) for v in s), 50)
        robust_cv = 1.4826 * mad / med if med > 0 else (0.0 if mad == 0 else math.inf)
        return cls(
            n=n,
            p50_ms=percentile(s, 50),
            p90_ms=percentile(s, 90),
            p99_ms=percentile(s, 99),
            mean_ms=mean,
            std_ms=std,
            min_ms=s[0],
            max_ms=s[-1],
            cv=cv,
            robust_cv=robust_cv,
            unstable=robust_cv > cv_threshold,
            warmup_runs=warmup_runs,
            samples_ms=samples,
        )


def _warm_up(run: Callable[[], object], policy: TimingPolicy, clock: Callable[[], float]) -> int:
    calls = 0
    spent = 0.0
    while calls < policy.warmup_runs or spent < policy.warmup_seconds:
        t0 = clock()
        run()
        spent += clock() - t0
        calls += 1
        if spent >= policy.max_seconds:  # a very slow model: don't burn the budget warming up
            break
    return calls


def measure_interleaved(
    runners: Mapping[str, Callable[[], object]],
    policy: TimingPolicy,
    *,
    clock: Callable[[], float] | None = None,
    progress: Callable[[float], None] | None = None,
    until: Callable[[dict[str, LatencyStats]], bool] | None = None,
) -> dict[str, LatencyStats]:
    """Time several zero-argument callables interleaved; see the module docstring for the rules.

    Returns one :class:`LatencyStats` per runner, keyed and ordered like ``runners``.
    ``progress`` (if given) receives a non-decreasing fraction in [0, 1] after every
    round and exactly 1.0 at the end. ``until`` (if given) is asked after every round once the
    ordinary stopping rule holds, with the statistics so far; sampling goes on while it answers
    False, up to ``max_runs`` per runner and the wall-time cap.
    """
    names = list(runners)
    if not names:
        raise ValueError("measure_interleaved needs at least one runner")
    k = len(names)
    if clock is None:
        clock = time.thread_time if policy.clock == "thread_cpu" else time.perf_counter

    last_progress = 0.0

    def report(frac: float) -> None:
        nonlocal last_progress
        if progress is None:
            return
        frac = min(1.0, max(last_progress, frac))
        last_progress = frac
        progress(frac)

    report(0.0)
    gc.collect()
    warm = {name: _warm_up(runners[name], policy, clock) for name in names}

    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds: dict[str, list[int]] = {name: [] for name in names}
    own_s: dict[str, float] = {name: 0.0 for name in names}
    budget_s = policy.max_seconds * k

    def done(name: str) -> bool:
        n = len(samples[name])
        return n >= policy.min_runs and (own_s[name] >= policy.min_seconds or n >= policy.max_runs)

    def runner_fraction(name: str) -> float:
        n = len(samples[name])
        by_time = own_s[name] / policy.min_seconds if policy.min_seconds > 0 else 1.0
        return min(1.0, n / policy.min_runs, max(by_time, n / policy.max_runs))

    def summary() -> dict[str, LatencyStats]:
        out = {}
        for name in names:
            stats = LatencyStats.from_samples(samples[name], warm[name], policy.cv_threshold)
            stats.rounds = list(rounds[name])
            out[name] = stats
        return out

    def finished() -> bool:
        if not all(done(name) for name in names):
            return False
        if until is None or all(len(samples[m]) >= policy.max_runs for m in names):
            return True
        return bool(until(summary()))

    start = clock()
    now = start
    capped = False
    rnd = 0
    while not finished():
        shift = rnd % k
        order = names[shift:] + names[:shift]
        for name in order:
            run = runners[name]
            for _ in range(policy.block):
                if len(samples[name]) >= policy.max_runs:
                    break
                if now - start >= budget_s and all(samples[m] for m in names):
                    capped = True
                    break
                t0 = clock()
                run()
                t1 = clock()
                dt = t1 - t0
                samples[name].append(dt * 1e3)
                rounds[name].append(rnd)
                own_s[name] += dt
                now = t1
            if capped:
                break
        if capped:
            break
        rnd += 1
        report(max(min(runner_fraction(m) for m in names) * (0.5 if until else 1.0), (now - start) / budget_s))

    if capped:
        short = [m for m in names if len(samples[m]) < policy.min_runs]
        if short:
            log.warning(
                "timing cap max_seconds=%.3g s/runner reached before min_runs=%d for %s; "
                "results rest on fewer samples",
                policy.max_seconds, policy.min_runs, ", ".join(short),
            )
    report(1.0)
    return summary()


def paired_ratios(reference: LatencyStats, other: LatencyStats) -> list[float]:
    """Per-round ratios ``reference / other`` of each round's *fastest* call, for every interleaving round
    both were timed in (sorted). The raw material of :func:`paired_speedup` and of its confidence interval
    (``compress.stats``).

    Why the fastest call of a round and not its median: on a shared machine most of a call's spread is
    other tenants preempting it (added time, never removed), and which of two adjacent blocks is hit is
    luck. The fastest of ``block`` calls is the one least disturbed, so the per-round ratio compares the
    models' own cost. Measured on the shared 2-core box at load ~20 (ResNet-20 at 32x32, 15 s, ~640
    rounds, benchmarks/speed_gate_aa.py): the per-round ratios' spread fell from 54% (medians) to 7.6%
    (fastest calls), and an A/A comparison read +0.03% [-0.34, +0.57]. p50/p90 of the samples are unchanged
    and still reported from every call."""
    def per_round(s: LatencyStats) -> dict[int, float]:
        groups: dict[int, float] = {}
        for r, v in zip(s.rounds, s.samples_ms):
            groups[r] = min(v, groups.get(r, v))
        return groups

    a, b = per_round(reference), per_round(other)
    return sorted(a[r] / b[r] for r in a.keys() & b.keys() if b[r] > 0)


def paired_speedup(reference: LatencyStats, other: LatencyStats) -> float | None:
    """Speed-up of ``other`` over ``reference`` from samples taken in the same interleaving rounds.

    For every round both were timed in, the ratio of their fastest calls (see paired_ratios); the result is the median
    of those ratios. Unlike a ratio of two overall medians, this holds when the machine changes speed
    during the measurement (another tenant, frequency scaling), because each ratio compares samples
    taken moments apart. ``None`` when the two share no round (not measured together).
    """
    ratios = paired_ratios(reference, other)
    return percentile(ratios, 50) if ratios else None


def measure(
    run_once: Callable[[], object],
    policy: TimingPolicy,
    *,
    clock: Callable[[], float] | None = None,
    progress: Callable[[float], None] | None = None,
) -> LatencyStats:
    """Time one zero-argument callable: the single-runner case of :func:`measure_interleaved`."""
    return measure_interleaved({"_": run_once}, policy, clock=clock, progress=progress)["_"]
