"""Measurement layer: one shared timing loop plus runtime plug-ins (see :mod:`compress.runtimes.base`).

Importing this package pulls in neither numpy nor onnxruntime, openvino or torch; a runtime imports its
library inside its methods.
"""
from compress.runtimes.base import (
    RUNTIMES,
    Runtime,
    Session,
    TargetBase,
    available,
    get_runtime,
    registry,
    runtime_class,
)
from compress.runtimes.timing import LatencyStats, TimingPolicy, measure, measure_interleaved

__all__ = [
    "TimingPolicy",
    "LatencyStats",
    "measure",
    "measure_interleaved",
    "Runtime",
    "Session",
    "TargetBase",
    "RUNTIMES",
    "registry",
    "runtime_class",
    "get_runtime",
    "available",
]
