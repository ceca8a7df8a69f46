"""The cache: finished work keyed by content, written atomically, verified on read, locked while built.

Key = sha256 of (step kind, stage type, resolved config, input artifact hash, data fingerprint,
library versions). Layout under the cache root::

    artifacts/<key>/          an artifact folder (artifact.json + its files) and ENTRY, the sha256 of
                              artifact.json; every file's sha256 is in artifact.json
    results/<key>.json        a JSON result (facts, evaluation, interleaved timing)
    results/<key>.npy         an array (evaluation outputs)
    checkpoints/<key>/        resume points of a killed training stage (sha256-checked before resuming)
    locks/<key>.lock          the run lock of a key (fcntl ``flock`` via ``filelock``)
    tmp/<key>-<id>            work in progress, renamed into place only when it succeeds

A result file starts with one header line ``compress-cache/1 sha256=<hex of the payload>`` followed by
the payload bytes. Anything unreadable or mismatched (a changed byte, a truncated file, non-UTF-8 JSON,
a missing or changed artifact file) is removed, named in one warning line and recomputed by the caller.

While a key is being computed its lock is held; a second run that needs the same key waits for it and
then reuses the entry instead of computing it again. The lock is an ``flock``: the kernel releases it
when its process dies (``kill -9`` included), so a dead run's lock is taken over at once; the
``tmp/`` folder it left behind is removed by ``compress cache gc`` or, once older than an hour, at the
start of the next run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from compress.artifact import MANIFEST, Artifact, sha256_file, sha256_json

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

_LIBS = ("torch", "torch-pruning", "onnx", "onnxruntime", "nncf", "numpy", "openvino")
_MAGIC = b"compress-cache/1 sha256="
ENTRY = "ENTRY"  # inside an artifact folder: sha256 of its artifact.json
TMP_MAX_AGE_S = 3600.0  # orphaned work folders older than this are removed at the start of a run
FILE_MODE = 0o644


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


class CorruptEntry(ValueError):
    """A cache entry failed verification (the message says why, in a few words)."""


def _seal(payload: bytes) -> bytes:
    return _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _unseal(data: bytes) -> bytes:
    head, sep, payload = data.partition(b"\n")
    if not sep or not head.startswith(_MAGIC):
        raise CorruptEntry("not a compress cache entry (no sha256 header)")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(_MAGIC):]:
        raise CorruptEntry("sha256 mismatch")
    return payload


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0


class Cache:
    def __init__(self, root: Path, enabled: bool = True, *, warn: Callable[[str], None] | None = None,
                 info: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.enabled = enabled
        self.corrupt: list[str] = []  # every entry found corrupt (and removed) by this instance
        self._warn = warn or (lambda msg: None)
        self._info = info or (lambda msg: None)

    # -- corruption ---------------------------------------------------------------------------------
    def _discard(self, path: Path, reason: str) -> None:
        """Remove a bad entry and say so in one line."""
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        self.corrupt.append(f"{path}: {reason}")
        self._warn(f"corrupt cache entry removed, recomputing: {path} ({reason})")

    # -- artifacts ----------------------------------------------------------------------------------
    def _art_dir(self, key: str) -> Path:
        return self.root / "artifacts" / key

    @staticmethod
    def _check_artifact(folder: Path) -> Artifact:
        """Read and verify an artifact folder; raise ``CorruptEntry`` saying what is wrong."""
        entry = folder / ENTRY
        try:
            want = entry.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise CorruptEntry(f"{ENTRY} missing or unreadable") from None
        if not (folder / MANIFEST).is_file() or sha256_file(folder / MANIFEST) != want:
            raise CorruptEntry(f"{MANIFEST} missing or changed")
        try:
            return Artifact.read(folder, verify=True)
        except (ValueError, OSError, KeyError, TypeError) as e:  # JSON and UnicodeDecodeError are ValueErrors
            raise CorruptEntry(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def get_artifact(self, key: str) -> Artifact | None:
        folder = self._art_dir(key)
        if not self.enabled or not folder.is_dir():
            return None
        try:
            art = self._check_artifact(folder)
        except CorruptEntry as e:
            self._discard(folder, str(e))
            return None
        _touch(folder)
        return art

    def build_artifact(self, key: str, build: Callable[[Path], Artifact], label: str = "") -> Artifact:
        """Run ``build(work_dir)`` in a temp folder under the key's lock, then move it into place atomically.

        If another run finished the same key while this one waited for the lock, its entry is reused.
        """
        final = self._art_dir(key)
        with self.lock(key, label):
            hit = self.get_artifact(key)
            if hit is not None:
                return hit
            tmp = self._tmp(key)
            tmp.mkdir(parents=True)
            try:
                art = build(tmp)
                if art.dir != tmp:
                    raise RuntimeError(f"stage wrote its artifact outside its work dir: {art.dir}")
                for p in tmp.rglob("*"):
                    if p.is_file():
                        p.chmod(FILE_MODE)  # safetensors writes 0600; cache files are shared like any other
                (tmp / ENTRY).write_text(sha256_file(tmp / MANIFEST) + "\n")
                (tmp / ENTRY).chmod(FILE_MODE)
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # --no-cache, or a corrupt entry: replace it
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return Artifact.read(final, verify=False)

    # -- results: JSON and arrays ---------------------------------------------------------------------
    def _result(self, key: str, suffix: str) -> Path:
        return self.root / "results" / f"{key}{suffix}"

    def _get_bytes(self, path: Path) -> bytes | None:
        if not self.enabled or not path.is_file():
            return None
        try:
            payload = _unseal(path.read_bytes())
        except OSError as e:
            self._discard(path, f"unreadable: {e.strerror or e}")
            return None
        except CorruptEntry as e:
            self._discard(path, str(e))
            return None
        _touch(path)
        return payload

    def _put_bytes(self, path: Path, payload: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(path.stem)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_seal(payload))
        tmp.chmod(FILE_MODE)
        os.replace(tmp, path)

    def get_json(self, key: str) -> Any | None:
        path = self._result(key, ".json")
        payload = self._get_bytes(path)
        if payload is None:
            return None
        try:
            return json.loads(payload.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError (sha256 matched: a writer bug)
            self._discard(path, f"not valid UTF-8 JSON: {type(e).__name__}")
            return None

    def put_json(self, key: str, obj: Any) -> None:
        self._put_bytes(self._result(key, ".json"), json.dumps(obj, default=str).encode("utf-8"))

    def get_array(self, key: str) -> "np.ndarray | None":
        import numpy as np

        path = self._result(key, ".npy")
        payload = self._get_bytes(path)
        if payload is None:
            return None
        try:
            return np.load(io.BytesIO(payload), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            self._discard(path, f"not a numpy array: {type(e).__name__}")
            return None

    def put_array(self, key: str, array: "np.ndarray") -> None:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        self._put_bytes(self._result(key, ".npy"), buf.getvalue())

    # -- locking --------------------------------------------------------------------------------------
    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    @contextmanager
    def lock(self, key: str, label: str = "") -> Iterator[None]:
        """Hold the run lock of ``key``; if another process holds it, say so once and wait."""
        from filelock import FileLock, Timeout

        path = self._lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), is_singleton=False)
        try:
            lock.acquire(timeout=0.2)
        except Timeout:
            owner = _read_owner(path)
            self._info(f"waiting for another compress run{f' (pid {owner})' if owner else ''} that is computing "
                       f"{label or key[:12]}; its result will be reused")
            lock.acquire()
        try:
            _write_owner(path)
            yield
        finally:
            lock.release()

    def locked(self, key: str) -> bool:
        """True while some process holds the run lock of ``key``."""
        from filelock import FileLock, Timeout

        path = self._lock_path(key)
        if not path.exists():
            return False
        lock = FileLock(str(path), is_singleton=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def _tmp(self, key: str) -> Path:
        return self.root / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"

    # -- maintenance ----------------------------------------------------------------------------------
    def clean_tmp(self, older_than_s: float = TMP_MAX_AGE_S) -> list[str]:
        """Remove work folders/files left by killed runs: older than ``older_than_s`` and not locked."""
        folder = self.root / "tmp"
        removed: list[str] = []
        if not folder.is_dir():
            return removed
        now = time.time()
        for p in sorted(folder.iterdir()):
            try:
                age = now - p.lstat().st_mtime
            except OSError:
                continue
            # result files are written unlocked and renamed within moments: leave young ones alone
            if age < (older_than_s if p.is_dir() else max(older_than_s, 60.0)) or self.locked(p.name.split("-")[0]):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(str(p))
        return removed

    def entries(self) -> list[tuple[Path, str, str]]:
        """Every entry as (path, key, kind) with kind in artifact | checkpoint | json | array."""
        out: list[tuple[Path, str, str]] = []
        arts = self.root / "artifacts"
        if arts.is_dir():
            out += [(p, p.name, "artifact") for p in sorted(arts.iterdir())]
        ckpt = self.root / "checkpoints"  # a killed training stage's resume points (verified by training.py)
        if ckpt.is_dir():
            out += [(p, p.name, "checkpoint") for p in sorted(ckpt.iterdir())]
        res = self.root / "results"
        if res.is_dir():
            for p in sorted(res.iterdir()):
                out.append((p, p.stem, {".json": "json", ".npy": "array"}.get(p.suffix, "unknown")))
        return out

    def verify(self) -> tuple[int, list[str]]:
        """Check every entry; remove (and name, one warning line each) those that fail. Returns (ok, bad)."""
        ok = 0
        before = len(self.corrupt)
        for path, key, kind in self.entries():
            if self.locked(key):  # being written right now
                ok += 1
                continue
            if kind == "artifact":
                try:
                    self._check_artifact(path)
                    ok += 1
                except CorruptEntry as e:
                    self._discard(path, str(e))
            elif kind == "checkpoint":
                ok += 1  # verified when training resumes from it
            elif kind == "unknown":
                self._discard(path, "not a cache entry")
            else:
                enabled, self.enabled = self.enabled, True
                try:
                    got = self.get_json(key) if kind == "json" else self.get_array(key)
                finally:
                    self.enabled = enabled
                ok += got is not None
        return ok, self.corrupt[before:]

    def gc(self, max_age_s: float | None = None, max_bytes: int | None = None,
           tmp_age_s: float = 0.0) -> GcResult:
        """Remove entries unused for ``max_age_s``, then the least recently used ones until the cache holds
        at most ``max_bytes``; and orphaned temp folders older than ``tmp_age_s``. Locked keys are kept."""
        res = GcResult()
        for p in self.clean_tmp(tmp_age_s):
            res.removed.append(p)
        now = time.time()
        live = []
        for path, key, _kind in self.entries():
            if self.locked(key):
                continue
            size = _size(path)
            mtime = path.stat().st_mtime
            if max_age_s is not None and now - mtime > max_age_s:
                _remove(path)
                res.removed.append(str(path))
                res.freed_bytes += size
            else:
                live.append((mtime, size, path))
        total = sum(s for _, s, _ in live)
        live.sort()  # oldest first
        while max_bytes is not None and live and total > max_bytes:
            _mtime, size, path = live.pop(0)
            _remove(path)
            res.removed.append(str(path))
            res.freed_bytes += size
            total -= size
        res.kept, res.kept_bytes = len(live), total
        return res


def _touch(path: Path) -> None:
    """Mark an entry as used (``gc`` removes the least recently used first)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _owner_path(lock_path: Path) -> Path:
    return lock_path.with_suffix(".owner")


def _write_owner(lock_path: Path) -> None:
    try:
        _owner_path(lock_path).write_text(f"{os.getpid()}\n")
    except OSError:
        pass


def _read_owner(lock_path: Path) -> str:
    try:
        return _owner_path(lock_path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
