"""The released model a release gate compares with (``gates: [{..., against: PATH}]``).

``against`` names a released ``.onnx`` file or a previous ``report.json`` whose deployable model still
exists (``model.onnx`` beside it, or the artifact path it records). The reference is never taken from
the old report's numbers: it becomes an ONNX artifact that the measurement service evaluates on *this*
run's data and times *interleaved with the candidate on this machine*. When the old report was measured
on a different CPU, ISA or runtime version, the report says so (its numbers are not compared).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compress.artifact import ONNX, Artifact, save_onnx, sha256_file
from compress.cache import cache_key
from compress.errors import ConfigError


def resolve(against: str, loaded, where: str) -> tuple[Path, dict[str, Any]]:
    """(the reference ONNX file, what we know about it: source, the environment its report was measured in)."""
    path = loaded.resolve(against)
    if not path.is_file():
        raise ConfigError(f"{where}: '{against}' not found (relative paths resolve against {loaded.base_dir})",
                          hint="point against: at a released model.onnx or a previous run's report.json")
    info: dict[str, Any] = {"against": against, "source": str(path)}
    if path.suffix.lower() != ".json":
        return path, info
    from pydantic import ValidationError

    from compress.report.model import Report

    try:
        old = Report.model_validate_json(path.read_text())
    except (ValidationError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: '{against}' is not a compress report.json ({str(e).splitlines()[0]})") from None
    candidates = [path.parent / ONNX, Path(old.records()[-1].artifact.onnx_path)]
    model = next((c for c in candidates if c.is_file()), None)
    if model is None:
        raise ConfigError(f"{where}: the model of report '{against}' no longer exists (looked for "
                          f"{', '.join(map(str, candidates))})", hint="keep the run's model.onnx beside its report.json")
    info.update(model=str(model), environment=old.environment, created_at=old.created_at,
                pipeline=old.pipeline_name)
    return model, info


def load(against: str, loaded, cache, like: Artifact, where: str) -> tuple[Artifact, dict[str, Any]]:
    """The reference as a cached ONNX artifact (keyed by the file's content) and its info."""
    path, info = resolve(against, loaded, where)
    key = cache_key(step="reference", onnx=sha256_file(path))
    art = cache.get_artifact(key)
    if art is None:
        def build(wd: Path) -> Artifact:
            shutil.copyfile(path, wd / ONNX)
            stub = Artifact(format="onnx", precision="float32", dir=wd, files={}, file_hashes={},
                            input_shape=like.input_shape, input_name=like.input_name)  # no parent: facts of its own
            return save_onnx(wd / ONNX, wd, like=stub, producer=f"release:{against}", precision=_precision(path))

        art = cache.build_artifact(key, build, f"the reference {against}")
    return art, info


def _precision(path: Path) -> str:
    from compress.onnx_graph import load, op_counts

    ops = set(op_counts(load(path).graph))
    if ops & {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}:
        return "int8"
    return "int4" if "MatMulNBits" in ops else "float32"


def machine_note(info: dict[str, Any], here: dict[str, Any]) -> str | None:
    """A warning when the reference's report was measured on a different kind of machine."""
    from compress.runtimes.environment import differences

    env = info.get("environment")
    if not env:
        return None
    diff = differences(env, here)
    if not diff:
        return None
    return (f"reference '{info['against']}' was measured on a different machine ({'; '.join(diff)}); its recorded "
            f"numbers are not compared: the model was re-evaluated and re-timed here, interleaved with the candidate")
