"""``search.darts``: differentiable, hardware-aware architecture search at the head of the pipeline.

Maps to :mod:`compress.search.darts` (mixed operations, expected latency, bi-level first-order DARTS through
:func:`compress.training.train`, DARTS- against collapse, arg-max derivation) over a space of
:mod:`compress.search.cells` (DARTS cells or ProxylessNAS/FBNet inverted-residual layers). Steps:

1. the per-operation latency table on the first target: each candidate operation at the input shape it
   sees, plus three whole networks for ``a * sum + b``, timed interleaved by ``ctx.measure.latency``;
2. the search: weights on one half of ``data.train``, the alphas on the other, loss of the alphas =
   cross-entropy + ``latency_weight`` x expected latency / that of the uniform mixture (or a penalty on the
   predicted latency above ``latency_budget_ms``);
3. derive the architecture (a ``module:callable`` + genotype kwargs) and its predicted latency;
4. the validation every search owes: the derived architecture and the baseline architecture (the
   stage's input model's recipe, or ``baseline:``) trained from scratch with the same ``retrain`` recipe
   over ``seeds`` seeds (accuracy mean +- spread), both timed interleaved on the target;
5. hand on the derived architecture trained with the first seed, as a normal torch artifact.

The record (stage facts) holds the genotype, share of skips, softmax(alpha), predicted vs measured
latency, the from-scratch comparison and the total search cost (wall time, steps, timed artifacts).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compress.runtimes.timing import TimingPolicy
from compress.stages.base import TORCH_FLOAT, Stage, StageConfig
from compress.training import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.context import StageContext

CellOp = Literal["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                 "dil_conv_3x3", "dil_conv_5x5"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellSpaceConfig(_Strict):
    """DARTS cells: two-input cells of ``nodes`` nodes, stacked by ``layout``."""

    ops: list[CellOp] = Field(["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                               "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"],
                              description="Candidate operations of every edge (the 8 of DARTS by default).")
    nodes: int = Field(3, ge=2, le=4, description="Intermediate nodes per cell.")
    channels: int = Field(8, ge=2, description="Channels of the first cell (doubled by each reduction cell).")
    layout: str = Field("NRN", pattern=r"^[NR]+$", description="The fixed template: N normal, R reduction cell.")

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each operation once")
        if len([o for o in v if o != "none"]) < 2:
            raise ValueError("give at least two operations besides 'none'")
        return v


class InvertedResidualSpaceConfig(_Strict):
    """ProxylessNAS/FBNet layers: each an MBConv of a kernel x expansion, or skip."""

    kernels: list[Literal[3, 5, 7]] = Field([3, 5, 7], min_length=1, description="Depthwise kernel sizes.")
    expands: list[int] = Field([3, 6], min_length=1, description="Expansion ratios (each >= 1).")
    stem: int = Field(16, ge=2, description="Stem channels.")
    stages: list[tuple[int, int, int]] = Field([(16, 1, 1), (24, 2, 2), (32, 2, 2)], min_length=1,
                                               description="[channels, layers, first stride] per stage.")
    head: int = Field(64, ge=2, description="Channels of the 1x1 head before pooling.")
    skip: bool = Field(True, description="Offer 'skip' (identity) where stride is 1 and the width stays.")

    @field_validator("expands")
    @classmethod
    def _expands(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v):
            raise ValueError("expansion ratios must be >= 1")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v):
        for c, n, s in v:
            if c < 1 or n < 1 or s not in (1, 2):
                raise ValueError(f"stage [{c}, {n}, {s}]: channels >= 1, layers >= 1, stride 1 or 2")
        return v


class ArchConfig(_Strict):
    """The architecture parameters' optimiser (Adam, betas 0.5/0.999 as in DARTS) and data."""

    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the alphas.")
    weight_decay: float = Field(1e-3, ge=0, description="L2 on the alphas.")
    batch_size: int = Field(64, ge=1, description="Samples of the architecture split per alpha step.")
    share: float = Field(0.5, gt=0, lt=1, description="Share of data.train held out for the alphas (the "
                         "weights train on the rest; the two never overlap).")
    start: float = Field(0.2, ge=0, lt=1, description="Fraction of the search spent on weights only before "
                         "the first alpha step (a warm-up).")


