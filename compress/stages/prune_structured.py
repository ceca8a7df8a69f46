"""``prune.structured``: remove whole channels, so the deployed (dense) model really runs faster.

A thin adapter over torch-pruning 1.6: ``tp.pruner.BasePruner(model, example, importance=<tp.importance
class>, global_pruning=..., pruning_ratio=..., pruning_ratio_dict=..., max_pruning_ratio=...,
iterative_steps=..., ignored_layers=..., round_to=...)`` and ``pruner.step()``, with a fine-tune
(:func:`compress.training.train`, KD from the pre-pruning model by default) after every step. The pruned
structure is persisted as ``pruner.pruning_history()`` inside an artifact edit and replayed on the rebuilt
model by ``tp.DependencyGraph().build_dependency(...).load_pruning_history(...)``: no pickled modules.

The target is exactly one of:

- ``pruning_ratio: 0.5``: the fraction of channels torch-pruning removes from each prunable group;
- ``macs: {ratio: 0.4}``: the smallest channel ratio whose MACs are at most 0.4x the input's;
- ``latency: {ratio: 0.5, target: ort-cpu}`` or ``latency: {ms: 4.0}``: the smallest channel ratio whose
  exported model, timed *interleaved* with the input model on that target through ``ctx.measure``, runs at
  most 0.5x the input's p50 (or at most 4 ms). Candidates are pruned one-shot at growing ratios
  (``search_step``) until the target holds, then the bracket is bisected ``refine`` times.

The search uses un-fine-tuned copies: channel counts (and so latency and MACs) do not depend on the
weights with ``ranking: uniform``; with ``ranking: global`` the final structure may differ from the
searched one, and the final model's latency is measured and recorded either way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from compress.stages.base import TORCH_FLOAT, Patterns, Stage, StageConfig
from compress.training import FinetuneConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compress.artifact import Artifact
    from compress.context import StageContext

Importance = Literal["l1", "l2", "taylor", "bn_scale", "lamp", "fpgm", "random"]


class MacsTarget(StageConfig):
    ratio: float = Field(..., gt=0, lt=1, description="MACs after / MACs before (0.4: keep at most 40%).")


class LatencyTarget(StageConfig):
    ratio: float | None = Field(None, gt=0, lt=1, description="p50 after / p50 before, paired interleaved "
                                "ratio (0.5: twice as fast).")
    ms: float | None = Field(None, gt=0, description="Absolute p50 in milliseconds on the target.")
    target: str | None = Field(None, description="Target name (pipeline targets:); default: the first.")

    @model_validator(mode="after")
    def _one(self) -> "LatencyTarget":
        if (self.ratio is None) == (self.ms is None):
            raise ValueError("latency needs exactly one of ratio or ms")
        return self


class PruneStructuredConfig(StageConfig):
    pruning_ratio: float | None = Field(None, gt=0, lt=1, description="Fraction of channels removed per "
                                        "prunable group (torch-pruning pruning_ratio).")
    macs: MacsTarget | None = Field(None, description="Prune until MACs <= ratio x the input's.")
    latency: LatencyTarget | None = Field(None, description="Prune until the measured latency holds.")
    importance: Importance = Field("l2", description="Channel importance: l1/l2 group magnitude, taylor (first "
                                   "order, gradients on a few training batches), bn_scale, lamp, fpgm, random.")
    ranking: Literal["uniform", "global"] = Field(
        "uniform", description="uniform: the same ratio in every layer; global: rank channels across layers "
        "(torch-pruning global_pruning; prunes unevenly, bounded by max_layer_ratio).")
    max_layer_ratio: float = Field(0.9, gt=0, le=1, description="No layer loses more than this fraction "
                                   "(torch-pruning max_pruning_ratio).")
    round_to: int | None = Field(8, ge=1, description="Kept channels are a multiple of this; null: exact ratio. "
                                 "Default 8 by measurement (benchmarks/prune_round_to.py): ResNet-18 pruned to odd "
                                 "channel counts realised 0.66 of its MAC reduction in ONNX Runtime, to multiples "
                                 "of 8 about 1.0.")
    ignored: Patterns = Field(default_factory=list, description="Regular expressions searched in module names "
                              "(e.g. 'layers\\\\.0\\\\.'); matching modules are not pruned. The classifier head "
                              "(the layer producing the model output) is always kept.")
    ratios: dict[str, float] = Field(default_factory=dict, description="Per-layer pruning ratio by module-name "
                                     "regex (re.search), e.g. {'layers\\\\.3\\\\.': 0.3}; overrides the target "
                                     "ratio for those layers.")
    iterative_steps: int = Field(1, ge=1, description="Prune in this many equal steps, fine-tuning after each.")
    bn_recalibration: int = Field(10, ge=0, description="Training batches (of 64) that re-estimate BatchNorm "
                                  "statistics after each step and after each fine-tune (0: off). Pruning shifts "
                                  "every later BatchNorm's input: without it a 50%-pruned ResNet-18 on digits "
                                  "scored 10%, with it 85% before any fine-tune.")
    finetune: FinetuneConfig | None = Field(default_factory=FinetuneConfig, description="Fine-tune after each "
                                            "step (KD from the pre-pruning model by default); null: none.")
    search_step: float = Field(0.05, gt=0, lt=1, description="macs/latency targets: channel-ratio increment "
                               "between candidates.")
    max_search_ratio: float = Field(0.9, gt=0, lt=1, description="macs/latency targets: give up beyond this "
                                    "channel ratio.")
    refine: int = Field(3, ge=0, le=8, description="Bisection steps after the target is first met.")
    taylor_batches: int = Field(4, ge=1, description="importance: taylor: training batches whose gradients "
                                "score the channels.")
    seed: int = Field(0, description="Seeds random importance and the gradient batches.")

    @model_validator(mode="after")
    def _one_target(self) -> "PruneStructuredConfig":
        given = [k for k in ("pruning_ratio", "macs", "latency") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one target: pruning_ratio, macs or latency"
                             + (f" (got {', '.join(given)})" if given else ""))
        for pattern, r in self.ratios.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"ratios: '{pattern}' is not a valid regular expression ({e})") from None
            if not 0 <= r < 1:
                raise ValueError(f"ratios['{pattern}'] must be in [0, 1), got {r}")
        return self


# --------------------------------------------------------------------------------------------------
# torch-pruning adapter


def make_importance(name: str):
    import torch_pruning as tp

    imp = tp.importance
    return {"l1": lambda: imp.GroupMagnitudeImportance(p=1), "l2": lambda: imp.GroupMagnitudeImportance(p=2),
            "taylor": imp.GroupTaylorImportance, "bn_scale": imp.BNScaleImportance, "lamp": imp.LAMPImportance,
            "fpgm": imp.FPGMImportance, "random": imp.RandomImportance}[name]()


def output_layers(model: "torch.nn.Module", example: "torch.Tensor") -> list[str]:
    """Names of the Conv/Linear modules whose output *is* the model output (the classifier head); the last
    such module in definition order when none is (the output is post-processed)."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    seen: dict[str, Any] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o))
             for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    heads = [n for n, o in seen.items() if o is out]
    return heads or [n for n, m in model.named_modules() if isinstance(m, kinds)][-1:]


