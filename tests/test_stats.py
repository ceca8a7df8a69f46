"""Confidence intervals and three-way gate decisions (compress/stats.py, compress/report/gate.py), and the
timing loop extending a measurement until a gate is decided. Fake clocks only: no wall-clock asserts."""
from __future__ import annotations

import numpy as np
import pytest

from compress.config import GateConfig
from compress.report.gate import latency_interval, latency_questions, measurement_decided
from compress.runtimes.timing import LatencyStats, TimingPolicy, measure_interleaved, paired_ratios
from compress.stats import MIN_ROUNDS, decide, quantile_ci, ratio_ci


def test_sign_test_interval_matches_the_binomial_order_statistics():
    ci = ratio_ci([float(v) for v in range(1, 7)])  # n = 6: 2 * 0.5**6 = 0.031 < 0.05, so [x_(1), x_(6)]
    assert (ci.point, ci.low, ci.high, ci.n) == (3.5, 1.0, 6.0, 6)
    assert not ratio_ci([1.0] * (MIN_ROUNDS - 1)).bounded  # too few rounds for a 95% interval
    # n = 100: the textbook 95% sign-test interval is [x_(40), x_(61)]
    ci = ratio_ci([float(v) for v in range(1, 101)])
    assert (ci.low, ci.high) == (40.0, 61.0)


@pytest.mark.parametrize("q", [0.5, 0.9])
def test_quantile_interval_covers_the_true_quantile(q):
    rng = np.random.default_rng(0)
    true = float(np.exp(0.1 * {0.5: 0.0, 0.9: 1.2815515655446004}[q]))
    hits = 0
    for _ in range(400):
        ci = quantile_ci(list(rng.lognormal(0, 0.1, 80)), q)
        hits += ci.low <= true <= ci.high
    assert hits / 400 >= 0.93  # nominal 95%: distribution-free and conservative


def test_three_way_decision():
    ci = ratio_ci([1.9, 2.0, 2.1, 2.0, 1.95, 2.05, 2.0, 2.02])
    assert decide(ci, ">=", 1.5) == "pass"
    assert decide(ci, ">=", 2.5) == "fail"
    assert decide(ci, ">=", 2.0) == "inconclusive"
    assert decide(ci, "<=", 2.5) == "pass" and decide(ci, "<=", 1.5) == "fail"
    assert decide(ratio_ci([2.0, 2.0]), ">=", 1.0) == "inconclusive"  # no interval yet


def _stats(samples: list[float], rounds: list[int]) -> LatencyStats:
    s = LatencyStats.from_samples(samples, 0, 0.15)
    s.rounds = rounds
    return s


def test_regression_interval_is_the_inverted_speedup_in_percent():
    rounds = list(range(20))
    ref = _stats([1.0] * 20, rounds)
    cand = _stats([1.05 + 0.001 * (i % 5) for i in range(20)], rounds)  # ~5% slower every round
    ci = latency_interval("latency_p50", cand, ref, 0.95)
    assert 5.0 <= ci.low <= ci.point <= ci.high <= 5.5
    sp = latency_interval("speedup", cand, ref, 0.95)
    assert sp.high < 1.0 and sp.n == 20
    assert latency_interval("latency_p50_ms", cand, None, 0.95).point == pytest.approx(cand.p50_ms)
    assert latency_interval("accuracy", cand, ref, 0.95) is None


def test_gate_config_accepts_a_release_gate_and_rejects_nonsense():
    g = GateConfig(metric="latency_p50", max_regression_pct=3, against="releases/v1/model.onnx")
    assert g.confidence == 0.95
    with pytest.raises(ValueError, match="max_regression_pct goes with metric latency_p50"):
        GateConfig(metric="latency_p50", max=3)
    with pytest.raises(ValueError, match="relative metrics"):
        GateConfig(metric="size_mb", max=1, against="x.onnx")


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _runner(clock: _Clock, costs):
    it = iter(costs)

    def run():
        clock.t += next(it)
    return run


