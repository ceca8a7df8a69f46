"""Hardware-normalised efficiency: the peak micro-benchmark runs through the measurement service, is
cached per machine, and every record gets MACs / p50 / peak."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import main
from compress.peak import MACS, _model, efficiency, machine_key


def test_efficiency_formula_and_precision_choice():
    gm = {"float32": 200.0, "int8": 400.0}
    assert efficiency(10 ** 9, 10.0, "float32", gm) == pytest.approx(0.5)  # 100 GMAC/s of 200
    assert efficiency(10 ** 9, 10.0, "int8", gm) == pytest.approx(0.25)
    assert efficiency(10 ** 9, 10.0, "mixed", gm) == pytest.approx(0.25)
    assert efficiency(None, 10.0, "float32", gm) is None


def test_micro_models_compute_the_same_convolution():
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 28, 28)).astype(np.float32)
    f, q = (ort.InferenceSession(_model(p).SerializeToString()).run(None, {"input": x})[0]
            for p in ("float32", "int8"))
    assert f.shape == q.shape == (1, 64, 28, 28)
    assert np.corrcoef(f.ravel(), q.ravel())[0, 1] > 0.95  # the int8 model is the same conv, quantized
    assert MACS == 64 * 64 * 9 * 28 * 28


def test_machine_key_ignores_load():
    a = {"cpu_model": "X", "cpu_flags": ["avx2"], "usable_cores": 2, "load_avg_1m": 1.0, "packages": {}}
    assert machine_key(a) == machine_key({**a, "load_avg_1m": 9.0})
    assert machine_key(a) != machine_key({**a, "cpu_flags": ["avx2", "avx512_vnni"]})


def test_records_carry_efficiency_and_the_peak_is_cached(tmp_path, tiny_yaml):
    p = tiny_yaml()
    assert CliRunner().invoke(main, ["run", str(p)], catch_exceptions=False).exit_code == 0
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    gm = rep["peak"]["ort"]["gmacs"]
    assert gm["float32"] > 0 and gm["int8"] > 0
    m = rep["baseline"]["measurements"]["ort"]
    assert m["efficiency"] == pytest.approx(rep["baseline"]["artifact"]["macs"] / (m["latency"]["p50_ms"] * 1e-3)
                                            / 1e9 / gm["float32"], rel=1e-3)
    r = CliRunner().invoke(main, ["run", str(p)], catch_exceptions=False)
    assert "peak MAC rate" not in r.output  # cached: not measured again
    assert json.loads((tmp_path / "run" / "report.json").read_text())["peak"] == rep["peak"]
