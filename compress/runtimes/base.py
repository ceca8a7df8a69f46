"""Runtime / Session interfaces, typed target options and the lazy runtime registry.

A *runtime* is a plug-in: a :class:`Runtime` subclass with a ``name``, the artifact ``formats`` it runs
(``onnx``, ``torch``), and its own options model ``Target`` (a :class:`TargetBase` subclass whose
``runtime`` field is ``Literal[name]``). A pipeline's ``targets:`` entry is validated against the union
of every registered runtime's ``Target``, discriminated on ``runtime``, so each runtime rejects keys it
does not know. Built-in runtimes are listed in :data:`BUILTIN`; third-party ones register under the
``compress.runtimes`` entry-point group (``[project.entry-points."compress.runtimes"]``, name -> the
``module:Class`` of a Runtime).

Light on purpose: runtime *modules* import their library (onnxruntime, openvino, torch) only inside
methods, so that config validation can read every ``Target`` model without loading them.
"""
from __future__ import annotations

import difflib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field

from compress.errors import ConfigError
from compress.runtimes.timing import TimingPolicy

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.artifact import Artifact

__all__ = ["Session", "Runtime", "TargetBase", "RUNTIMES", "BUILTIN", "registry", "runtime_class",
           "get_runtime", "available", "Feeds", "as_feeds"]

#: one model input: an array, or a mapping input name -> array
Feeds = Union["np.ndarray", Mapping[str, "np.ndarray"]]


