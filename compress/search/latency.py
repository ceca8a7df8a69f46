"""The latency model, built on the target: every block choice of a space is exported and timed on its own
at the input shape it sees in the network, *in the same interleaved session* as one adjacent pair of
blocks per kind of boundary (its *seam*, :mod:`compress.search.seams`), up to 10 whole networks and any
held-out networks. A network's latency is the sum of its blocks minus the seams between them (a block
timed alone pays the call, its edge copies/layout reorders and, in INT8, its own Quantize/Dequantize
again; the seam is that overcount, measured), times one scale fitted on the whole networks (median of
measured / predicted: one parameter, robust to one noisy network; ``correction="affine"`` fits ``a * x + b``
instead). The table is cached per target fingerprint.

When a space has no blocks (a user space without ``blocks()``) or the table misses on held-out
networks, a small learned predictor (ridge regression on the config encoding, scikit-learn) fitted on
measured whole networks is used instead; :attr:`LatencyModel.kind` says which one is in use.

Measurement goes through a ``measure(artifacts) -> list[LatencyStats]`` callable (the stage passes
``ctx.measure.latency``); this module never opens a runtime session.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from compress.search import seams as seam_rule
from compress.search.space import Block, Config, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact


@dataclass
class LatencyModel:
    kind: str  # "table" (sum of blocks - seams, corrected) | "learned" (ridge on the encoding)
    table: dict[str, dict[str, float]] = field(default_factory=dict)  # block key -> {ms, params, macs}
    seams: dict[str, float] = field(default_factory=dict)  # seam key -> ms a block boundary overcounts
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # seam key -> {blocks, p50_ms, cold_ms}
    block_stat: str = "p50"  # which statistic the entries ("ms") and seams are: "cold" | "p50"
    drift: float = 0.0  # per-session-position drift (log scale) the timings were corrected for
    selection: dict[str, Any] = field(default_factory=dict)  # how block_stat was chosen (leave-one-out MAPEs)
    correction: str = "affine"  # "scale" (b = 0) | "affine" | "weights" (+ w * weights): how a, b, w were fitted
    a: float = 1.0
    b: float = 0.0
    w: float = 0.0  # ms per million weights a network pays beyond its blocks' sum ("weights" correction)
    ridge: dict[str, Any] | None = None  # {"coef": [...], "intercept": x}
    calibration: list[dict[str, Any]] = field(default_factory=list)  # [{config, sum_ms, measured_ms}]
    development: list[dict[str, Any]] = field(default_factory=list)  # the same for the networks that chose

    def raw(self, space: SearchSpace, config: Config) -> float:
        """Plain sum of the config's block timings (ms); raises KeyError on a block not in the table."""
        return sum(self.table[b.key]["ms"] for b in space.blocks(config))

    def base(self, space: SearchSpace, config: Config) -> float:
        """Sum of blocks minus the seams between them (ms), before the fitted correction; without seams
        (a table built without them) the plain sum."""
        if not self.seams:
            return self.raw(space, config)
        return self.raw(space, config) - sum(self.seams[k] for k in seam_rule.seams(space, config))

    def seams_from_pairs(self) -> dict[str, float]:
        """seam = entry(block 1) + entry(block 2) - pair, all in ``block_stat``."""
        key = f"{self.block_stat}_ms"
        return {k: sum(self.table[b][key] for b in p["blocks"]) - p[key] for k, p in self.pairs.items()}

    def restat(self, block_stat: str) -> "LatencyModel":
        """A copy whose entries and seams are ``block_stat`` (uncorrected: a = 1, b = w = 0)."""
        import copy

        m = copy.deepcopy(self)
        m.block_stat, m.a, m.b, m.w = block_stat, 1.0, 0.0, 0.0
        for e in m.table.values():
            e["ms"] = e[f"{block_stat}_ms"]
        m.seams = m.seams_from_pairs()
        return m

    def weights(self, space: SearchSpace, config: Config) -> float:
        """The config's weights (millions): the sum of its blocks' parameter counts."""
        return sum(self.table[b.key]["params"] for b in space.blocks(config)) / 1e6

    def predict(self, space: SearchSpace, config: Config) -> float:
        if self.kind == "learned":
            enc = space.encode(config)
            return float(sum(c * e for c, e in zip(self.ridge["coef"], enc)) + self.ridge["intercept"])
        return self.a * self.base(space, config) + self.b + (self.w * self.weights(space, config) if self.w else 0.0)

    def refit(self, space: SearchSpace, configs: list[Config], measured: list[float]) -> "LatencyModel":
        """A copy whose correction (``self.correction``) is fitted to ``configs`` measured as ``measured`` (ms):
        what the stage does when it re-times the calibration subnets in a later session."""
        import copy

        m = copy.deepcopy(self)
        m.a, m.b, m.w = fit_correction([m.base(space, c) for c in configs], measured, m.correction,
                                       [m.weights(space, c) for c in configs])
        return m

    def counts(self, space: SearchSpace, config: Config) -> dict[str, int] | None:
        """Params and MACs as sums over blocks (exact: every layer sits in one block); None without a table."""
        blocks = space.blocks(config)
        if not blocks or any(b.key not in self.table for b in blocks):
            return None
        return {k: int(sum(self.table[b.key][k] for b in blocks)) for k in ("params", "macs")}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "table": self.table, "seams": self.seams, "pairs": self.pairs,
                "block_stat": self.block_stat, "drift": self.drift, "selection": self.selection,
                "correction": self.correction,
                "a": self.a, "b": self.b, "w": self.w, "ridge": self.ridge, "calibration": self.calibration,
                "development": self.development}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LatencyModel":
        return cls(**d)


