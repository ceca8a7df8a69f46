"""Config loading: unknown keys, unknown stage types, locations, chain checks, JSON == YAML."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compress.config import load_pipeline
from compress.errors import ConfigError


def _err(path) -> str:
    with pytest.raises(ConfigError) as e:
        load_pipeline(path)
    return str(e.value)


def test_valid_pipeline_loads_with_defaults(tiny_yaml):
    loaded = load_pipeline(tiny_yaml())
    cfg = loaded.config
    assert cfg.targets[0].threads == 1 and cfg.targets[0].graph_optimization == "all"
    assert [s.name for s in cfg.stages] == ["fold", "export"]
    assert cfg.export.exporter == "legacy"


def test_misspelled_key_names_line_and_column(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model:\n  zoo: tiny_cnn\n  input_shape: [1, 1, 8, 8]\ndata:\n  source: digits\n  sead: 3\n")
    msg = _err(p)
    assert "p.yaml:6:3" in msg and "data.sead" in msg and "unknown key 'sead'" in msg


def test_unknown_stage_type_suggests(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model: {zoo: tiny_cnn, input_shape: [1, 1, 8, 8]}\nstages:\n  - type: transform.fold_bm\n")
    msg = _err(p)
    assert "p.yaml:3:5" in msg and "did you mean 'transform.fold_bn'" in msg


def test_stage_config_error_points_into_stage(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model: {zoo: tiny_cnn, input_shape: [1, 1, 8, 8]}\nstages:\n  - type: export.onnx\n"
                 "    config:\n      opset: 99\n")
    msg = _err(p)
    assert "stages[0].config.opset" in msg and "p.yaml:5:7" in msg


def test_malformed_yaml(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model: {zoo: tiny_cnn\n  input_shape: [1]\n")
    assert "malformed YAML" in _err(p)


def test_json_has_the_same_shape(tmp_path, tiny_yaml):
    import yaml

    data = yaml.safe_load(tiny_yaml().read_text())
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    assert load_pipeline(p).config.model_dump() == load_pipeline(tiny_yaml()).config.model_dump()


def test_chain_rejects_torch_stage_after_export(tiny_yaml):
    p = tiny_yaml(stages=[{"type": "export.onnx"}, {"type": "transform.fold_bn"}])
    msg = _err(p)
    assert "stages[1]" in msg and "needs a float torch model" in msg


def test_model_source_rules(tiny_yaml):
    assert "exactly one of" in _err(tiny_yaml(model={"input_shape": [1, 1, 8, 8]}))
    msg = _err(tiny_yaml(model={"zoo": "resnet2O", "input_shape": [1, 3, 8, 8]}))
    assert "did you mean 'resnet20'" in msg and "model.zoo" in msg


def test_gate_needs_one_bound_and_real_stage(tiny_yaml):
    assert "exactly one of max, min or max_regression_pct" in _err(tiny_yaml(gates=[{"metric": "speedup"}]))
    assert "not a stage name" in _err(tiny_yaml(gates=[{"metric": "speedup", "min": 1, "stage": "nope"}]))
    assert "unknown key" in _err(tiny_yaml(gates=[{"metric": "speedup", "min": 1, "threshhold": 2}]))


def test_duplicate_targets_rejected(tiny_yaml):
    assert "unique" in _err(tiny_yaml(targets=[{"name": "a"}, {"name": "a"}]))


def test_schema_is_a_discriminated_union():
    from compress.config import json_schema

    schema = json.dumps(json_schema())
    assert "transform.fold_bn" in schema and "export.onnx" in schema


def test_validate_does_not_import_heavy_libraries(tiny_yaml):
    code = ("import sys; from compress.cli import main; sys.argv=['compress','validate',%r]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy=[m for m in ('torch','onnxruntime','nncf','openvino','ray') if m in sys.modules]\n"
            "assert not heavy, heavy" % str(tiny_yaml()))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_unknown_runtime_suggests(tiny_yaml):
    msg = _err(tiny_yaml(targets=[{"name": "a", "runtime": "onnxruntim"}]))
    assert "targets[0].runtime" in msg and "did you mean 'onnxruntime'" in msg
