"""Tests for compress.data: sources, preparation, deterministic splits, fingerprints, error messages."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from compress.data import (
    DataConfig,
    Dataset,
    SplitConfig,
    check_input_shape,
    load_dataset,
    make_synthetic,
    parse_data_config,
)
from compress.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(), Path("."))


def _assert_disjoint_cover(ds: Dataset, n_expected: int | None = None) -> None:
    parts = [ds.splits[k] for k in ("train", "calibration", "eval")]
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "splits overlap"
    assert allidx.min() >= 0 and allidx.max() < len(ds)
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no repeats
    if n_expected is not None:
        assert len(allidx) == n_expected


# -- digits ------------------------------------------------------------------------------------------


def test_module_import_is_light():
    code = ("import sys, compress.data; bad = [m for m in ('torch', 'sklearn', 'PIL') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_digits_default(digits):
    assert digits.x.shape == (1797, 1, 8, 8)
    assert digits.x.dtype == np.float32 and digits.y.dtype == np.int64
    assert digits.num_classes == 10 and digits.sample_shape == (1, 8, 8)
    # standard normalization maps 0..16 to [-1, 1]
    assert digits.x.min() == pytest.approx(-1.0) and digits.x.max() == pytest.approx(1.0)
    d = digits.describe()
    assert d["splits"] == {"train": 1078, "calibration": 180, "eval": 539}
    assert d["sample_shape"] == [1, 8, 8] and d["num_classes"] == 10
    assert d["fingerprint"] == digits.fingerprint and len(digits.fingerprint) == 64
    assert "digits" in d["source"]


def test_digits_resize_channels_normalize():
    ds = load_dataset(DataConfig(image_size=16, channels=3, normalize="unit", limit=200), Path("."))
    assert ds.x.shape == (200, 3, 16, 16)
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(ds.x[:, 0], ds.x[:, 2])  # 1 -> 3 repeats
    raw = load_dataset(DataConfig(normalize="none", limit=50), Path("."))
    assert raw.x.max() == 16.0


def test_splits_disjoint_counts_and_stratified(digits):
    _assert_disjoint_cover(digits, 1797)
    counts = np.bincount(digits.y, minlength=10)
    for name, frac in (("train", 0.6), ("calibration", 0.1), ("eval", 0.3)):
        per_class = np.bincount(digits.y[digits.splits[name]], minlength=10)
        assert np.all(np.abs(per_class - counts * frac) <= 2), (name, per_class)


def test_split_fractions_below_one_leave_rest_unused():
    ds = make_synthetic(100, (4,), num_classes=3, splits={"train": 0.5, "calibration": 0.0, "eval": 0.2})
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 50, "calibration": 0, "eval": 20}
    _assert_disjoint_cover(ds, 70)
    with pytest.raises(ConfigError, match="calibration split is empty"):
        ds.calibration_subset(10)


def test_tiny_classes_still_split():
    y = np.array([0] * 20 + [1] * 1 + [2] * 2)
    ds = Dataset.from_arrays(np.zeros((23, 2)), y)
    _assert_disjoint_cover(ds, 23)
    assert len(ds.splits["eval"]) >= 1


# -- determinism and fingerprints --------------------------------------------------------------------


def test_same_seed_same_fingerprint_and_indices(digits):
    again = load_dataset(DataConfig(), Path("."))
    assert again.fingerprint == digits.fingerprint
    for k in digits.splits:
        np.testing.assert_array_equal(again.splits[k], digits.splits[k])


def test_fingerprint_changes_with_seed_data_and_settings(digits):
    other_seed = load_dataset(DataConfig(seed=1), Path("."))
    assert other_seed.fingerprint != digits.fingerprint
    assert not np.array_equal(other_seed.splits["eval"], digits.splits["eval"])
    x = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    y = np.arange(60) % 3
    base = Dataset.from_arrays(x, y)
    assert Dataset.from_arrays(x.copy(), y.copy()).fingerprint == base.fingerprint
    x2 = x.copy()
    x2[0, 0] += 1e-3
    assert Dataset.from_arrays(x2, y).fingerprint != base.fingerprint
    y2 = y.copy()
    y2[0] = 2
    assert Dataset.from_arrays(x, y2).fingerprint != base.fingerprint
    assert Dataset.from_arrays(x, None).fingerprint != base.fingerprint
    assert Dataset.from_arrays(x, y, splits={"train": 0.5, "calibration": 0.2, "eval": 0.3}).fingerprint \
        != base.fingerprint
    assert Dataset.from_arrays(x, y, limit=50).fingerprint != base.fingerprint


def test_fingerprint_identical_across_processes():
    code = textwrap.dedent("""
        import numpy as np
        from compress.data import Dataset
        x = np.arange(600, dtype=np.float32).reshape(100, 6)
        print(Dataset.from_arrays(x, np.arange(100) % 4, seed=3).fingerprint)
    """)
    outs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)}
    x = np.arange(600, dtype=np.float32).reshape(100, 6)
    assert outs == {Dataset.from_arrays(x, np.arange(100) % 4, seed=3).fingerprint}


def test_limit_is_seeded_subset():
    x = np.arange(100, dtype=np.float32)[:, None]
    a = Dataset.from_arrays(x, limit=30, seed=5)
    b = Dataset.from_arrays(x, limit=30, seed=5)
    c = Dataset.from_arrays(x, limit=30, seed=6)
    assert len(a) == 30 and np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    assert np.all(np.diff(a.x[:, 0]) > 0)  # original order kept
    assert np.all(a.x[:, 0] != np.arange(30))  # not simply the first 30


# -- npz ------------------------------------------------------------------------------------------


def test_npz_round_trip_nchw_and_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 3, 6, 5), dtype=np.uint8)
    y = np.arange(40) % 4
    np.savez(tmp_path / "nchw.npz", x=x, y=y)
    np.savez(tmp_path / "nhwc.npz", images=x.transpose(0, 2, 3, 1), labels=y)
    a = load_dataset(DataConfig(source="npz", path="nchw.npz", normalize="none"), tmp_path)
    b = load_dataset(DataConfig(source="npz", path=str(tmp_path / "nhwc.npz"), layout="NHWC", normalize="none",
                                x_key="images", y_key="labels"), Path("/nonexistent"))
    np.testing.assert_array_equal(a.x, x.astype(np.float32))
    np.testing.assert_array_equal(b.x, a.x)
    np.testing.assert_array_equal(a.y, y)
    assert a.num_classes == 4 and a.sample_shape == (3, 6, 5)
    # same content, same splits -> same fingerprint even though the files differ... except for layout
    assert a.fingerprint != b.fingerprint  # layout is a content-changing setting
    u = load_dataset(DataConfig(source="npz", path="nchw.npz", normalize="unit"), tmp_path)
    np.testing.assert_allclose(u.x, x / 255.0, rtol=1e-6)
    s = load_dataset(DataConfig(source="npz", path="nchw.npz", normalize="standard"), tmp_path)
    np.testing.assert_allclose(s.x, (x / 255.0 - 0.5) / 0.5, rtol=1e-5, atol=1e-6)
    d = load_dataset(DataConfig(source="npz", path="nchw.npz"), tmp_path)  # user data: taken as given
    np.testing.assert_array_equal(d.x, x.astype(np.float32))


def test_already_normalised_float_data_passes_unchanged(tmp_path):
    """Photos scaled to [-1, 1] by the user reach the model bit-for-bit unless the YAML asks otherwise
    (the old default re-standardised them to about [-3, 1])."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(30, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "norm.npz", x=x)
    for cfg in (DataConfig(source="npz", path="norm.npz"),
                parse_data_config({"source": "npz", "path": "norm.npz"})):
        ds = load_dataset(cfg, tmp_path)
        assert cfg.normalize == "none"
        np.testing.assert_array_equal(ds.x, x)
        r = ds.describe()["input_range"]
        assert r["min"] == pytest.approx(float(x.min())) and r["max"] == pytest.approx(float(x.max()))
    asked = load_dataset(DataConfig(source="npz", path="norm.npz", normalize="standard"), tmp_path)
    np.testing.assert_allclose(asked.x, (x - 0.5) / 0.5)  # only when the YAML says so
    assert DataConfig().normalize == "standard"  # digits keeps its documented preprocessing