class TargetBase(BaseModel):
    """What every target has, whatever its runtime. A runtime's ``Target`` adds its own options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Target name (report column group, gate `target:`).")
    runtime: str = Field(..., description="A registered runtime (see `compress stages`).")
    batch_size: int = Field(1, ge=1, description="Batch size for latency.")
    timing: TimingPolicy = Field(default_factory=TimingPolicy)

    def options(self) -> dict[str, Any]:
        """The runtime options only (what changes how the model runs; not name, batch size or timing)."""
        return self.model_dump(mode="json", exclude={"name", "batch_size", "timing"})


def as_feeds(x: Feeds, names: list[str]) -> dict[str, "np.ndarray"]:
    """``x`` as ``{input name: array}``: a mapping passes through (checked), an array feeds the only input."""
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        if missing:
            raise ConfigError(f"the model needs input(s) {', '.join(missing)} but the data gives "
                              f"{', '.join(x) or 'none'}", hint="name the data's arrays after the model inputs "
                              "(model.inputs)")
        return {n: x[n] for n in names}
    if len(names) != 1:
        raise ConfigError(f"the model has {len(names)} inputs ({', '.join(names)}) but the data gives one array",
                          hint="give one named array per input (model.inputs)")
    return {names[0]: x}


class Session(ABC):
    """An opened model, ready to run inference. ``inputs``: ``[{name, shape, dtype}]`` as the runtime sees them."""

    inputs: list[dict[str, Any]]
    #: what the session actually runs with: provider(s), precision, threads, runtime version...
    info: dict[str, Any]

    @property
    def input_name(self) -> str:
        return self.inputs[0]["name"]

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @abstractmethod
    def infer(self, x: Feeds) -> "np.ndarray":
        """Run the model on ``x`` (an array for a one-input model, or name -> array); return its first output."""

    def runner(self, x: Feeds) -> Callable[[], object]:
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
    """A backend that runs artifacts of ``formats`` for a target of type ``Target``."""

    name: ClassVar[str]
    #: the options model of this runtime's targets (``runtime: Literal[name]``, ``extra="forbid"``)
    Target: ClassVar[type[TargetBase]]
    #: artifact formats it runs; others are "n/a" on its targets (not an error)
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    #: the Python module that must be importable for this runtime to be available
    requires: ClassVar[str | None] = None
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        """A runtime that declares no ``Target`` gets one with no options of its own (name, runtime,
        batch_size, timing only: every other key is rejected)."""
        super().__init_subclass__(**kw)
        name = cls.__dict__.get("name")
        if isinstance(name, str) and "Target" not in cls.__dict__:
            from typing import Literal

            from pydantic import create_model

            cls.Target = create_model(f"{cls.__name__}Target", __base__=TargetBase,
                                      runtime=(Literal[name], name))  # type: ignore[valid-type]

    def runs(self, fmt: str) -> bool:
        return fmt in self.formats

    def prepare_key(self, artifact: "Artifact", target: TargetBase) -> dict[str, Any] | None:
        """What changes :meth:`prepare`'s output for ``artifact`` on ``target`` (it goes into the cache key
        with the artifact's hash and the runtime's versions); ``None``: nothing to prepare, :meth:`open` takes
        the artifact as it is."""
        return None

    def prepare(self, artifact: "Artifact", target: TargetBase, work_dir: Path) -> "Artifact":
        """Convert/compile ``artifact`` for ``target`` into ``work_dir`` (only called when :meth:`prepare_key`
        is not ``None``; the measurement service caches the result like any artifact)."""
        raise NotImplementedError

    @abstractmethod
    def open(self, model: "Artifact | Path", target: TargetBase, *, base_dir: Path | None = None) -> Session:
        """Open ``model`` (an artifact of one of ``formats``, or an ONNX path) configured for ``target``.
        ``base_dir`` is where a torch artifact's user modules live."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the packages this runtime depends on."""

    def optimized_op_counts(self, model: "Artifact | Path", target: TargetBase) -> dict[str, int]:
        """Op/layer types (-> count) the runtime really executes, after its own graph optimization."""
        return {}

    def classify_kernels(self, op_counts: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """Split :meth:`optimized_op_counts` into (integer kernels, float compute kernels)."""
        return {}, {}

    def integer_kernels(self, model: "Artifact | Path", target: TargetBase) -> tuple[dict[str, int], dict[str, int]]:
        """(integer kernels -> count, float compute kernels -> count) as this runtime executes ``model``."""
        return self.classify_kernels(self.optimized_op_counts(model, target))


def onnx_path(model: "Artifact | Path") -> Path:
    """The ONNX file of ``model`` (an artifact with an ``onnx`` file, or a path)."""
    if isinstance(model, (str, Path)):
        return Path(model)
    if model.format != "onnx":
        raise ConfigError(f"artifact {model.hash[:12]} is {model.format}, not ONNX")
    return model.path("onnx")


#: built-in runtime name -> "module:Class", imported lazily
BUILTIN: dict[str, str] = {
    "onnxruntime": "compress.runtimes.onnxruntime:OnnxRuntime",
    "openvino": "compress.runtimes.openvino:OpenVino",
    "torch": "compress.runtimes.torch:TorchRuntime",
}


@lru_cache(maxsize=1)
def registry() -> dict[str, str]:
    """Built-in runtimes plus plugins registered under the ``compress.runtimes`` entry-point group."""
    from compress.plugins import plugin_table

    return plugin_table(BUILTIN, "compress.runtimes")


class _Registry(Mapping):
    """Read-only live view of :func:`registry` (kept for ``from compress.runtimes import RUNTIMES``)."""

    def __getitem__(self, k: str) -> str:
        return registry()[k]

    def __iter__(self):
        return iter(registry())

    def __len__(self) -> int:
        return len(registry())


RUNTIMES: Mapping[str, str] = _Registry()


def suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(registry()), n=1, cutoff=0.5)
    known = ", ".join(sorted(registry()))
    return f"did you mean '{close[0]}'? known: {known}" if close else f"known: {known}"


def runtime_class(name: str) -> type[Runtime]:
    """The Runtime class registered as ``name`` (its module is light: no runtime library is imported)."""
    table = registry()
    if name not in table:
        raise ConfigError(f"unknown runtime {name!r}: {suggest(name)}")
    from compress.plugins import load_object

    cls = load_object(table[name])
    if getattr(cls, "name", None) != name:
        raise ConfigError(f"runtime plug-in {table[name]} is registered as {name!r} but its name is "
                          f"{getattr(cls, 'name', None)!r}")
    return cls


def available(name: str) -> bool:
    """Whether runtime ``name`` is registered and its package is installed (the library is not imported)."""
    if name not in registry():
        return False
    try:
        req = runtime_class(name).requires
        return req is None or importlib.util.find_spec(req) is not None
    except (ImportError, ValueError, ConfigError, AttributeError):
        return False


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime registered as ``name``."""
    cls = runtime_class(name)
    if not available(name):
        raise ConfigError(f"runtime {name!r} is not installed", hint=f"pip install {cls.requires}")
    return cls()