def all_blocks(space: SearchSpace) -> list[Block]:
    """Every distinct block of the space: the blocks of ``space.covering_configs()`` when it has one, else of
    the largest, the smallest and 500 seeded random configs (a block missed here makes the table miss)."""
    seen: dict[str, Block] = {}
    for c in covering(space):
        for b in space.blocks(c) or []:
            seen.setdefault(b.key, b)
    return list(seen.values())


def covering(space: SearchSpace) -> list[Config]:
    """``space.covering_configs()`` when it has one, else the largest, the smallest and 500 seeded random configs."""
    import numpy as np

    if hasattr(space, "covering_configs"):
        return space.covering_configs()
    rng = np.random.default_rng(0)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(500)]


def block_artifact(block: Block, folder: Path, *, seed: int = 0) -> "Artifact":
    """A small torch artifact of one block (random weights: float latency does not depend on them)."""
    return recipe_artifact(block.recipe, block.input_shape, folder, seed=seed, producer=f"search:block:{block.kind}")


def recipe_artifact(recipe: dict[str, Any], input_shape: tuple[int, ...], folder: Path, *, seed: int = 0,
                    producer: str = "search", model=None) -> "Artifact":
    import torch

    from compress.artifact import Artifact, import_callable, save_torch

    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = import_callable(recipe["callable"])(**recipe["kwargs"]).eval()
    stub = Artifact(format="torch", precision="float32", dir=folder, files={}, file_hashes={},
                    input_shape=tuple(input_shape), recipe=recipe)
    return save_torch(model, folder, like=stub, producer=producer)


def block_counts(block: Block) -> dict[str, int]:
    from compress.artifact import import_callable
    from compress.facts import torch_facts

    f = torch_facts(import_callable(block.recipe["callable"])(**block.recipe["kwargs"]).eval(), block.input_shape)
    return {"params": f["params"], "macs": f["macs"]}


Measure = Callable[[list["Artifact"]], list[Any]]  # artifacts -> LatencyStats (p50_ms), timed interleaved