def _matching(model: "torch.nn.Module", pattern: str, kinds) -> list[tuple[str, "torch.nn.Module"]]:
    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, kinds) and re.search(pattern, n)]


def make_pruner(model: "torch.nn.Module", cfg: PruneStructuredConfig, input_shape: tuple[int, ...], ratio: float,
                steps: int):
    """``tp.pruner.BasePruner`` for ``cfg`` at channel ratio ``ratio`` over ``steps`` steps."""
    import torch
    import torch_pruning as tp

    from compress.errors import StageError

    example = torch.zeros(1, *input_shape[1:])
    prunable = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    names = [n for n, m in model.named_modules() if n and isinstance(m, prunable)]
    ignored = [model.get_submodule(n) for n in output_layers(model, example)]
    for pattern in cfg.ignored:
        hits = _matching(model, pattern, torch.nn.Module)
        if not hits:
            raise StageError(f"prune.structured: ignored pattern '{pattern}' matches no module",
                             hint=f"module names look like: {', '.join(names[:8])}")
        ignored += [m for _, m in hits]
    ratio_dict = {}
    for pattern, r in cfg.ratios.items():
        hits = _matching(model, pattern, prunable)
        if not hits:
            raise StageError(f"prune.structured: ratios pattern '{pattern}' matches no Conv/Linear module",
                             hint=f"module names look like: {', '.join(names[:8])}")
        ratio_dict.update({m: r for _, m in hits})
    return tp.pruner.BasePruner(
        model, example, importance=make_importance(cfg.importance), global_pruning=cfg.ranking == "global",
        pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None, max_pruning_ratio=cfg.max_layer_ratio,
        iterative_steps=steps, ignored_layers=ignored, round_to=cfg.round_to,
        # fresh dicts: torch-pruning's defaults are shared mutable objects that its constructor fills in
        in_channel_groups={}, out_channel_groups={}, num_heads={}, channel_groups={})


