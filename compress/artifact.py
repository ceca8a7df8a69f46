"""The artifact: an immutable handle on a model passed between stages.

A torch artifact is a *recipe* (``module:callable`` + kwargs), a list of structural *edits* replayed on
the freshly built module (BN folding, pruning history, ...) and the weights as safetensors, so it can
be rebuilt without unpickling anything. An ONNX artifact is a ``model.onnx`` file. Every artifact lives
in its own folder with an ``artifact.json`` that records the sha256 of every file, so a corrupt cache
entry is detected instead of trusted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

MANIFEST = "artifact.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    format: str  # "torch" | "onnx"
    precision: str  # "float32" | "int8" | "int4" | "mixed"
    dir: Path
    files: dict[str, str]  # role -> file name inside dir
    file_hashes: dict[str, str]
    input_shape: tuple[int, ...]
    input_name: str = "input"
    #: every model input, ``[{"name", "shape", "dtype"}]`` (batch axis first); empty: one float32 input
    #: ``input_name`` of ``input_shape``
    inputs: tuple[dict[str, Any], ...] = ()
    recipe: dict[str, Any] | None = None  # {"callable": "pkg.mod:fn", "kwargs": {...}}
    edits: tuple[dict[str, Any], ...] = ()  # [{"replay": "pkg.mod:fn", "params": {...}}]
    producer: str = "baseline"
    parent: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"{self.format}/{'float' if self.precision == 'float32' else 'quantized'}"

    @property
    def hash(self) -> str:
        parts = {"format": self.format, "precision": self.precision, "files": self.file_hashes,
                 "recipe": self.recipe, "edits": list(self.edits), "input_shape": list(self.input_shape)}
        if self.inputs:
            parts["inputs"] = [dict(i) for i in self.inputs]
        return sha256_json(parts)

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        """Every input as ``{"name", "shape", "dtype"}`` (one float32 input when ``inputs`` is empty)."""
        if self.inputs:
            return [dict(i) for i in self.inputs]
        return [{"name": self.input_name, "shape": list(self.input_shape), "dtype": "float32"}]

    def path(self, role: str) -> Path:
        return self.dir / self.files[role]

    @property
    def size_bytes(self) -> int:
        return sum((self.dir / f).stat().st_size for f in self.files.values())

    # -- persistence ------------------------------------------------------------------------------
    def write_manifest(self) -> None:
        d = asdict(self)
        d["dir"] = None
        d["hash"] = self.hash
        (self.dir / MANIFEST).write_text(json.dumps(d, indent=2, default=str))

    @classmethod
    def read(cls, folder: Path, *, verify: bool = True) -> "Artifact":
        """Load an artifact folder; with ``verify`` raise ``ValueError`` if any file changed or is missing."""
        d = json.loads((folder / MANIFEST).read_text())
        d.pop("hash", None)
        d["dir"] = folder
        d["input_shape"] = tuple(d["input_shape"])
        d["edits"] = tuple(d["edits"])
        d["inputs"] = tuple(d.get("inputs") or ())
        art = cls(**d)
        if verify:
            for role, name in art.files.items():
                p = folder / name
                if not p.is_file() or sha256_file(p) != art.file_hashes[role]:
                    raise ValueError(f"artifact file {p} is missing or changed")
        return art

    def moved_to(self, folder: Path) -> "Artifact":
        return replace(self, dir=folder)


# --------------------------------------------------------------------------------------------------
# torch artifacts


def import_callable(spec: str, base_dir: Path | None = None):
    """Import ``module:attr`` (with ``base_dir`` on sys.path for the user's own modules)."""
    import importlib
    import sys

    module, _, attr = spec.partition(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    mod = importlib.import_module(module)
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def build_module(art: Artifact, base_dir: Path | None = None) -> "torch.nn.Module":
    """Rebuild the torch module of ``art``: recipe -> edits -> weights. No pickles are loaded."""
    from safetensors.torch import load_file

    if art.format != "torch" or art.recipe is None:
        raise ValueError(f"artifact {art.hash[:12]} is {art.format}, not a torch model")
    model = import_callable(art.recipe["callable"], base_dir)(**art.recipe.get("kwargs", {}))
    model.eval()
    for edit in art.edits:
        # an edit returns the replacement module (e.g. a traced GraphModule) or None if it edited in place
        model = import_callable(edit["replay"])(model, art.dir, **edit.get("params", {})) or model
    state = load_file(str(art.path("weights")))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def save_torch(
    model: "torch.nn.Module", folder: Path, *, like: Artifact, producer: str,
    edits: tuple[dict[str, Any], ...] | None = None, extra_files: dict[str, str] | None = None,
    facts: dict[str, Any] | None = None,
) -> Artifact:
    """Write ``model``'s weights to ``folder`` and return the artifact (recipe and edits from ``like``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    files = {"weights": WEIGHTS, **(extra_files or {})}
    art = Artifact(
        format="torch", precision="float32", dir=folder, files=files,
        file_hashes={r: sha256_file(folder / n) for r, n in files.items()},
        input_shape=like.input_shape, input_name=like.input_name, inputs=like.inputs, recipe=like.recipe,
        edits=like.edits if edits is None else edits, producer=producer, parent=like.hash, facts=facts or {},
    )
    art.write_manifest()
    return art


def onnx_external_files(onnx_path: Path) -> list[str]:
    """Paths (relative to the .onnx file's folder) of the external data files ``onnx_path`` references."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(onnx_path), load_external_data=False)
    found: list[str] = []

    def walk(graph) -> None:
        tensors = list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.HasField("t")]
        for t in tensors:
            if uses_external_data(t):
                loc = ExternalDataInfo(t).location
                if loc not in found:
                    found.append(loc)
        for n in graph.node:
            for a in n.attribute:
                if a.HasField("g"):
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    for loc in found:
        p = Path(loc)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"{onnx_path}: external data location '{loc}' must be a relative path inside the "
                             f"model's folder")
    return found


#: protobuf cannot serialize a message of 2 GiB or more: bigger ONNX models keep their weights in a side file
LARGE_ONNX_BYTES = 1_800_000_000


def is_large_onnx(path: Path) -> bool:
    """Whether the model at ``path`` (with its external data) is too big for one protobuf file."""
    files = [path, *(path.parent / loc for loc in onnx_external_files(path))]
    return sum(f.stat().st_size for f in files if f.is_file()) >= LARGE_ONNX_BYTES


def write_onnx(model: Any, path: Path) -> Path:
    """Save an ``onnx.ModelProto`` at ``path``; at 1.8 GB or more its tensors go to ``<name>.data`` beside it
    (what :func:`save_onnx` then records as part of the artifact)."""
    import onnx

    if model.ByteSize() >= LARGE_ONNX_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save(model, str(path))
    return path


def copy_onnx(src: Path, folder: Path) -> Path:
    """Copy an ONNX file *and every external data file it references* to ``folder/model.onnx`` (+ the data
    files at the same relative locations). Returns the new .onnx path."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for loc in onnx_external_files(src):
        target = folder / loc
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (src.parent / loc).is_file():
            raise FileNotFoundError(f"{src} references external data '{loc}', which is missing next to it")
        shutil.copyfile(src.parent / loc, target)
    shutil.copyfile(src, folder / ONNX)
    return folder / ONNX


def save_files(folder: Path, files: dict[str, str], *, fmt: str, like: Artifact, producer: str, precision: str,
               parent: str | None = None, facts: dict[str, Any] | None = None) -> Artifact:
    """Record files already written in ``folder`` (role -> name) as an artifact of format ``fmt``; sha256 of
    every file goes into the manifest and the hash."""
    art = Artifact(
        format=fmt, precision=precision, dir=folder, files=dict(files),
        file_hashes={r: sha256_file(folder / n) for r, n in files.items()}, input_shape=like.input_shape,
        input_name=like.input_name, inputs=like.inputs, producer=producer,
        parent=like.hash if parent is None else parent, facts=facts or {},
    )
    art.write_manifest()
    return art


def save_onnx(onnx_path: Path, folder: Path, *, like: Artifact, producer: str, precision: str,
              facts: dict[str, Any] | None = None) -> Artifact:
    """Record an ONNX file already written at ``folder/model.onnx`` as an artifact, together with every
    external data file it references (the artifact owns them all; sha256 covers them all)."""
    assert onnx_path.parent == folder and onnx_path.name == ONNX, onnx_path
    files = {"onnx": ONNX}
    for i, loc in enumerate(onnx_external_files(onnx_path)):
        if not (folder / loc).is_file():
            raise FileNotFoundError(f"{onnx_path} references external data '{loc}', which is missing")
        files[f"onnx_data{i}"] = loc
    return save_files(folder, files, fmt="onnx", like=like, producer=producer, precision=precision, facts=facts)
