"""PyTorch backend (``runtime: torch``): runs *torch* artifacts on CPU, eager or ``torch.compile``d.

An ONNX-only artifact (a quantized ONNX, an ONNX baseline) has nothing to run here: its records are "n/a"
on a torch target, not an error. torch's intra-op thread count is process-wide: a session sets it while it
runs (``torch.set_num_threads``) and puts the previous value back afterwards, so interleaved timing with
other runtimes in the same process is unaffected.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from compress.errors import StageError
from compress.runtimes.base import Feeds, Runtime, Session, TargetBase, as_feeds

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.artifact import Artifact

__all__ = ["TorchRuntime", "TorchTarget", "TorchSession"]


class TorchTarget(TargetBase):
    """A PyTorch CPU target (runs torch artifacts; ONNX-only artifacts are n/a)."""

    runtime: Literal["torch"] = "torch"
    threads: int = Field(1, ge=0, description="torch.set_num_threads while running (0 = leave torch's default).")
    mode: Literal["eager", "compile"] = Field("eager", description="'eager', or 'compile' (torch.compile, "
                                              "default backend; compiled once per session, during warm-up).")


class TorchSession(Session):
    def __init__(self, module: Any, inputs: list[dict[str, Any]], threads: int, info: dict[str, Any]):
        self._module = module
        self._threads = threads
        self.inputs = inputs
        self.info = {**info, "input_name": self.input_name, "input_shape": list(inputs[0]["shape"]),
                     "inputs": inputs}

    def _call(self, tensors: list[Any]) -> Any:
        import torch

        prev = torch.get_num_threads()
        if self._threads:
            torch.set_num_threads(self._threads)
        try:
            with torch.inference_mode():
                out = self._module(*tensors)
        finally:
            if self._threads:
                torch.set_num_threads(prev)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = next(iter(out.values()))
        return out

    def _tensors(self, x: Feeds) -> list[Any]:
        import numpy as np
        import torch

        feeds = as_feeds(x, self.input_names)
        return [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]

    def infer(self, x: Feeds) -> "np.ndarray":
        if self._module is None:
            raise StageError("inference on a closed torch session")
        return self._call(self._tensors(x)).detach().numpy()

    def runner(self, x: Feeds) -> Callable[[], object]:
        tensors = self._tensors(x)
        return lambda: self._call(tensors)

    def close(self) -> None:
        self._module = None


class TorchRuntime(Runtime):
    name = "torch"
    Target = TorchTarget
    formats = ("torch",)
    requires = "torch"
    summary = "PyTorch on CPU, eager or torch.compile (torch artifacts only)"

    def open(self, model: "Artifact | Path", target: TorchTarget, *, base_dir: Path | None = None) -> TorchSession:
        import torch

        from compress.artifact import build_module

        if isinstance(model, (str, Path)) or model.format != "torch":
            raise StageError("the torch runtime runs torch artifacts only (this one is ONNX: n/a on a torch target)")
        module = build_module(model, base_dir).eval()
        if target.mode == "compile":
            module = torch.compile(module)
        info = {"runtime": self.name, "runtime_version": torch.__version__, "mode": target.mode,
                "intra_op_threads": target.threads or torch.get_num_threads()}
        return TorchSession(module, model.input_specs, target.threads, info)

    def versions(self) -> dict[str, str]:
        try:
            return {"torch": importlib.metadata.version("torch")}
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            return {}
