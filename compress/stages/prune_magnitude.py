"""``prune.magnitude``: gradual magnitude pruning (unstructured or N:M), masks made permanent.

Maps to ``torch.nn.utils.prune``: ``global_unstructured(..., pruning_method=L1Unstructured)`` (ranking
``global``) or ``l1_unstructured`` per layer (ranking ``layer``) at the sparsity of each step of Zhu &
Gupta's cubic schedule ``s_k = s_f + (s_i - s_f) (1 - k/N)^3``, with a fine-tune after every step
(:func:`compress.training.train`, KD from the input model by default; the pruning hooks keep the masked
weights at zero while training), then ``prune.remove`` makes the zeros permanent. ``n_m: "2:4"`` keeps the
N largest of every M consecutive weights along the reduction axis (``prune.custom_from_mask``; channels-last
for convolutions, as sparse kernels read them) and verifies the pattern on every pruned layer.

Dense runtimes run zeros as fast as any other number: the stage reports sparsity and the compressed
(gzip) size of the exported ONNX, never a speed-up it did not measure (the runner times the model).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from compress.stages.base import TORCH_FLOAT, Patterns, Stage, StageConfig
from compress.training import FinetuneConfig

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

    from compress.artifact import Artifact
    from compress.context import StageContext


class PruneMagnitudeConfig(StageConfig):
    sparsity: float = Field(0.8, gt=0, lt=1, description="Final fraction of zero weights in the pruned layers "
                            "(unstructured; ignored with n_m).")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="Sparsity of the first step's schedule start.")
    steps: int = Field(4, ge=1, description="Pruning steps of the cubic schedule, each followed by the fine-tune.")
    ranking: Literal["global", "layer"] = Field("global", description="global: one magnitude threshold across "
                                                "layers; layer: every layer at the scheduled sparsity.")
    n_m: str | None = Field(None, description="Semi-structured 'N:M' (e.g. '2:4'): keep N of every M weights; "
                            "one step, then the fine-tune.")
    ignored: Patterns = Field(default_factory=list, description="Regular expressions searched in module names; "
                              "matching layers keep their weights. The classifier head is always kept.")
    bn_recalibration: int = Field(0, ge=0, description="Training batches (of 64) that re-estimate BatchNorm "
                                  "statistics after each step and fine-tune (0: off; zeroed weights shift them "
                                  "less than removed channels: 80% on ResNet-20 held accuracy without).")
    finetune: FinetuneConfig | None = Field(default_factory=FinetuneConfig, description="Fine-tune after each "
                                            "step (KD from the input model by default); null: none.")

    @field_validator("n_m")
    @classmethod
    def _n_m(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.fullmatch(r"(\d+):(\d+)", v)
        if not m or not 0 < int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"n_m must look like 'N:M' with 0 < N < M (e.g. '2:4'), got '{v}'")
        return v

    @model_validator(mode="after")
    def _schedule(self) -> "PruneMagnitudeConfig":
        if self.initial_sparsity >= self.sparsity:
            raise ValueError("initial_sparsity must be below sparsity")
        return self


def cubic_schedule(initial: float, final: float, steps: int) -> list[float]:
    """Zhu & Gupta (2017): the sparsity after each of ``steps`` steps, ``s_f + (s_i - s_f)(1 - k/N)^3``."""
    return [final + (initial - final) * (1 - k / steps) ** 3 for k in range(1, steps + 1)]


def prunable_layers(model: "torch.nn.Module", input_shape: tuple[int, ...], ignored: list[str]) -> dict[str, Any]:
    """Conv/Linear layers to sparsify: all but the classifier head and the ``ignored`` ones."""
    import torch

    from compress.errors import StageError
    from compress.stages.prune_structured import output_layers

    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
    for n in output_layers(model, torch.zeros(1, *input_shape[1:])):
        layers.pop(n, None)
    for pattern in ignored:
        hits = [n for n in layers if re.search(pattern, n)]
        if not hits:
            raise StageError(f"prune.magnitude: ignored pattern '{pattern}' matches no prunable layer",
                             hint=f"layer names: {', '.join(list(layers)[:8])}")
        for n in hits:
            layers.pop(n)
    return layers


def _groups(w: "torch.Tensor", m: int) -> "torch.Tensor":
    """``w`` as rows of ``m`` consecutive weights along the reduction axis (channels-last for convolutions)."""
    if w.dim() > 2:
        w = w.permute(0, *range(2, w.dim()), 1)
    return w.reshape(-1, m)


def n_m_mask(w: "torch.Tensor", n: int, m: int) -> "torch.Tensor":
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive ones; same shape as ``w``."""
    import torch

    g = _groups(w.detach().abs(), m)
    keep = torch.zeros_like(g)
    keep.scatter_(1, g.topk(n, dim=1).indices, 1.0)
    if w.dim() > 2:  # back from channels-last
        shape = (w.shape[0], *w.shape[2:], w.shape[1])
        return keep.reshape(shape).permute(0, w.dim() - 1, *range(1, w.dim() - 1)).contiguous()
    return keep.reshape(w.shape)


