"""The stage contract: one class per stage type, a static pydantic ``Config``, the artifact kinds it
accepts and produces, and one ``run(artifact, config, ctx) -> Artifact``.

Stage modules keep heavy imports (torch, nncf, onnxruntime) *inside* ``run`` so that ``compress
validate`` and ``compress --help`` can import every stage's ``Config`` without loading them.

Artifact kinds are ``"<format>/<precision class>"``: ``torch/float``, ``onnx/float``,
``onnx/quantized``. ``compress validate`` walks the chain with :meth:`Stage.output_kind` to reject a
stage that cannot take what the previous stage produces, before any model is loaded.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.context import StageContext

TORCH_FLOAT = "torch/float"
ONNX_FLOAT = "onnx/float"
ONNX_QUANTIZED = "onnx/quantized"
KINDS = (TORCH_FLOAT, ONNX_FLOAT, ONNX_QUANTIZED)


def _regexes(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"'{p}' is not a valid regular expression ({e})") from None
    return patterns


#: a list of regular expressions (e.g. a stage's ``ignored`` layers), each checked at load time
Patterns = Annotated[list[str], AfterValidator(_regexes)]


class StageConfig(BaseModel):
    """Base for every stage's config: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Stage(ABC):
    """Subclass, set the class attributes, implement :meth:`run`, and add the type to the registry."""

    type: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    accepts: ClassVar[tuple[str, ...]] = (TORCH_FLOAT,)
    #: the artifact kind it produces; ``None``: the same kind it was given
    produces: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    #: whether run() reads the pipeline's calibration data (then it is part of the stage's cache key)
    uses_calibration: ClassVar[bool] = False
    #: whether run() may read the train split (fine-tuning, distillation, QAT...). Stages that declare
    #: False let a pipeline whose nothing trains give the train share to evaluation by default.
    trains: ClassVar[bool] = True

    @classmethod
    def output_kind(cls, config: StageConfig, input_kind: str) -> str:
        """The artifact kind this stage produces from ``input_kind`` (``produces``, or unchanged)."""
        return cls.produces or input_kind

    @classmethod
    def reject_reason(cls, config: StageConfig, input_kind: str) -> str | None:
        """Why this stage cannot follow an artifact of ``input_kind``; ``None`` when it can."""
        if input_kind in cls.accepts:
            return None
        wanted = " or ".join(cls.accepts)
        if input_kind == ONNX_QUANTIZED:
            why = "the model is already quantized; compress float models and quantize last, once"
        elif input_kind.startswith("onnx") and TORCH_FLOAT in cls.accepts:
            why = "this stage needs a float torch model; move it before the stage that exports or quantizes"
        else:
            why = "reorder the stages"
        return f"accepts {wanted} but receives {input_kind}: {why}"

    @classmethod
    def references(cls, config: StageConfig) -> list[str]:
        """Names of earlier artifacts (``baseline`` or stage names) ``run`` reads from ``ctx.artifacts``;
        they are checked at load time and their hashes enter the stage's cache key."""
        return []

    def __init__(self, config: StageConfig):
        self.config = config

    @abstractmethod
    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        """Produce a new artifact from ``artifact``; never mutate the input."""

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "config": self.config.model_dump(mode="json")}