def history_json(pruner) -> list[list[Any]]:
    """``pruner.pruning_history()`` as plain JSON: ``[[module name, is out-channel pruning, [indices]], ...]``."""
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.pruning_history()]


def replay(model: "torch.nn.Module", artifact_dir: Path, history: list, input_shape: list[int]) -> None:
    """The artifact edit: redo the recorded pruning on a freshly built model (weights are loaded after)."""
    import torch
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape[1:]))
    graph.load_pruning_history(history)


def prune_edit(history: list, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"replay": "compress.stages.prune_structured:replay",
            "params": {"history": history, "input_shape": list(input_shape)}}


def kept_channels(before: "torch.nn.Module", after: "torch.nn.Module") -> dict[str, list[int]]:
    """``{layer: [kept, initial]}`` output channels/features of every Conv/Linear."""
    import torch

    def width(m) -> int:
        return m.out_channels if isinstance(m, torch.nn.modules.conv._ConvNd) else m.out_features

    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    initial = {n: width(m) for n, m in before.named_modules() if isinstance(m, kinds)}
    return {n: [width(m), initial.get(n, width(m))] for n, m in after.named_modules() if isinstance(m, kinds)}


def taylor_gradients(model: "torch.nn.Module", ctx: "StageContext", teacher, batches: int, seed: int,
                     batch_size: int = 32) -> None:
    """Accumulate gradients for ``GroupTaylorImportance`` on a few seeded training batches (labels, or KD
    against ``teacher`` when the data has none)."""
    import torch
    import torch.nn.functional as F

    from compress.training import kd_loss

    x, y = ctx.dataset.split("train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: batches * batch_size]
    model.zero_grad(set_to_none=True)
    model.eval()
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size].numpy()
        xb = torch.from_numpy(x[b])
        out = model(xb)
        if y is not None:
            loss = F.cross_entropy(out, torch.from_numpy(y[b]))
        else:
            with torch.no_grad():
                t = teacher(xb)
            loss = kd_loss(out, t, 1.0)
        loss.backward()


# --------------------------------------------------------------------------------------------------
# the stage