class BaselineRecipe(_Strict):
    """A hand-picked baseline architecture (built untrained from this recipe)."""

    zoo: str | None = Field(None, description="A zoo model name.")
    callable: str | None = Field(None, description="Or 'module:function' that builds the model.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the builder.")

    @model_validator(mode="after")
    def _one(self) -> "BaselineRecipe":
        if (self.zoo is None) == (self.callable is None):
            raise ValueError("give exactly one of zoo or callable")
        if self.zoo is not None:
            from compress import zoo

            if self.zoo not in zoo.ZOO:
                raise ValueError(f"unknown zoo model '{self.zoo}': use one of {', '.join(zoo.names())}")
        return self


class SearchTrainConfig(TrainConfig):
    """The supernet's weight training (the search budget)."""

    epochs: float = Field(20, gt=0, description="Passes over the weights' half of data.train.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate of the weights.")
    threads: int | None = Field(1, ge=1, description="torch intra-op threads (1: fastest for small nets here).")


class RetrainConfig(TrainConfig):
    """The from-scratch recipe shared by the searched and the baseline architecture."""

    epochs: float = Field(20, gt=0, description="Passes over data.train.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    threads: int | None = Field(1, ge=1, description="torch intra-op threads.")


class SearchDartsConfig(StageConfig):
    space: Literal["cells", "inverted_residual"] = Field("cells", description="Which space to search.")
    cells: CellSpaceConfig = Field(default_factory=CellSpaceConfig, description="Options of the cell space.")
    inverted_residual: InvertedResidualSpaceConfig = Field(default_factory=InvertedResidualSpaceConfig,
                                                           description="Options of the inverted-residual space.")
    train: SearchTrainConfig = Field(default_factory=SearchTrainConfig, description="Supernet weight training.")
    arch: ArchConfig = Field(default_factory=ArchConfig, description="Architecture-parameter optimisation.")
    latency_weight: float = Field(1.0, ge=0, description="Weight of the expected latency in the alphas' loss, "
                                  "relative to the uniform mixture's (1: the term is 1 at the start); 0 searches "
                                  "for accuracy alone.")
    latency_budget_ms: float | None = Field(None, gt=0, description="With a budget, only the predicted latency "
                                            "above it is penalised: latency_weight * relu(predicted / budget - 1).")
    anti_collapse: Literal["darts-", "none"] = Field(
        "darts-", description="'darts-': auxiliary skip beta*x on every stride-1 mixed edge, beta decaying 1 -> 0 "
        "(Chu et al. 2021); 'none': bare DARTS (prone to skip-dominated cells).")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="From-scratch recipe of the searched "
                                   "and the baseline architecture (the output is the searched one, first seed).")
    seeds: int = Field(3, ge=1, description="Seeds of the from-scratch comparison (retrain.seed, +1, ...).")
    baseline: BaselineRecipe | None = Field(None, description="The architecture to compare against; default: the "
                                            "stage's input model's recipe (the pipeline's model).")
    timing: TimingPolicy | None = Field(None, description="Timing policy of the latency table (default: the "
                                        "target's).")