def test_small_splits_warn_with_the_fix():
    ds = Dataset.from_arrays(np.zeros((256, 4), np.float32), splits={"train": 0.6, "calibration": 0.1, "eval": 0.3})
    w = ds.split_warnings(calibrates=True)
    assert len(w) == 2 and "data.splits.calibration" in w[0] and "data.splits.eval" in w[1]
    assert len(ds.split_warnings(calibrates=False)) == 1
    big = Dataset.from_arrays(np.zeros((400, 4), np.float32), splits={"train": 0, "calibration": 0.3, "eval": 0.7})
    assert big.split_warnings(calibrates=True) == []


def test_npz_unlabeled_and_tabular(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.ones((10, 7)))
    ds = load_dataset(DataConfig(source="npz", path="t.npz"), tmp_path)
    assert ds.y is None and ds.num_classes is None and ds.sample_shape == (7,)
    assert ds.split("eval")[1] is None
    with pytest.raises(ConfigError, match=r"data\.image_size: the samples are not images"):
        load_dataset(DataConfig(source="npz", path="t.npz", image_size=4), tmp_path)


def test_npz_missing_key_lists_present(tmp_path):
    np.savez(tmp_path / "d.npz", feats=np.zeros((4, 2)), cls=np.zeros(4))
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(source="npz", path="d.npz"), tmp_path)
    msg = str(e.value)
    assert "data.x_key" in msg and "'x'" in msg and "'feats', 'cls'" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"data\.y_key: .*no array 'labels'"):
        load_dataset(DataConfig(source="npz", path="d.npz", x_key="feats", y_key="labels"), tmp_path)
    # samples found by x_key but no label array: the description says so (the run prints it)
    ds = load_dataset(DataConfig(source="npz", path="d.npz", x_key="feats"), tmp_path)
    assert ds.y is None and "NO LABELS" in ds.source_desc and "cls" in ds.source_desc


