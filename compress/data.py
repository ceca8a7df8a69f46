"""Data sources, deterministic splits and content fingerprints.

A pipeline's ``data:`` section (:class:`DataConfig`) names where samples come from:

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download),
  loaded as ``(N, 1, 8, 8)`` with labels 0-9;
* ``npz``: a ``.npz`` archive with arrays ``x_key`` (default ``x``) and optionally ``y_key``
  (default ``y``), saved with ``np.savez(path, x=..., y=...)``;
* ``image_folder``: one sub-folder per class (sorted folder names give labels 0..K-1), or a flat folder
  of images without labels;
* ``callable``: ``"module:function"`` returning ``(x, y)`` array-likes (``y`` may be ``None``) or an
  indexable dataset of ``(x, y)`` pairs (e.g. a torch ``Dataset``); the pipeline file's folder is put
  on ``sys.path`` first so modules next to it import.

Arrays are turned into a :class:`Dataset`: ``x`` float32 ``(N, C, H, W)`` (images) or ``(N, F)``
(anything else), ``y`` int64 class indices or ``None``. The steps, in order:

1. ``limit``: keep at most that many samples, chosen by a seeded shuffle (kept in original order);
2. ``layout``: 4-D arrays in ``NHWC`` are transposed to ``NCHW``; 3-D arrays ``(N, H, W)`` get a
   channel axis; 2-D arrays ``(N, F)`` are left alone (and may not use ``channels``/``image_size``);
3. ``channels``: 1 -> 3 repeats the channel, 3 -> 1 takes the mean; any other change is an error;
4. ``image_size``: bilinear resize (antialiased when shrinking) to ``image_size x image_size``;
5. ``normalize``: ``none`` keeps values as they are (as float32); ``unit`` divides by the source's
   full scale (digits: 16, uint8 arrays and image files: 255; any other dtype is assumed to be
   in [0, 1] already and is left as it is); ``standard`` (the default) applies ``unit`` and then
   ``(x - 0.5) / 0.5``, mapping [0, 1] to [-1, 1].

Splits (``train`` / ``calibration`` / ``eval`` fractions of the samples) are disjoint index arrays,
seeded by ``seed`` and stratified by label when labels exist: samples are grouped by class (shuffled
within each class) and dealt to the splits by an evenly spread sequence, so every class lands in each
split in proportion, within one sample, however small the class. Fractions summing below 1 leave the
rest unused. ``Dataset.fingerprint`` is a sha256 over the final arrays, the split indices and the
content-changing settings: identical inputs give identical fingerprints in any process.

Module-level imports are stdlib, pydantic and numpy only; scikit-learn, PIL and torch are imported
inside the functions that need them (``compress validate`` imports this module).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import ConfigError

SPLIT_NAMES = ("train", "calibration", "eval")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_FINGERPRINT_VERSION = "compress.data/1"
# Fields of ArrayOptions that change a dataset's content (and so enter its fingerprint).
_CONTENT_FIELDS = ("seed", "splits", "limit", "normalize", "layout", "image_size", "channels")


# --------------------------------------------------------------------------------------------------
# Configuration


class SplitConfig(BaseModel):
    """Fractions of the samples per split; they may sum to less than 1 (the rest is unused)."""

    model_config = ConfigDict(extra="forbid")
    train: float = Field(0.6, ge=0, le=1, description="Training / fine-tuning share.")
    calibration: float = Field(0.1, ge=0, le=1, description="Share used to calibrate quantization.")
    eval: float = Field(0.3, gt=0, le=1, description="Share used for every accuracy measurement.")

    @model_validator(mode="after")
    def _sum(self) -> "SplitConfig":
        total = self.train + self.calibration + self.eval
        if total > 1 + 1e-9:
            raise ValueError(f"train + calibration + eval = {total:g} > 1; lower them so they sum "
                             f"to at most 1 (any rest is left unused)")
        return self


class ArrayOptions(BaseModel):
    """How arrays become a :class:`Dataset` (the content-changing part of :class:`DataConfig`)."""

    model_config = ConfigDict(extra="forbid")
    image_size: int | None = Field(None, ge=1, description="Resize images to image_size x image_size (bilinear).")
    channels: int | None = Field(None, ge=1, description="Channels wanted: 1 -> 3 repeats, 3 -> 1 averages.")
    normalize: Literal["none", "unit", "standard"] = Field(
        "standard", description="'none': raw values; 'unit': scale to [0, 1] (digits /16, uint8 /255, floats "
        "unchanged); 'standard': 'unit' then (x - 0.5) / 0.5.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Axis order of 4-D npz/callable arrays; "
                                            "NHWC is transposed to NCHW.")
    seed: int = Field(0, ge=0, description="Seed of the limit shuffle and of the splits.")
    splits: SplitConfig = Field(default_factory=SplitConfig)
    limit: int | None = Field(None, ge=1, description="Use at most this many samples (seeded choice).")


class DataConfig(ArrayOptions):
    """Where the samples come from and how they are prepared and split (see the module docstring)."""

    source: Literal["digits", "npz", "image_folder", "callable"] = Field(
        "digits", description="digits (sklearn, offline), npz file, image_folder, or a Python callable.")
    path: str | None = Field(None, description="The .npz file or image folder; relative paths resolve against "
                             "the pipeline file's folder.")
    callable: str | None = Field(None, description="'module:function' returning (x, y) or a dataset of (x, y) "
                                 "pairs; the pipeline file's folder is on sys.path.")
    x_key: str = Field("x", description="Array name of the samples in the .npz file.")
    y_key: str = Field("y", description="Array name of the labels in the .npz file (optional there).")

    @model_validator(mode="after")
    def _source_fields(self) -> "DataConfig":
        src = self.source
        if src in ("npz", "image_folder") and not self.path:
            what = "a .npz file with arrays 'x' and 'y'" if src == "npz" else "a folder with one sub-folder per class"
            raise ValueError(f"data.path is required when data.source is '{src}': give {what}")
        if src not in ("npz", "image_folder") and self.path is not None:
            raise ValueError(f"data.path is not used when data.source is '{src}': remove it, or set data.source "
                             f"to npz or image_folder")
        if src == "callable":
            if not self.callable:
                raise ValueError("data.callable is required when data.source is 'callable': give "
                                 "'module:function'")
            mod, _, fn = self.callable.partition(":")
            if not mod.strip() or not fn.strip():
                raise ValueError(f"data.callable must look like 'module:function', got '{self.callable}'")
        elif self.callable is not None:
            raise ValueError(f"data.callable is not used when data.source is '{src}': remove it, or set "
                             f"data.source: callable")
        if src in ("digits", "image_folder") and self.layout == "NHWC":
            raise ValueError(f"data.layout applies to npz/callable arrays only; remove it for data.source '{src}'")
        return self


def parse_data_config(raw: Mapping[str, Any] | None, where: str = "data") -> DataConfig:
    """Validate a ``data:`` mapping outside a pipeline file; the first problem becomes a one-line ConfigError."""
    try:
        return DataConfig.model_validate(dict(raw or {}))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        raise ConfigError(f"{loc}: {msg}") from None


# --------------------------------------------------------------------------------------------------
# The dataset


@dataclass
class Dataset:
    """Prepared samples plus disjoint split indices. Build with :func:`load_dataset` or :meth:`from_arrays`."""

    x: np.ndarray  # float32, (N, C, H, W) or (N, F)
    y: np.ndarray | None  # int64 (N,) or None
    splits: dict[str, np.ndarray]  # "train" / "calibration" / "eval" -> sorted int64 indices into x
    num_classes: int | None
    fingerprint: str
    source_desc: str
    classes: list[str] | None = field(default=None)  # class names (image folders), index = label

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        y: Any = None,
        options: ArrayOptions | None = None,
        *,
        source_desc: str = "arrays",
        unit_scale: float | None = None,
        num_classes: int | None = None,
        classes: list[str] | None = None,
        **overrides: Any,
    ) -> "Dataset":
        """Build a Dataset from in-memory arrays with the same preparation, splitting and fingerprinting
        as :func:`load_dataset`.

        ``options`` is an :class:`ArrayOptions` or :class:`DataConfig` (only its content fields are
        used); ``overrides`` are any of those fields by keyword (``seed=1, limit=100, normalize="unit",
        splits={"train": 0.5, ...}``). Without ``options`` the default is ``normalize="none"``, so the
        arrays are kept as they are. ``unit_scale`` is the full-scale value for ``normalize: unit``
        (default: 255 for uint8, else 1). ``num_classes`` defaults to ``max(y) + 1``.
        """
        opts = _options(options, overrides)
        return _build(x, y, opts, where="x", source_desc=source_desc, unit_scale=unit_scale,
                      num_classes=num_classes, classes=classes)

    # -- access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def indices(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise ConfigError(f"unknown data split '{name}': use one of {', '.join(self.splits)}")
        return self.splits[name]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(x, y)`` of a split, in index order (``y`` is None for unlabeled data)."""
        idx = self.indices(name)
        return self.x[idx], (self.y[idx] if self.y is not None else None)

    def calibration_indices(self, n: int, seed: int = 0) -> np.ndarray:
        """Sorted indices (into ``x``) of a seeded subset of at most ``n`` calibration samples."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"calibration sample count must be a positive integer, got {n!r}")
        idx = self.splits["calibration"]
        if len(idx) == 0:
            raise ConfigError("the calibration split is empty: give it a share in data.splits.calibration "
                              "(e.g. 0.1) or raise data.limit")
        if len(idx) <= n:
            return idx.copy()
        rng = np.random.default_rng([int(seed), 3])
        return np.sort(rng.choice(idx, size=int(n), replace=False))

    def calibration_subset(self, n: int, seed: int = 0) -> np.ndarray:
        """Samples ``x`` (float32, ``(k, *sample_shape)``, k = min(n, calibration size)) of a seeded subset
        of the calibration split; all of it when it has n or fewer samples. Errors if it is empty."""
        return self.x[self.calibration_indices(n, seed)]

    def batches(self, name: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Consecutive ``(x, y)`` batches of a split, in index order (not shuffled); the last may be short."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        idx = self.indices(name)
        for start in range(0, len(idx), int(batch_size)):
            part = idx[start:start + int(batch_size)]
            yield self.x[part], (self.y[part] if self.y is not None else None)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for the report."""
        out: dict[str, Any] = {
            "source": self.source_desc,
            "n_samples": len(self),
            "splits": {k: int(len(v)) for k, v in self.splits.items()},
            "sample_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            "labeled": self.y is not None,
            "fingerprint": self.fingerprint,
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out


def make_synthetic(n: int, shape: Sequence[int], num_classes: int | None = 2, seed: int = 0,
                   **options: Any) -> Dataset:
    """A small learnable random dataset (class-dependent mean + noise) for tests and examples.

    ``shape`` is the sample shape (e.g. ``(1, 8, 8)`` or ``(16,)``); ``num_classes=None`` gives no labels.
    ``options`` are :class:`ArrayOptions` fields (seed of the splits defaults to ``seed``).
    """
    rng = np.random.default_rng([int(seed), 7])
    shape = tuple(int(d) for d in shape)
    if num_classes is None:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        y = None
    else:
        y = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(y)
        centers = rng.standard_normal((num_classes, *shape)).astype(np.float32)
        x = centers[y] + 0.5 * rng.standard_normal((n, *shape)).astype(np.float32)
    options.setdefault("seed", seed)
    return Dataset.from_arrays(x, y, source_desc=f"synthetic ({n} x {shape}, {num_classes} classes)",
                               num_classes=num_classes, **options)


# --------------------------------------------------------------------------------------------------
# Loading


def load_dataset(cfg: DataConfig, base_dir: Path | str) -> Dataset:
    """Load, prepare and split the data a :class:`DataConfig` describes; every bad input is a ConfigError."""
    base_dir = Path(base_dir)
    if cfg.source == "digits":
        return _load_digits(cfg)
    if cfg.source == "npz":
        return _load_npz(cfg, base_dir)
    if cfg.source == "image_folder":
        return _load_image_folder(cfg, base_dir)
    if cfg.source == "callable":
        return _load_callable(cfg, base_dir)
    raise ConfigError(f"data.source: unknown source '{cfg.source}'")  # pragma: no cover (Literal)


def check_input_shape(ds: Dataset, input_shape: Sequence[Any], where: str = "model.input_shape") -> None:
    """Raise a ConfigError with the fix when the data's sample shape is not ``input_shape[1:]``.

    Non-integer or non-positive entries of ``input_shape`` (``None``, ``-1``, names) match anything.
    """
    shown = list(input_shape)
    if len(shown) < 2:
        raise ConfigError(f"{where} is {shown}: it needs a batch dimension first, e.g. [1, *sample_shape] = "
                          f"{[1, *ds.sample_shape]}")
    want = shown[1:]
    have = ds.sample_shape

    def fixed(d: Any) -> bool:
        return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0

    if len(want) == len(have) and all(not fixed(w) or int(w) == h for w, h in zip(want, have)):
        return
    base = f"data gives samples of shape {_shape_str(have)} but {where} is {shown}"
    fixes: list[str] = []
    if len(have) == 3 and len(want) == 3:
        c, h, w = want
        fixable = True
        if fixed(c) and int(c) != have[0]:
            if (have[0], int(c)) in ((1, 3), (3, 1)):
                fixes.append(f"data.channels: {int(c)}")
            else:
                fixable = False
        if (fixed(h) and int(h) != have[1]) or (fixed(w) and int(w) != have[2]):
            side = {int(d) for d in (h, w) if fixed(d)}
            if len(side) == 1:
                fixes.append(f"data.image_size: {side.pop()}")
            else:
                fixable = False
        # An NHWC array read as NCHW: (H, W, C) where (C, H, W) was wanted.
        if all(fixed(d) for d in want) and (have[2], have[0], have[1]) == tuple(int(d) for d in want):
            fixes, fixable = ["data.layout: NHWC"], True
        if not fixable:
            fixes = []
    if fixes:
        raise ConfigError(f"{base}: set {' and '.join(fixes)}, or fix {where}")
    raise ConfigError(f"{base}: fix {where} to [1, {', '.join(str(d) for d in have)}] or prepare the data to "
                      f"match it")


# -- sources ---------------------------------------------------------------------------------------


def _load_digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    return _build(x, y, cfg, where="data (digits)", unit_scale=16.0, layout="NCHW",
                  source_desc="digits (sklearn.datasets.load_digits: 8x8 handwritten digits, 10 classes)")


def _resolve(cfg: DataConfig, base_dir: Path) -> Path:
    assert cfg.path is not None
    p = Path(cfg.path).expanduser()
    full = p if p.is_absolute() else base_dir / p
    if not full.exists():
        rel = "" if p.is_absolute() else f" (relative paths resolve against the pipeline file's folder {base_dir})"
        raise ConfigError(f"data.path: '{cfg.path}' not found{rel}")
    return full


def _load_npz(cfg: DataConfig, base_dir: Path) -> Dataset:
    import zipfile

    path = _resolve(cfg, base_dir)
    if path.is_dir():
        raise ConfigError(f"data.path: '{cfg.path}' is a folder, but data.source: npz needs a .npz file "
                          f"(for a folder of images use data.source: image_folder)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ConfigError(f"data.path: '{cfg.path}' is not a readable .npz archive ({_one_line(e)}); save it "
                          f"with np.savez(path, {cfg.x_key}=x, {cfg.y_key}=y)") from None
    if isinstance(archive, np.ndarray):
        raise ConfigError(f"data.path: '{cfg.path}' holds a single .npy array, not a .npz archive; save it with "
                          f"np.savez(path, {cfg.x_key}=x, {cfg.y_key}=y)")
    with archive:
        keys = list(archive.files)
        present = ", ".join(repr(k) for k in keys) or "none"
        if cfg.x_key not in keys:
            raise ConfigError(f"data.x_key: '{cfg.path}' has no array '{cfg.x_key}' (arrays present: {present}); "
                              f"set data.x_key to the samples' name")
        y_wanted = "y_key" in cfg.model_fields_set
        if y_wanted and cfg.y_key not in keys:
            raise ConfigError(f"data.y_key: '{cfg.path}' has no array '{cfg.y_key}' (arrays present: {present}); "
                              f"set data.y_key to the labels' name, or remove it for unlabeled data")
        try:
            x = archive[cfg.x_key]
            y = archive[cfg.y_key] if cfg.y_key in keys else None
        except ValueError as e:  # object arrays need pickle, which we do not allow
            raise ConfigError(f"data.path: '{cfg.path}': cannot read its arrays ({_one_line(e)}); store plain "
                              f"numeric arrays") from None
    labels = f", labels '{cfg.y_key}'" if y is not None else ", no labels"
    return _build(x, y, cfg, where=f"data.path: '{cfg.path}' array '{cfg.x_key}'",
                  source_desc=f"npz {path} (samples '{cfg.x_key}'{labels})")


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in it:
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
    return sorted(out)


def _load_image_folder(cfg: DataConfig, base_dir: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    root = _resolve(cfg, base_dir)
    if not root.is_dir():
        raise ConfigError(f"data.path: '{cfg.path}' is not a folder; data.source: image_folder needs a folder "
                          f"with one sub-folder of images per class (or images directly, for unlabeled data)")
    if cfg.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels: {cfg.channels} is not supported for image folders; use 1 (grayscale) "
                          f"or 3 (RGB)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top_images = _image_files(root, recursive=False)
    classes: list[str] | None
    if class_dirs:
        if top_images:
            raise ConfigError(f"data.path: '{cfg.path}' mixes class sub-folders with loose images (e.g. "
                              f"'{top_images[0].name}'); move the images into class folders")
        classes = [d.name for d in class_dirs]
        files: list[Path] = []
        labels: list[int] = []
        for label, d in enumerate(class_dirs):
            found = _image_files(d, recursive=True)
            if not found:
                raise ConfigError(f"data.path: class folder '{d.name}' in '{cfg.path}' has no images "
                                  f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
            files += found
            labels += [label] * len(found)
        y_all: np.ndarray | None = np.asarray(labels, dtype=np.int64)
    else:
        classes = None
        files = top_images
        y_all = None
        if not files:
            raise ConfigError(f"data.path: '{cfg.path}' has no images ({', '.join(IMAGE_EXTENSIONS)}) and no "
                              f"class sub-folders")

    keep = _limit_indices(len(files), cfg.limit, cfg.seed)
    files = [files[i] for i in keep]
    y = y_all[keep] if y_all is not None else None

    def rel(p: Path) -> str:
        return str(p.relative_to(root))

    # First pass reads headers only: modes (for the channel count) and sizes.
    sizes: dict[tuple[int, int], Path] = {}
    gray = True
    for p in files:
        try:
            with Image.open(p) as im:
                sizes.setdefault(im.size, p)
                gray = gray and im.mode in ("1", "L", "LA", "I", "I;16", "F")
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"data.path: cannot read image '{rel(p)}' in '{cfg.path}' ({_one_line(e)}); remove "
                              f"or replace it") from None
    channels = cfg.channels or (1 if gray else 3)
    mode = "L" if channels == 1 else "RGB"
    if cfg.image_size is None and len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise ConfigError(f"data.image_size: images in '{cfg.path}' have different sizes ({s1[0]}x{s1[1]} in "
                          f"'{rel(p1)}', {s2[0]}x{s2[1]} in '{rel(p2)}'); set data.image_size to resize them "
                          f"all to one square size")
    target = (cfg.image_size, cfg.image_size) if cfg.image_size else None
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if target is not None and im.size != target:
                    im = im.resize(target, Image.BILINEAR)
                arrays.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"data.path: cannot read image '{rel(p)}' in '{cfg.path}' ({_one_line(e)}); remove "
                              f"or replace it") from None
    x = np.stack(arrays)  # (N, H, W) or (N, H, W, 3), uint8
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    what = f"{len(classes)} classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}" \
        if classes else "unlabeled"
    return _build(x, y, cfg, where=f"data.path: '{cfg.path}'", unit_scale=255.0, layout="NCHW",
                  num_classes=len(classes) if classes else None, classes=classes,
                  source_desc=f"image_folder {root} ({what})")


def _load_callable(cfg: DataConfig, base_dir: Path) -> Dataset:
    spec = cfg.callable or ""
    mod_name, _, attr = spec.partition(":")
    mod_name, attr = mod_name.strip(), attr.strip()
    folder = str(base_dir.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module
        raise ConfigError(f"data.callable: cannot import module '{mod_name}' ({type(e).__name__}: {_one_line(e)}); "
                          f"put {mod_name.replace('.', '/')}.py next to the pipeline file ({folder}) or on "
                          f"PYTHONPATH") from None
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"data.callable: module '{mod_name}' has no attribute '{attr}'; check the name "
                              f"after the ':' in '{spec}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"data.callable: '{spec}' is a {type(fn).__name__}, not a function")
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"data.callable: '{spec}' raised {type(e).__name__}: {_one_line(e)}") from None

    where = f"data.callable: '{spec}' returned"
    desc = f"callable {spec}"
    if isinstance(result, tuple) and len(result) == 2:
        x, y = result
    elif isinstance(result, Mapping):
        if cfg.x_key not in result:
            raise ConfigError(f"{where} a mapping without '{cfg.x_key}' (keys: {', '.join(map(str, result))}); "
                              f"return (x, y) or set data.x_key")
        x, y = result[cfg.x_key], result.get(cfg.y_key)
    elif isinstance(result, np.ndarray) or _is_tensor(result):
        x, y = result, None
    elif hasattr(result, "__len__") and hasattr(result, "__getitem__"):
        x, y = _from_pairs(result, cfg, where)
        # The limit was applied while reading; _build sees n <= limit and keeps everything.
    else:
        raise ConfigError(f"{where} a {type(result).__name__}; return a tuple (x, y) of arrays (y may be None) "
                          f"or an indexable dataset of (x, y) pairs")
    return _build(x, y, cfg, where=f"{where} x", source_desc=desc)


def _from_pairs(ds: Any, cfg: DataConfig, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        n = len(ds)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{where} a dataset whose len() failed ({type(e).__name__}: {_one_line(e)})") from None
    keep = _limit_indices(n, cfg.limit, cfg.seed)
    xs, ys = [], []
    for i in keep:
        try:
            item = ds[int(i)]
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{where} a dataset whose item {int(i)} raised {type(e).__name__}: "
                              f"{_one_line(e)}") from None
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            xi, yi = item[0], item[1]
        else:
            xi, yi = item, None
        xs.append(_to_numpy(xi))
        ys.append(None if yi is None else _to_numpy(yi))
    if not xs:
        raise ConfigError(f"{where} an empty dataset")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        first = xs[0].shape
        j = next(j for j, a in enumerate(xs) if a.shape != first)
        raise ConfigError(f"{where} samples of different shapes ({first} for item {int(keep[0])}, "
                          f"{xs[j].shape} for item {int(keep[j])}); make them equal (e.g. resize them to one "
                          f"size in the dataset)")
    has_y = [v is not None for v in ys]
    if any(has_y) and not all(has_y):
        raise ConfigError(f"{where} a dataset where some items have labels and some do not")
    y = np.stack([np.asarray(v).reshape(()) if np.asarray(v).size == 1 else np.asarray(v) for v in ys]) \
        if all(has_y) else None
    return np.stack(xs), y


# -- shared preparation ------------------------------------------------------------------------------


def _build(
    x: Any,
    y: Any,
    opts: ArrayOptions,
    *,
    where: str,
    source_desc: str,
    unit_scale: float | None = None,
    layout: str | None = None,
    num_classes: int | None = None,
    classes: list[str] | None = None,
) -> Dataset:
    """The one code path from raw arrays to a split, fingerprinted Dataset."""
    x = _to_numpy(x)
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"{where} has dtype {x.dtype}; samples must be numeric (bool, int or float)")
    if x.ndim < 2:
        raise ConfigError(f"{where} has shape {tuple(x.shape)}; expected (N, features), (N, H, W) or 4-D images "
                          f"with N samples first")
    n_all = int(x.shape[0])
    if n_all == 0:
        raise ConfigError(f"{where} has no samples (shape {tuple(x.shape)})")
    y_arr = _labels(y, n_all, where)
    if unit_scale is None:
        unit_scale = 255.0 if x.dtype == np.uint8 else 1.0

    keep = _limit_indices(n_all, opts.limit, opts.seed)
    if len(keep) < n_all:
        x = x[keep]
        y_arr = y_arr[keep] if y_arr is not None else None

    # Layout -> (N, C, H, W) for images; (N, F) stays.
    layout = layout or opts.layout
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim > 4:
        raise ConfigError(f"{where} has shape {tuple(x.shape)}; expected (N, features), (N, H, W), (N, C, H, W) "
                          f"or (N, H, W, C) with data.layout: NHWC")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{where} contains NaN or infinite values; clean the data first")

    if x.ndim == 2:
        for name in ("channels", "image_size"):
            if getattr(opts, name) is not None:
                raise ConfigError(f"data.{name}: the samples are not images (shape {_shape_str(x.shape[1:])}); "
                                  f"remove data.{name}")
    else:
        c = x.shape[1]
        want = opts.channels
        if want is not None and want != c:
            if (c, want) == (1, 3):
                x = np.repeat(x, 3, axis=1)
            elif (c, want) == (3, 1):
                x = x.mean(axis=1, keepdims=True, dtype=np.float32)
            else:
                raise ConfigError(f"data.channels: cannot turn {c}-channel samples (shape "
                                  f"{_shape_str(x.shape[1:])}) into {want}; only 1 -> 3 and 3 -> 1 are supported"
                                  + ("; if the channels are last, set data.layout: NHWC"
                                     if layout == "NCHW" and x.shape[-1] in (1, 3, 4) else ""))
        if opts.image_size is not None and x.shape[2:] != (opts.image_size, opts.image_size):
            x = _resize(x, opts.image_size)

    if opts.normalize != "none":
        if unit_scale != 1.0:
            x /= np.float32(unit_scale)
        if opts.normalize == "standard":
            x -= np.float32(0.5)
            x /= np.float32(0.5)
    x = np.ascontiguousarray(x, dtype="<f4")

    if y_arr is not None:
        inferred = int(y_arr.max()) + 1
        if num_classes is None:
            num_classes = inferred
        elif num_classes < inferred:
            raise ConfigError(f"{where}: labels go up to {inferred - 1} but num_classes is {num_classes}")
    else:
        num_classes = None if classes is None else num_classes

    splits = _make_splits(len(x), y_arr, opts.splits, opts.seed)
    fp = _fingerprint(x, y_arr, splits, opts)
    return Dataset(x=x, y=y_arr, splits=splits, num_classes=num_classes, fingerprint=fp,
                   source_desc=source_desc, classes=classes)


