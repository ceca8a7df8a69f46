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
    from compress.training import TrainConfig

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

    def __post_init__(self) -> None:
        if self.measure is None:  # a stage run outside a pipeline (tests, benchmarks): ONNX Runtime defaults
            from compress.measure import Measure

            self.measure = Measure.standalone(self.dataset, self.export, self.base_dir)

    def load_torch(self, art: Artifact) -> "torch.nn.Module":
        """A fresh, independent torch module for ``art`` (stages may modify it freely)."""
        return build_module(art, self.base_dir)

    @property
    def labelled(self) -> bool:
        """Whether the data has labels and an evaluation split (so accuracy can be computed)."""
        return self.dataset.y is not None and len(self.dataset.splits["eval"]) > 0

    def finetune(self, model: "torch.nn.Module", cfg: "TrainConfig", teacher: "torch.nn.Module | None",
                 description: str, seed_offset: int = 0, **train_kw: Any) -> dict[str, Any]:
        """Train ``model`` in place with the one training loop under a progress bar (``cfg.seed`` +
        ``seed_offset``); returns its history, plus ``accuracy`` (torch, eval split) when there are labels.
        A loop that cannot train (no labels and no teacher) is a :class:`StageError`."""
        from compress.errors import StageError
        from compress.training import accuracy, total_steps, train

        cfg = cfg.model_copy(update={"seed": cfg.seed + seed_offset})
        try:
            with self.progress(description, total_steps(cfg, len(self.dataset.splits["train"]))) as bar:
                hist = train(model, self.dataset, cfg, teacher=teacher,
                             progress=lambda s, t, info: bar.update(1, **info), **train_kw)
        except ValueError as e:
            raise StageError(f"{self.stage_name}: {e}", hint="set finetune.distill or give labelled data") from e
        if self.labelled:
            hist["accuracy"] = round(accuracy(model, self.dataset), 4)
        return hist

    def finetune_step(self, model: "torch.nn.Module", cfg: "TrainConfig | None", teacher: "torch.nn.Module | None",
                      rec: dict[str, Any], k: int, of: int, summary: str, bn_batches: int = 0) -> dict[str, Any]:
        """After step ``k`` (0-based) of ``of`` of an iterative stage: re-estimate BatchNorm statistics on
        ``bn_batches`` training batches (0: no), record the accuracy of the edited model, fine-tune it (when
        ``cfg`` is set; then re-estimate again), record the accuracy after, log one line; returns ``rec``."""
        from compress.training import accuracy, recalibrate_bn

        if bn_batches:  # the edit shifted every later BatchNorm's input: re-estimate their statistics
            recalibrate_bn(model, self.dataset, batches=bn_batches)
        if self.labelled:
            rec["accuracy_pruned"] = round(accuracy(model, self.dataset), 4)
        if cfg is not None:
            rec["finetune"] = self.finetune(model, cfg, teacher, f"fine-tune after step {k + 1}/{of}", k)
            if bn_batches:  # running statistics averaged over changing weights lag behind: re-estimate
                recalibrate_bn(model, self.dataset, batches=bn_batches)
            if self.labelled:
                rec["accuracy_finetuned"] = round(accuracy(model, self.dataset), 4)
        self.log(f"step {k + 1}/{of}: {summary}"
                 + (f", accuracy {rec['accuracy_pruned']}%" if self.labelled else "")
                 + (f" -> {rec['accuracy_finetuned']}% after fine-tune" if "accuracy_finetuned" in rec else ""))
        return rec

    def calibration_samples(self, samples: int | None = None) -> "np.ndarray":
        """The pipeline's seeded calibration subset (``calibration:``), optionally resized to ``samples``."""
        from compress.calibration import CalibrationConfig, calibration_samples

        return calibration_samples(self.dataset, self.calibration or CalibrationConfig(), samples, self.base_dir)
