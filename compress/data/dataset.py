"""The prepared dataset: arrays, disjoint seeded splits, fingerprint, and the one preparation path
(limit, layout, channels, resize, normalize, labels, splits) every source goes through."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from pydantic import ValidationError

from compress.data.config import (
    _CONTENT_FIELDS,
    _FINGERPRINT_VERSION,
    SPLIT_NAMES,
    ArrayOptions,
    SplitConfig,
)
from compress.errors import ConfigError

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
    #: named model inputs (multi-input or integer models): input name -> array, first axis N, dtypes kept
    #: as given (integer inputs are never cast or normalised); ``x`` is then the first of them
    inputs: dict[str, np.ndarray] | None = field(default=None)

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

    @property
    def input_names(self) -> list[str] | None:
        """Names of the model inputs the data feeds (``None``: one unnamed float input, ``x``)."""
        return list(self.inputs) if self.inputs is not None else None

    def feeds(self, idx: Any) -> "np.ndarray | dict[str, np.ndarray]":
        """The model input(s) of samples ``idx``: ``x[idx]``, or ``{name: array[idx]}`` for named inputs."""
        if self.inputs is not None:
            return {k: v[idx] for k, v in self.inputs.items()}
        return self.x[idx]

    def split_feeds(self, name: str) -> tuple["np.ndarray | dict[str, np.ndarray]", np.ndarray | None]:
        """Like :meth:`split`, with named inputs as a dict (what a runtime session takes)."""
        idx = self.indices(name)
        return self.feeds(idx), (self.y[idx] if self.y is not None else None)

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
        return self.feeds(self.calibration_indices(n, seed))

    def batches(self, name: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Consecutive ``(x, y)`` batches of a split, in index order (not shuffled); the last may be short."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        idx = self.indices(name)
        for start in range(0, len(idx), int(batch_size)):
            part = idx[start:start + int(batch_size)]
            yield self.feeds(part), (self.y[part] if self.y is not None else None)

    def input_range(self) -> dict[str, float]:
        """min, max, mean and std of the prepared samples (what the model will see)."""
        x = self.x
        return {"min": round(float(x.min()), 6), "max": round(float(x.max()), 6),
                "mean": round(float(x.mean(dtype=np.float64)), 6), "std": round(float(x.std(dtype=np.float64)), 6)}

    def split_warnings(self, *, calibrates: bool, minimum: int = 100) -> list[str]:
        """Why a split is too small to trust (calibration only when a stage calibrates from it)."""
        out = []
        sizes = {k: int(len(v)) for k, v in self.splits.items()}
        for name, key in (("calibration", "calibration"), ("evaluation", "eval")):
            if name == "calibration" and not calibrates:
                continue
            if sizes[key] < minimum:
                out.append(f"the {name} split has only {sizes[key]} sample(s) of {len(self)} (< {minimum}): "
                           f"{'quantization ranges' if key == 'calibration' else 'accuracy and fidelity'} from so "
                           f"few are noisy; raise data.splits.{key} (now {sizes[key] / max(len(self), 1):.2f} of "
                           f"the data), lower data.splits.train if nothing trains, or add samples")
        return out

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
            "input_range": self.input_range(),
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.inputs is not None:
            out["inputs"] = [{"name": k, "shape": list(v.shape[1:]), "dtype": str(v.dtype)}
                             for k, v in self.inputs.items()]
        return out


def n_samples(feeds: "np.ndarray | Mapping[str, np.ndarray]") -> int:
    """Number of samples in an array or a dict of named arrays."""
    if isinstance(feeds, Mapping):
        return int(len(next(iter(feeds.values()))))
    return int(len(feeds))


def take(feeds: "np.ndarray | Mapping[str, np.ndarray]", idx: Any) -> "np.ndarray | dict[str, np.ndarray]":
    """``feeds[idx]`` for an array or each array of a dict (contiguous, dtypes kept)."""
    if isinstance(feeds, Mapping):
        return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}
    return np.ascontiguousarray(feeds[idx])


def repeat_to(feeds: "np.ndarray | Mapping[str, np.ndarray]", n: int) -> "np.ndarray | dict[str, np.ndarray]":
    """The first ``n`` samples, cycling through ``feeds`` when it has fewer (a batch for timing)."""
    m = n_samples(feeds)
    return take(feeds, np.arange(n) % m)


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

    if opts.normalize not in (None, "none"):
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


def _build_named(
    arrays: Mapping[str, Any],
    y: Any,
    opts: ArrayOptions,
    *,
    where: str,
    source_desc: str,
    dtypes: Mapping[str, str] | None = None,
    classes: list[str] | None = None,
) -> Dataset:
    """Named inputs (multi-input or integer models) -> Dataset. Only ``limit`` and the splits apply: no
    layout, resize or normalisation, and integer arrays are never cast to float. ``dtypes`` (input name ->
    declared dtype) checks each array's kind and converts within it (int32 -> int64, float64 -> float32)."""
    if not arrays:
        raise ConfigError(f"{where}: no input arrays")
    xs = {str(k): _to_numpy(v) for k, v in arrays.items()}
    sizes = {k: int(v.shape[0]) if v.ndim else 0 for k, v in xs.items()}
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"{where}: the inputs have different sample counts "
                          f"({', '.join(f'{k}: {n}' for k, n in sizes.items())}); they must match")
    n_all = next(iter(sizes.values()))
    if n_all == 0:
        raise ConfigError(f"{where}: no samples")
    for k, v in xs.items():
        want = (dtypes or {}).get(k)
        if v.dtype.kind not in "biuf":
            raise ConfigError(f"{where}: input '{k}' has dtype {v.dtype}; inputs must be numeric or bool")
        if want is not None:
            wk = np.dtype(want).kind
            ok = (wk == v.dtype.kind) or (wk in "iu" and v.dtype.kind in "iu") or (wk == "b" and v.dtype.kind in "iub"
                                                                                   and set(np.unique(v)) <= {0, 1})
            if not ok:
                raise ConfigError(f"{where}: input '{k}' is {v.dtype} but model.inputs declares {want}; give "
                                  f"{want} data (integer inputs are never cast from float)")
            xs[k] = np.ascontiguousarray(v, dtype=np.dtype(want).newbyteorder("<"))
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ConfigError(f"{where}: input '{k}' contains NaN or infinite values")
    y_arr = _labels(y, n_all, where)
    keep = _limit_indices(n_all, opts.limit, opts.seed)
    if len(keep) < n_all:
        xs = {k: v[keep] for k, v in xs.items()}
        y_arr = y_arr[keep] if y_arr is not None else None
    xs = {k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")) for k, v in xs.items()}
    num_classes = int(y_arr.max()) + 1 if y_arr is not None else None
    if classes is not None and num_classes is not None:
        num_classes = max(num_classes, len(classes))
    splits = _make_splits(n_all if len(keep) == n_all else len(keep), y_arr, opts.splits, opts.seed)
    h = hashlib.sha256(_fingerprint(next(iter(xs.values())), y_arr, splits, opts).encode())
    for k, v in xs.items():
        h.update(f"|{k}:{v.dtype.str}:{list(v.shape)}:".encode())
        h.update(v.data)
    first = next(iter(xs.values()))
    return Dataset(x=first, y=y_arr, splits=splits, num_classes=num_classes, fingerprint=h.hexdigest(),
                   source_desc=source_desc, classes=classes, inputs=xs)


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