def _options(options: ArrayOptions | None, overrides: Mapping[str, Any]) -> ArrayOptions:
    base: dict[str, Any] = {"normalize": "none"}
    if options is not None:
        base = options.model_dump(include=set(ArrayOptions.model_fields))
    base.update(overrides)
    try:
        return ArrayOptions.model_validate(base)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "options"
        raise ConfigError(f"Dataset.from_arrays {loc}: {err['msg'].removeprefix('Value error, ')}") from None


def _labels(y: Any, n: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    y = _to_numpy(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? pass y.argmax(1))" if y.ndim == 2 else ""
        raise ConfigError(f"{where}: labels have shape {tuple(y.shape)}; expected class indices of shape "
                          f"({n},){hint}")
    if len(y) != n:
        raise ConfigError(f"{where}: {n} samples but {len(y)} labels; they must match")
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise ConfigError(f"{where}: labels must be integer class indices 0..K-1, got non-integer floats")
    elif y.dtype.kind not in "biu":
        raise ConfigError(f"{where}: labels have dtype {y.dtype}; map them to integer class indices 0..K-1")
    y = y.astype("<i8")
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where}: labels must be class indices 0..K-1, found {int(y.min())}")
    return np.ascontiguousarray(y)


def _is_tensor(a: Any) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def _to_numpy(a: Any) -> np.ndarray:
    if _is_tensor(a):
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot turn a {type(a).__name__} into an array ({_one_line(e)})") from None


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = np.empty((x.shape[0], x.shape[1], size, size), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, x.shape[0], 2048):
            t = torch.from_numpy(x[s:s + 2048])
            out[s:s + 2048] = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True).numpy()
    return out


