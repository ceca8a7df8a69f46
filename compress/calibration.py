"""Calibration data for quantization: which samples, how many, seeded and fingerprinted.

``calibration:`` at the top of a pipeline sets the default for every stage that calibrates; a stage may
override ``samples``. The subset is drawn with a seed from the chosen split of ``data:`` (disjoint from
the evaluation split), or read from a calibration set on disk (``path:``, see ``calibration/README.md``):

* a folder with ``manifest.json`` (:class:`CalibrationManifest`) naming a ``.npz`` data file whose
  sha256 and sample shape are checked before use, or
* a plain ``.npz`` file whose samples are the array ``x`` (or its only array).

Samples on disk must already be preprocessed exactly as the model expects (same normalization and
size as ``data:``); nothing is applied to them. When a set holds more samples than asked for, a seeded
subset is taken (sorted, so the same ``seed`` and count always give the same samples). The
fingerprint is a sha256 over the samples actually used.

Only pydantic and the standard library at import time; numpy is imported inside the functions.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.artifact import sha256_file
from compress.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.context import StageContext
    from compress.data import Dataset

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "compress.calibration/1"


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: Literal["calibration", "train"] = Field("calibration", description="Split of data: to draw from.")
    samples: int = Field(300, ge=1, description="Number of calibration samples (all of the split if fewer).")
    batch_size: int = Field(32, ge=1, description="Calibrate with batches, not single samples (much faster).")
    seed: int = Field(0, description="Seed of the subset drawn from the split or from the set on disk.")
    path: str | None = Field(None, description="A calibration set on disk (folder with manifest.json, or .npz); "
                             "relative to the pipeline file.")

    @model_validator(mode="after")
    def _path_or_split(self) -> "CalibrationConfig":
        if self.path is not None and "split" in self.model_fields_set:
            raise ValueError("calibration.split does not apply when calibration.path is set (the samples come from "
                             "the file): remove one of them")
        return self


class CalibrationManifest(BaseModel):
    """``manifest.json`` of a calibration set folder (documented in ``calibration/README.md``)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["compress.calibration/1"] = Field(MANIFEST_FORMAT, description="Manifest format version.")
    name: str = Field(..., description="Short name of the set.")
    description: str = Field("", description="What the samples are.")
    source: str = Field(..., description="Where the samples come from (data set, split, seed).")
    sample_shape: list[int] = Field(..., min_length=1, description="Shape of one sample, without the batch axis.")
    dtype: Literal["float32"] = Field("float32", description="Element type of the samples.")
    count: int = Field(..., ge=1, description="Number of samples in the file.")
    file: str = Field(..., description="The .npz data file, relative to the manifest's folder.")
    x_key: str = Field("x", description="Name of the samples' array inside the .npz file.")
    preprocessing: str = Field(..., description="Preprocessing already applied (nothing is applied at load time).")
    sha256: str = Field(..., min_length=64, max_length=64, description="sha256 of the data file.")


@dataclass(frozen=True)
class CalibrationSet:
    """The samples a stage calibrates with, plus what the report says about them."""

    x: "np.ndarray | dict[str, np.ndarray]"  # float32 (N, *sample_shape), or input name -> (N, ...) array
    fingerprint: str
    source: str
    batch_size: int

    @property
    def count(self) -> int:
        from compress.data.dataset import n_samples

        return n_samples(self.x)

    def batches(self, batch_size: int | None = None) -> Iterator["np.ndarray | dict[str, np.ndarray]"]:
        """Consecutive batches (the last may be short); ``batch_size`` defaults to the configured one. A
        model with named inputs gets a dict of named arrays per batch (every input fed)."""
        from compress.data.dataset import take

        bs = int(batch_size or self.batch_size)
        for start in range(0, self.count, bs):
            yield take(self.x, slice(start, start + bs))

    def head(self, n: int) -> "CalibrationSet":
        """The first ``n`` samples, fingerprinted anew (for libraries that need equal batches)."""
        from compress.data.dataset import take

        if n >= self.count:
            return self
        x = take(self.x, slice(0, n))
        return CalibrationSet(x=x, fingerprint=fingerprint_array(x), source=f"{self.source}, first {n} used",
                              batch_size=self.batch_size)

    def describe(self) -> dict[str, Any]:
        shape: Any = ({k: [int(d) for d in v.shape[1:]] for k, v in self.x.items()} if isinstance(self.x, dict)
                      else [int(d) for d in self.x.shape[1:]])
        return {"samples": self.count, "fingerprint": self.fingerprint, "source": self.source,
                "batch_size": self.batch_size, "sample_shape": shape}


# --------------------------------------------------------------------------------------------------
# Drawing samples


def fingerprint_array(x: "np.ndarray | dict[str, np.ndarray]") -> str:
    """sha256 over dtype, shape and bytes of ``x`` (little-endian, C order); of every named array, with
    its name, for a dict."""
    import numpy as np

    h = hashlib.sha256()
    for name, arr in (x.items() if isinstance(x, dict) else [(None, x)]):
        a = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        h.update(f"{name + '=' if name is not None else ''}{a.dtype.str}:{list(a.shape)}:".encode())
        h.update(a.data)
    return h.hexdigest()


