"""Release gates (`against:` a released model or a previous report.json): the reference is re-evaluated on
this run's data and re-timed interleaved with the candidate here; reports from other machines say so."""
from __future__ import annotations

import json

from click.testing import CliRunner

from compress.cli import main
from conftest import FAST_TIMING, tiny_pipeline, write_yaml


def run(path):
    return CliRunner().invoke(main, ["run", str(path)], catch_exceptions=False)


def test_gate_against_a_released_model_and_a_previous_report(tmp_path):
    release = tmp_path / "release"
    r = run(write_yaml(tmp_path / "v1.yaml", tiny_pipeline(tmp_path, output={"dir": str(release),
                                                                              "cache_dir": str(tmp_path / "cache")})))
    assert r.exit_code == 0, r.output
    old = json.loads((release / "report.json").read_text())
    old["environment"]["cpu_flags"] = ["avx2", "fma", "avx512f", "avx512_vnni"]  # as if measured elsewhere
    (release / "report.json").write_text(json.dumps(old))

    timing = {**FAST_TIMING, "max_runs": 200, "max_seconds": 2.0}
    gates = [{"metric": "latency_p50", "max_regression_pct": 300, "against": "release/model.onnx"},
             {"metric": "agreement", "min": 99.0, "against": "release/report.json"},
             {"metric": "accuracy_drop", "max": 0.0, "against": "release/report.json"},
             {"metric": "speedup", "min": 0.3, "against": "release/report.json"}]
    cfg = tiny_pipeline(tmp_path, gates=gates, targets=[{"name": "ort", "timing": timing}])
    r = run(write_yaml(tmp_path / "v2.yaml", cfg))
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    names = [x["name"] for x in rep["references"]]
    assert names == ["release/model.onnx", "release/report.json"]
    onnx_ref, json_ref = rep["references"]
    # the same model (same weights: same seed and data) re-measured here, timed with the candidate
    assert onnx_ref["artifact"]["hash"] == json_ref["artifact"]["hash"]
    assert json_ref["measurements"]["ort"]["latency"]["rounds"] == rep["stages"][-1]["measurements"]["ort"][
        "latency"]["rounds"]
    lat, agree, drop, speed = rep["gates"]
    assert lat["status"] == "pass" and lat["against"] == "release/model.onnx" and lat["ci_high"] <= 300
    assert agree["observed"] == 100.0 and drop["observed"] == 0.0  # same model, same data
    assert speed["status"] == "pass" and speed["ci_low"] is not None
    vs = rep["stages"][-1]["measurements"]["ort"]["vs_reference"]["release/report.json"]
    assert vs["agreement"] == 100.0 and vs["cosine"] > 0.9999
    assert any("different machine" in w and "avx512_vnni" in w for w in rep["warnings"])
    assert "release/report.json" in (tmp_path / "run" / "report.md").read_text()


def test_against_a_missing_file_is_a_config_error(tmp_path):
    cfg = tiny_pipeline(tmp_path, gates=[{"metric": "speedup", "min": 1, "against": "nope/model.onnx"}])
    p = write_yaml(tmp_path / "p.yaml", cfg)
    r = CliRunner().invoke(main, ["validate", str(p)])
    assert r.exit_code == 2 and "gates[0].against: 'nope/model.onnx' not found" in r.output