def _limit_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``n`` samples, chosen by a shuffle seeded with ``seed``."""
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 1])
    return np.sort(rng.permutation(n)[:limit]).astype(np.int64)


def _split_counts(n: int, fr: SplitConfig) -> list[int]:
    """Sample counts for train, calibration, eval, unused: largest remainders, exact total n, eval >= 1."""
    shares = [fr.train, fr.calibration, fr.eval]
    total = sum(shares)
    if total > 1:
        shares = [s / total for s in shares]
    shares.append(max(0.0, 1.0 - sum(shares)))
    raw = [s * n for s in shares]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(4), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if counts[2] == 0:  # eval must not be empty
        donor = next(i for i in (3, 0, 1) if counts[i] > 0)
        counts[donor] -= 1
        counts[2] += 1
    return counts


def _make_splits(n: int, y: np.ndarray | None, fr: SplitConfig, seed: int) -> dict[str, np.ndarray]:
    counts = _split_counts(n, fr)
    rng = np.random.default_rng([int(seed), 2])
    order = rng.permutation(n)
    if y is not None:  # group by class, random within a class
        order = order[np.argsort(y[order], kind="stable")]
    # Deal the buckets evenly along `order`: bucket b's k-th slot sits at (k + 0.5) / count_b.
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c > 0])
    tags = np.concatenate([np.full(c, b, dtype=np.int64) for b, c in enumerate(counts) if c > 0])
    seq = tags[np.argsort(keys, kind="stable")]
    return {name: np.sort(order[seq == b]).astype(np.int64) for b, name in enumerate(SPLIT_NAMES)}


def _fingerprint(x: np.ndarray, y: np.ndarray | None, splits: dict[str, np.ndarray], opts: ArrayOptions) -> str:
    h = hashlib.sha256()
    h.update(_FINGERPRINT_VERSION.encode())

    def put(name: str, a: np.ndarray | None) -> None:
        if a is None:
            h.update(f"|{name}:none".encode())
            return
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"|{name}:{a.dtype.str}:{list(a.shape)}:".encode())
        h.update(a.data)

    put("x", x)
    put("y", y)
    for name in SPLIT_NAMES:
        put(f"split.{name}", np.asarray(splits[name], dtype="<i8"))
    settings = {k: v for k, v in opts.model_dump(include=set(_CONTENT_FIELDS)).items()}
    h.update(("|cfg:" + json.dumps(settings, sort_keys=True)).encode())
    return h.hexdigest()


def _shape_str(shape: Sequence[int]) -> str:
    dims = [int(d) for d in shape]
    return f"({dims[0]},)" if len(dims) == 1 else "(" + ", ".join(map(str, dims)) + ")"


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
