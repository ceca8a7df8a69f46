"""The one training loop: baseline training, fine-tuning after pruning, QAT, distillation and the
search supernet all call :func:`train`. Deterministic under ``seed`` on CPU (and it leaves the caller's
RNG state and thread count as they were); optional periodic evaluation (``eval_every``) shows ``acc=`` in
the progress bar and records an eval curve; ``distill`` adds Hinton KD (KL at a temperature) from a teacher;
``max_minutes`` stops early; ``augment`` adds seeded random shifts and/or mixup to image batches (the same for
every arm, and seen by the teacher too).

Only pydantic at import time; torch is imported inside the functions.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

    from compress.data import Dataset


class DistillConfig(BaseModel):
    """Knowledge distillation from a teacher (by default the stage's float input model)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0, description="Softens both distributions; the KL term is scaled by T^2.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KD term; 1 - alpha weighs the label loss.")


class AugmentConfig(BaseModel):
    """Optional augmentation of float image batches ``(N, C, H, W)`` inside the training loop. Drawn from its own
    generator seeded by ``seed``, so two runs with the same seed and batches get the same augmented batches whether
    or not they distill; a teacher sees the augmented batch (function matching: it labels the views the labels do
    not cover), so with ``augment`` its outputs are computed every step, never cached per sample."""

    model_config = ConfigDict(extra="forbid")
    shift: int = Field(0, ge=0, description="Translate each sample by up to this many pixels along H and W "
                       "(uniform integers; borders replicated). 0: off.")
    mixup: float = Field(0.0, ge=0, description="Mixup: blend each batch with a shuffled copy of itself by "
                         "lam ~ Beta(mixup, mixup) (labels mixed the same way). 0: off.")

    @model_validator(mode="after")
    def _some(self) -> "AugmentConfig":
        if self.shift == 0 and self.mixup == 0:
            raise ValueError("augment needs shift > 0 or mixup > 0 (or leave augment unset)")
        return self


class TrainConfig(BaseModel):
    """Training / fine-tuning settings shared by every stage that trains."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(5, gt=0, description="Passes over the training split (fractions allowed).")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(64, ge=1, description="Samples per optimizer step.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="torch.optim optimizer.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (optimizer: sgd only).")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty passed to the optimizer.")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="Learning-rate schedule over the "
                                                    "planned steps (cosine decays to 0).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy term.")
    seed: int = Field(0, description="Seeds the batch order and any randomness in the model (dropout); the "
                      "caller's global torch RNG state is restored afterwards.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads while training (None: torch's "
                                "default). 1 is fastest for small models on a busy machine.")
    max_minutes: float | None = Field(None, gt=0, description="Stop early after this wall time.")
    eval_every: int | Literal["epoch"] | None = Field(
        None, description="Evaluate top-1 accuracy on eval_split every N steps, or every 'epoch', and at the "
        "end; shown in the progress bar (acc=...) and recorded as an eval curve. None: no evaluation.")
    eval_split: Literal["eval", "calibration", "train"] = Field("eval", description="Data split evaluated "
                                                                "by eval_every.")
    distill: DistillConfig | None = Field(None, description="Add the KD loss from a teacher (the stage decides "
                                          "which: by default its float input model).")
    augment: AugmentConfig | None = Field(None, description="Random shifts and/or mixup of image batches, the "
                                          "same for every run with this seed; None: the batches as they are.")

    @model_validator(mode="after")
    def _ok(self) -> "TrainConfig":
        if self.optimizer != "sgd" and self.momentum != 0.9:
            raise ValueError("momentum applies to optimizer: sgd only")
        if isinstance(self.eval_every, int) and self.eval_every < 1:
            raise ValueError("eval_every must be a positive number of steps or 'epoch'")
        return self


class FinetuneConfig(TrainConfig):
    """The ``finetune:`` block of every stage that trains its result (prune.structured, prune.magnitude,
    distill.kd): a :class:`TrainConfig` with short, gentle defaults and KD from the stage's teacher (by
    default its input model) switched on."""

    epochs: float = Field(1, gt=0, description="Passes over the training split (fractions allowed).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    distill: DistillConfig | None = Field(
        default_factory=DistillConfig,
        description="KD from the stage's teacher (by default its input model); null trains on labels only.")


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    per_epoch = steps_per_epoch(cfg, n_train)
    return cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * per_epoch)))


def _optimizer(cfg: TrainConfig, params) -> "torch.optim.Optimizer":
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def kd_loss(student_logits, teacher_logits, temperature: float):
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) * T^2 (log-space target: exactly 0 when equal)."""
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    return max(1, -(-n_train // cfg.batch_size))


def train(
    model: "torch.nn.Module",
    dataset: "Dataset",
    cfg: TrainConfig,
    *,
    teacher: "torch.nn.Module | None" = None,
    split: str = "train",
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    after_step: Callable[["torch.nn.Module", int], None] | None = None,
    step_loss: Callable[["torch.nn.Module", "torch.Tensor", "torch.Tensor | None"], "torch.Tensor"] | None = None,
    clock: Callable[[], float] = time.monotonic,
    checkpoint: "Path | None" = None,
    checkpoint_every: int = 0,
    cache_teacher: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place on ``dataset``'s ``split``; return a small history for the report.

    ``teacher`` (eval mode, frozen) adds the KD term when ``cfg.distill`` is set. ``after_step`` lets a
    stage act between steps (e.g. re-apply a pruning mask). ``step_loss(model, xb, yb)`` replaces the
    forward pass and loss of a step (e.g. the search supernet's sandwich rule, several subnets per batch);
    the loop still owns batching, the optimizer, the schedule, evaluation and stopping. ``progress(step, total, info)`` is called
    after every step with ``info = {"loss": ..., "acc": ...}`` (``acc`` once evaluated). ``clock`` (in
    seconds) is what ``max_minutes`` is checked against. Raises ``ValueError`` if labels are missing and
    no teacher is given, or if ``eval_every`` is set and the eval split has no labels.

    Deterministic on CPU: the same ``cfg.seed``, model and data give bit-identical weights.

    ``checkpoint`` (a file) with ``checkpoint_every`` > 0 saves the model, optimizer, schedule, batch order
    and RNG state every that many steps (atomically); a later call with the same arguments finds the file
    and resumes from it, so a killed training continues where it stopped (to the same weights). The file is
    read with ``torch.load(weights_only=True)`` and removed when training ends.

    KD over more than one epoch computes the teacher's outputs on the training split once (``cache_teacher``;
    without ``augment`` a sample's teacher output never changes) instead of once per step: the same losses up to
    float rounding, for one teacher pass instead of one per epoch. With ``cfg.augment`` the teacher runs on every
    augmented batch (never cached). Raises ``ValueError`` if ``augment`` is set and the model does not take one
    float image input, or ``augment.mixup`` is combined with ``step_loss``.
    """
    import torch
    import torch.nn.functional as F

    x_np, y_np = dataset.split_feeds(split)
    if len(_arrays(x_np)[0]) == 0:
        raise ValueError(f"data split '{split}' is empty: give it a share in data.splits")
    use_kd = teacher is not None and cfg.distill is not None
    if y_np is None and not use_kd:
        raise ValueError("training needs labels, or a teacher with distill: set")
    if cfg.augment is not None and cfg.augment.mixup > 0 and step_loss is not None:
        raise ValueError("augment.mixup cannot be combined with this stage's own loss: use augment.shift only")
    if cfg.eval_every is not None:
        ex, ey = dataset.split(cfg.eval_split)
        if ey is None or len(ex) == 0:
            raise ValueError(f"eval_every needs labels in the '{cfg.eval_split}' split: unset eval_every")
    xs = [torch.from_numpy(a) for a in _arrays(x_np)]  # every model input, in forward()'s order
    y = torch.from_numpy(y_np) if y_np is not None else None
    n = len(xs[0])
    steps = total_steps(cfg, n)
    every = steps_per_epoch(cfg, n) if cfg.eval_every == "epoch" else cfg.eval_every
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    used_threads = torch.get_num_threads()  # recorded: float reductions (so the weights) depend on it
    try:
        with torch.random.fork_rng(devices=[]):  # seed here, leave the caller's RNG as it was
            torch.manual_seed(cfg.seed)
            g = torch.Generator().manual_seed(cfg.seed)
            ga = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # augmentation only: same draws with or without KD
            opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cfg.schedule == "cosine" else None
            if teacher is not None:
                teacher.eval()
            t_all = (_teacher_outputs(teacher, xs, cfg.batch_size) if use_kd and cache_teacher and step_loss is None
                     and cfg.augment is None and steps > steps_per_epoch(cfg, n) else None)
            model.train()
            start = clock()
            step, losses, stopped_early = 0, [], False
            curve: list[dict[str, float]] = []
            perm = torch.randperm(n, generator=g)
            pos = 0
            resumed = None
            st = _load_checkpoint(checkpoint) if checkpoint is not None else None
            if st is not None:
                model.load_state_dict(st["model"])
                opt.load_state_dict(st["optimizer"])
                if sched is not None:
                    sched.load_state_dict(st["schedule"])
                g.set_state(st["generator"])
                if "augment_generator" in st:
                    ga.set_state(st["augment_generator"])
                torch.set_rng_state(st["rng"])
                step, pos, perm, losses = int(st["step"]), int(st["pos"]), st["perm"], list(st["losses"])
                resumed = step
            while step < steps:
                if pos >= n:
                    perm, pos = torch.randperm(n, generator=g), 0
                idx = perm[pos:pos + cfg.batch_size]
                pos += cfg.batch_size
                xb = [t[idx] for t in xs]  # every model input, in forward()'s order
                yb = y[idx] if y is not None else None
                mix = None
                if cfg.augment is not None:
                    xb[0], mix = augment(xb, cfg.augment, ga)
                if step_loss is not None:
                    loss = step_loss(model, xb[0] if len(xb) == 1 else xb, yb)
                else:
                    out = model(*xb)
                    loss = torch.zeros((), dtype=out.dtype)
                    if yb is not None and (not use_kd or cfg.distill.alpha < 1):
                        ce = F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing)
                        if mix is not None:  # mixup: the labels are blended like the inputs
                            ce = mix[1] * ce + (1 - mix[1]) * F.cross_entropy(out, yb[mix[0]],
                                                                              label_smoothing=cfg.label_smoothing)
                        loss = loss + (1 - cfg.distill.alpha if use_kd else 1.0) * ce
                    if use_kd:
                        if t_all is not None:
                            t_out = t_all[idx]
                        else:
                            with torch.no_grad():
                                t_out = teacher(*xb)
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
                if checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0 and step < steps:
                    _save_checkpoint(checkpoint, {
                        "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict() if sched is not None else {}, "generator": g.get_state(),
                        "augment_generator": ga.get_state(),
                        "rng": torch.get_rng_state(), "step": step, "pos": pos, "perm": perm, "losses": losses})
                out_of_time = cfg.max_minutes is not None and clock() - start > cfg.max_minutes * 60
                if every is not None and (step % every == 0 or step == steps or out_of_time):
                    _evaluate(model, dataset, cfg, step, steps_per_epoch(cfg, n), losses, curve)
                if progress is not None:
                    info = {"loss": losses[-1]}
                    if curve:
                        info["acc"] = curve[-1]["accuracy"]
                    progress(step, steps, info)
                if out_of_time and step < steps:
                    stopped_early = True
                    break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
        checkpoint.with_name(checkpoint.name + ".sha256").unlink(missing_ok=True)
    tail = losses[-max(1, len(losses) // 10):]
    hist: dict[str, Any] = {"steps": step, "planned_steps": steps, "final_loss": round(sum(tail) / len(tail), 6),
                            "seconds": round(clock() - start, 2), "stopped_early": stopped_early, "kd": use_kd,
                            "threads": used_threads}
    if use_kd:
        hist["teacher_outputs_cached"] = t_all is not None
    if resumed is not None:
        hist["resumed_at_step"] = resumed
    if curve:
        hist["eval_curve"] = curve
        hist["final_eval_accuracy"] = curve[-1]["accuracy"]
    return hist


def augment(xb: list["torch.Tensor"], cfg: AugmentConfig, gen: "torch.Generator") -> tuple[
        "torch.Tensor", "tuple[torch.Tensor, float] | None"]:
    """One augmented batch: ``(x, mix)``, ``mix = (perm, lam)`` when mixup blended ``x`` with ``x[perm]`` by
    ``lam`` (else None). Random draws come from ``gen`` only, in a fixed order (shifts, then mixup)."""
    import torch
    import torch.nn.functional as F

    x = xb[0]
    if len(xb) != 1 or not x.is_floating_point() or x.dim() != 4:
        raise ValueError("augment applies to one float image input (N, C, H, W); this model takes "
                         + ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in xb) + ": unset augment")
    n, _, h, w = x.shape
    if cfg.shift:
        s = cfg.shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        off = torch.randint(0, 2 * s + 1, (n, 2), generator=gen).tolist()
        x = torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(off)])
    mix = None
    if cfg.mixup:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        perm = torch.randperm(n, generator=gen)
        with torch.random.fork_rng(devices=[]):  # Beta sampling takes no generator: seed it from ours
            torch.manual_seed(seed)
            lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
        x = lam * x + (1 - lam) * x[perm]
        mix = (perm, lam)
    return x, mix


def _teacher_outputs(teacher: "torch.nn.Module", xs: list["torch.Tensor"], batch_size: int,
                     max_bytes: int = 256 * 2**20) -> "torch.Tensor | None":
    """The teacher's outputs on every training sample (row i: sample i), in eval mode; None when they would take
    more than ``max_bytes`` (e.g. dense per-pixel outputs) or are not one tensor."""
    import torch

    n = len(xs[0])
    with torch.no_grad():
        first = teacher(*(t[:batch_size] for t in xs))
        if not isinstance(first, torch.Tensor) or first[0].numel() * first.element_size() * n > max_bytes:
            return None
        rest = [teacher(*(t[i:i + batch_size] for t in xs)) for i in range(batch_size, n, batch_size)]
    return torch.cat([first, *rest])


def _save_checkpoint(path: "Path", state: dict[str, Any]) -> None:
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    from compress.artifact import sha256_file

    path.with_name(path.name + ".sha256").write_text(sha256_file(path) + "\n")


def _load_checkpoint(path: "Path") -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is intact (its sha256 matches the one written after it), else None:
    a damaged or half-written checkpoint is removed and training starts from step 0 (never resumes from it)."""
    import logging

    import torch

    from compress.artifact import sha256_file

    if not path.is_file():
        return None
    sidecar = path.with_name(path.name + ".sha256")
    try:
        if sidecar.read_text().strip() != sha256_file(path):
            raise ValueError("sha256 mismatch")
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any damage: start over rather than resume from it
        logging.getLogger("compress").warning("corrupt training checkpoint removed, training from the start: "
                                              "%s (%s)", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        return None


def _evaluate(model, dataset, cfg: TrainConfig, step: int, per_epoch: int, losses: list[float],
              curve: list[dict[str, float]]) -> None:
    """Append ``{step, epoch, loss (mean since the last point), accuracy}`` to ``curve``; back to train mode."""
    since = curve[-1]["step"] if curve else 0
    window = losses[int(since):]
    curve.append({"step": step, "epoch": round(step / per_epoch, 3),
                  "loss": round(sum(window) / max(len(window), 1), 6),
                  "accuracy": round(accuracy(model, dataset, cfg.eval_split), 4)})
    model.train()


def accuracy(model: "torch.nn.Module", dataset: "Dataset", split: str = "eval", batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of a torch model on a split (used inside stages, e.g. for QAT curves)."""
    import torch

    correct = total = 0
    model.eval()
    with torch.no_grad():
        for xb, yb in dataset.batches(split, batch_size):
            pred = model(*(torch.from_numpy(a) for a in _arrays(xb))).argmax(1).numpy()
            correct += int((pred == yb).sum())
            total += len(yb)
    return 100.0 * correct / max(total, 1)


def recalibrate_bn(model: "torch.nn.Module", dataset: "Dataset", split: str = "train", batches: int = 20,
                   batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics on real data (for random-weight models, and after pruning:
    removing channels shifts every later BatchNorm's input). Each BatchNorm's momentum is left as it was."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i, (xb, _) in enumerate(dataset.batches(split, batch_size)):
            if i >= batches:
                break
            model(*(torch.from_numpy(a) for a in _arrays(xb)))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()


def _arrays(feeds: Any) -> list[Any]:
    """The model inputs of a batch as a list in forward()'s order (one array, or a dict's values)."""
    return list(feeds.values()) if isinstance(feeds, dict) else [feeds]