def test_npz_images_labels_are_recognised(tmp_path):
    """Common names (images/labels) are used when x_key/y_key are left unset; set keys always win."""
    np.savez(tmp_path / "d.npz", images=np.zeros((10, 1, 4, 4), np.float32), labels=np.arange(10) % 2)
    ds = load_dataset(DataConfig(source="npz", path="d.npz"), tmp_path)
    assert ds.y is not None and "samples 'images'" in ds.source_desc and "labels 'labels'" in ds.source_desc
    with pytest.raises(ConfigError, match=r"data\.y_key: .*no array 'y'"):
        load_dataset(DataConfig(source="npz", path="d.npz", y_key="y"), tmp_path)


def test_npz_bad_paths_and_contents(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(source="npz", path="x.npz"), tmp_path)
    assert str(e.value) == (f"data.path: 'x.npz' not found (relative paths resolve against the pipeline file's "
                            f"folder {tmp_path})")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ConfigError, match=r"data\.path: 'junk\.npz' is not a readable \.npz"):
        load_dataset(DataConfig(source="npz", path="junk.npz"), tmp_path)
    np.save(tmp_path / "single.npy", np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="single .npy array"):
        load_dataset(DataConfig(source="npz", path="single.npy"), tmp_path)
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((5, 2)), y=np.zeros(4))
    with pytest.raises(ConfigError, match="5 samples but 4 labels"):
        load_dataset(DataConfig(source="npz", path="mismatch.npz"), tmp_path)
    np.savez(tmp_path / "nan.npz", x=np.full((5, 2), np.nan))
    with pytest.raises(ConfigError, match="NaN"):
        load_dataset(DataConfig(source="npz", path="nan.npz"), tmp_path)
    np.savez(tmp_path / "rgba.npz", x=np.zeros((5, 4, 3, 3)))
    with pytest.raises(ConfigError, match=r"data\.channels: cannot turn 4-channel"):
        load_dataset(DataConfig(source="npz", path="rgba.npz", channels=3), tmp_path)


# -- image folders -------------------------------------------------------------------------------


