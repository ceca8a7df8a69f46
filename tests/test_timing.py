"""The shared timing loop, tested with a fake clock (no wall-clock assertions anywhere).

Fake latencies are dyadic fractions of a second (multiples of 2**-10 s) so that clock
arithmetic is exact in binary floating point and results can be compared with ``==``.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from compress.runtimes import timing
from compress.runtimes.timing import (
    LatencyStats,
    TimingPolicy,
    measure,
    measure_interleaved,
    percentile,
)

U = 2.0**-10  # one fake "millisecond", in seconds (exact in binary)
U_MS = U * 1e3  # the same, in ms, as the loop reports it (0.9765625, exact)


class FakeClock:
    """A clock that only moves when a fake runner advances it (plus an optional tick per read)."""

    def __init__(self, tick: float = 0.0):
        self.t = 0.0
        self.tick = tick
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.t += self.tick
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeRunner:
    """Each call advances the clock by the next scripted latency (cycled) and logs its name."""

    def __init__(self, clock: FakeClock, latencies: float | list[float], name: str = "r", log=None):
        self.clock = clock
        self.latencies = latencies if isinstance(latencies, list) else [latencies]
        self.name = name
        self.log = log if log is not None else []
        self.calls = 0

    def __call__(self) -> None:
        self.clock.advance(self.latencies[self.calls % len(self.latencies)])
        self.calls += 1
        self.log.append(self.name)


def policy(**kw) -> TimingPolicy:
    base = dict(warmup_runs=0, warmup_seconds=0.0, min_runs=1, max_runs=2000,
                min_seconds=0.0, max_seconds=1000.0, block=5, cv_threshold=0.15)
    base.update(kw)
    return TimingPolicy(**base)


# ---------------------------------------------------------------- policy


def test_policy_defaults_and_validation():
    p = TimingPolicy()
    assert (p.warmup_runs, p.warmup_seconds, p.min_runs, p.max_runs) == (10, 0.2, 30, 2000)
    assert (p.min_seconds, p.max_seconds, p.block, p.cv_threshold) == (1.0, 15.0, 5, 0.15)
    with pytest.raises(ValidationError):
        TimingPolicy(min_runs=50, max_runs=10)
    with pytest.raises(ValidationError):
        TimingPolicy(min_seconds=20, max_seconds=10)
    with pytest.raises(ValidationError):
        TimingPolicy(block=0)
    with pytest.raises(ValidationError):
        TimingPolicy(warmup_runs=-1)
    with pytest.raises(ValidationError):
        TimingPolicy(max_seconds=0)
    with pytest.raises(ValidationError):
        TimingPolicy(cv_threshold=0)
    with pytest.raises(ValidationError):
        TimingPolicy(warmup=3)  # extra="forbid"


# ---------------------------------------------------------------- warm-up


def test_warmup_count_honoured_and_excluded():
    clock = FakeClock()
    # the first 7 calls (warm-up) are slow; everything after is 1 U
    lat = [100 * U] * 7 + [U] * 10_000
    run = FakeRunner(clock, lat)
    st = measure(run, policy(warmup_runs=7, min_runs=20, block=5), clock=clock)
    assert st.warmup_runs == 7
    assert st.n == 20
    assert run.calls == 7 + 20
    assert st.samples_ms == [U_MS] * 20  # no warm-up sample leaked in
    assert st.max_ms == U_MS


def test_warmup_seconds_honoured():
    clock = FakeClock()
    run = FakeRunner(clock, 64 * U)  # 0.0625 s per call
    st = measure(run, policy(warmup_runs=1, warmup_seconds=0.5, min_runs=5), clock=clock)
    assert st.warmup_runs == 8  # 8 * 0.0625 = 0.5 s of warm-up, more than 1 run
    assert run.calls == 8 + 5


def test_warmup_needs_both_count_and_time():
    clock = FakeClock()
    run = FakeRunner(clock, 512 * U)  # 0.5 s per call: time is met after 1 call, count is not
    st = measure(run, policy(warmup_runs=4, warmup_seconds=0.2, min_runs=1, block=1), clock=clock)
    assert st.warmup_runs == 4


def test_warmup_capped_by_max_seconds_for_slow_models():
    clock = FakeClock()
    run = FakeRunner(clock, 1.0)
    st = measure(run, policy(warmup_runs=100, min_runs=1, block=1, max_seconds=3.0), clock=clock)
    assert st.warmup_runs == 3


# ---------------------------------------------------------------- stopping rule


def test_min_runs_honoured():
    clock = FakeClock()
    st = measure(FakeRunner(clock, U), policy(min_runs=37, block=5), clock=clock)
    assert 37 <= st.n < 37 + 5  # stops at the end of the round that reached min_runs
    assert st.n == 40


def test_max_runs_is_exact_cap():
    clock = FakeClock()
    st = measure(FakeRunner(clock, U), policy(min_runs=10, max_runs=53, min_seconds=100.0,
                                              max_seconds=1000.0, block=5), clock=clock)
    assert st.n == 53  # min_seconds is never reached: max_runs ends it, exactly


def test_min_seconds_honoured():
    clock = FakeClock()
    st = measure(FakeRunner(clock, 16 * U), policy(min_runs=1, min_seconds=0.5, block=5), clock=clock)
    own_s = sum(st.samples_ms) / 1e3
    assert own_s >= 0.5
    assert st.n == 35  # 32 calls give 0.5 s; the round of 5 finishes -> 35


def test_max_seconds_caps_sampling(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="compress.runtimes.timing"):
        st = measure(FakeRunner(clock, 256 * U), policy(min_runs=1000, min_seconds=1.0,
                                                        max_seconds=2.0, block=5), clock=clock)
    assert st.n == 8  # 8 * 0.25 s = 2 s = max_seconds
    assert "min_runs" in caplog.text


def test_max_seconds_scales_with_runner_count():
    clock = FakeClock()
    runners = {"a": FakeRunner(clock, 256 * U, "a"), "b": FakeRunner(clock, 256 * U, "b")}
    res = measure_interleaved(runners, policy(min_runs=1000, min_seconds=1.0, max_seconds=2.0, block=2),
                              clock=clock)
    assert res["a"].n + res["b"].n == 16  # 2 runners * 2 s / 0.25 s
    assert res["a"].n == res["b"].n == 8


def test_every_runner_gets_a_sample_even_past_the_cap():
    clock = FakeClock()
    runners = {"slow": FakeRunner(clock, 10.0, "slow"), "fast": FakeRunner(clock, U, "fast")}
    res = measure_interleaved(runners, policy(min_runs=5, max_runs=5, min_seconds=0.5, max_seconds=1.0,
                                              block=1), clock=clock)
    assert res["slow"].n == 1 and res["fast"].n == 1


def test_clock_overhead_counts_towards_cap_not_samples():
    clock = FakeClock(tick=U)  # every clock read costs 1 U
    st = measure(FakeRunner(clock, 2 * U), policy(min_runs=10, block=5), clock=clock)
    assert st.n == 10
    assert st.samples_ms == [3 * U_MS] * 10  # latency + the second read's tick


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentiles_match_numpy(n):
    rng = np.random.default_rng(n)
    samples = list(rng.lognormal(0.0, 0.5, size=n))
    st = LatencyStats.from_samples(samples, warmup_runs=3, cv_threshold=0.15)
    for q, got in ((50, st.p50_ms), (90, st.p90_ms), (99, st.p99_ms)):
        assert got == pytest.approx(float(np.percentile(samples, q)), rel=1e-12, abs=0)
    s = sorted(samples)
    for q in np.linspace(0, 100, 41):
        assert percentile(s, float(q)) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12)
    assert st.mean_ms == pytest.approx(float(np.mean(samples)), rel=1e-12)
    assert st.std_ms == pytest.approx(float(np.std(samples)), rel=1e-9, abs=1e-15)
    assert (st.min_ms, st.max_ms) == (min(samples), max(samples))
    assert st.n == n and st.warmup_runs == 3
    assert st.samples_ms == samples  # raw samples, in call order


def test_percentiles_known_values():
    s = [1.0, 2.0, 3.0, 4.0]
    assert percentile(s, 50) == 2.5
    assert percentile(s, 0) == 1.0 and percentile(s, 100) == 4.0
    assert percentile(s, 90) == pytest.approx(3.7)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([], 0, 0.15)


def test_cv_and_unstable_flag():
    clock = FakeClock()
    steady = measure(FakeRunner(clock, 4 * U), policy(min_runs=30), clock=clock)
    assert steady.cv == 0.0 and steady.std_ms == 0.0
    assert not steady.unstable

    clock = FakeClock()
    noisy = measure(FakeRunner(clock, [U, 5 * U]), policy(min_runs=30), clock=clock)
    # alternating 1 and 5: mean 3, std 2 -> cv 2/3
    assert noisy.cv == pytest.approx(2 / 3)
    assert noisy.unstable

    mild = LatencyStats.from_samples([10.0, 11.0] * 20, 0, cv_threshold=0.15)
    assert mild.cv == pytest.approx(0.5 / 10.5) and not mild.unstable
    assert LatencyStats.from_samples([10.0, 11.0] * 20, 0, cv_threshold=0.01).unstable


# ---------------------------------------------------------------- interleaving


def test_interleaved_ratio_order_and_rotation():
    clock = FakeClock()
    calls: list[str] = []
    runners = {"a": FakeRunner(clock, U, "a", calls), "b": FakeRunner(clock, 3 * U, "b", calls)}
    res = measure_interleaved(runners, policy(warmup_runs=3, min_runs=20, block=5), clock=clock)

    assert list(res) == ["a", "b"]
    assert res["a"].p50_ms == U_MS and res["b"].p50_ms == 3 * U_MS
    assert res["b"].p50_ms / res["a"].p50_ms == 3.0
    assert res["a"].n == res["b"].n == 20
    assert not res["a"].unstable and not res["b"].unstable

    assert calls[:6] == ["a"] * 3 + ["b"] * 3  # warm-up, each runner in turn
    sampling = calls[6:]
    blocks = [sampling[i:i + 5] for i in range(0, len(sampling), 5)]
    assert all(len(set(b)) == 1 for b in blocks)  # whole blocks of one runner
    assert [b[0] for b in blocks] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotates


def test_rotation_with_three_runners():
    clock = FakeClock()
    calls: list[str] = []
    runners = {n: FakeRunner(clock, U, n, calls) for n in "xyz"}
    measure_interleaved(runners, policy(min_runs=3, block=1), clock=clock)
    assert calls == list("xyz" "yzx" "zxy")


def test_finished_runners_keep_sampling_until_all_are_done():
    clock = FakeClock()
    calls: list[str] = []
    runners = {"fast": FakeRunner(clock, U, "fast", calls), "slow": FakeRunner(clock, 64 * U, "slow", calls)}
    res = measure_interleaved(runners, policy(min_runs=5, max_runs=40, min_seconds=0.5, block=5),
                              clock=clock)
    # slow is done after 10 calls (0.625 s); fast never reaches 0.5 s and stops at max_runs.
    # Both stay in the rotation until both are done, so the samples stay balanced.
    assert res["fast"].n == 40
    assert res["slow"].n == 40
    assert calls.count("fast") == calls.count("slow") == 40


def test_progress_reaches_one_and_is_monotone():
    clock = FakeClock()
    seen: list[float] = []
    measure_interleaved({"a": FakeRunner(clock, U), "b": FakeRunner(clock, 2 * U)},
                        policy(min_runs=50, block=5), clock=clock, progress=seen.append)
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(0.0 <= v <= 1.0 for v in seen)
    assert seen == sorted(seen)
    assert len(seen) > 3  # reported along the way, not only at the end


def test_measure_is_the_single_runner_case(monkeypatch):
    calls = []
    real = timing.measure_interleaved

    def spy(runners, pol, **kw):
        calls.append(list(runners))
        return real(runners, pol, **kw)

    monkeypatch.setattr(timing, "measure_interleaved", spy)
    clock = FakeClock()
    st = timing.measure(FakeRunner(clock, U), policy(min_runs=5), clock=clock)
    assert len(calls) == 1 and len(calls[0]) == 1
    assert isinstance(st, LatencyStats) and st.n == 5


def test_no_runners_is_an_error():
    with pytest.raises(ValueError):
        measure_interleaved({}, policy())


# ---------------------------------------------------------------- import weight


def test_light_imports():
    code = (
        "import sys, compress.runtimes, compress.runtimes.timing, compress.runtimes.base;"
        "print(','.join(m for m in ('onnxruntime', 'torch', 'numpy', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_paired_speedup_survives_a_machine_slowdown():
    """Part-way through, the machine gets 1.6x slower for everyone: every per-round ratio still compares
    samples taken under the same conditions, so the paired speed-up stays exact."""
    from compress.runtimes.timing import TimingPolicy, measure_interleaved, paired_speedup

    clock_t = [0.0]
    calls = [0]

    def clock() -> float:
        return clock_t[0]

    def runner(cost_units: int):
        def run() -> None:
            calls[0] += 1
            slow = 1.6 if calls[0] > 400 else 1.0
            clock_t[0] += cost_units * slow * 2 ** -10
        return run

    policy = TimingPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=200, max_runs=200, min_seconds=0.0,
                          max_seconds=1e6, block=5)
    # 'fast' is 2x faster than 'slow'
    stats = measure_interleaved({"slow": runner(4), "fast": runner(2)}, policy, clock=clock)
    assert len(stats["slow"].rounds) == len(stats["slow"].samples_ms) == 200
    assert paired_speedup(stats["slow"], stats["fast"]) == pytest.approx(2.0)
    assert paired_speedup(stats["slow"], stats["slow"]) == pytest.approx(1.0)


def test_a_runtime_session_plugs_into_the_one_loop():
    """Any Session (here a fake one on a fake clock) is timed through Session.runner by the same loop."""
    import numpy as np

    from compress.runtimes.base import Session
    from compress.runtimes.timing import TimingPolicy, measure

    clock = FakeClock()

    class FakeSession(Session):
        input_name = "input"
        info: dict = {}

        def __init__(self):
            self.calls = 0

        def infer(self, x):
            self.calls += 1
            clock.advance(3 * U * len(x))  # 3 units per sample
            return np.zeros((len(x), 10), dtype=np.float32)

        def close(self):
            pass

    sess = FakeSession()
    policy = TimingPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=10, max_runs=10, min_seconds=0.0, block=5)
    stats = measure(sess.runner(np.zeros((2, 1, 8, 8), dtype=np.float32)), policy, clock=clock)
    assert stats.n == 10 and sess.calls == 12  # 2 warm-up calls are not samples
    assert stats.p50_ms == pytest.approx(6 * U * 1e3)
