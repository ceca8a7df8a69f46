"""Every example pipeline in pipelines/ validates, and runs end to end on reduced settings.

The reduced ("smoke") run keeps the pipeline's model, data source, stages and targets but shrinks the
work: fewer training steps, fewer samples, a short timing policy. Full-size runs produce the reference
reports in reports/ (see benchmarks/README.md); their numbers are not asserted here.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import main
from conftest import FAST_TIMING

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))


#: per-pipeline reductions applied before the generic ones, for pipelines whose model is too big to run in
#: seconds at full size (the pipeline file names its variant in a comment)
SMOKE: dict[str, dict] = {
    "prune": {"model": {"kwargs": {"num_classes": 10, "in_channels": 1, "width": 8},
                        "input_shape": [1, 1, 32, 32]}, "data": {"image_size": 32}},
    # ResNet-18 at 224 / 112: the same network at 64x64 (export, calibration and timing take a third the time)
    "quantize": {"model": {"input_shape": [1, 3, 64, 64]}, "data": {"image_size": 64}},
    "targets": {"model": {"input_shape": [1, 3, 64, 64]}, "data": {"image_size": 64}},
}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(dict(base.get(k) or {}), v) if isinstance(v, dict) and k != "kwargs" else v
    return base


def smoke(cfg: dict, tmp: Path, src: Path) -> dict:
    cfg = _merge(copy.deepcopy(cfg), SMOKE.get(src.stem, {}))
    model = cfg["model"]
    for key in ("weights", "onnx"):
        if model.get(key):
            model[key] = str((src.parent / model[key]).resolve())
    if model.get("train"):
        model["train"] = {**model["train"], "steps": min(model["train"].get("steps") or 40, 40)}
        model["train"].pop("epochs", None)
    data = cfg.setdefault("data", {})
    if data.get("path"):
        data["path"] = str((src.parent / data["path"]).resolve())
    data["limit"] = min(data.get("limit") or 400, 400)
    cfg.setdefault("evaluation", {})["max_samples"] = 64
    cal = cfg.setdefault("calibration", {})
    cal["samples"] = min(cal.get("samples", 32), 32)
    if cal.get("path"):
        cal["path"] = str((src.parent / cal["path"]).resolve())
    for t in cfg.get("targets") or [{"name": "ort-cpu"}]:
        t["timing"] = FAST_TIMING
    cfg.setdefault("targets", [{"name": "ort-cpu", "timing": FAST_TIMING}])
    for st in cfg.get("stages", []):
        c = st.get("config") or {}
        if "samples" in c:
            c["samples"] = min(c["samples"] or 32, 32)
        for block in ("train", "finetune", "retrain"):  # retrain: search.darts's from-scratch recipe
            if isinstance(c.get(block), dict):
                c[block] = {**c[block], "steps": 10}
                c[block].pop("epochs", None)
        if "candidates" in c:  # search.nas: subnets scored per strategy (and a matching population)
            c["candidates"] = min(c["candidates"], 12)
            c["population"] = min(c.get("population", 16), 6)
    cfg["output"] = {"dir": str(tmp / "run"), "cache_dir": str(tmp / "cache")}
    return cfg


def test_there_are_pipelines():
    assert any(p.name == "quickstart.yaml" for p in PIPELINES)


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_validates(path):
    r = CliRunner().invoke(main, ["validate", str(path)])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_runs_end_to_end(path, tmp_path):
    cfg = smoke(yaml.safe_load(path.read_text()), tmp_path, path)
    p = tmp_path / path.name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = CliRunner().invoke(main, ["run", str(p)], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output  # gates may fail on smoke settings; errors may not
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(rep["stages"]) == len(cfg["stages"])
    for rec in [rep["baseline"], *rep["stages"]]:
        for m in rec["measurements"].values():
            if m.get("na"):  # an artifact this target's runtime does not run (ONNX on a torch target)
                assert m["latency"] is None and m["accuracy"] is None
                continue
            assert m["latency"]["p50_ms"] > 0
            assert m["accuracy"] is not None or m["agreement"] is not None