def _write_images(folder: Path, n: int, size: tuple[int, int], color: tuple[int, int, int], mode="RGB"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = tuple(min(255, v + i) for v in color)
        Image.new(mode, size, c if mode == "RGB" else c[0]).save(folder / f"img{i}.png")


def test_image_folder_two_classes(tmp_path):
    _write_images(tmp_path / "imgs" / "cat", 6, (5, 5), (200, 10, 10))
    _write_images(tmp_path / "imgs" / "ant", 4, (5, 5), (10, 10, 200))
    (tmp_path / "imgs" / "README.txt").write_text("ignored")
    ds = load_dataset(DataConfig(source="image_folder", path="imgs", normalize="unit"), tmp_path)
    assert ds.x.shape == (10, 3, 5, 5) and ds.classes == ["ant", "cat"] and ds.num_classes == 2
    assert list(np.bincount(ds.y)) == [4, 6]
    ants = ds.x[ds.y == 0]
    assert np.all(ants[:, 2] > ants[:, 0])  # blue ants, values in [0, 1]
    assert ds.x.max() <= 1.0
    _assert_disjoint_cover(ds, 10)
    assert ds.describe()["classes"] == ["ant", "cat"]
    gray = load_dataset(DataConfig(source="image_folder", path="imgs", channels=1, image_size=8), tmp_path)
    assert gray.x.shape == (10, 1, 8, 8)


def test_image_folder_mixed_sizes_and_flat(tmp_path):
    _write_images(tmp_path / "mixed" / "a", 2, (5, 5), (50, 50, 50))
    _write_images(tmp_path / "mixed" / "b", 2, (7, 6), (90, 90, 90))
    with pytest.raises(ConfigError, match=r"data\.image_size: images in 'mixed' have different sizes"):
        load_dataset(DataConfig(source="image_folder", path="mixed"), tmp_path)
    ds = load_dataset(DataConfig(source="image_folder", path="mixed", image_size=4), tmp_path)
    assert ds.x.shape == (4, 3, 4, 4)
    _write_images(tmp_path / "flat", 5, (3, 3), (100, 0, 0), mode="L")
    flat = load_dataset(DataConfig(source="image_folder", path="flat"), tmp_path)
    assert flat.y is None and flat.x.shape == (5, 1, 3, 3) and flat.num_classes is None


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data\.path: 'empty' has no images"):
        load_dataset(DataConfig(source="image_folder", path="empty"), tmp_path)
    _write_images(tmp_path / "f" / "a", 1, (3, 3), (1, 1, 1))
    (tmp_path / "f" / "b").mkdir()
    with pytest.raises(ConfigError, match=r"class folder 'b' .* has no images"):
        load_dataset(DataConfig(source="image_folder", path="f"), tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"data\.path: 'file\.txt' is not a folder"):
        load_dataset(DataConfig(source="image_folder", path="file.txt"), tmp_path)


# -- callables -------------------------------------------------------------------------------------


def test_callable_tuple_and_pairs(tmp_path):
    (tmp_path / "mydata_t1.py").write_text(textwrap.dedent("""
        import numpy as np

        def arrays():
            x = np.arange(2 * 4 * 4 * 3 * 10, dtype=np.float32).reshape(20, 4, 4, 3)
            return x, np.arange(20) % 2

        def unlabeled():
            return np.ones((8, 3), dtype=np.float32), None

        class Pairs:
            def __len__(self):
                return 12
            def __getitem__(self, i):
                return np.full((1, 2, 2), float(i), dtype=np.float32), i % 3

        def pairs():
            return Pairs()

        def broken():
            raise RuntimeError("database offline\\nsecond line")
    """))
    ds = load_dataset(DataConfig(source="callable", callable="mydata_t1:arrays", layout="NHWC",
                                 normalize="none"), tmp_path)
    assert ds.x.shape == (20, 3, 4, 4) and ds.num_classes == 2
    assert ds.x[1, 2, 0, 0] == 48 + 2
    un = load_dataset(DataConfig(source="callable", callable="mydata_t1:unlabeled"), tmp_path)
    assert un.y is None and un.sample_shape == (3,)
    pr = load_dataset(DataConfig(source="callable", callable="mydata_t1:pairs", normalize="none"), tmp_path)
    assert pr.x.shape == (12, 1, 2, 2) and list(pr.y) == [i % 3 for i in range(12)]
    lim = load_dataset(DataConfig(source="callable", callable="mydata_t1:pairs", normalize="none", limit=5),
                       tmp_path)
    full_then_limit = Dataset.from_arrays(pr.x, pr.y, limit=5)
    np.testing.assert_array_equal(lim.x, full_then_limit.x)
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(source="callable", callable="mydata_t1:broken"), tmp_path)
    assert str(e.value) == "data.callable: 'mydata_t1:broken' raised RuntimeError: database offline"
    with pytest.raises(ConfigError, match=r"data\.callable: module 'mydata_t1' has no attribute 'nope'"):
        load_dataset(DataConfig(source="callable", callable="mydata_t1:nope"), tmp_path)


def test_callable_import_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.callable: cannot import module 'no_such_mod_xyz'"):
        load_dataset(DataConfig(source="callable", callable="no_such_mod_xyz:f"), tmp_path)
    (tmp_path / "syntax_bad_t2.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"cannot import module 'syntax_bad_t2' \(SyntaxError"):
        load_dataset(DataConfig(source="callable", callable="syntax_bad_t2:f"), tmp_path)
    (tmp_path / "wrong_t3.py").write_text("def f():\n    return 42\n")
    with pytest.raises(ConfigError, match=r"returned a int; return a tuple \(x, y\)"):
        load_dataset(DataConfig(source="callable", callable="wrong_t3:f"), tmp_path)


# -- config validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, field", [
    ({"source": "npz"}, "data.path is required"),
    ({"source": "image_folder"}, "data.path is required"),
    ({"source": "digits", "path": "x.npz"}, "data.path is not used"),
    ({"source": "callable"}, "data.callable is required"),
    ({"source": "callable", "callable": "nocolon"}, "data.callable must look like 'module:function'"),
    ({"source": "npz", "path": "a.npz", "callable": "m:f"}, "data.callable is not used"),
    ({"layout": "NHWC"}, "data.layout applies to npz/callable"),
    ({"splits": {"train": 0.8, "calibration": 0.2, "eval": 0.3}},
     "data.splits: train + calibration + eval = 1.3 > 1"),
])
def test_config_rules(raw, field):
    # pydantic names nested fields in its own location line; the one-line ConfigError has the full path
    with pytest.raises(ValidationError, match=re.escape(field.removeprefix("data.splits: "))):
        DataConfig.model_validate(raw)
    with pytest.raises(ConfigError, match=re.escape(field)):
        parse_data_config(raw)