def build(space: SearchSpace, measure: Measure, work_dir: Path, *, input_shape: tuple[int, ...],
          calibration: list[Config], holdout: list[Config] = (), development: list[Config] = (),
          prepare: Callable[["Artifact"], "Artifact"] | None = None,
          repeats: int = 1, block_repeats: int = 1, seams: bool = True, correction: str = "affine",
          block_stat: str = "auto", shuffle: int | None = 0,
          network: Callable[[Config, Path, int], "Artifact"] | None = None,
          log: Callable[[str], None] = lambda m: None) -> tuple[LatencyModel, list[dict[str, Any]]]:
    """Time every block, one pair of blocks per seam (``seams``), the ``calibration`` networks (<= 10, for
    the correction) and the ``holdout`` networks in ONE interleaved measurement; return the model and the
    held-out rows ``[{config, predicted_ms, sum_ms, base_ms, measured_ms, measured_reps}]``.

    * ``prepare`` turns each torch artifact into what is timed (e.g. an INT8 ONNX); default: the artifact
      itself (the measurement service exports it). ``network(config, folder, i)`` builds a whole network's
      artifact (default: ``space.recipe(config)`` with seeded random weights; a
      :class:`~compress.search.pruned.PrunedView` needs the pruned network).
    * ``repeats`` > 1 times every calibration and held-out network in that many sessions of the same
      measurement: ``measured_ms`` is their median, ``measured_reps`` each one (their disagreement is the
      measurement's own repeatability: two ORT sessions of one file differ by a few percent, memory
      placement). With repeats, the calibration networks' sessions also give the drift with the order
      sessions were opened in (:func:`session_drift`); every timing is corrected for it (``raw_reps``: before).
    * ``block_repeats`` > 1 times every block and pair in that many sessions too; an entry is the median
      over its sessions (``p50_reps``/``cold_reps`` in the table: each one).
    * ``shuffle`` (a seed; None: off) puts the sessions in a random order: with hundreds of sessions in one
      process the order they are created in shifts a network's time by a few percent (memory placement),
      which must not line up with blocks / calibration / held-out.
    * ``block_stat``: what a block's (and a pair's) entry is: ``"cold"``, :func:`cold_ms`, its call right
      after the other sessions ran, as in a network where the other blocks evict its weights; ``"p50"``,
      the median of all its calls (back to back: its weights stay in cache); ``"auto"`` (default): the one
      whose corrected sum predicts the calibration networks better, leave-one-out (:func:`loo_mape`).
    * ``correction``: ``"scale"``, ``"affine"``, ``"weights"`` (affine plus ``w`` ms per million weights:
      a block timed alone keeps its weights in cache between calls, in a network the other blocks evict
      them, so a network pays for streaming its weights again) or ``"auto"``: affine or weights, whichever
      predicts the calibration networks better leave-one-out (chosen jointly with ``block_stat``).
    * ``development``: networks timed like the others (``repeats`` sessions) that only *choose* the "auto"
      block statistic and correction (:func:`choose`): the candidate fitted on the calibration networks that
      predicts them best; nothing is fitted on them.
      Networks are always their p50 (a network run repeatedly is the deployment)."""
    import numpy as np

    if len(calibration) > 10:
        raise ValueError("the correction is fitted on at most 10 measured networks")
    if correction not in CORRECTIONS or block_stat not in ("auto", "cold", "p50"):
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)} ('{correction}'), block_stat auto, "
                         f"cold or p50 ('{block_stat}')")
    prepare = prepare or (lambda a: a)
    blocks = all_blocks(space)
    pairs = seam_rule.representative_pairs(space, covering(space)) if seams else {}
    log(f"latency table: {len(blocks)} blocks, {len(pairs)} seams (x{block_repeats}), {len(calibration)} "
        f"calibration, {len(development)} development and {len(holdout)} held-out networks (x{repeats})")
    units = [prepare(block_artifact(b, work_dir / f"block{i:04d}")) for i, b in enumerate(blocks)]
    units += [prepare(block_artifact(seam_rule.pair_block(*p), work_dir / f"pair{i:04d}")) for i, p in enumerate(pairs.values())]
    nets = list(calibration) + list(development) + list(holdout)
    network = network or (lambda c, folder, i: recipe_artifact(space.recipe(c), input_shape, folder, seed=i))
    net_arts = [prepare(network(c, work_dir / f"net{i:04d}", i)) for i, c in enumerate(nets)]
    arts = units * block_repeats + net_arts * repeats  # a repeat: the same file, its own session
    order = list(range(len(arts))) if shuffle is None else [int(i) for i in np.random.default_rng(shuffle).permutation(len(arts))]
    stats, pos = [None] * len(arts), np.zeros(len(arts))
    for k, (i, st) in enumerate(zip(order, measure([arts[i] for i in order]))):
        stats[i], pos[i] = st, k
    first, nu = len(units) * block_repeats, len(units)
    p50 = np.asarray([st.p50_ms for st in stats])
    cal = slice(0, len(calibration))
    drift = session_drift(p50[first:].reshape(repeats, len(nets))[:, cal], pos[first:].reshape(repeats, len(nets))[:, cal])
    fix = np.exp(-drift * (pos - pos.mean()))  # every session moved to the average position
    p50, cold = p50 * fix, np.asarray([cold_ms(st) for st in stats]) * fix
    u50, ucold = p50[:first].reshape(block_repeats, nu), cold[:first].reshape(block_repeats, nu)
    e50, ecold = np.median(u50, axis=0), np.median(ucold, axis=0)  # an entry: the median over its sessions
    table = {b.key: {"ms": float(e50[i]), "p50_ms": float(e50[i]), "cold_ms": float(ecold[i]),
                     "p50_reps": [float(v) for v in u50[:, i]], "cold_reps": [float(v) for v in ucold[:, i]],
                     **block_counts(b)} for i, b in enumerate(blocks)}
    model = LatencyModel(kind="table", table=table, correction=correction, block_stat="p50", drift=drift,
                         pairs={k: {"blocks": [a.key, b.key], "p50_ms": float(e50[len(blocks) + j]),
                                    "cold_ms": float(ecold[len(blocks) + j]),
                                    "p50_reps": [float(v) for v in u50[:, len(blocks) + j]],
                                    "cold_reps": [float(v) for v in ucold[:, len(blocks) + j]]}
                                for j, (k, (a, b)) in enumerate(pairs.items())})
    net_ms, raw_ms = p50[first:].reshape(repeats, len(nets)), (p50 / fix)[first:].reshape(repeats, len(nets))
    cal_ms = [float(np.median(net_ms[:, i])) for i in range(len(calibration))]
    nd = len(calibration) + len(development)
    dev = (list(development), [float(np.median(net_ms[:, i])) for i in range(len(calibration), nd)])
    model = choose(model, space, calibration, cal_ms, block_stat, correction, dev if development else None)
    cal_rows = [{"config": c, "sum_ms": model.raw(space, c), "base_ms": model.base(space, c), "measured_ms": m,
                 "measured_reps": [float(v) for v in net_ms[:, i]]} for i, (c, m) in enumerate(zip(calibration, cal_ms))]
    model.calibration = cal_rows
    model.development = [{"config": c, "base_ms": model.base(space, c), "measured_ms": m,
                          "measured_reps": [float(v) for v in net_ms[:, len(calibration) + i]]}
                         for i, (c, m) in enumerate(zip(*dev))]
    rows = [{"config": c, "predicted_ms": model.predict(space, c), "sum_ms": model.raw(space, c),
             "base_ms": model.base(space, c), "weights_m": model.weights(space, c),
             "measured_ms": float(np.median(net_ms[:, nd + i])),
             "measured_reps": [float(v) for v in net_ms[:, nd + i]],
             "raw_reps": [float(v) for v in raw_ms[:, nd + i]]} for i, c in enumerate(holdout)]
    return model, rows


