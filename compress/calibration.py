"""Calibration data for quantization: which samples, how many, seeded and fingerprinted.

``calibration:`` at the top of a pipeline sets the default for every stage that calibrates; a stage may
override ``samples``. The subset is drawn with a seed from the chosen split of ``data:`` (disjoint from
the evaluation split), or read from a calibration set on disk (see ``calibration/README.md``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from compress.data import Dataset


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: Literal["calibration", "train"] = Field("calibration", description="Split of data: to draw from.")
    samples: int = Field(300, ge=1, description="Number of calibration samples (all of the split if fewer).")
    batch_size: int = Field(32, ge=1, description="Calibrate with batches, not single samples (much faster).")
    seed: int = 0
    path: str | None = Field(None, description="A calibration set on disk (folder with manifest.json, or .npz); "
                             "relative to the pipeline file.")


def calibration_samples(dataset: "Dataset", cfg: CalibrationConfig, samples: int | None = None) -> "np.ndarray":
    """The seeded calibration subset as one float32 array (N, *sample_shape)."""
    import numpy as np

    n = samples or cfg.samples
    if cfg.split == "calibration":
        return dataset.calibration_subset(n, seed=cfg.seed)
    idx = dataset.indices(cfg.split)
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return dataset.x[pick]


def calibration_fingerprint(dataset: "Dataset", cfg: CalibrationConfig, samples: int | None = None) -> str:
    import hashlib

    x = calibration_samples(dataset, cfg, samples)
    return hashlib.sha256(x.tobytes() + str(x.shape).encode()).hexdigest()