def test_config_unknown_keys_and_ranges():
    with pytest.raises(ValidationError, match="extra"):
        DataConfig.model_validate({"sorce": "digits"})
    with pytest.raises(ValidationError):
        SplitConfig(nonsense=1)
    with pytest.raises(ConfigError, match=r"^data\.sorce: unknown key"):
        parse_data_config({"sorce": "digits"})
    with pytest.raises(ConfigError, match=r"data\.splits\.eval"):
        parse_data_config({"splits": {"eval": 0}})
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        parse_data_config({"image_size": 0})
    assert SplitConfig(train=0.7, calibration=0.1, eval=0.2).eval == 0.2  # float rounding tolerated
    with pytest.raises(ConfigError, match="Dataset.from_arrays bogus"):
        Dataset.from_arrays(np.zeros((3, 2)), bogus=1)


# -- shape checks, calibration, batches ------------------------------------------------------------


def test_check_input_shape_messages(digits):
    check_input_shape(digits, [1, 1, 8, 8])
    check_input_shape(digits, [-1, 1, 8, 8])
    with pytest.raises(ConfigError) as e:
        check_input_shape(digits, [1, 3, 32, 32])
    assert str(e.value) == ("data gives samples of shape (1, 8, 8) but model.input_shape is [1, 3, 32, 32]: set "
                            "data.channels: 3 and data.image_size: 32, or fix model.input_shape")
    with pytest.raises(ConfigError, match=r"set data\.image_size: 16, or fix model\.input_shape"):
        check_input_shape(digits, [1, 1, 16, 16])
    with pytest.raises(ConfigError, match=r"fix model\.input_shape to \[1, 1, 8, 8\]"):
        check_input_shape(digits, [1, 64])
    nhwc = Dataset.from_arrays(np.zeros((4, 8, 8, 3)))
    with pytest.raises(ConfigError, match=r"set data\.layout: NHWC"):
        check_input_shape(nhwc, [1, 3, 8, 8])


def test_calibration_subset_seeded_within_split(digits):
    cal = set(digits.splits["calibration"].tolist())
    i1 = digits.calibration_indices(50, seed=1)
    assert len(i1) == 50 and set(i1.tolist()) <= cal
    np.testing.assert_array_equal(i1, digits.calibration_indices(50, seed=1))
    assert not np.array_equal(i1, digits.calibration_indices(50, seed=2))
    sub = digits.calibration_subset(50, seed=1)
    np.testing.assert_array_equal(sub, digits.x[i1])
    assert sub.dtype == np.float32 and sub.shape == (50, 1, 8, 8)
    assert len(digits.calibration_subset(10_000)) == len(cal)  # fewer than n: all of it
    with pytest.raises(ConfigError):
        digits.calibration_subset(0)


def test_batches_in_order(digits):
    xs, ys = zip(*digits.batches("eval", 100))
    assert [len(b) for b in xs] == [100] * 5 + [39]
    x_eval, y_eval = digits.split("eval")
    np.testing.assert_array_equal(np.concatenate(xs), x_eval)
    np.testing.assert_array_equal(np.concatenate(ys), y_eval)
    with pytest.raises(ConfigError, match="unknown data split 'test'"):
        digits.split("test")


def test_make_synthetic():
    ds = make_synthetic(90, (1, 4, 4), num_classes=3, seed=2)
    assert ds.x.shape == (90, 1, 4, 4) and ds.num_classes == 3 and list(np.bincount(ds.y)) == [30, 30, 30]
    assert make_synthetic(90, (1, 4, 4), num_classes=3, seed=2).fingerprint == ds.fingerprint
    assert make_synthetic(90, (1, 4, 4), num_classes=3, seed=3).fingerprint != ds.fingerprint
    assert make_synthetic(10, (5,), num_classes=None).y is None