CORRECTIONS = ("scale", "affine", "weights", "auto")


def choose(model: LatencyModel, space: SearchSpace, calibration: list[Config], measured: list[float],
           block_stat: str = "auto", correction: str = "auto",
           development: tuple[list[Config], list[float]] | None = None) -> LatencyModel:
    """``model`` with its block statistic and correction chosen ("auto"), then fitted on all the calibration
    networks. The choice: by leave-one-out MAPE on the calibration networks (:func:`loo_mape`), or, given
    ``development`` networks (configs, measured ms; timed in the same session), by the MAPE on them of each
    candidate fitted on all the calibration networks (more networks, none of them fitted on: the
    leave-one-out error of 10 networks is as noisy as the differences it decides). Ties go to p50 and the
    fewer parameters. ``model.selection`` records every candidate's score."""
    stats = ("cold", "p50") if block_stat == "auto" else (block_stat,)
    corrs = ("affine", "weights") if correction == "auto" else (correction,)
    loo: dict[str, float | None] = {}
    dev: dict[str, float] = {}
    for stat in stats:
        m = model.restat(stat)
        base = [m.base(space, c) for c in calibration]
        weights = [m.weights(space, c) for c in calibration]
        for corr in corrs:
            loo[f"{stat}/{corr}"] = loo_mape(base, measured, corr, weights)
            if development:
                m.correction = corr
                fitted = m.refit(space, calibration, measured)
                dev[f"{stat}/{corr}"] = mape_pct([fitted.predict(space, c) for c in development[0]], development[1])
    score = dev or loo
    rank = {("p50", "affine"): 0, ("p50", "scale"): 0, ("p50", "weights"): 1, ("cold", "affine"): 2,
            ("cold", "scale"): 2, ("cold", "weights"): 3}
    best = min(score, key=lambda k: (float("inf") if score[k] is None else score[k], rank[tuple(k.split("/"))]))
    stat, corr = best.split("/")
    m = model.restat(stat)
    m.correction = corr
    m = m.refit(space, calibration, measured)
    m.selection = {"block_stat": block_stat, "correction": correction, "by": "development" if dev else "loo",
                   "loo_mape_pct": loo, **({"development_mape_pct": dev, "development_networks": len(development[0])}
                                           if dev else {})}
    return m