class SearchDarts(Stage):
    """Differentiable hardware-aware search (DARTS + expected latency + DARTS-), validated from scratch."""

    type: ClassVar[str] = "search.darts"
    Config = SearchDartsConfig
    accepts = (TORCH_FLOAT,)
    produces = TORCH_FLOAT
    summary = ("Differentiable hardware-aware architecture search (DARTS cells or ProxylessNAS-style layers; "
               "latency table on the target; DARTS- against collapse); derived net trained from scratch.")

    def space(self, num_classes: int, in_channels: int):
        from compress.search.darts import CellSpace, InvertedResidualSpace

        c = self.config
        if c.space == "cells":
            s = c.cells
            return CellSpace(num_classes, in_channels, tuple(s.ops), s.nodes, s.channels, s.layout)
        s = c.inverted_residual
        return InvertedResidualSpace(num_classes, in_channels, tuple(s.kernels), tuple(s.expands), s.stem,
                                     tuple(tuple(st) for st in s.stages), s.head, s.skip)

    def baseline_recipe(self, artifact: "Artifact") -> dict[str, Any]:
        from compress import zoo
        from compress.errors import StageError

        b = self.config.baseline
        if b is not None:
            return {"callable": zoo.ZOO[b.zoo] if b.zoo else b.callable, "kwargs": dict(b.kwargs)}
        if artifact.recipe is None or artifact.edits:
            raise StageError("search.darts: the input model is not a plain recipe (it was edited by an earlier "
                             "stage), so it cannot be the from-scratch baseline",
                             hint="put search.darts first, or give config.baseline")
        return dict(artifact.recipe)

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import time
        from dataclasses import replace

        from compress.artifact import save_torch
        from compress.errors import StageError
        from compress.search import cells, darts
        from compress.search.from_scratch import compare

        cfg = self.config
        ds = ctx.dataset
        t_start = time.monotonic()
        if ds.y is None or ds.num_classes is None:
            raise StageError("search.darts: the search needs labelled data", hint="use data with labels")
        if len(artifact.input_shape) != 4:
            raise StageError(f"search.darts: the spaces are convolutional; input_shape {list(artifact.input_shape)} "
                             "is not [N, C, H, W]", hint="search image data")
        base_recipe = self.baseline_recipe(artifact)
        space = self.space(int(ds.num_classes), int(artifact.input_shape[1]))
        net = space.supernet(aux_skip=cfg.anti_collapse == "darts-", seed=cfg.train.seed)
        try:
            darts.probe_shapes(net, artifact.input_shape)
        except RuntimeError as e:
            raise StageError(f"search.darts: the {space.name} space does not fit input {list(artifact.input_shape)}: "
                             f"{str(e).splitlines()[0]}", hint="use a larger data.image_size or fewer reductions") from e

        timed = {"calls": 0, "artifacts": 0}

        def measure(arts, policy=cfg.timing):
            timed["calls"] += 1
            timed["artifacts"] += len(arts)
            return ctx.measure.latency(arts, policy=policy)

        ctx.log(f"latency table: timing the {space.name} operations on the target")
        table = darts.build_latency_table(space, net, measure, ctx.work_dir / "latency_table", artifact.input_shape,
                                          seed=cfg.train.seed)
        ctx.log(f"latency table: {len(table.table)} entries, a={table.a:.3f}, b={table.b:.4f} ms "
                f"({table.seconds} s)")
        arch = darts.ArchConfigValues(lr=cfg.arch.lr, weight_decay=cfg.arch.weight_decay,
                                      batch_size=cfg.arch.batch_size, start=cfg.arch.start,
                                      latency_weight=cfg.latency_weight, latency_budget_ms=cfg.latency_budget_ms,
                                      overhead_ms=table.b, anti_collapse=cfg.anti_collapse, seed=cfg.train.seed)
        from compress.training import total_steps

        steps = total_steps(cfg.train, int(round(len(ds.splits["train"]) * (1 - cfg.arch.share))))
        t_search = time.monotonic()
        try:
            with ctx.progress(f"DARTS search ({space.name})", steps) as bar:
                net, hist = darts.search(space, ds, cfg.train, arch, arch_share=cfg.arch.share, net=net,
                                         progress=lambda s, t, info: bar.update(1, **info))
        except ValueError as e:
            raise StageError(f"search.darts: {e}", hint="give data.train more labelled samples") from e
        search_s = time.monotonic() - t_search
        geno = space.derive(net)
        predicted = table.predict(space.chosen(net, geno))
        skips = cells.skip_share(space.name, geno)
        ctx.log(f"derived: {geno} (skip share {skips:.2f}, predicted {predicted:.4f} ms)")

        recipe = space.recipe(geno)
        seeds = [cfg.retrain.seed + k for k in range(cfg.seeds)]
        t_val = time.monotonic()
        total = 2 * len(seeds) * total_steps(cfg.retrain, len(ds.splits["train"]))
        with ctx.progress("from scratch: searched vs baseline", total) as bar:
            results, models = compare({"searched": recipe, "baseline": base_recipe}, ds, cfg.retrain, seeds,
                                      ctx.base_dir, progress=lambda name, s, t: bar.update(1))
        val_s = time.monotonic() - t_val
        arts = {name: save_torch(models[name], ctx.work_dir / f"scratch_{name}",
                                 like=replace(artifact, recipe=r, edits=()), edits=(),
                                 producer=f"{ctx.stage_name}:{name}")
                for name, r in (("searched", recipe), ("baseline", base_recipe))}
        stats = measure([arts["searched"], arts["baseline"]], None)
        ms = {"searched": stats[0].p50_ms, "baseline": stats[1].p50_ms}
        ratio = ms["searched"] / ms["baseline"]
        warnings = []
        if not 0.8 <= ratio <= 1.25:
            warnings.append(f"the baseline's measured latency ({ms['baseline']:.4f} ms) is not similar to the "
                            f"searched one ({ms['searched']:.4f} ms, ratio {ratio:.2f}): the accuracy comparison "
                            "is not at equal latency; pick a baseline of similar latency (config.baseline)")
            ctx.log("WARNING: " + warnings[-1])
        acc = {k: v["accuracy"] for k, v in results.items()}
        ctx.log(f"from scratch over seeds {seeds}: searched {acc['searched']['mean']:.2f} +- "
                f"{acc['searched']['std']:.2f}% at {ms['searched']:.4f} ms, baseline {acc['baseline']['mean']:.2f} +- "
                f"{acc['baseline']['std']:.2f}% at {ms['baseline']:.4f} ms")
        facts: dict[str, Any] = {
            "space": space.name, "genotype": geno, "skip_share": round(skips, 4), "anti_collapse": cfg.anti_collapse,
            "latency_weight": cfg.latency_weight, "latency_budget_ms": cfg.latency_budget_ms,
            "alphas": darts.alpha_table(net),
            "latency": {"predicted_ms": round(predicted, 5), "measured_ms": round(ms["searched"], 5),
                        "prediction_error_pct": round(100 * (predicted - ms["searched"]) / ms["searched"], 2),
                        "baseline_measured_ms": round(ms["baseline"], 5), "searched_vs_baseline": round(ratio, 4),
                        "table": table.summary(), "entries": {k: round(v, 5) for k, v in table.table.items()}},
            "from_scratch": {"seeds": seeds, "recipe": cfg.retrain.model_dump(mode="json"),
                             "baseline_recipe": base_recipe, **results},
            "search": hist,
            "search_cost": {
                "wall_seconds": round(time.monotonic() - t_start, 2), "table_seconds": table.seconds,
                "search_seconds": round(search_s, 2), "from_scratch_seconds": round(val_s, 2),
                "weight_steps": hist["steps"], "arch_steps": hist["arch_steps"],
                "from_scratch_steps": sum(r["train_steps"] for r in results.values()),
                "latency_calls": timed["calls"], "artifacts_timed": timed["artifacts"]},
            "warnings": warnings,
        }
        return save_torch(models["searched"], ctx.work_dir, like=replace(artifact, recipe=recipe, edits=()), edits=(),
                          producer=ctx.stage_name, facts=facts)
