"""A third-party runtime registered through the ``compress.runtimes`` entry-point group is validated with
its own options model and measured through the measurement service like any built-in runtime.

The fake runtime runs ONNX files with ``onnx.reference.ReferenceEvaluator`` (onnx's pure-Python reference
implementation) and counts its calls, so the test can tell that evaluation and timing really went through it.
"""
from __future__ import annotations

import importlib.metadata
import json
from typing import Literal

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import Field

from compress.runtimes.base import Runtime, Session, TargetBase, as_feeds, onnx_path
from conftest import FAST_TIMING, tiny_pipeline, write_yaml

CALLS = {"open": 0, "infer": 0}


class FakeTarget(TargetBase):
    runtime: Literal["fake"] = "fake"
    scale: float = Field(1.0, gt=0, description="Multiplies the outputs (so the test sees the option used).")


class FakeSession(Session):
    def __init__(self, path, scale: float):
        from onnx.reference import ReferenceEvaluator

        self._ref = ReferenceEvaluator(str(path))
        self._scale = scale
        self.inputs = [{"name": n, "shape": ["batch"], "dtype": "float32"} for n in self._ref.input_names]
        self.info = {"runtime": "fake", "scale": scale, "input_shape": ["batch"]}

    def infer(self, x):
        CALLS["infer"] += 1
        return self._ref.run(None, as_feeds(x, self.input_names))[0] * self._scale

    def close(self):
        pass


class FakeRuntime(Runtime):
    name = "fake"
    Target = FakeTarget
    formats = ("onnx",)
    requires = "onnx"

    def open(self, model, target, *, base_dir=None):
        CALLS["open"] += 1
        return FakeSession(onnx_path(model), target.scale)

    def versions(self):
        return {"onnx": importlib.metadata.version("onnx")}

    def optimized_op_counts(self, model, target):
        import onnx

        counts: dict[str, int] = {}
        for n in onnx.load(str(onnx_path(model)), load_external_data=False).graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return counts


@pytest.fixture
def fake_plugin(monkeypatch):
    """Register FakeRuntime as the entry point ``fake`` of group ``compress.runtimes``."""
    from compress import config
    from compress.runtimes import base

    real = importlib.metadata.entry_points
    ep = importlib.metadata.EntryPoint(name="fake", value=f"{__name__}:FakeRuntime", group="compress.runtimes")

    def entry_points(**kw):
        if kw.get("group") == "compress.runtimes":
            return importlib.metadata.EntryPoints([ep])
        return real(**kw)

    def clear():
        base.registry.cache_clear()
        config.target_union.cache_clear()
        config.pipeline_model.cache_clear()

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    clear()
    CALLS.update(open=0, infer=0)
    yield
    monkeypatch.undo()
    clear()


def test_plugin_runtime_is_registered_with_its_own_options(fake_plugin, tmp_path):
    from compress.cli import main
    from compress.runtimes import available, get_runtime, registry

    assert registry()["fake"] == f"{__name__}:FakeRuntime" and available("fake")
    assert isinstance(get_runtime("fake"), FakeRuntime)
    bad = write_yaml(tmp_path / "bad.yaml", tiny_pipeline(tmp_path, targets=[{"name": "f", "runtime": "fake",
                                                                              "threads": 1}]))
    r = CliRunner().invoke(main, ["validate", str(bad)])
    assert r.exit_code == 2 and "unknown key 'threads' for runtime 'fake'" in r.output


def test_plugin_runtime_is_measured_through_the_service(fake_plugin, tmp_path):
    from compress.cli import main

    targets = [{"name": "ort", "timing": FAST_TIMING},
               {"name": "ref", "runtime": "fake", "scale": 2.0, "timing": FAST_TIMING}]
    p = write_yaml(tmp_path / "p.yaml", tiny_pipeline(
        tmp_path, targets=targets, stages=[{"name": "export", "type": "export.onnx"}],
        evaluation={"max_samples": 16}))
    r = CliRunner().invoke(main, ["run", str(p)], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    assert CALLS["open"] >= 2 and CALLS["infer"] > 2  # evaluation and interleaved timing both ran it
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [t["runtime"] for t in rep["targets"]] == ["onnxruntime", "fake"]
    for rec in (rep["baseline"], *rep["stages"]):
        ort_m, fake_m = rec["measurements"]["ort"], rec["measurements"]["ref"]
        assert fake_m["session"]["runtime"] == "fake" and fake_m["session"]["scale"] == 2.0
        assert fake_m["latency"]["n"] >= FAST_TIMING["min_runs"]
        assert fake_m["optimized_ops"] and "Conv" in fake_m["optimized_ops"]
        # scaling the logits keeps the argmax: same accuracy as ONNX Runtime on the same samples
        assert fake_m["accuracy"] == pytest.approx(ort_m["accuracy"]) and fake_m["n_eval"] == 16
    assert rep["stages"][0]["measurements"]["ref"]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_a_stage_can_ask_the_service_for_a_candidates_latency_on_the_plugin(fake_plugin, tmp_path):
    from compress.artifact import Artifact, save_onnx
    from compress.cache import Cache
    from compress.config import EvaluationConfig
    from compress.data import make_synthetic
    from compress.export import ExportConfig, export_onnx
    from compress.measure import Measure
    from compress.runtimes.timing import TimingPolicy

    import torch

    torch.manual_seed(0)
    (tmp_path / "a").mkdir()
    export_onnx(torch.nn.Linear(4, 3), [1, 4], tmp_path / "a" / "model.onnx", ExportConfig())
    stub = Artifact(format="onnx", precision="float32", dir=tmp_path / "a", files={}, file_hashes={}, input_shape=(1, 4))
    art = save_onnx(tmp_path / "a" / "model.onnx", tmp_path / "a", like=stub, producer="test", precision="float32")
    ds = make_synthetic(40, (4,), num_classes=3)
    m = Measure(Cache(tmp_path / "cache"), targets=[FakeTarget(name="ref", timing=TimingPolicy(**FAST_TIMING))],
                dataset=ds, export=ExportConfig(), evaluation=EvaluationConfig(), base_dir=tmp_path)
    (st,) = m.latency([art], "ref")
    assert st.n >= FAST_TIMING["min_runs"] and CALLS["infer"] >= st.n
    out = m.outputs(art, "ref")
    assert out.shape == (len(ds.splits["eval"]), 3) and np.isfinite(out).all()