def mape_pct(predicted: list[float], measured: list[float]) -> float:
    """Mean absolute percentage error (%) of ``predicted`` against ``measured``."""
    return round(_mape(predicted, measured) * 100, 4)


def _mape(predicted, measured) -> float:
    """Mean absolute relative error (a fraction, unrounded): the one formula every fit and choice here uses."""
    import numpy as np

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(p - m) / m))


def loo_mape(predicted: list[float], measured: list[float], correction: str,
             weights: list[float] | None = None) -> float | None:
    """Leave-one-out MAPE (%) of ``fit_correction`` on (predicted, measured) pairs: each network predicted
    by the correction fitted on the others (None below 3 networks, or 4 for "weights")."""
    import numpy as np

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    wt = np.zeros(len(p)) if weights is None else np.asarray(weights, float)
    if len(p) < (4 if correction == "weights" else 3):
        return None
    pred = []
    for j in range(len(p)):
        keep = np.arange(len(p)) != j
        a, b, w = fit_correction(list(p[keep]), list(m[keep]), correction, list(wt[keep]))
        pred.append(a * p[j] + b + w * wt[j])
    return mape_pct(pred, m)


def session_drift(ms, position) -> float:
    """How a session's time moves with the order it was opened in (log scale, per position), from networks
    timed in several sessions each (``ms``, ``position``: shape (repeats, networks); the build passes the
    calibration networks only). With hundreds of sessions in one process, the same file ran up to several
    percent faster in a later-opened session on the 2-core EPYC (memory placement). Least squares through
    the origin of log(session a / session b) on (position a - position b); 0 without repeats."""
    import numpy as np

    ms, position = np.asarray(ms, float), np.asarray(position, float)
    if ms.ndim != 2 or ms.shape[0] < 2 or ms.shape[1] < 1:
        return 0.0
    pairs = list(itertools.combinations(range(ms.shape[0]), 2))
    ls = np.concatenate([np.log(ms[a] / ms[b]) for a, b in pairs])
    dp = np.concatenate([position[a] - position[b] for a, b in pairs])
    return float(np.sum(ls * dp) / np.sum(dp * dp)) if np.sum(dp * dp) > 0 else 0.0


