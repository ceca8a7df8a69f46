"""What a stage gets besides its input artifact: data, its work folder, export settings, progress, and
the measurement service (``ctx.measure``) to measure candidates exactly like pipeline records."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from compress.artifact import Artifact, build_module

if TYPE_CHECKING:  # pragma: no cover
    import torch

    import numpy as np

    from compress.calibration import CalibrationConfig
    from compress.data import Dataset
    from compress.export import ExportConfig
    from compress.measure import Measure

ProgressFactory = Callable[[str, int], Any]


class _NullProgress:
    def update(self, advance: int = 1, **info: Any) -> None:
        pass


@contextmanager
def null_progress(description: str, total: int) -> Iterator[_NullProgress]:
    yield _NullProgress()


@dataclass
class StageContext:
    dataset: "Dataset"
    work_dir: Path
    export: "ExportConfig"
    base_dir: Path
    calibration: "CalibrationConfig | None" = None
    stage_name: str = ""
    log: Callable[[str], None] = print
    progress: Callable[[str, int], Any] = null_progress  # context manager: (description, total) -> .update()
    #: the run's measurement service: stages measure candidates through it (latency, fidelity, facts)
    measure: "Measure | None" = None
    #: the baseline and every earlier stage's artifact by name (e.g. a distillation teacher)
    artifacts: "dict[str, Artifact] | None" = None
    #: a folder that survives a killed run of this stage (same cache key): resumable training checkpoints
    checkpoint_dir: Path | None = None

    def load_torch(self, art: Artifact) -> "torch.nn.Module":
        """A fresh, independent torch module for ``art`` (stages may modify it freely)."""
        return build_module(art, self.base_dir)

    def calibration_samples(self, samples: int | None = None) -> "np.ndarray":
        """The pipeline's seeded calibration subset (``calibration:``), optionally resized to ``samples``."""
        from compress.calibration import CalibrationConfig, calibration_samples

        return calibration_samples(self.dataset, self.calibration or CalibrationConfig(), samples, self.base_dir)