def test_measurement_extends_until_the_gate_is_decided():
    """Two runners whose per-round ratio is noisy around 1.04: a 3% regression gate needs many rounds to
    decide; the loop keeps going (past its ordinary stopping rule) until the interval excludes 3%."""
    rng = np.random.default_rng(1)
    clock = _Clock()
    base = 2.0 ** -10
    ref_costs = (base * (1 + 0.02 * rng.standard_normal(100000))).tolist()
    cand_costs = (base * 1.06 * (1 + 0.02 * rng.standard_normal(100000))).tolist()
    pol = TimingPolicy(warmup_runs=0, warmup_seconds=0, min_runs=10, max_runs=5000, min_seconds=0.0,
                       max_seconds=1e6, block=1)
    plain = measure_interleaved({"ref": _runner(clock, iter(ref_costs)), "cand": _runner(clock, iter(cand_costs))},
                                pol, clock=clock)
    assert len(paired_ratios(plain["ref"], plain["cand"])) == 10
    gates = [GateConfig(metric="latency_p50", max_regression_pct=3, stage="cand")]
    q = latency_questions(gates, "t", "t", {"cand": "cand", "baseline": "ref", "final": "cand"})
    asked = []

    def until(stats):
        asked.append(len(stats["cand"].samples_ms))
        return measurement_decided(q, stats)

    clock2 = _Clock()
    ext = measure_interleaved({"ref": _runner(clock2, iter(ref_costs)), "cand": _runner(clock2, iter(cand_costs))},
                              pol, clock=clock2, until=until)
    n = len(paired_ratios(ext["ref"], ext["cand"]))
    assert n > 10 and asked[0] == 10  # asked only once the ordinary rule held, then every round
    ci = latency_interval("latency_p50", ext["cand"], ext["ref"], 0.95)
    assert ci.low > 3.0  # decided: fail (the true regression is 6%)


def test_extension_stops_at_the_time_budget():
    clock = _Clock()
    pol = TimingPolicy(warmup_runs=0, warmup_seconds=0, min_runs=5, max_runs=100000, min_seconds=0.0,
                       max_seconds=1.0, block=1)
    costs = [2.0 ** -10] * 10 ** 6
    stats = measure_interleaved({"a": _runner(clock, iter(costs)), "b": _runner(clock, iter(costs))}, pol,
                                clock=clock, until=lambda s: False)  # never satisfied
    total = sum(stats["a"].samples_ms) + sum(stats["b"].samples_ms)
    assert 1900 <= total <= 2001  # the wall cap max_seconds * 2 runners (ms), overshot by at most one call


def test_pipeline_gates_carry_intervals_and_inconclusive_exits_4(tmp_path, tiny_yaml):
    import json

    from click.testing import CliRunner

    from compress.cli import main
    from conftest import FAST_TIMING

    gates = [{"metric": "speedup", "min": 0.2}, {"metric": "latency_p50_ms", "max": 10000},
             {"metric": "accuracy", "min": 0}]
    r = CliRunner().invoke(main, ["run", str(tiny_yaml(gates=gates))], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    sp, p50, acc = rep["gates"]
    assert sp["status"] == "pass" and sp["ci_low"] >= 0.2 and sp["rounds"] >= 6
    assert p50["status"] == "pass" and p50["ci_low"] <= p50["observed"] <= p50["ci_high"]
    assert acc["ci_low"] is None and acc["status"] == "pass"
    final = rep["stages"][-1]["measurements"]["ort"]
    assert final["speedup_ci"][0] <= final["speedup_vs_baseline"] <= final["speedup_ci"][1]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "(95%, n=" in md and "observed [interval]" in md

    # two paired rounds cannot give a 95% interval: inconclusive; with fail_on_unstable that is exit 4
    short = {**FAST_TIMING, "min_runs": 2, "max_runs": 4, "block": 2}
    r = CliRunner().invoke(main, ["run", str(tiny_yaml(gates=gates[:1], fail_on_unstable=True,
                                                       targets=[{"name": "ort", "timing": short}]))])
    assert r.exit_code == 4, r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["gates"][0]["status"] == "inconclusive" and rep["status"] == "unstable"
    assert any("INCONCLUSIVE" in w for w in rep["warnings"])


def test_readme_gate_table_is_made_from_the_registry():
    from pathlib import Path

    from compress.report.metrics import markdown_table

    assert markdown_table() in (Path(__file__).parent.parent / "README.md").read_text()
