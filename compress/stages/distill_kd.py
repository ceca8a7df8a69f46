"""``distill.kd``: knowledge distillation from a teacher into the incoming model or a new architecture.

Teacher: ``baseline`` or any earlier stage by name (``ctx.artifacts``), a float torch model. Student: the
incoming artifact (recovery after pruning or quantization-unfriendly edits) or, with ``student:``, a new
architecture (``zoo: name`` or ``callable: module:function`` + ``kwargs``) trained from scratch against the
teacher. The training is the one loop (:func:`compress.training.train`) with Hinton KD: ``finetune.distill``
(``temperature``, ``alpha``; ``alpha: 1.0`` is label-free KD, for data without labels). Training saves a
checkpoint every ``checkpoint_every`` steps in the cache (``ctx.checkpoint_dir``); a killed stage run again
resumes from it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from compress.stages.base import TORCH_FLOAT, Stage, StageConfig
from compress.training import FinetuneConfig

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.context import StageContext


class StudentConfig(StageConfig):
    zoo: str | None = Field(None, description="A zoo model name (compress stages lists them).")
    callable: str | None = Field(None, description="'module:function' building the student (the pipeline "
                                 "file's folder is on sys.path).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the builder.")

    @field_validator("zoo")
    @classmethod
    def _zoo(cls, v: str | None) -> str | None:
        from compress import zoo

        if v is not None and v not in zoo.ZOO:
            raise ValueError(f"unknown zoo model '{v}': known: {', '.join(zoo.names())}")
        return v

    @model_validator(mode="after")
    def _one(self) -> "StudentConfig":
        if (self.zoo is None) == (self.callable is None):
            raise ValueError("student needs exactly one of zoo or callable")
        if self.callable is not None and ":" not in self.callable:
            raise ValueError(f"student.callable must look like 'module:function', got '{self.callable}'")
        return self

    def recipe(self) -> dict[str, Any]:
        from compress import zoo

        return {"callable": zoo.ZOO[self.zoo] if self.zoo else self.callable, "kwargs": dict(self.kwargs)}


class DistillTrainConfig(FinetuneConfig):
    """:class:`~compress.training.FinetuneConfig` for distillation: a longer run, KD always on."""

    epochs: float = Field(5, gt=0, description="Passes over the training split (fractions allowed).")


class DistillKDConfig(StageConfig):
    teacher: str = Field("baseline", description="'baseline' or the name of an earlier stage (a float torch "
                         "model).")
    student: StudentConfig | None = Field(None, description="A new architecture to train from scratch; default: "
                                          "the incoming model (recovery).")
    finetune: DistillTrainConfig = Field(default_factory=DistillTrainConfig, description="The training "
                                         "(compress.training.train); finetune.distill sets temperature and alpha "
                                         "(alpha 1.0: label-free).")
    checkpoint_every: int = Field(100, ge=0, description="Save a resumable checkpoint every N steps (0: never).")

    @model_validator(mode="after")
    def _kd_on(self) -> "DistillKDConfig":
        if self.finetune.distill is None:
            raise ValueError("finetune.distill cannot be null in distill.kd (it is the KD loss); "
                             "use prune or a plain fine-tune instead")
        return self


class DistillKD(Stage):
    """Distil a teacher (baseline or an earlier stage) into the incoming model or a new architecture."""

    type: ClassVar[str] = "distill.kd"
    Config = DistillKDConfig
    accepts = (TORCH_FLOAT,)
    summary = ("Knowledge distillation (logit KD, label-free with alpha 1) from the baseline or an earlier stage "
               "into the incoming model or a new zoo/callable architecture.")

    @classmethod
    def references(cls, config: DistillKDConfig) -> list[str]:
        return [config.teacher]

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        from compress.artifact import save_torch
        from compress.errors import StageError
        from compress.facts import torch_facts
        from compress.training import accuracy

        cfg = self.config
        arts = ctx.artifacts or {}
        if cfg.teacher not in arts:
            raise StageError(f"distill.kd: teacher '{cfg.teacher}' is not an earlier stage",
                             hint=f"use one of: {', '.join(arts) or 'baseline'}")
        t_art = arts[cfg.teacher]
        if t_art.format != "torch":
            raise StageError(f"distill.kd: teacher '{cfg.teacher}' is a {t_art.format} model; it must be a float "
                             "torch model", hint="name a stage before the export/quantization")
        teacher = ctx.load_torch(t_art)
        if cfg.student is None:
            like, student = artifact, ctx.load_torch(artifact)
        else:
            like = replace(artifact, recipe=cfg.student.recipe(), edits=())
            try:
                student = build_student(like, ctx, cfg.finetune.seed)
            except Exception as e:  # noqa: BLE001 - the user's builder: one line
                raise StageError(f"distill.kd: cannot build the student: {type(e).__name__}: {e}",
                                 hint="check student.zoo / callable / kwargs") from e
        labelled = ctx.labelled
        facts: dict[str, Any] = {"teacher": cfg.teacher, "student": cfg.student.recipe() if cfg.student else "input",
                                 "temperature": cfg.finetune.distill.temperature, "alpha": cfg.finetune.distill.alpha}
        shape = artifact.input_shape
        facts["teacher_macs"] = torch_facts(teacher, shape)["macs"]
        facts["student_macs"] = torch_facts(student, shape)["macs"]
        if labelled:
            facts["accuracy_teacher"] = round(accuracy(teacher, ctx.dataset), 4)
            facts["accuracy_student_before"] = round(accuracy(student, ctx.dataset), 4)
        ckpt = ctx.checkpoint_dir / "distill.pt" if ctx.checkpoint_dir is not None else None
        facts["training"] = ctx.finetune(student, cfg.finetune, teacher, "distillation", checkpoint=ckpt,
                                         checkpoint_every=cfg.checkpoint_every)
        if labelled:
            facts["accuracy_student"] = facts["training"]["accuracy"]
        ctx.log(f"distilled '{cfg.teacher}' into {'the input model' if cfg.student is None else like.recipe['callable']}"
                f" in {facts['training']['steps']} steps"
                + (f" (resumed at step {facts['training']['resumed_at_step']})"
                   if "resumed_at_step" in facts["training"] else "")
                + (f": accuracy {facts['accuracy_student_before']}% -> {facts['accuracy_student']}% (teacher "
                   f"{facts['accuracy_teacher']}%)" if labelled else ""))
        return save_torch(student, ctx.work_dir, like=like, producer=ctx.stage_name, facts=facts)


def build_student(like: "Artifact", ctx: "StageContext", seed: int):
    """A freshly initialised student from ``like``'s recipe, seeded (no weights to load)."""
    import torch

    from compress.artifact import import_callable

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return import_callable(like.recipe["callable"], ctx.base_dir)(**like.recipe.get("kwargs", {})).eval()
