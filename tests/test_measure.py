"""The measurement service: the runner's records and a stage's candidates go through one cached path."""
from __future__ import annotations

from typing import ClassVar

import pytest

from compress import stages as stage_registry
from compress.artifact import save_torch
from compress.config import load_pipeline, pipeline_model
from compress.runner import Runner
from compress.stages.base import Stage, StageConfig

SEEN: dict[str, object] = {}


class ProbeStage(Stage):
    """A stage that measures its input and a modified candidate through ``ctx.measure``."""

    type: ClassVar[str] = "test.probe"
    Config: ClassVar[type[StageConfig]] = StageConfig

    def run(self, artifact, ctx):
        import torch

        m = ctx.measure
        assert m is not None, "stages get the measurement service"
        model = ctx.load_torch(artifact)
        with torch.no_grad():  # a different candidate: scale the classifier, outputs change but not argmax
            for p in list(model.parameters())[-2:]:
                p.mul_(2.0)
        cand = save_torch(model, ctx.work_dir / "candidate", like=artifact, producer="probe")
        SEEN["latency"] = m.latency([artifact, cand], None)
        SEEN["quality"] = m.evaluate([cand], None, reference=artifact)
        SEEN["facts"] = m.facts(cand)
        return save_torch(model, ctx.work_dir, like=artifact, producer="probe")


@pytest.fixture
def probe_registered(monkeypatch):
    monkeypatch.setitem(stage_registry.BUILTIN, "test.probe", f"{__name__}:ProbeStage")
    stage_registry.registry.cache_clear()
    pipeline_model.cache_clear()
    yield
    monkeypatch.delitem(stage_registry.BUILTIN, "test.probe")
    stage_registry.registry.cache_clear()
    pipeline_model.cache_clear()


def test_stage_measures_candidates_through_the_service(tiny_yaml, probe_registered):
    path = tiny_yaml(stages=[{"name": "probe", "type": "test.probe"}])
    runner = Runner(load_pipeline(path))
    report = runner.run()

    lat = SEEN["latency"]
    assert len(lat) == 2 and all(s.n >= 3 and s.p50_ms > 0 for s in lat)
    assert set(lat[0].rounds) & set(lat[1].rounds), "candidates are timed interleaved, in shared rounds"
    (q,) = SEEN["quality"]
    assert q["agreement"] == 100.0 and q["cosine"] > 0.99 and q["n"] > 0
    assert SEEN["facts"]["params"] > 0 and SEEN["facts"]["macs"] > 0

    # the candidate the stage measured IS the stage's output: the runner's record reuses those outputs
    probe = report.record("probe").measurements["ort"]
    assert probe.agreement == 100.0
    assert probe.n_eval == q["n"]

    # asking again is a cache hit with identical numbers (no re-timing)
    again = runner.measure.latency([runner._artifacts["baseline"], runner._artifacts["probe"]], "ort")
    assert runner.measure.last_latency_cached
    assert [s.samples_ms for s in again] == [s.samples_ms for s in
                                              (report.baseline.measurements["ort"].latency,
                                               report.record("probe").measurements["ort"].latency)]


def test_unknown_target_name_is_one_clear_error(tiny_yaml):
    from compress.errors import CompressError

    runner = Runner(load_pipeline(tiny_yaml()))
    runner.run()
    with pytest.raises(CompressError, match="unknown target 'nope'"):
        runner.measure.target("nope")


def test_timings_are_never_reused_on_another_machine(tiny_yaml, monkeypatch):
    """The latency cache key holds the CPU: a cache copied to a machine with another ISA is re-timed."""
    from compress import measure

    runner = Runner(load_pipeline(tiny_yaml()))
    runner.run()
    arts = [runner._artifacts["baseline"], runner._artifacts["export"]]
    runner.measure.latency(arts, "ort")
    runner.measure.latency(arts, "ort")
    assert runner.measure.last_latency_cached  # same machine: the second ask is a cache hit
    other = {**measure._machine(), "cpu_flags": ["avx2", "fma", "avx512f", "avx512_vnni"], "vnni": True}
    monkeypatch.setattr(measure, "_machine", lambda: other)
    runner.measure.latency(arts, "ort")
    assert not runner.measure.last_latency_cached
