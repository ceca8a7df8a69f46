"""Build the baseline artifact from ``model:``: a zoo name, the user's ``module:callable`` (+ weights),
or an ``.onnx`` file; optionally train it once on ``data.train`` (cached like any stage).

Weights files are read with ``torch.load(..., weights_only=True)`` (no arbitrary pickles) or
safetensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compress.artifact import ONNX, Artifact, copy_onnx, import_callable, save_onnx, save_torch, sha256_file
from compress.errors import ConfigError, StageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compress.config import LoadedConfig
    from compress.data import Dataset


def recipe(loaded: "LoadedConfig") -> dict[str, Any]:
    from compress import zoo

    m = loaded.config.model
    return {"callable": zoo.ZOO[m.zoo] if m.zoo else m.callable, "kwargs": dict(m.kwargs)}


def import_builder(loaded: "LoadedConfig", rec: dict[str, Any]) -> Callable[..., Any]:
    """Import the model's ``module:callable`` (ConfigError naming model.callable when it does not import)."""
    where = loaded.where("model", "zoo" if loaded.config.model.zoo else "callable")
    try:
        fn = import_callable(rec["callable"], loaded.base_dir)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or the module raised while importing
        raise ConfigError(f"{where} model.callable: cannot import '{rec['callable']}': {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                          hint=f"the module must be importable from {loaded.base_dir} or installed") from e
    if not callable(fn):
        raise ConfigError(f"{where} model.callable: '{rec['callable']}' is a {type(fn).__name__}, not a function")
    return fn


def _instantiate(loaded: "LoadedConfig", rec: dict[str, Any], meta: bool = False) -> "torch.nn.Module":
    """Build the model (``meta``: on the meta device, shapes only and no memory, for checks)."""
    import contextlib

    import torch

    where = loaded.where("model", "zoo" if loaded.config.model.zoo else "callable")
    fn = import_builder(loaded, rec)
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = fn(**rec["kwargs"])
    except Exception as e:  # noqa: BLE001 - the user's builder raised: say so in one line
        if meta:  # a builder that needs real tensors (e.g. numpy init): build it for real
            return _instantiate(loaded, rec)
        raise ConfigError(f"{where} model: '{rec['callable']}' raised {type(e).__name__}: {e}",
                          hint="check model.kwargs") from e
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{where} model: '{rec['callable']}' returned {type(model).__name__}, not torch.nn.Module")
    return model.eval()


def read_state(path: Path, where: str) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling arbitrary objects."""
    import pickle

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if _looks_like_checkpoint(path):  # torch refused a pickled object: never advise weights_only=False
            raise ConfigError(f"{where} model.weights: '{path}' holds pickled Python objects besides tensors, "
                              f"which compress never unpickles (that could run arbitrary code)",
                              hint="save only the state dict: torch.save(model.state_dict(), path), or use "
                              "a .safetensors file") from None
        raise ConfigError(f"{where} model.weights: '{path}' is not a torch checkpoint (not a pickle or zip file)",
                          hint="give a state dict saved with torch.save(model.state_dict()) or a .safetensors "
                          "file") from None
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or foreign files
        raise ConfigError(f"{where} model.weights: cannot read '{path}': {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                          hint="give a state dict saved with torch.save(model.state_dict()) or a .safetensors "
                          "file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{where} model.weights: '{path}' holds a {type(state).__name__}, not a state dict")
    return state


def _looks_like_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (or, with the legacy format, a pickle starting with 0x80)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def check_state(own: dict[str, Any], state: dict[str, Any], path: Path, where: str) -> None:
    """Raise a ConfigError when ``state`` (a state dict) does not fit ``own`` (the model's state dict)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k, v in state.items() if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad:
            parts.append(f"{len(bad)} with the wrong shape (e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs "
                         f"{tuple(own[bad[0]].shape)})")
        raise ConfigError(f"{where} model.weights: '{path.name}' does not match the model: {'; '.join(parts)}",
                          hint="check model.kwargs (e.g. num_classes) or the weights file")


def load_weights(model: "torch.nn.Module", path: Path, where: str) -> None:
    state = read_state(path, where)
    check_state(model.state_dict(), state, path, where)
    model.load_state_dict(state, strict=True)


def baseline_key_parts(loaded: "LoadedConfig", data_fp: str) -> dict[str, Any]:
    m = loaded.config.model
    parts: dict[str, Any] = {"step": "baseline", "input_shape": m.input_shape}
    if m.inputs is not None:
        parts["inputs"] = m.input_specs()
    if m.onnx:
        parts["onnx"] = sha256_file(loaded.resolve(m.onnx))
        return parts
    parts["recipe"] = recipe(loaded)
    if m.weights:
        parts["weights"] = sha256_file(loaded.resolve(m.weights))
    elif m.train:
        parts["train"] = m.train.model_dump(mode="json")
        parts["data"] = data_fp
    parts["recalibrate_bn"] = m.recalibrate_bn
    if m.recalibrate_bn:
        parts["data"] = data_fp
    return parts


def build_baseline(loaded: "LoadedConfig", dataset: "Dataset", work_dir: Path,
                   progress: Callable[[str, int], Any], log: Callable[[str], None],
                   checkpoint: Path | None = None) -> Artifact:
    """The baseline artifact: the user's ONNX, weights or callable, or the model trained on ``model.train``.
    ``checkpoint`` (a file that survives a killed run): training saves a resume point there after every epoch,
    and a later call with the same arguments resumes from it (to the same weights) instead of starting over."""
    m = loaded.config.model
    shape = tuple(m.input_shape)
    stub = Artifact(format="onnx" if m.onnx else "torch", precision="float32", dir=work_dir, files={},
                    file_hashes={}, input_shape=shape, input_name=m.input_name,
                    inputs=tuple(m.input_specs()) if m.inputs is not None else (),
                    recipe=None if m.onnx else recipe(loaded))
    if m.onnx:  # the .onnx and every external data file it references
        try:
            copy_onnx(loaded.resolve(m.onnx), work_dir)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{loaded.where('model', 'onnx')} model.onnx: {e}") from e
        return save_onnx(work_dir / ONNX, work_dir, like=stub, producer="baseline", precision="float32")
    import torch

    torch.manual_seed(m.train.seed if m.train else 0)  # weight init is part of the recipe: make it repeatable
    model = _instantiate(loaded, stub.recipe)
    facts: dict[str, Any] = {}
    if m.weights:
        load_weights(model, loaded.resolve(m.weights), loaded.where("model", "weights"))
        facts["weights"] = m.weights
    elif m.train:
        from compress.training import accuracy, steps_per_epoch, total_steps, train

        n_train = len(dataset.splits["train"])
        steps = total_steps(m.train, n_train)
        try:
            with progress("training baseline", steps) as bar:
                hist = train(model, dataset, m.train, progress=lambda s, t, info: bar.update(1, **info),
                             checkpoint=checkpoint,
                             checkpoint_every=steps_per_epoch(m.train, n_train) if checkpoint is not None else 0)
        except ValueError as e:
            raise ConfigError(f"{loaded.where('model', 'train')} model.train: {e}") from e
        except Exception as e:  # noqa: BLE001
            raise StageError(f"training the baseline failed: {type(e).__name__}: {e}") from e
        if dataset.y is not None and len(dataset.splits["eval"]):
            hist["eval_accuracy_torch"] = round(accuracy(model, dataset, "eval"), 3)
        facts["training"] = hist
        log(f"trained baseline: {hist['steps']} steps in {hist['seconds']} s"
            + (f", eval accuracy {hist['eval_accuracy_torch']}% (torch)" if "eval_accuracy_torch" in hist else ""))
    elif m.callable:  # the user's builder may load its own pretrained weights: not ours to call random
        facts["weights"] = f"as built by {m.callable}"
    else:
        facts["random_weights"] = True
    if m.recalibrate_bn:
        from compress.training import recalibrate_bn

        recalibrate_bn(model, dataset)
        facts["bn_recalibrated"] = True
    _check_forward(model, stub, loaded)
    return save_torch(model, work_dir, like=stub, producer="baseline", facts=facts)


def _check_forward(model: "torch.nn.Module", art: Artifact, loaded: "LoadedConfig") -> None:
    import torch

    from compress.export import example_inputs

    field = "inputs" if loaded.config.model.inputs is not None else "input_shape"
    try:
        with torch.no_grad():
            out = model(*example_inputs(art.input_specs))
    except Exception as e:  # noqa: BLE001
        shown = [(i["name"], i["shape"], i["dtype"]) for i in art.input_specs]
        raise ConfigError(f"{loaded.where('model', field)} model.{field} {shown}: the model fails on inputs of "
                          f"these shapes: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{loaded.where('model')} model: forward() must return one tensor, got {type(out).__name__}")
