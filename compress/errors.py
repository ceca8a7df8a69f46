"""Error types and the exit codes they map to (documented in ``compress run --help``)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_CONFIG = 2
EXIT_STAGE_FAILED = 3
EXIT_UNSTABLE = 4


class CompressError(Exception):
    """Base class: an error we explain in one line and map to an exit code."""

    exit_code = EXIT_STAGE_FAILED

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, with the fix when we know it
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(CompressError):
    """The pipeline file, a path in it, or a command-line argument is wrong (exit 2)."""

    exit_code = EXIT_CONFIG


class StageError(CompressError):
    """A stage, the baseline build, export or measurement failed at run time (exit 3)."""

    exit_code = EXIT_STAGE_FAILED


class UnstableMeasurement(CompressError):
    """Latency measurement was too noisy and the pipeline asked to fail on that (exit 4)."""

    exit_code = EXIT_UNSTABLE
