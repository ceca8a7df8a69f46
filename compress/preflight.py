"""Every check that needs no training, run by ``compress validate`` and first thing by ``compress run``.

In order: input files exist; output folders are writable; the data opens and has the right keys, shape,
dtype, finite values and (when a gate or training needs them) labels; the model's callable imports;
weights fit the model's state-dict shapes (the model is built on torch's meta device: no memory, no
init); an ONNX model parses and passes the ONNX checker; a calibration set reads. Each problem is a
``ConfigError`` (exit 2) naming the file and the field.

torch is imported only when the pipeline names a callable or weights (a zoo model without weights, or an
ONNX model, is checked without it), so ``compress validate`` stays light.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from compress.config import LoadedConfig, check_paths
from compress.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from compress.data import Dataset

LABEL_METRICS = ("accuracy", "accuracy_drop")


@dataclass
class Checked:
    """What preflight found: the loaded data (reused by the run) and notes worth one line each."""

    dataset: "Dataset"
    out_dir: Path
    notes: list[str] = field(default_factory=list)


def output_dir(loaded: LoadedConfig, override: str | None = None) -> Path:
    return Path(override or loaded.config.output.dir or Path("runs") / loaded.name)


def preflight(loaded: LoadedConfig, out_override: str | None = None, *, create: bool = False) -> Checked:
    """Run every check; ``create`` (the run) makes the output folders and writes a probe file in each."""
    from compress.data import check_input_shape, check_named_inputs, load_dataset

    cfg = loaded.config
    check_paths(loaded)
    out = output_dir(loaded, out_override)
    out_field = "-o/--output" if out_override else ("output.dir" if cfg.output.dir else "output.dir (default)")
    check_writable(out, out_field, loaded.where("output", "dir") if cfg.output.dir and not out_override
                   else loaded.display, create)
    check_writable(Path(cfg.output.cache_dir), "output.cache_dir",
                   loaded.where("output", "cache_dir") if "cache_dir" in cfg.output.model_fields_set
                   else loaded.display, create)
    model = cfg.model
    inputs = model.input_specs() if model.named_inputs() else None
    # validate skips the resize (torch's antialiased bilinear, the one data step that needs torch) and
    # checks the shape the resize will give; the run loads the data as it is used
    resize_later = not create and cfg.data.image_size is not None and inputs is None
    ds = load_dataset(cfg.data.model_copy(update={"image_size": None}) if resize_later else cfg.data,
                      loaded.base_dir, inputs=inputs)
    if resize_later and ds.x.ndim != 4:  # not images: let the real load say why image_size does not apply
        ds = load_dataset(cfg.data, loaded.base_dir, inputs=inputs)
    if ds.inputs is None:
        side = cfg.data.image_size
        check_input_shape(SimpleNamespace(sample_shape=(ds.sample_shape[0], side, side)) if resize_later else ds,
                          model.input_shape)
    else:  # named inputs: each array against its model.inputs entry
        check_named_inputs(ds, model.input_specs())
    checked = Checked(dataset=ds, out_dir=out)
    _check_labels(loaded, ds, checked)
    _check_model(loaded)
    if cfg.calibration.path:
        from compress.calibration import read_calibration_set

        read_calibration_set(cfg.calibration.path, loaded.base_dir)
    return checked


def check_writable(path: Path, field_name: str, where: str, create: bool) -> None:
    """``path`` is (or can be made) a folder we can write into."""
    def fail(why: str) -> None:
        raise ConfigError(f"{where} {field_name}: cannot write to '{path}': {why}",
                          hint="choose another folder or fix its permissions")

    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".compress-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            fail(e.strerror or str(e))
        return
    p = path.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        fail(f"'{p}' is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        fail(f"'{p}' is not writable")


def _check_labels(loaded: LoadedConfig, ds: "Dataset", checked: Checked) -> None:
    cfg = loaded.config
    if ds.y is not None:
        return
    for i, g in enumerate(cfg.gates):
        if g.metric in LABEL_METRICS:
            raise ConfigError(f"{loaded.where('gates', i, 'metric')} gates[{i}].metric: '{g.metric}' needs labels, "
                              f"but the data has none ({ds.source_desc})",
                              hint="give the data labels (data.y_key for .npz) or gate on agreement/cosine")
    if cfg.model.train is not None:
        raise ConfigError(f"{loaded.where('model', 'train')} model.train: training needs labels, but the data has "
                          f"none ({ds.source_desc})", hint="give the data labels (data.y_key for .npz)")
    checked.notes.append(f"the data has no labels, so accuracy is not measured (only agreement and cosine vs the "
                         f"baseline): {ds.source_desc}")


def _check_model(loaded: LoadedConfig) -> None:
    m = loaded.config.model
    if m.onnx:
        check_onnx(loaded.resolve(m.onnx), f"{loaded.where('model', 'onnx')} model.onnx")
        return
    if m.zoo and not m.weights:
        return  # the zoo's own builders; building one would import torch
    from compress.baseline import _instantiate, check_state, import_builder, read_state, recipe

    rec = recipe(loaded)
    if not m.weights:
        import_builder(loaded, rec)
        return
    where = loaded.where("model", "weights")
    path = loaded.resolve(m.weights)
    state = read_state(path, where)
    check_state(_instantiate(loaded, rec, meta=True).state_dict(), state, path, where)


def check_onnx(path: Path, label: str) -> None:
    """Parse ``path`` as an ONNX model and run the ONNX checker; one line naming the file on failure."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError, ValidationError, OSError...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{label}: '{path}' is not a valid ONNX model ({type(e).__name__}: {msg[:160]})",
                          hint="re-export it, e.g. with torch.onnx.export") from None
