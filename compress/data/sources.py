"""Loading each ``data.source``: digits, npz, image_folder, callable; and the input-shape check."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from compress.data.config import IMAGE_EXTENSIONS, DataConfig
from compress.data.dataset import (
    Dataset,
    _build,
    _is_tensor,
    _limit_indices,
    _one_line,
    _shape_str,
    _to_numpy,
)
from compress.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Loading


def load_dataset(cfg: DataConfig, base_dir: Path | str, inputs: Sequence[Mapping[str, Any]] | None = None) -> Dataset:
    """Load, prepare and split the data a :class:`DataConfig` describes; every bad input is a ConfigError.

    ``inputs`` (the model's named inputs, ``[{name, shape, dtype}]``) makes npz and callable sources read one
    array per input name (``.npz`` keys / dict keys; labels under ``y_key`` or ``labels``), kept in their
    dtype. Without it (or with one float32 input) the data is one ``x`` array, prepared as usual.
    """
    base_dir = Path(base_dir)
    named = _named(inputs)
    if cfg.source == "digits":
        return _load_digits(cfg)
    if cfg.source == "npz":
        return _load_npz(cfg, base_dir, named)
    if cfg.source == "image_folder":
        return _load_image_folder(cfg, base_dir)
    if cfg.source == "callable":
        return _load_callable(cfg, base_dir, named)
    if cfg.source == "text":
        from compress.data.dataset import _build_named
        from compress.data.text import load_text

        arrays, y, classes, info = load_text(cfg.text, cfg.seed)
        desc = (f"text (docstrings of Python's stdlib packages {', '.join(cfg.text.packages)}: {info['sentences']} "
                f"sentences, word vocabulary {info['vocab']}, seq_len {cfg.text.seq_len})")
        if named and set(named) != set(arrays):
            raise ConfigError(f"data.source text gives inputs input_ids and attention_mask but model.inputs names "
                              f"{', '.join(named)}; name the model inputs input_ids and attention_mask")
        if named:
            arrays = {n: arrays[n] for n in named}  # in model.inputs order
        return _build_named(arrays, y, cfg, where="data (text)", source_desc=desc, classes=classes,
                            dtypes=named or None)
    raise ConfigError(f"data.source: unknown source '{cfg.source}'")  # pragma: no cover (Literal)


def _named(inputs: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """input name -> dtype when the model takes named inputs (several, or one that is not float32)."""
    if not inputs:
        return {}
    specs = [dict(i) if isinstance(i, Mapping) else i.model_dump() for i in inputs]
    if len(specs) == 1 and specs[0].get("dtype", "float32") == "float32":
        return {}
    return {str(s["name"]): str(s.get("dtype", "float32")) for s in specs}


def _named_from(mapping: Mapping[str, Any], named: dict[str, str], cfg: DataConfig, where: str, desc: str) -> Dataset:
    from compress.data.dataset import _build_named

    missing = [n for n in named if n not in mapping]
    if missing:
        raise ConfigError(f"{where} no array for model input(s) {', '.join(missing)} (has: "
                          f"{', '.join(map(str, mapping))}); name the arrays after model.inputs")
    ykey = cfg.y_key if cfg.y_key in mapping else next((k for k in Y_ALIASES if k in mapping), None)
    y = mapping[ykey] if ykey else None
    return _build_named({n: mapping[n] for n in named}, y, cfg, where=where, source_desc=desc, dtypes=named)


def check_named_inputs(ds: Dataset, specs: Sequence[Mapping[str, Any]], where: str = "model.inputs") -> None:
    """Raise a ConfigError when a named input's data does not have the declared sample shape."""
    assert ds.inputs is not None
    for i, spec in enumerate(specs):
        name = spec["name"]
        if name not in ds.inputs:
            raise ConfigError(f"{where}[{i}] '{name}': the data has no such input (it has "
                              f"{', '.join(ds.inputs)})")
        have = tuple(int(d) for d in ds.inputs[name].shape[1:])
        want = tuple(int(d) for d in list(spec["shape"])[1:])
        if have != want:
            raise ConfigError(f"{where}[{i}] '{name}': data gives samples of shape {_shape_str(have)} but the "
                              f"shape is {list(spec['shape'])}: fix it to [batch, {', '.join(map(str, have))}]")


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


def _load_npz(cfg: DataConfig, base_dir: Path, named: dict[str, str] | None = None) -> Dataset:
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
        if named:  # one array per model input, by name; labels under y_key or 'labels'
            try:
                arrays = {k: archive[k] for k in keys}
            except ValueError as e:
                raise ConfigError(f"data.path: '{cfg.path}': cannot read its arrays ({_one_line(e)}); store plain "
                                  f"numeric arrays") from None
            return _named_from(arrays, named, cfg, f"data.path: '{cfg.path}' has", f"npz {cfg.path} "
                               f"(inputs {', '.join(named)})")
        x_key = _npz_key(cfg, "x_key", keys, X_ALIASES)
        y_key = _npz_key(cfg, "y_key", keys, Y_ALIASES)
        if x_key not in keys:
            raise ConfigError(f"data.x_key: '{cfg.path}' has no array '{x_key}' (arrays present: {present}); "
                              f"set data.x_key to the samples' name")
        if "y_key" in cfg.model_fields_set and y_key not in keys:
            raise ConfigError(f"data.y_key: '{cfg.path}' has no array '{y_key}' (arrays present: {present}); "
                              f"set data.y_key to the labels' name, or remove it for unlabeled data")
        try:
            x = archive[x_key]
            y = archive[y_key] if y_key in keys else None
        except ValueError as e:  # object arrays need pickle, which we do not allow
            raise ConfigError(f"data.path: '{cfg.path}': cannot read its arrays ({_one_line(e)}); store plain "
                              f"numeric arrays") from None
    others = [k for k in keys if k not in (x_key, y_key)]
    if y is not None:
        labels = f", labels '{y_key}'"
    else:
        labels = (f", NO LABELS: no array '{cfg.y_key}' or {'/'.join(Y_ALIASES[1:])}; other arrays: "
                  f"{', '.join(others) or 'none'}; set data.y_key to use one as labels")
    return _build(x, y, cfg, where=f"data.path: '{cfg.path}' array '{x_key}'",
                  source_desc=f"npz {path} (samples '{x_key}'{labels})")


#: array names recognised in an .npz when data.x_key / data.y_key are not set (the first present wins)
X_ALIASES = ("x", "images", "inputs", "X", "data", "samples")
Y_ALIASES = ("y", "labels", "label", "targets", "target", "Y")


def _npz_key(cfg: DataConfig, field: str, keys: list[str], aliases: tuple[str, ...]) -> str:
    """The configured array name, or (when the field was left at its default) the first known alias present."""
    name = getattr(cfg, field)
    if field in cfg.model_fields_set or name in keys:
        return name
    return next((a for a in aliases if a in keys), name)


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


def _load_callable(cfg: DataConfig, base_dir: Path, named: dict[str, str] | None = None) -> Dataset:
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
    if named:
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Mapping):
            result = {**result[0], **({} if result[1] is None else {cfg.y_key: result[1]})}
        if not isinstance(result, Mapping):
            raise ConfigError(f"{where} a {type(result).__name__}; the model has named inputs "
                              f"({', '.join(named)}): return a dict of arrays named after them (labels under "
                              f"'{cfg.y_key}' or 'labels')")
        return _named_from(result, named, cfg, f"{where} a dict with", desc)
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
