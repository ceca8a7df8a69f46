"""The one training loop: baseline training, fine-tuning after pruning, QAT, distillation and the
search supernet all call :func:`train`. Deterministic under ``seed`` on CPU.

Only pydantic at import time; torch is imported inside the functions.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compress.data import Dataset


class DistillConfig(BaseModel):
    """Knowledge distillation from a teacher (by default the stage's float input model)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KD term; 1 - alpha weighs the label loss.")


class TrainConfig(BaseModel):
    """Training / fine-tuning settings shared by every stage that trains."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(5, gt=0, description="Passes over data.train (fractions allowed).")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    max_minutes: float | None = Field(None, gt=0, description="Stop early after this wall time.")
    distill: DistillConfig | None = None

    @model_validator(mode="after")
    def _ok(self) -> "TrainConfig":
        if self.optimizer != "sgd" and self.momentum != 0.9:
            raise ValueError("momentum applies to optimizer: sgd only")
        return self


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    per_epoch = max(1, -(-n_train // cfg.batch_size))
    return cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * per_epoch)))


def _optimizer(cfg: TrainConfig, params) -> "torch.optim.Optimizer":
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def kd_loss(student_logits, teacher_logits, temperature: float):
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) * T^2."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)


def train(
    model: "torch.nn.Module",
    dataset: "Dataset",
    cfg: TrainConfig,
    *,
    teacher: "torch.nn.Module | None" = None,
    split: str = "train",
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    after_step: Callable[["torch.nn.Module", int], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``dataset``'s ``split``; return a small history for the report.

    ``teacher`` (eval mode, frozen) adds the KD term when ``cfg.distill`` is set. ``after_step`` lets a
    stage act between steps (e.g. re-apply a pruning mask). Raises ``ValueError`` if labels are missing
    and no teacher is given.
    """
    import torch
    import torch.nn.functional as F

    x_np, y_np = dataset.split(split)
    if len(x_np) == 0:
        raise ValueError(f"data split '{split}' is empty: give it a share in data.splits")
    use_kd = teacher is not None and cfg.distill is not None
    if y_np is None and not use_kd:
        raise ValueError("training needs labels, or a teacher with distill: set")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(x_np)
    y = torch.from_numpy(y_np) if y_np is not None else None
    n = len(x)
    steps = total_steps(cfg, n)
    opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cfg.schedule == "cosine" else None
    if teacher is not None:
        teacher.eval()
    model.train()
    start = time.monotonic()
    step, losses, stopped_early = 0, [], False
    perm = torch.randperm(n, generator=g)
    pos = 0
    while step < steps:
        if pos >= n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        xb = x[idx]
        out = model(xb)
        loss = torch.zeros((), dtype=out.dtype)
        if y is not None and (not use_kd or cfg.distill.alpha < 1):
            ce = F.cross_entropy(out, y[idx], label_smoothing=cfg.label_smoothing)
            loss = loss + (1 - cfg.distill.alpha if use_kd else 1.0) * ce
        if use_kd:
            with torch.no_grad():
                t_out = teacher(xb)
            loss = loss + cfg.distill.alpha * kd_loss(out, t_out, cfg.distill.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        step += 1
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(model, step)
        if progress is not None:
            progress(step, steps, {"loss": losses[-1]})
        if cfg.max_minutes is not None and time.monotonic() - start > cfg.max_minutes * 60:
            stopped_early = True
            break
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": step, "planned_steps": steps, "final_loss": sum(tail) / len(tail),
            "seconds": round(time.monotonic() - start, 2), "stopped_early": stopped_early, "kd": use_kd}


def accuracy(model: "torch.nn.Module", dataset: "Dataset", split: str = "eval", batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of a torch model on a split (used inside stages, e.g. for QAT curves)."""
    import torch

    correct = total = 0
    model.eval()
    with torch.no_grad():
        for xb, yb in dataset.batches(split, batch_size):
            pred = model(torch.from_numpy(xb)).argmax(1).numpy()
            correct += int((pred == yb).sum())
            total += len(yb)
    return 100.0 * correct / max(total, 1)


def recalibrate_bn(model: "torch.nn.Module", dataset: "Dataset", split: str = "train", batches: int = 20,
                   batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics on real data (for random-weight models)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i, (xb, _) in enumerate(dataset.batches(split, batch_size)):
            if i >= batches:
                break
            model(torch.from_numpy(xb))
    model.eval()