def calibration_samples(dataset: "Dataset", cfg: CalibrationConfig, samples: int | None = None,
                        base_dir: Path | str | None = None) -> "np.ndarray":
    """The seeded calibration subset as one float32 array (N, *sample_shape), or a dict of named arrays for
    a model with named inputs.

    With ``cfg.path`` the samples come from the set on disk (``base_dir`` resolves a relative path;
    default: the current folder), else from ``cfg.split`` of ``dataset``.
    """
    import numpy as np

    n = samples or cfg.samples
    if cfg.path is not None:
        x, _ = read_calibration_set(cfg.path, Path(base_dir) if base_dir is not None else Path.cwd())
        return _seeded_subset(x, n, cfg.seed)
    if cfg.split == "calibration":
        return dataset.calibration_subset(n, seed=cfg.seed)
    idx = dataset.indices(cfg.split)
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return dataset.feeds(pick)


def calibration_fingerprint(dataset: "Dataset", cfg: CalibrationConfig, samples: int | None = None,
                            base_dir: Path | str | None = None) -> str:
    """sha256 of exactly the samples :func:`calibration_samples` returns."""
    return fingerprint_array(calibration_samples(dataset, cfg, samples, base_dir))


def load_calibration(source: "StageContext | Dataset", cfg: CalibrationConfig | None = None,
                     base_dir: Path | str | None = None, samples: int | None = None,
                     sample_shape: tuple[int, ...] | None = None) -> CalibrationSet:
    """What a stage calibrates with: ``samples`` (default ``cfg.samples``) from the pipeline's
    ``calibration:`` (``cfg``; from a StageContext its own config and ``base_dir`` are the defaults).

    ``sample_shape`` (the model's input without the batch axis) is checked; a mismatch is a ConfigError.
    """
    from compress.data import Dataset

    if isinstance(source, Dataset):
        dataset = source
    else:
        dataset = source.dataset
        cfg = cfg or source.calibration
        base_dir = base_dir if base_dir is not None else source.base_dir
    cfg = cfg or CalibrationConfig()
    n = samples or cfg.samples
    x = calibration_samples(dataset, cfg, n, base_dir)
    from compress.data.dataset import n_samples

    count = n_samples(x)
    if cfg.path is not None:
        where = f"calibration.path '{cfg.path}'"
        desc = f"{cfg.path} ({count} sample(s), seed {cfg.seed})"
    else:
        where = f"calibration split '{cfg.split}'"
        desc = f"data split '{cfg.split}' ({count} sample(s), seed {cfg.seed})"
    if count == 0:
        raise ConfigError(f"{where}: no calibration samples", hint="give the split a share or check the file")
    if sample_shape is not None and not isinstance(x, dict):
        want = tuple(int(d) for d in sample_shape)
        have = tuple(int(d) for d in x.shape[1:])
        if len(want) != len(have) or any(w > 0 and w != h for w, h in zip(want, have)):
            raise ConfigError(f"{where}: samples have shape {list(have)} but the model takes {list(want)} per "
                              f"sample", hint="prepare the calibration set like data: (size, channels, "
                              "normalization) or point calibration.path at the right set")
    return CalibrationSet(x=x, fingerprint=fingerprint_array(x), source=desc, batch_size=cfg.batch_size)


def _seeded_subset(x: "np.ndarray", n: int, seed: int) -> "np.ndarray":
    import numpy as np

    if len(x) <= n:
        return x
    rng = np.random.default_rng([int(seed), 3])
    return x[np.sort(rng.choice(len(x), size=int(n), replace=False))]


# --------------------------------------------------------------------------------------------------
# Calibration sets on disk


def read_calibration_set(path: str | Path, base_dir: Path | str = ".") -> tuple["np.ndarray", dict[str, Any]]:
    """Read a calibration set: a folder with ``manifest.json`` or a plain ``.npz``.

    Returns ``(x, info)``: float32 samples and the manifest (or a minimal description for a plain
    ``.npz``). Raises :class:`ConfigError` with one clear line on anything wrong, including a data
    file whose sha256 or sample shape does not match its manifest.
    """
    p = Path(path).expanduser()
    full = p if p.is_absolute() else Path(base_dir) / p
    label = f"calibration.path '{path}'"
    if not full.exists():
        rel = "" if p.is_absolute() else f" (relative paths resolve against the pipeline file's folder {base_dir})"
        raise ConfigError(f"{label}: not found{rel}")
    if full.is_dir():
        return _read_manifest_set(full, label)
    if full.suffix.lower() != ".npz":
        raise ConfigError(f"{label}: expected a folder with {MANIFEST_NAME} or a .npz file")
    x = _read_npz(full, None, label)
    info = {"name": full.stem, "source": str(full), "count": int(len(x)), "sample_shape": list(x.shape[1:]),
            "sha256": sha256_file(full)}
    return x, info