def cold_ms(stats) -> float:
    """Median over the interleaving rounds of a session's *first* call in the round (the one right after
    the other sessions ran); the p50 when the stats carry no rounds."""
    import numpy as np

    rounds = getattr(stats, "rounds", None)  # a latency model's callers may time with stats that keep none
    if not rounds:
        return stats.p50_ms
    first: dict[int, float] = {}
    for r, v in zip(rounds, stats.samples_ms):
        first.setdefault(r, v)
    return float(np.median(list(first.values())))


def fit_correction(predicted: list[float], measured: list[float], correction: str = "affine",
                   weights: list[float] | None = None) -> tuple[float, float, float]:
    """``(a, b, w)`` with ``measured ~ a * predicted + b + w * weights``: ``"scale"``: b = w = 0, a = median
    ratio (one parameter, robust to one noisy network); ``"affine"``: :func:`fit_affine` (w = 0);
    ``"weights"``: :func:`fit_weights`."""
    import numpy as np

    if correction == "weights":
        return fit_weights(predicted, weights if weights is not None else [0.0] * len(predicted), measured)
    if correction == "affine":
        return (*fit_affine(predicted, measured), 0.0)
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return (float(np.median(m / p)), 0.0, 0.0) if len(p) else (1.0, 0.0, 0.0)


def fit_weights(sums: list[float], weights: list[float], measured: list[float]) -> tuple[float, float, float]:
    """Least-squares ``measured ~ a * sum + w * weights + b`` (``weights``: millions of parameters): what a
    network pays to stream its weights, which its blocks timed alone keep in cache. Physical guard: a > 0
    and w >= 0 and no worse on its own networks than :func:`fit_affine`, else that affine (w = 0)."""
    import numpy as np

    s, wt, m = np.asarray(sums, float), np.asarray(weights, float), np.asarray(measured, float)
    a0, b0 = fit_affine(sums, measured)
    if len(s) < 3 or np.ptp(wt) == 0:
        return a0, b0, 0.0
    x = np.stack([s, wt, np.ones_like(s)], axis=1)
    (a, w, b), *_ = np.linalg.lstsq(x, m, rcond=None)

    if a > 0 and w >= 0 and _mape(a * s + b + w * wt, m) <= _mape(a0 * s + b0, m):
        return float(a), float(b), float(w)
    return a0, b0, 0.0


def fit_affine(sums: list[float], measured: list[float]) -> tuple[float, float]:
    """Least-squares ``measured ~ a * sum + b``; with one network only the offset, with none the identity.
    A fit that is worse on its own networks than a pure scale (median ratio) is replaced by that scale."""
    import numpy as np

    s, m = np.asarray(sums, float), np.asarray(measured, float)
    if len(s) == 0:
        return 1.0, 0.0
    scale = float(np.median(m / s))
    if len(s) == 1 or np.ptp(s) == 0:
        return scale, 0.0
    a, b = np.polyfit(s, m, 1)

    return (float(a), float(b)) if a > 0 and _mape(a * s + b, m) <= _mape(scale * s, m) else (scale, 0.0)


