"""Runtime / Session interfaces and the lazy runtime registry.

Light on purpose: no numpy, onnxruntime or torch at import time.  A concrete
runtime module is imported only when :func:`get_runtime` asks for it.

``target`` (see the lead's config) is any object with at least: ``name``,
``runtime``, ``threads`` (intra-op), ``inter_op_threads``, ``graph_optimization``
(``"disable" | "basic" | "extended" | "all"``), ``providers`` (list of str),
``batch_size`` and ``timing`` (a :class:`~compress.runtimes.timing.TimingPolicy`).
"""
from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Session", "Runtime", "RUNTIMES", "get_runtime", "available"]


class Session(ABC):
    """An opened model, ready to run inference on one input tensor."""

    input_name: str
    #: what the session actually runs with: provider(s), optimization level, threads, runtime version...
    info: dict[str, Any]

    @abstractmethod
    def infer(self, x: "np.ndarray") -> "np.ndarray":
        """Run the model on ``x``; return its first output."""

    def runner(self, x: "np.ndarray") -> Callable[[], object]:
        """A zero-argument callable doing one inference on ``x``, for the timing loop.

        Subclasses may override to pre-bind feeds and skip per-call overhead.
        """
        return lambda: self.infer(x)

    @abstractmethod
    def close(self) -> None:
        """Release the session's resources; calling it twice is harmless."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runtime(ABC):
    """A backend that can open ONNX files for a target."""

    name: ClassVar[str]

    @abstractmethod
    def open(self, onnx_path: Path, target: Any) -> Session:
        """Open ``onnx_path`` configured for ``target`` (threads, optimization, providers)."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the packages this runtime depends on."""

    @abstractmethod
    def optimized_op_counts(self, onnx_path: Path, target: Any) -> dict[str, int]:
        """Op types (-> count) in the graph *after* the runtime's own graph optimization."""


#: runtime name -> "module:Class", imported lazily by :func:`get_runtime`
RUNTIMES: dict[str, str] = {"onnxruntime": "compress.runtimes.onnxruntime:OnnxRuntime"}

#: runtime name -> the third-party module it needs (default: the runtime name)
_REQUIRES: dict[str, str] = {"onnxruntime": "onnxruntime"}


def available(name: str) -> bool:
    """Whether runtime ``name`` is registered and its package is installed (nothing is imported)."""
    if name not in RUNTIMES:
        return False
    try:
        return importlib.util.find_spec(_REQUIRES.get(name, name)) is not None
    except (ImportError, ValueError):
        return False


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime registered as ``name``, importing its module now."""
    if name not in RUNTIMES:
        raise ConfigError(
            f"unknown runtime {name!r}", hint=f"known runtimes: {', '.join(sorted(RUNTIMES))}"
        )
    if not available(name):
        pkg = _REQUIRES.get(name, name)
        raise ConfigError(f"runtime {name!r} is not installed", hint=f"pip install {pkg}")
    module_name, _, cls_name = RUNTIMES[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls()