def n_m_holds(w: "torch.Tensor", n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive weights has at most ``n`` non-zeros."""
    return bool(((_groups(w.detach(), m) != 0).sum(1) <= n).all())


def reduction_size(module: "torch.nn.Module") -> int:
    import torch

    return module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels // module.groups


def gzip_size(path: "Path") -> int:
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))


class PruneMagnitude(Stage):
    """Gradual magnitude pruning (cubic schedule) or N:M sparsity; report sparsity and compressed size."""

    type: ClassVar[str] = "prune.magnitude"
    Config = PruneMagnitudeConfig
    accepts = (TORCH_FLOAT,)
    summary = ("Gradual magnitude pruning (torch.nn.utils.prune, Zhu & Gupta schedule) or N:M (2:4) sparsity; "
               "reports sparsity and gzip size (zeros give dense runtimes no speed).")

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import torch
        from torch.nn.utils import prune

        from compress.artifact import save_torch
        from compress.errors import StageError
        from compress.training import accuracy

        cfg = self.config
        teacher = ctx.load_torch(artifact)
        model = ctx.load_torch(artifact)
        labelled = ctx.labelled
        layers = prunable_layers(model, artifact.input_shape, cfg.ignored)
        facts: dict[str, Any] = {"ranking": cfg.ranking, "layers_pruned": len(layers)}
        if labelled:
            facts["accuracy_before"] = round(accuracy(teacher, ctx.dataset), 4)
        if cfg.n_m:
            n, m = (int(v) for v in cfg.n_m.split(":"))
            skipped = [name for name, mod in layers.items() if reduction_size(mod) % m]
            for name in skipped:
                layers.pop(name)
            facts.update({"n_m": cfg.n_m, "n_m_skipped": skipped})
            schedule = [None]
        else:
            schedule = cubic_schedule(cfg.initial_sparsity, cfg.sparsity, cfg.steps)
        if not layers:
            raise StageError("prune.magnitude: no layer left to prune", hint="check 'ignored' (and n_m divisibility)")
        params = [(mod, "weight") for mod in layers.values()]
        total = sum(mod.weight.numel() for mod in layers.values())
        steps, done = [], 0.0
        for k, target in enumerate(schedule):
            if target is None:
                for mod in layers.values():
                    prune.custom_from_mask(mod, "weight", n_m_mask(mod.weight, n, m))
            elif cfg.ranking == "global":
                # amounts are fractions of the weights still unpruned (PruningContainer composes the masks)
                prune.global_unstructured(params, pruning_method=prune.L1Unstructured,
                                          amount=int(round((target - done) * total)))
            else:
                for mod in layers.values():
                    left = 1.0 - done
                    prune.l1_unstructured(mod, "weight", amount=min(1.0, (target - done) / left))
            done = target if target is not None else done
            rec: dict[str, Any] = {"step": k + 1, "sparsity": round(self._sparsity(layers), 6)}
            steps.append(ctx.finetune_step(model, cfg.finetune, teacher, rec, k, len(schedule),
                                           f"sparsity {rec['sparsity']:.3f}", cfg.bn_recalibration))
        for mod in layers.values():
            prune.remove(mod, "weight")
        with torch.no_grad():
            per_layer = {name: round(float((mod.weight == 0).float().mean()), 4) for name, mod in layers.items()}
        facts.update({"steps": steps, "sparsity": round(self._sparsity(layers), 6), "layer_sparsity": per_layer})
        if cfg.n_m:
            bad = [name for name, mod in layers.items() if not n_m_holds(mod.weight, n, m)]
            if bad:
                raise StageError(f"prune.magnitude: the {cfg.n_m} pattern does not hold on {', '.join(bad)}")
            facts["n_m_verified"] = sorted(layers)
        out = save_torch(model, ctx.work_dir, like=artifact, producer=ctx.stage_name)
        measure = ctx.measure
        if measure is not None:  # compressed size of what ships: the exported ONNX, before and after
            before, after = (measure.deployable(a).path("onnx") for a in (artifact, out))
            facts["onnx_bytes"] = [before.stat().st_size, after.stat().st_size]
            facts["onnx_gzip_bytes"] = [gzip_size(before), gzip_size(after)]
            facts["gzip_ratio"] = round(facts["onnx_gzip_bytes"][1] / facts["onnx_gzip_bytes"][0], 4)
        ctx.log(f"sparsity {facts['sparsity']:.3f} over {len(layers)} layers"
                + (f"; gzip'd ONNX {facts['gzip_ratio']}x of the input's" if "gzip_ratio" in facts else "")
                + " (no speed-up on dense runtimes)")
        return save_torch(model, ctx.work_dir, like=artifact, producer=ctx.stage_name, facts=facts)

    @staticmethod
    def _sparsity(layers: dict[str, Any]) -> float:
        import torch

        with torch.no_grad():
            zeros = sum(int((mod.weight == 0).sum()) for mod in layers.values())
            return zeros / max(1, sum(mod.weight.numel() for mod in layers.values()))
