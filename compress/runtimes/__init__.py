"""Measurement layer: one shared timing loop plus lazily imported runtime backends.

Importing this package pulls in neither numpy nor onnxruntime nor torch; a backend
module is imported only by :func:`get_runtime`.
"""
from compress.runtimes.base import RUNTIMES, Runtime, Session, available, get_runtime
from compress.runtimes.timing import LatencyStats, TimingPolicy, measure, measure_interleaved

__all__ = [
    "TimingPolicy",
    "LatencyStats",
    "measure",
    "measure_interleaved",
    "Runtime",
    "Session",
    "RUNTIMES",
    "get_runtime",
    "available",
]