def _read_manifest_set(folder: Path, label: str) -> tuple["np.ndarray", dict[str, Any]]:
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        raise ConfigError(f"{label}: the folder has no {MANIFEST_NAME}",
                          hint="see calibration/README.md for the format, or point at a .npz file")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{label}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    try:
        man = CalibrationManifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{label}: {MANIFEST_NAME} field '{loc}': {msg}",
                          hint="see calibration/README.md for the manifest format") from None
    data = folder / man.file
    if not data.is_file():
        raise ConfigError(f"{label}: data file '{man.file}' named in {MANIFEST_NAME} not found in {folder}")
    digest = sha256_file(data)
    if digest != man.sha256:
        raise ConfigError(f"{label}: sha256 of '{man.file}' is {digest[:16]}... but {MANIFEST_NAME} says "
                          f"{man.sha256[:16]}...: the data file changed or is corrupt",
                          hint="regenerate the set, or update sha256 in the manifest if the change is intended")
    x = _read_npz(data, man.x_key, label)
    if list(x.shape[1:]) != list(man.sample_shape):
        raise ConfigError(f"{label}: samples in '{man.file}' have shape {list(x.shape[1:])} but {MANIFEST_NAME} "
                          f"says sample_shape {man.sample_shape}")
    if len(x) != man.count:
        raise ConfigError(f"{label}: '{man.file}' holds {len(x)} samples but {MANIFEST_NAME} says count {man.count}")
    return x, man.model_dump()


def _read_npz(path: Path, key: str | None, label: str) -> "np.ndarray":
    import zipfile

    import numpy as np

    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ConfigError(f"{label}: '{path.name}' is not a readable .npz archive ({str(e).splitlines()[0]})") from None
    if isinstance(archive, np.ndarray):
        raise ConfigError(f"{label}: '{path.name}' holds a single array, not a .npz archive; save it with "
                          f"np.savez(path, x=samples)")
    with archive:
        keys = list(archive.files)
        if key is None:
            key = "x" if "x" in keys or len(keys) != 1 else keys[0]
        if key not in keys:
            raise ConfigError(f"{label}: '{path.name}' has no array '{key}' (arrays present: "
                              f"{', '.join(keys) or 'none'})")
        try:
            x = archive[key]
        except ValueError as e:
            raise ConfigError(f"{label}: cannot read array '{key}' ({str(e).splitlines()[0]})") from None
    if x.ndim < 2:
        raise ConfigError(f"{label}: array '{key}' has shape {list(x.shape)}; expected (N, *sample_shape)")
    if x.dtype.kind not in "fiu":
        raise ConfigError(f"{label}: array '{key}' has dtype {x.dtype}; store float32 samples")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{label}: array '{key}' contains NaN or infinite values")
    return x


def write_calibration_set(folder: Path | str, x: "np.ndarray", *, name: str, source: str, preprocessing: str,
                          description: str = "", file: str = "samples.npz", x_key: str = "x",
                          extra_arrays: dict[str, "np.ndarray"] | None = None) -> Path:
    """Write ``x`` (float32, (N, *sample_shape), already preprocessed) and its ``manifest.json`` to
    ``folder``; return the manifest's path. ``extra_arrays`` (e.g. labels) are stored beside ``x``."""
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.ascontiguousarray(x, dtype=np.float32)
    data = folder / file
    np.savez_compressed(data, **{x_key: x}, **(extra_arrays or {}))
    man = CalibrationManifest(name=name, description=description, source=source,
                              sample_shape=[int(d) for d in x.shape[1:]], count=int(len(x)), file=file, x_key=x_key,
                              preprocessing=preprocessing, sha256=sha256_file(data))
    out = folder / MANIFEST_NAME
    out.write_text(json.dumps(man.model_dump(), indent=2) + "\n", encoding="utf-8")
    return out


def make_digits_8x8(folder: Path | str, count: int = 128, seed: int = 0) -> Path:
    """Regenerate the shipped ``calibration/digits-8x8`` set: ``count`` samples of the calibration split
    of ``data: {source: digits}`` with the default seed, splits and ``normalize: standard``."""
    from compress.data import DataConfig, load_dataset

    ds = load_dataset(DataConfig(source="digits"), Path("."))
    idx = ds.calibration_indices(count, seed=seed)
    return write_calibration_set(
        folder, ds.x[idx], name="digits-8x8",
        description=f"{len(idx)} scikit-learn 8x8 handwritten digits (1 channel) for calibrating digits models",
        source=f"sklearn.datasets.load_digits via compress.data.load_dataset(DataConfig(source='digits')): "
               f"calibration split (data seed 0, splits 0.6/0.1/0.3), seeded subset (seed {seed}); disjoint from "
               f"the train and eval splits",
        preprocessing="normalize: standard ((x / 16 - 0.5) / 0.5, values in [-1, 1]); shape (1, 8, 8) NCHW; "
                      "float32",
        extra_arrays={"y": ds.y[idx]} if ds.y is not None else None)