def calibration_configs(space: SearchSpace, n: int, seed: int = 0) -> list[Config]:
    """``n`` subnets spread from the smallest to the largest (a fit needs the whole range, not a cluster of
    average random subnets): subnet i takes each gene near level t = i / (n - 1) of its choices, jittered.
    Every second inner subnet (i = 2, 4, ...) is a *contrast* net: the first half of the genes (in
    ``choices()`` order, input to output in the built-in spaces) near level t, the second half near 1 - t,
    so that the calibration nets' weights do not grow in lock-step with their latency (late stages hold
    most weights, early ones most activations) and the "weights" correction can be fitted on them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for i in range(n):
        t = i / max(n - 1, 1)
        for _ in range(20):
            c = _near(space, t, rng, late=1 - t if i % 2 == 0 else None)
            if i == 0:
                c = space.smallest()
            elif i == n - 1:
                c = space.largest()
            if space.key(c) not in seen:
                break
        seen.add(space.key(c))
        out.append(space.canonical(c))
    return out


def random_configs(space: SearchSpace, n: int, seed: int, exclude: list[Config] = ()) -> list[Config]:
    """``n`` distinct random subnets (``space.sample``, seeded), none equal to a config of ``exclude``: held-out
    or development networks drawn like the subnets a search meets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, seen = [], {space.key(c) for c in exclude}
    while len(out) < n:
        c = space.sample(rng)
        if space.key(c) not in seen:
            seen.add(space.key(c))
            out.append(c)
    return out


def spread_configs(space: SearchSpace, n: int, seed: int, exclude: list[Config] = ()) -> list[Config]:
    """``n`` distinct subnets spread over the space like :func:`calibration_configs` (level i / (n - 1),
    jittered; no forced ends), none equal to a config of ``exclude``: a held-out set that spans the latency
    range instead of clustering around the average like random samples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, seen = [], {space.key(c) for c in exclude}
    for i in range(n):
        for _ in range(100):
            c = space.canonical(_near(space, i / max(n - 1, 1), rng))
            if space.key(c) not in seen:
                seen.add(space.key(c))
                out.append(c)
                break
    return out


def _near(space: SearchSpace, t: float, rng, late: float | None = None) -> Config:
    """Each gene near level ``t`` of its choices (jittered); with ``late``, the second half of the genes
    near level ``late``."""
    import numpy as np

    ch = space.choices()
    half = (len(ch) + 1) // 2
    return {g: vals[int(np.clip(round((t if late is None or j < half else late) * (len(vals) - 1)
                                      + rng.normal(0, 0.6)), 0, len(vals) - 1))]
            for j, (g, vals) in enumerate(ch.items())}


def fit_learned(space: SearchSpace, configs: list[Config], measured: list[float]) -> LatencyModel:
    """Ridge regression (scikit-learn) from the config encoding to measured latency."""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    x = np.asarray([space.encode(c) for c in configs])
    reg = RidgeCV(alphas=np.logspace(-4, 2, 13)).fit(x, np.asarray(measured))
    return LatencyModel(kind="learned", ridge={"coef": [float(v) for v in reg.coef_], "intercept": float(reg.intercept_)})


def validate(predicted: list[float], measured: list[float]) -> dict[str, Any]:
    """MAPE (%), Kendall tau (scipy), share within +-10%, and the share of pairs whose measured latencies
    lie within 5% of each other that the prediction orders correctly."""
    import numpy as np
    from scipy.stats import kendalltau

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(p) == 0:
        return {"n": 0}
    err = (p - m) / m
    close = right = 0
    for i, j in itertools.combinations(range(len(m)), 2):
        if abs(m[i] - m[j]) <= 0.05 * min(m[i], m[j]) and m[i] != m[j]:
            close += 1
            right += int((p[i] - p[j]) * (m[i] - m[j]) > 0)
    tau = kendalltau(p, m).statistic if len(p) > 1 else float("nan")
    return {"n": int(len(p)), "mape_pct": round(float(np.mean(np.abs(err)) * 100), 3),
            "bias_pct": round(float(np.mean(err) * 100), 3), "kendall_tau": round(float(tau), 4),
            "within_10pct": round(float(np.mean(np.abs(err) <= 0.10)), 4),
            "close_pairs": close, "close_pairs_ordered": round(right / close, 4) if close else None}
