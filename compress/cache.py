"""The stage cache: finished work keyed by content, written atomically, verified on read.

Key = sha256 of (step kind, stage type, resolved config, input artifact hash, data fingerprint,
library versions). Artifacts live in ``<root>/artifacts/<key>/``; JSON results (evaluations,
measurements) in ``<root>/results/<key>.json``. A stage writes into a private temp folder that is
renamed into place only when it succeeds, so a crash never leaves a half-written entry, and a
corrupt entry (a file changed or missing) is detected, removed and recomputed.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from compress.artifact import MANIFEST, Artifact, sha256_json

_LIBS = ("torch", "torch-pruning", "onnx", "onnxruntime", "nncf", "numpy", "openvino")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for lib in _LIBS:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    from compress import __version__

    out["compress"] = __version__
    return out


def cache_key(**parts: Any) -> str:
    return sha256_json({**parts, "libs": library_versions()})


class Cache:
    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self.corrupt: list[str] = []

    def _art_dir(self, key: str) -> Path:
        return self.root / "artifacts" / key

    def get_artifact(self, key: str) -> Artifact | None:
        folder = self._art_dir(key)
        if not self.enabled or not (folder / MANIFEST).is_file():
            return None
        try:
            return Artifact.read(folder, verify=True)
        except (ValueError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            self.corrupt.append(f"{folder}: {e}")
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def build_artifact(self, key: str, build: Callable[[Path], Artifact]) -> Artifact:
        """Run ``build(work_dir)`` in a temp folder, then move the result into the cache atomically."""
        final = self._art_dir(key)
        tmp = self.root / "tmp" / f"{key[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            art = build(tmp)
            if art.dir != tmp:
                raise RuntimeError(f"stage wrote its artifact outside its work dir: {art.dir}")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # disabled cache or a concurrent run: keep the newest
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Artifact.read(final, verify=False)

    def get_json(self, key: str) -> Any | None:
        p = self.root / "results" / f"{key}.json"
        if not self.enabled or not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            self.corrupt.append(f"{p}: {e}")
            p.unlink(missing_ok=True)
            return None

    def put_json(self, key: str, obj: Any) -> None:
        p = self.root / "results" / f"{key}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(obj, default=str))
        os.replace(tmp, p)
