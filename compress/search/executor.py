"""Where candidate evaluation runs: in this process (default), a local process pool, or Ray.

``Executor.map(fn, payload, items) -> [fn(payload, item) for item in items]`` in order. ``fn`` must be
a module-level function; ``payload`` (the supernet weights, the data) is shipped to each worker once
(``ray.put`` / the pool initializer). Timing never goes through an executor: latency is measured by the
driver on the target machine, through the measurement service.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field


class ExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["inprocess", "process", "ray"] = Field("inprocess", description="Where candidates are evaluated.")
    workers: int = Field(2, ge=1, description="Worker processes (process pool) or CPUs of a local Ray instance.")
    address: str | None = Field(None, description="Ray cluster address (e.g. 'ray://head:10001'); default: start "
                                "a local Ray instance with `workers` CPUs.")


class InProcess:
    def map(self, fn: Callable, payload: Any, items: list) -> list:
        return [fn(payload, it) for it in items]

    def close(self) -> None:
        pass


_PAYLOAD: Any = None


def _init(payload: Any) -> None:
    global _PAYLOAD
    _PAYLOAD = payload


def _call(args: tuple) -> Any:
    fn, item = args
    return fn(_PAYLOAD, item)


class ProcessPool:
    """``concurrent.futures.ProcessPoolExecutor`` (spawn), the payload sent once per worker; a new
    payload restarts the pool."""

    def __init__(self, workers: int):
        self.workers, self._pool, self._payload_id = workers, None, None

    def map(self, fn: Callable, payload: Any, items: list) -> list:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if self._payload_id != id(payload):
            self.close()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                             initargs=(payload,))
            self._payload_id = id(payload)
        return list(self._pool.map(_call, [(fn, it) for it in items]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool, self._payload_id = None, None


class RayExecutor:
    """Ray tasks (``pip install -e ".[ray]"``): a local instance with ``workers`` CPUs, or ``address``.
    Workers import this same ``compress`` package (its folder goes on their PYTHONPATH)."""

    def __init__(self, workers: int, address: str | None = None):
        import os
        from pathlib import Path

        import ray

        import compress

        self._own = not ray.is_initialized()
        if self._own:
            root = str(Path(compress.__file__).resolve().parent.parent)
            env = {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": env})
        self._remote = ray.remote(num_cpus=1)(_ray_call)
        self._ref, self._payload_id = None, None

    def map(self, fn: Callable, payload: Any, items: list) -> list:
        import ray

        if self._payload_id != id(payload):
            self._ref, self._payload_id = ray.put(payload), id(payload)
        return ray.get([self._remote.remote(fn, self._ref, it) for it in items])

    def close(self) -> None:
        import ray

        if self._own and ray.is_initialized():
            ray.shutdown()


def _ray_call(fn: Callable, payload: Any, item: Any) -> Any:
    return fn(payload, item)


def make_executor(cfg: ExecutorConfig):
    if cfg.kind == "process":
        return ProcessPool(cfg.workers)
    if cfg.kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            from compress.errors import ConfigError

            raise ConfigError("executor.kind: ray needs the ray package", hint='pip install -e ".[ray]"') from e
        return RayExecutor(cfg.workers, cfg.address)
    return InProcess()
