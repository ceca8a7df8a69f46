"""``search.nas``: hardware-aware architecture search at the head of the pipeline, measured on the
user's runtime.

The stage *replaces the architecture*: its input (the pipeline's baseline model) is the reference the
latency constraint ``latency_ratio`` is relative to, and its output is the chosen subnet of ``space``
with the weights it inherits from the supernet (optionally fine-tuned), as an ordinary torch artifact
(recipe = the family's builder + the chosen config, weights = safetensors). Steps:

1. latency model: every block of the space, ``calibration_networks`` (<= 10) whole subnets and the
   baseline are timed interleaved on ``latency.target`` through the measurement service; network
   latency = sum of blocks minus the measured seams between them (``compress.search.seams``), then a
   correction fitted on the whole subnets (``correction``: affine, or affine + a cost per weight, chosen
   by ``development_networks`` (default 20) random subnets timed in the same session, 0: leave-one-out;
   cached per target fingerprint). A space without blocks uses a ridge predictor fitted on ``learned_networks`` measured
   subnets;
2. supernet: sandwich rule with in-place distillation through the one training loop (cached per phase);
3. search: ``strategy`` (nsga2 | evolution) and random search, each evaluating ``candidates``
   distinct subnets that satisfy the constraints (predicted latency, counted MACs/params), accuracy
   of each from the extracted subnet after BatchNorm recalibration on ``score_split``; candidates are
   scored through ``executor`` (in-process, process pool, Ray);
4. up to ``measure_front`` points of the front are extracted and timed end to end (interleaved with the
   baseline); the most accurate one whose *measured* latency meets the budget is the output. The front,
   both strategies' hypervolumes and the latency model's error on those measured subnets (MAPE, Kendall
   tau, share within 10%) go into the record's ``facts["search"]``.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.runtimes.timing import TimingPolicy
from compress.search.executor import ExecutorConfig
from compress.search.supernet import SupernetConfig
from compress.stages.base import TORCH_FLOAT, Stage, StageConfig
from compress.training import FinetuneConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.context import StageContext


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpaceConfig(_Strict):
    family: str = Field("inverted_residual", description="'inverted_residual', 'residual' or the user's "
                        "'module:callable' returning a compress.search.space.SearchSpace.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Arguments of the space (choices, stages). "
                                   "Built-in families get in_channels, input_size and num_classes from the "
                                   "pipeline unless given.")


class LatencyModelConfig(_Strict):
    target: str | None = Field(None, description="Target the model is built on (default: the first target).")
    timing: TimingPolicy | None = Field(None, description="Timing policy of the table (default: the target's).")
    calibration_networks: int = Field(8, ge=0, le=10, description="Whole subnets timed with the blocks for the "
                                      "correction (at most 10).")
    repeats: int = Field(2, ge=1, le=8, description="Sessions per calibration subnet in the table's measurement "
                         "(median; with 2+ the drift with session opening order is estimated and corrected).")
    block_repeats: int = Field(3, ge=1, le=8, description="Sessions per block and per seam pair in the table's "
                               "measurement (an entry is the median over them): two ONNX Runtime sessions of the "
                               "same file differ by a few percent (memory placement). 3: 1 -> 3 sessions ordered "
                               "2-4 points more close pairs in reports/search_latency_limits.md, more did not help.")
    development_networks: int = Field(20, ge=0, le=40, description="Random subnets (seeded, none a calibration "
                                      "subnet) timed with the table only to make 'auto''s choice of block statistic "
                                      "and correction: the candidate fitted on the calibration subnets that predicts "
                                      "them best (nothing is fitted on them). 0: leave-one-out on the calibration "
                                      "subnets (as noisy as the differences it decides: it picked a 4.05% rule where "
                                      "the development nets' pick scored 2.17%).")
    correction: Literal["scale", "affine", "weights", "auto"] = Field(
        "auto", description="Fit of the (sum of blocks - seams) to the calibration subnets: 'affine' (a * x + b, "
        "least squares, replaced by the scale when that fits the subnets no worse), 'scale' (median ratio), "
        "'weights' (affine + w * million weights: a network streams weights its blocks timed alone keep in "
        "cache) or 'auto' (affine or weights, whichever predicts the calibration subnets better leave-one-out).")
    predictor: Literal["auto", "table", "learned"] = Field(
        "auto", description="'table': sum of blocks - seams, corrected; 'learned': ridge on the encoding from measured "
        "subnets; 'auto': the table when the space has blocks.")
    learned_networks: int = Field(40, ge=4, description="Measured subnets the learned predictor is fitted on.")


class Constraints(_Strict):
    latency_ms: float | None = Field(None, gt=0, description="Latency budget (ms, p50) on the latency target.")
    latency_ratio: float | None = Field(None, gt=0, description="Budget as a fraction of the input model's "
                                        "latency on the latency target.")
    max_macs: int | None = Field(None, gt=0)
    max_params: int | None = Field(None, gt=0)


class SearchNASConfig(StageConfig):
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=300, batch_size=64, lr=3e-3, threads=1),
                               description="Supernet training (the one training loop), steps over all phases.")
    supernet: SupernetConfig = Field(default_factory=SupernetConfig, description="Sandwich rule settings.")
    latency: LatencyModelConfig = Field(default_factory=LatencyModelConfig)
    constraints: Constraints = Field(default_factory=Constraints)
    strategy: Literal["nsga2", "evolution"] = Field("nsga2", description="Search strategy; random search with "
                                                    "the same number of candidates is always run beside it.")
    candidates: int = Field(96, ge=4, description="Distinct feasible subnets each strategy evaluates.")
    population: int = Field(16, ge=2)
    batch: int = Field(8, ge=1, description="Candidates scored per executor round (fixed, so the result does "
                       "not depend on the number of workers).")
    seed: int = 0
    score_split: Literal["calibration", "train", "eval"] = Field(
        "calibration", description="Split the candidates' accuracy is measured on during the search (the "
        "pipeline's eval split stays unseen by default).")
    bn_batches: int = Field(4, ge=1, description="Training batches (of 64) for each candidate's BatchNorm "
                            "recalibration.")
    measure_front: int = Field(12, ge=1, description="Front points extracted and timed end to end.")
    accuracy_predictor: bool = Field(True, description="Fit a small MLP from the encoding to the scored accuracy "
                                     "of every evaluated subnet and report its 5-fold out-of-fold Kendall tau / "
                                     "Spearman rho in the record (reported only; the search does not use it).")
    finetune: FinetuneConfig | None = Field(None, description="Fine-tune the chosen subnet (KD from the "
                                            "supernet's largest network by default; distill: null for labels only).")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @model_validator(mode="after")
    def _population(self) -> "SearchNASConfig":
        if self.population > self.candidates:
            raise ValueError(f"population ({self.population}) must not exceed candidates ({self.candidates})")
        return self


class SearchNAS(Stage):
    """Hardware-aware NAS: supernet, latency table on the target, evolution/NSGA-II vs random."""

    type: ClassVar[str] = "search.nas"
    Config = SearchNASConfig
    accepts = (TORCH_FLOAT,)
    produces = TORCH_FLOAT
    summary = "Architecture search on the target: supernet + per-block latency table + NSGA-II/evolution."

    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        from compress.cache import cache_key
        from compress.errors import ConfigError, StageError
        from compress.search import latency as lat
        from compress.search.executor import make_executor
        from compress.search.space import FAMILIES, load_space
        from compress.search.strategy import hypervolume, pareto_front, run_strategy
        from compress.search.supernet import candidate_accuracy, eval_payload, train_supernet

        cfg = self.config
        if ctx.measure is None:
            raise StageError("search.nas needs the measurement service (run it through `compress run`)")
        kwargs = dict(cfg.space.kwargs)
        if cfg.space.family in FAMILIES and len(artifact.input_shape) == 4:
            kwargs.setdefault("in_channels", artifact.input_shape[1])
            kwargs.setdefault("input_size", artifact.input_shape[-1])
            if ctx.dataset.num_classes:
                kwargs.setdefault("num_classes", ctx.dataset.num_classes)
        try:
            space = load_space(cfg.space.family, kwargs, ctx.base_dir)
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            raise ConfigError(f"search.nas space: {type(e).__name__}: {e}",
                              hint="check space.family and space.kwargs") from e
        target = ctx.measure.target(cfg.latency.target)
        scratch = ctx.work_dir / "scratch"

        # 1. latency model, timed with the baseline in one interleaved session
        model, base_ms, lat_facts = self._latency_model(space, artifact, ctx, target, scratch)
        predict = lambda c: model.predict(space, c)  # noqa: E731
        budget = min([b for b in (cfg.constraints.latency_ms,
                                  cfg.constraints.latency_ratio * base_ms if cfg.constraints.latency_ratio else None)
                      if b is not None], default=None)

        def feasible(c) -> bool:
            if budget is not None and predict(c) > budget:
                return False
            if cfg.constraints.max_macs or cfg.constraints.max_params:
                counts = model.counts(space, c)
                if counts is None:
                    return False
                if cfg.constraints.max_macs and counts["macs"] > cfg.constraints.max_macs:
                    return False
                if cfg.constraints.max_params and counts["params"] > cfg.constraints.max_params:
                    return False
            return True

        if not feasible(space.smallest()):
            raise StageError(f"search.nas: even the smallest subnet breaks the constraints (predicted "
                             f"{predict(space.smallest()):.3f} ms, budget {budget} ms)",
                             hint="relax constraints or give the space smaller choices")

        # 2. supernet
        supernet, sn_hist = train_supernet(space, ctx.dataset, cfg.train, cfg.supernet, cache=ctx.measure.cache,
                                           key_parts={"data": ctx.dataset.fingerprint}, log=ctx.log,
                                           progress=ctx.progress)

        # 3. search: strategy and random at the same budget
        payload = eval_payload(space, supernet, ctx.dataset, split=cfg.score_split, bn_batches=cfg.bn_batches,
                               bn_batch_size=64)
        executor = make_executor(cfg.executor)
        try:
            def evaluate(configs):  # scores are cached per (supernet, scoring data, subnet): re-runs reuse them
                keys = [cache_key(step="search-score", payload=payload["id"], config=space.key(c)) for c in configs]
                hits = [ctx.measure.cache.get_json(k) for k in keys]
                fresh = iter(executor.map(candidate_accuracy, payload, [c for c, h in zip(configs, hits) if h is None]))
                out = []
                for k, h in zip(keys, hits):
                    if h is None:
                        h = next(fresh)
                        ctx.measure.cache.put_json(k, h)
                    out.append(h)
                return out

            opts = dict(budget=cfg.candidates, seed=cfg.seed, batch=cfg.batch, population=cfg.population)
            runs = {name: run_strategy(name, space, evaluate, predict, feasible, **opts)
                    for name in (cfg.strategy, "random")}
        except RuntimeError as e:
            raise StageError(f"search.nas: {e}") from e
        finally:
            executor.close()
        acc_pred = None
        if cfg.accuracy_predictor:
            from compress.search.predictor import accuracy_predictor

            scored = {space.key(c.config): c for h in runs.values() for c in h}
            acc_pred = accuracy_predictor(space, [c.config for c in scored.values()],
                                          [c.accuracy for c in scored.values()], seed=cfg.seed)
            ctx.log(f"accuracy predictor ({acc_pred['model']}) on {acc_pred['n']} scored subnets: out-of-fold "
                    f"Kendall tau {acc_pred['kendall_tau']}")
        ref = budget if budget is not None else predict(space.largest())
        hv = {name: round(hypervolume(h, ref), 6) for name, h in runs.items()}
        ctx.log(f"{cfg.candidates} candidates each: hypervolume {cfg.strategy} {hv[cfg.strategy]:.4f}, "
                f"random {hv['random']:.4f} (latency reference {ref:.3f} ms)")

        # 4. measure the front end to end, choose
        front = pareto_front(runs[cfg.strategy])
        picks = _spread(front, cfg.measure_front)
        from compress.training import recalibrate_bn

        arts = []
        for i, cand in enumerate(picks):
            sub = space.extract(supernet, cand.config)
            recalibrate_bn(sub, ctx.dataset, "train", batches=cfg.bn_batches, batch_size=64)
            arts.append(lat.recipe_artifact(space.recipe(cand.config), artifact.input_shape,
                                            scratch / f"front{i:03d}", model=sub, producer="search:front"))
        # the calibration subnets are timed again beside the front: the correction is refitted to
        # this session's machine state (the blocks give the structure, the session the scale)
        cal = model.calibration
        cal_arts = [lat.recipe_artifact(space.recipe(r["config"]), artifact.input_shape, scratch / f"cal{i:03d}",
                                        seed=i) for i, r in enumerate(cal)]
        stats = ctx.measure.latency([artifact, *cal_arts, *arts], target, cfg.latency.timing,
                                    label=f"timing {len(arts)} front subnet(s), {len(cal_arts)} calibration "
                                    f"subnet(s) and the baseline on {target.name}")
        base_now, cal_stats, stats = stats[0], stats[1:1 + len(cal_arts)], stats[1 + len(cal_arts):]
        if cal and model.kind == "table":
            now = model.refit(space, [r["config"] for r in cal], [s.p50_ms for s in cal_stats])
            session = (now.a, now.b, now.w)
            predict_now = lambda c: now.predict(space, c)  # noqa: E731
        else:
            session = None
            predict_now = lambda c: model.predict(space, c) * base_now.p50_ms / base_ms  # noqa: E731
        now_budget = min([b for b in (cfg.constraints.latency_ms, cfg.constraints.latency_ratio * base_now.p50_ms
                                      if cfg.constraints.latency_ratio else None) if b is not None], default=None)
        measured = {space.key(c.config): s.p50_ms for c, s in zip(picks, stats)}
        ok = [c for c in picks if now_budget is None or measured[space.key(c.config)] <= now_budget]
        if not ok:
            raise StageError(f"search.nas: none of the {len(picks)} measured front subnets met the budget "
                             f"({now_budget:.3f} ms) when timed end to end",
                             hint="the latency model is off on this machine: add calibration_networks or relax")
        chosen = max(ok, key=lambda c: (c.accuracy, -measured[space.key(c.config)]))
        chosen_art = arts[picks.index(chosen)]
        sub = ctx.load_torch(chosen_art)
        ft_hist = None
        if cfg.finetune is not None:  # KD from the largest subnet unless finetune.distill is null
            teacher = None
            if cfg.finetune.distill is not None:  # its own BatchNorm statistics: the shared ones mix all subnets
                teacher = space.extract(supernet, space.largest())
                recalibrate_bn(teacher, ctx.dataset, "train", batches=cfg.bn_batches, batch_size=64)
            ft_hist = ctx.finetune(sub, cfg.finetune, teacher, "fine-tune the chosen subnet")
        validation = lat.validate([predict_now(c.config) for c in picks],
                                  [measured[space.key(c.config)] for c in picks])
        ctx.log(f"chosen: accuracy {chosen.accuracy:.2f}% ({cfg.score_split}, inherited weights), predicted "
                f"{chosen.latency_ms:.3f} ms, measured {measured[space.key(chosen.config)]:.3f} ms"
                + (f" (budget {now_budget:.3f} ms)" if now_budget is not None else "")
                + f"; latency model on {len(picks)} measured subnets: MAPE {validation.get('mape_pct')}%")

        def point(c, measured_ms=None):
            ms = measured_ms if measured_ms is not None else c.latency_ms
            return {"config": c.config, "accuracy": c.accuracy, "latency_ms": round(ms, 4),
                    "predicted_ms": round(c.latency_ms, 4), "measured": measured_ms is not None}

        facts = {"search": {
            "space": {"family": cfg.space.family, "kwargs": kwargs, "genes": len(space.choices())},
            "strategy": cfg.strategy, "candidates": cfg.candidates, "seed": cfg.seed, "score_split": cfg.score_split,
            "target": target.name, "budget_ms": now_budget, "baseline_ms": round(base_now.p50_ms, 4),
            "search_budget_ms": budget, "search_baseline_ms": round(base_ms, 4),
            "baseline_drift": round(base_now.p50_ms / base_ms, 4),
            "front": [point(c, measured.get(space.key(c.config))) for c in front],
            "random_front": [point(c) for c in pareto_front(runs["random"])],
            "hypervolume": hv, "hypervolume_reference": {"latency_ms": ref, "accuracy": 0.0},
            "latency_model": {**lat_facts, "validation_on_front": validation,
                              "front_session_correction": ({"a": session[0], "b": session[1], "w": session[2]}
                                                           if session else None),
                              "validation_note": "front subnets timed end to end in a later session with the "
                              "calibration subnets; the correction refitted on those (table: sums of the "
                              "blocks timed in the first session)"},
            "supernet": sn_hist, "executor": cfg.executor.kind, "accuracy_predictor": acc_pred,
            "chosen": {**point(chosen, measured[space.key(chosen.config)]), "finetune": ft_hist},
        }}
        like = replace(artifact, recipe=space.recipe(chosen.config), edits=())
        from compress.artifact import save_torch

        out = save_torch(sub, ctx.work_dir, like=like, producer=ctx.stage_name, edits=(), facts=facts)
        out = replace(out, parent=artifact.hash)
        out.write_manifest()
        shutil.rmtree(scratch, ignore_errors=True)
        return out

    # ---------------------------------------------------------------------------------------------
    def _latency_model(self, space, artifact, ctx, target, scratch):
        """(model, baseline p50 ms, facts); the table is cached per target fingerprint."""
        from compress.cache import cache_key
        from compress.runtimes.environment import fingerprint
        from compress.search import latency as lat

        cfg = self.config.latency
        env = fingerprint()
        target_fp = {"target": target.model_dump(mode="json", exclude={"name"}), "cpu": env.get("cpu_model"),
                     "flags": env.get("cpu_flags"), "cores": env.get("physical_cores"),
                     "packages": env.get("packages"), "export": ctx.export.model_dump(mode="json")}
        kind = cfg.predictor
        if kind == "auto":
            kind = "table" if space.blocks(space.largest()) else "learned"
        # the same calibration subnets whatever the search seed (one table), spread over the latency range
        nets = lat.calibration_configs(space, cfg.calibration_networks if kind == "table" else cfg.learned_networks)
        dev = lat.random_configs(space, cfg.development_networks, 31, nets) if kind == "table" else []
        key = cache_key(step="search-latency-model", rule="seams-cold-drift-median-weights",
                        **({"development": [space.key(c) for c in dev]} if dev else {}),
                        correction=cfg.correction, repeats=cfg.repeats, block_repeats=cfg.block_repeats,
                        kind=kind, space=space.origin, nets=[space.key(c) for c in nets],
                        timing=(cfg.timing or target.timing).model_dump(mode="json"), fp=target_fp,
                        baseline=artifact.hash)
        hit = ctx.measure.cache.get_json(key)
        if hit is not None:
            ctx.log(f"latency model ({kind}) for target '{target.name}': cached")
            return lat.LatencyModel.from_json(hit["model"]), hit["baseline_ms"], hit["facts"]
        base = {}

        def measure(arts):
            stats = ctx.measure.latency([artifact, *arts], target, cfg.timing,
                                        label=f"latency model: {len(arts)} artifact(s) on {target.name}")
            base["ms"] = stats[0].p50_ms
            return stats[1:]

        if kind == "table":
            model, _ = lat.build(space, measure, scratch / "table", input_shape=artifact.input_shape,
                                 calibration=nets, development=dev, correction=cfg.correction, repeats=cfg.repeats,
                                 block_repeats=cfg.block_repeats, log=ctx.log)
            cal = model.calibration
            fit = lat.validate([model.predict(space, r["config"]) for r in cal], [r["measured_ms"] for r in cal])
            raw = lat.validate([r["sum_ms"] for r in cal], [r["measured_ms"] for r in cal])
            facts = {"kind": "table", "blocks": len(model.table), "seams": len(model.seams),
                     "block_stat": model.block_stat, "session_drift": model.drift,
                     "correction": {"kind": model.correction, "a": model.a, "b": model.b, "w": model.w},
                     "selection": model.selection, "block_repeats": cfg.block_repeats,
                     "calibration_networks": len(cal), "plain_sum_on_calibration": raw,
                     "corrected_on_calibration": fit}
        else:
            arts = [lat.recipe_artifact(space.recipe(c), artifact.input_shape, scratch / f"net{i:03d}", seed=i)
                    for i, c in enumerate(nets)]
            ms = [s.p50_ms for s in measure(arts)]
            model = lat.fit_learned(space, nets, ms)
            facts = {"kind": "learned", "networks": len(nets), "why": "the space has no blocks()"
                     if self.config.latency.predictor == "auto" else "predictor: learned",
                     "in_sample": lat.validate([model.predict(space, c) for c in nets], ms)}
        ctx.log(f"latency model ({facts['kind']}) on '{target.name}': baseline {base['ms']:.3f} ms")
        ctx.measure.cache.put_json(key, {"model": model.to_json(), "baseline_ms": base["ms"], "facts": facts})
        return model, base["ms"], facts


def _spread(front: list, n: int) -> list:
    """At most ``n`` points of a latency-sorted front, evenly spread (always both ends)."""
    if len(front) <= n:
        return list(front)
    import numpy as np

    idx = sorted({int(round(i)) for i in np.linspace(0, len(front) - 1, n)})
    return [front[i] for i in idx]
