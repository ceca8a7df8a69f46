"""End-to-end runs through the CLI: exit codes, cache hits and misses, resume, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compress.cli import main
from conftest import save_user_weights, tiny_pipeline, write_yaml


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "report.json").read_text())


def test_help_lists_exit_codes():
    r = run("run", "--help")
    assert r.exit_code == 0 and "Exit codes" in r.output and "gate failed" in r.output


def test_run_then_rerun_hits_cache(tmp_path, tiny_yaml):
    p = tiny_yaml()
    first = run("run", str(p))
    assert first.exit_code == 0, first.output
    rep = report(tmp_path)
    assert rep["schema_version"] == 1 and len(rep["stages"]) == 2
    for rec in [rep["baseline"], *rep["stages"]]:
        m = rec["measurements"]["ort"]
        assert m["latency"]["p50_ms"] > 0 and m["accuracy"] is not None and rec["cache_hit"] is False
    assert rep["stages"][0]["facts"]["folded"] == 2
    assert (tmp_path / "run" / "report.md").read_text().startswith("## compress")
    assert (tmp_path / "run" / "model.onnx").is_file()

    second = run("run", str(p))
    assert second.exit_code == 0
    assert second.output.count("cached, not re-run") == 3 and "not re-measured" in second.output
    rep2 = report(tmp_path)
    assert all(r["cache_hit"] for r in [rep2["baseline"], *rep2["stages"]])
    # identical artifacts and identical (cached) quality numbers
    assert [r["artifact"]["hash"] for r in rep2["stages"]] == [r["artifact"]["hash"] for r in rep["stages"]]
    assert rep2["stages"][-1]["measurements"]["ort"]["accuracy"] == rep["stages"][-1]["measurements"]["ort"]["accuracy"]


def test_changing_one_stage_reruns_from_there(tmp_path, tiny_yaml):
    assert run("run", str(tiny_yaml())).exit_code == 0
    changed = tiny_yaml(stages=[{"name": "fold", "type": "transform.fold_bn"},
                                {"name": "export", "type": "export.onnx", "config": {"opset": 16}}])
    r = run("run", str(changed))
    assert r.exit_code == 0
    assert "baseline: cached" in r.output and "fold (transform.fold_bn): cached" in r.output
    assert "export (export.onnx): cached" not in r.output


def test_corrupt_cache_entry_is_recomputed(tmp_path, tiny_yaml):
    p = tiny_yaml()
    assert run("run", str(p)).exit_code == 0
    weights = next((tmp_path / "cache" / "artifacts").glob("*/model.safetensors"))
    weights.write_bytes(b"garbage")
    r = run("run", str(p))
    assert r.exit_code == 0 and "corrupt cache entry" in r.output


def test_impossible_gate_exits_1(tmp_path, tiny_yaml):
    r = run("run", str(tiny_yaml(gates=[{"metric": "speedup", "min": 1000.0},
                                        {"metric": "accuracy_drop", "max": 100.0}])))
    assert r.exit_code == 1
    assert "FAIL" in r.output and "GATE FAILED" in r.output
    gates = report(tmp_path)["gates"]
    assert [g["passed"] for g in gates] == [False, True]
    assert gates[0]["threshold"] == 1000.0 and gates[0]["margin"] < 0 and gates[0]["observed"] > 0


def test_report_command_rerenders(tmp_path, tiny_yaml):
    assert run("run", str(tiny_yaml(gates=[{"metric": "speedup", "min": 1000.0}]))).exit_code == 1
    r = run("report", str(tmp_path / "run" / "report.json"))
    assert r.exit_code == 1 and r.output == (tmp_path / "run" / "report.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert run("report", str(bad)).exit_code == 2


def test_validate_misspelled_key_exits_2(tmp_path):
    cfg = tiny_pipeline(tmp_path)
    cfg["data"]["lmit"] = 3
    r = run("validate", str(write_yaml(tmp_path / "p.yaml", cfg)))
    assert r.exit_code == 2 and "p.yaml:" in r.output and "data.lmit" in r.output


def test_validate_ok(tiny_yaml):
    r = run("validate", str(tiny_yaml()))
    assert r.exit_code == 0 and "ok" in r.output


def test_stage_failure_exits_3_and_keeps_finished_stages(tmp_path, tiny_yaml, monkeypatch):
    from compress.stages import export_onnx

    def boom(self, artifact, ctx):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(export_onnx.ExportOnnx, "run", boom)
    r = run("run", str(tiny_yaml()))
    assert r.exit_code == 3 and "exporter exploded" in r.output and "Traceback" not in r.output
    monkeypatch.undo()
    r = run("run", str(tiny_yaml()))  # resumes: baseline and fold come from the cache
    assert r.exit_code == 0
    assert "baseline: cached" in r.output and "fold (transform.fold_bn): cached" in r.output


@pytest.mark.parametrize("model,needle", [
    ({"callable": "nosuchmodule:build", "input_shape": [1, 1, 8, 8]}, "cannot import 'nosuchmodule:build'"),
    ({"callable": "usermodel:raises", "input_shape": [1, 1, 8, 8]}, "raised ValueError: bad width"),
    ({"callable": "usermodel:build", "input_shape": [1, 1, 8, 8], "weights": "missing.pt"}, "not found"),
    ({"callable": "usermodel:build", "input_shape": [1, 1, 8, 8], "weights": "wrong.pt"}, "does not match the model"),
    ({"callable": "usermodel:build", "input_shape": [1, 3, 8, 8]}, "data gives samples of shape"),
])
def test_bad_model_input_exits_2(tmp_path, tiny_yaml, model, needle):
    (tmp_path / "usermodel.py").write_text(
        "import torch\n"
        "def build(width=4):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.Linear(width, 10))\n"
        "def raises():\n    raise ValueError('bad width')\n")
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "wrong.pt")
    import sys

    sys.modules.pop("usermodel", None)  # each test writes its own usermodel.py
    r = run("run", str(tiny_yaml(model=model)))
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_user_callable_with_weights_runs(tmp_path, tiny_yaml):
    (tmp_path / "usermodel.py").write_text(
        "import torch\n"
        "def build(width=16):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(),"
        " torch.nn.Linear(width, 10))\n")
    save_user_weights(tmp_path)
    r = run("run", str(tiny_yaml(model={"callable": "usermodel:build", "input_shape": [1, 1, 8, 8], "weights": "w.pt"},
                                 stages=[{"name": "export", "type": "export.onnx"}])))
    assert r.exit_code == 0, r.output
    rep = report(tmp_path)
    assert rep["baseline"]["artifact"]["params"] == 64 * 16 + 16 + 16 * 10 + 10


def test_onnx_model_source(tmp_path, tiny_yaml):
    from compress import zoo
    from compress.export import ExportConfig, export_onnx

    export_onnx(zoo.get("tiny_cnn")(in_channels=1).eval(), (1, 1, 8, 8), tmp_path / "m.onnx", ExportConfig())
    r = run("run", str(tiny_yaml(model={"onnx": "m.onnx", "input_shape": [1, 1, 8, 8]}, stages=[])))
    assert r.exit_code == 0, r.output
    assert report(tmp_path)["baseline"]["artifact"]["format"] == "onnx"


def test_regression_warns_loudly_and_can_fail_the_run(tmp_path, tiny_yaml, monkeypatch):
    """A stage that makes the model less accurate is reported; with on_regression: fail it exits 1."""
    import numpy as np

    from compress import evaluation

    real_score = evaluation.score
    calls = {"n": 0}

    def worse_after_baseline(outputs, labels, reference, **kw):
        calls["n"] += 1
        if reference is not None:  # every stage after the baseline: scramble predictions
            outputs = np.roll(outputs, 1, axis=1)
        return real_score(outputs, labels, reference, **kw)

    monkeypatch.setattr(evaluation, "score", worse_after_baseline)
    r = run("run", str(tiny_yaml()))
    assert r.exit_code == 0 and "LESS ACCURATE" in r.output
    r = run("run", str(tiny_yaml(on_regression="fail")))
    assert r.exit_code == 1 and "GATE FAILED" in r.output
    gates = report(tmp_path)["gates"]
    assert gates and gates[0]["metric"] == "accuracy_drop_vs_input" and not gates[0]["passed"]


def test_unfaithful_quantizer_warns_loudly_and_fails_with_on_regression_fail(tmp_path, tiny_yaml):
    """A deliberately broken quantizer setting (activation ranges clipped at the 51st percentile) drops the
    output cosine vs the stage's input below regression.min_cosine: loud warning, exit 1 with fail."""
    broken = [{"name": "int8", "type": "quantize.ptq",
               "config": {"calibration_method": "percentile", "percentile": 51}}]
    r = run("run", str(tiny_yaml(stages=broken)))
    assert r.exit_code == 0 and "UNFAITHFUL" in r.output and "output cosine" in r.output, r.output
    m = report(tmp_path)["stages"][0]["measurements"]["ort"]
    assert m["vs_input"]["cosine"] < 0.99 and m["cosine"] == m["vs_input"]["cosine"]  # its input is the baseline
    assert "agree %" in (tmp_path / "run" / "report.md").read_text()
    r = run("run", str(tiny_yaml(stages=broken, on_regression="fail")))
    assert r.exit_code == 1 and "GATE FAILED" in r.output
    gates = {g["metric"]: g for g in report(tmp_path)["gates"]}
    assert not gates["cosine_vs_input"]["passed"] and gates["cosine_vs_input"]["threshold"] == 0.99
    # the same stage with sane settings is faithful: no fidelity warning (INT8 on a model this tiny is
    # slower than float, which is reported separately)
    r = run("run", str(tiny_yaml(stages=[{"name": "int8", "type": "quantize.ptq"}])))
    assert r.exit_code == 0 and "UNFAITHFUL" not in r.output, r.output