class PruneStructured(Stage):
    """Structured channel pruning (torch-pruning) to a channel ratio, a MACs or a measured latency target."""

    type: ClassVar[str] = "prune.structured"
    Config = PruneStructuredConfig
    accepts = (TORCH_FLOAT,)
    summary = ("Structured channel pruning (torch-pruning BasePruner) to a channel ratio, MACs or measured "
               "latency target; fine-tune with KD between steps.")

    # -- pruning a copy --------------------------------------------------------------------------
    def _pruned(self, base: "torch.nn.Module", ratio: float, ctx: "StageContext", teacher) -> tuple[Any, list]:
        """A one-shot pruned copy of ``base`` at ``ratio`` and its history (the search's candidates)."""
        import copy

        import torch

        model = copy.deepcopy(base)
        pruner = make_pruner(model, self.config, self._shape, ratio, 1)
        self._step(pruner, model, ctx, teacher, 0)
        with torch.no_grad():
            model.zero_grad(set_to_none=True)
        return model, history_json(pruner)

    def _step(self, pruner, model, ctx: "StageContext", teacher, k: int) -> None:
        import torch

        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + k)
            if cfg.importance == "taylor":
                taylor_gradients(model, ctx, teacher, cfg.taylor_batches, cfg.seed + k)
            pruner.step()
        model.zero_grad(set_to_none=True)

    def _macs(self, model) -> tuple[int, int]:
        from compress.facts import torch_facts

        f = torch_facts(model, self._shape)
        return f["macs"], f["params"]

    def _candidate(self, artifact: "Artifact", model, history: list, ctx: "StageContext", tag: str) -> "Artifact":
        from compress.artifact import save_torch

        edits = artifact.edits + (prune_edit(history, self._shape),)
        return save_torch(model, ctx.work_dir / "candidates" / tag, like=artifact,
                          producer=f"{ctx.stage_name}:{tag}", edits=edits)

    def _latency(self, artifact: "Artifact", cand: "Artifact", ctx: "StageContext") -> dict[str, float]:
        """Paired interleaved timing of ``[input, candidate]`` through the measurement service."""
        measure = ctx.measure
        target = self.config.latency.target if self.config.latency else None
        before, after = measure.latency([artifact, cand], target)
        speedup = measure.speedup(before, after)
        return {"p50_ms_before": round(before.p50_ms, 4), "p50_ms": round(after.p50_ms, 4),
                "latency_ratio": round(1 / speedup, 4), "speedup": round(speedup, 4)}

    # -- the search for the ratio that meets a macs/latency target ---------------------------------
    def _search(self, artifact: "Artifact", base, ctx: "StageContext", teacher, macs0: int) -> tuple[float, list]:
        from compress.errors import StageError

        cfg = self.config
        trail: list[dict[str, Any]] = []

        def meets(r: float) -> bool:
            model, hist = self._pruned(base, r, ctx, teacher)
            macs, _ = self._macs(model)
            point: dict[str, Any] = {"ratio": round(r, 4), "macs_ratio": round(macs / macs0, 4)}
            if cfg.macs is not None:
                ok = macs <= cfg.macs.ratio * macs0
            else:
                cand = self._candidate(artifact, model, hist, ctx, f"r{r:.4f}")
                point.update(self._latency(artifact, cand, ctx))
                ok = (point["latency_ratio"] <= cfg.latency.ratio if cfg.latency.ratio is not None
                      else point["p50_ms"] <= cfg.latency.ms)
            point["meets"] = ok
            trail.append(point)
            ctx.log("search: channel ratio {ratio} -> MACs x{macs_ratio}".format(**point)
                    + (f", latency x{point['latency_ratio']} ({point['p50_ms']} ms)" if "p50_ms" in point else "")
                    + (" meets the target" if ok else ""))
            return ok

        lo, hi, r = 0.0, None, 0.0
        while hi is None:
            r = min(round(r + cfg.search_step, 6), cfg.max_search_ratio)
            if meets(r):
                hi = r
            elif r >= cfg.max_search_ratio:
                last = trail[-1]
                what = (f"MACs x{last['macs_ratio']} > {cfg.macs.ratio}" if cfg.macs is not None else
                        f"measured latency x{last['latency_ratio']} ({last['p50_ms']} ms)")
                raise StageError(
                    f"prune.structured: the target cannot be reached: at channel ratio {r} (max_search_ratio) "
                    f"the model still has {what}; the ignored layers (the classifier head "
                    f"{', '.join(output_layers(base, self._example()))}"
                    + (f", {', '.join(cfg.ignored)}" if cfg.ignored else "")
                    + "), max_layer_ratio and the unprunable ops (stem, pooling, runtime overhead) keep the rest",
                    hint="raise max_search_ratio / max_layer_ratio, or relax the target")
            else:
                lo = r
        for _ in range(cfg.refine):
            mid = round((lo + hi) / 2, 6)
            if hi - lo < 0.005:
                break
            if meets(mid):
                hi = mid
            else:
                lo = mid
        self._trail = trail
        return hi, trail

    def _example(self):
        import torch

        return torch.zeros(1, *self._shape[1:])

    # -- run ----------------------------------------------------------------------------------------
    def run(self, artifact: "Artifact", ctx: "StageContext") -> "Artifact":
        import shutil

        from compress.artifact import save_torch
        from compress.errors import StageError
        from compress.training import accuracy

        cfg = self.config
        self._shape = artifact.input_shape
        if cfg.latency is not None and ctx.measure is None:
            raise StageError("prune.structured: a latency target needs the measurement service (ctx.measure)")
        teacher = ctx.load_torch(artifact)
        model = ctx.load_torch(artifact)
        labelled = ctx.labelled
        macs0, params0 = self._macs(model)
        facts: dict[str, Any] = {"macs_before": macs0, "params_before": params0, "importance": cfg.importance,
                                 "ranking": cfg.ranking, "round_to": cfg.round_to}
        if cfg.pruning_ratio is not None:
            ratio = cfg.pruning_ratio
        else:
            ratio, trail = self._search(artifact, model, ctx, teacher, macs0)
            facts["search"] = trail
            shutil.rmtree(ctx.work_dir / "candidates", ignore_errors=True)
        facts["pruning_ratio"] = ratio
        if labelled:
            facts["accuracy_before"] = round(accuracy(teacher, ctx.dataset), 4)

        pruner = make_pruner(model, cfg, self._shape, ratio, cfg.iterative_steps)
        steps: list[dict[str, Any]] = []
        for k in range(cfg.iterative_steps):
            self._step(pruner, model, ctx, teacher, k)
            rec: dict[str, Any] = {"step": k + 1, "macs": self._macs(model)[0]}
            steps.append(ctx.finetune_step(model, cfg.finetune, teacher, rec, k, cfg.iterative_steps,
                                           f"MACs x{rec['macs'] / macs0:.3f}", cfg.bn_recalibration))
        macs1, params1 = self._macs(model)
        facts.update({"steps": steps, "macs_after": macs1, "params_after": params1,
                      "macs_reduction": round(macs0 / macs1, 4), "params_reduction": round(params0 / params1, 4),
                      "kept_channels": kept_channels(teacher, model)})
        history = history_json(pruner)
        edits = artifact.edits + (prune_edit(history, self._shape),)
        out = save_torch(model, ctx.work_dir, like=artifact, producer=ctx.stage_name, edits=edits)
        if ctx.measure is not None:
            lat = self._latency(artifact, out, ctx)
            facts["latency"] = lat
            facts["realised_vs_macs"] = round(lat["speedup"] / facts["macs_reduction"], 4)
            facts["latency_saved_vs_macs_saved"] = round((1 - lat["latency_ratio"]) / (1 - macs1 / macs0), 4)
            ctx.log(f"measured: p50 {lat['p50_ms_before']} -> {lat['p50_ms']} ms (x{lat['latency_ratio']}, "
                    f"{lat['speedup']}x faster) for MACs /{facts['macs_reduction']}: realised "
                    f"{facts['realised_vs_macs']} of the MAC reduction")
        return save_torch(model, ctx.work_dir, like=artifact, producer=ctx.stage_name, edits=edits, facts=facts)
