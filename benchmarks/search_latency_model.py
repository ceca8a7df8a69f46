"""How well the per-block latency table predicts whole subnets of the inverted-residual family on
ONNX Runtime (CPU, 1 thread, batch 1), at 224x224 and 32x32, FP32 and INT8.

For each (resolution, precision): every block of the space, 10 calibration subnets (smallest to largest,
`latency.calibration_configs`; they fit the affine correction) and --holdout held-out random subnets are exported (INT8:
ORT quantize_static QDQ, U8S8 per-channel, reduce_range as quantize.ptq's auto on this CPU) and timed
in ONE interleaved session through the measurement service. Reported on the held-out subnets: MAPE of
the plain sum and of the affine-corrected sum, bias, Kendall tau, share within +-10%, and the share of
pairs whose measured latencies lie within 5% of each other that the prediction orders correctly.

--prune adds the chain check: --prune-nets held-out subnets (32x32) are pruned with prune.structured's
torch-pruning adapter (25% of channels, l2, round_to 8) and quantized to INT8, timed interleaved, and
Kendall tau is computed between the FP32 table's prediction for the *unpruned* subnet and the measured
latency after prune + INT8.

    python benchmarks/search_latency_model.py [--holdout 50] [--res 224 32] [--prec fp32 int8] [--prune]

Writes reports/search_latency_model.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def space_for(res: int):
    from compress.search.mbnet import IMAGENET_STAGES
    from compress.search.space import load_space

    if res >= 128:  # MobileNetV2-sized, ImageNet head
        kw = dict(in_channels=3, num_classes=1000, input_size=res, stages=IMAGENET_STAGES, stem_channels=32,
                  stem_stride=2, head_channels=1280)
    else:  # CIFAR-sized: the same stages, stem stride 1
        kw = dict(in_channels=3, num_classes=10, input_size=res, stages=IMAGENET_STAGES, stem_channels=32,
                  stem_stride=1, head_channels=1280)
    return load_space("inverted_residual", {**kw, "depths": [2, 3, 4], "expands": [3, 4, 6], "kernels": [3, 5, 7]})


MAX_RUNS = {32: 300, 224: 60}


def timing_spec(clock: str, max_runs_by_res: dict[str, str]) -> dict:
    """The benchmark's timing settings (resolved per resolution by :func:`policy`): ``clock`` and the
    ``RES -> calls per session`` caps."""
    return {"warmup_runs": 5, "warmup_seconds": 0.05, "min_runs": 30, "max_runs": 1000, "min_seconds": 0.3,
            "max_seconds": 5.0, "block": 3, "clock": clock, "max_runs_by_res": max_runs_by_res}


def policy(timing: dict, res: int) -> dict:
    """The timing policy at ``res``: every session runs until the slowest-to-finish one is done, so the cap on
    calls is what bounds the run (``--max-runs``; default 300 at 32x32 with 1-2 ms networks, 60 at 224x224 with
    8-20 ms ones: two sessions of one file differ by far more than the p50's sampling error at those counts,
    so the time goes into more sessions instead)."""
    caps = timing.get("max_runs_by_res") or {}
    return {**{k: v for k, v in timing.items() if k != "max_runs_by_res"},
            "max_runs": int(caps.get(str(res), MAX_RUNS.get(res, 300)))}


def service(cache_dir: Path, res: int, timing: dict):
    import numpy as np

    from compress.cache import Cache
    from compress.config import EvaluationConfig, TargetConfig
    from compress.data import Dataset
    from compress.export import ExportConfig
    from compress.measure import Measure

    ds = Dataset.from_arrays(np.random.default_rng(0).standard_normal((4, 3, res, res)).astype(np.float32),
                             np.arange(4) % 2)
    target = TargetConfig(name="ort-cpu", threads=1, graph_optimization="all", timing=policy(timing, res))
    return Measure(Cache(cache_dir), targets=[target], dataset=ds, export=ExportConfig(dynamic_batch=False),
                   evaluation=EvaluationConfig(), base_dir=ROOT)


def int8(measure, art, folder: Path):
    """ORT static QDQ INT8 (U8S8, per-channel) of ``art``'s ONNX export, calibrated on 8 random inputs
    (cached by the export's hash)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from compress.artifact import ONNX, save_onnx
    from compress.cache import cache_key
    from compress.runtimes.environment import int8_reduce_range

    dep = measure.deployable(art)
    reduce = int8_reduce_range("auto")[0]

    def build(wd: Path):
        pre = wd / "pre.onnx"
        quant_pre_process(str(dep.path("onnx")), str(pre), skip_symbolic_shape=True)
        rng = np.random.default_rng(0)
        data = [{"input": rng.standard_normal((1, *art.input_shape[1:])).astype(np.float32)} for _ in range(8)]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(data)

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(pre), str(wd / ONNX), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce)
        pre.unlink()
        return save_onnx(wd / ONNX, wd, like=dep, producer="bench:int8", precision="int8")

    key = cache_key(step="bench-int8", onnx=dep.hash, reduce_range=reduce)
    return measure.cache.get_artifact(key) or measure.cache.build_artifact(key, build)


PRUNE = dict(pruning_ratio=0.25, importance="l2", round_to=8, finetune=None)


def prune_module(model, input_shape: tuple[int, ...]):
    """prune.structured's torch-pruning adapter, one shot at PRUNE, no fine-tune (latency does not need it);
    returns the pruned model and the artifact edit that replays it."""
    from compress.stages.prune_structured import PruneStructuredConfig, history_json, make_pruner, prune_edit

    cfg = PruneStructuredConfig(**PRUNE)
    pruner = make_pruner(model, cfg, input_shape, cfg.pruning_ratio, 1)
    pruner.step()
    return model, prune_edit(history_json(pruner), input_shape)


def pruned(art, folder: Path):
    from compress.artifact import build_module, save_torch

    model, edit = prune_module(build_module(art), art.input_shape)
    return save_torch(model, folder, like=art, producer="bench:prune", edits=art.edits + (edit,))


def run_one(res: int, prec: str, n_holdout: int, work: Path, cache_dir: Path, timing: dict, log,
            repeats: int = 4, seed: int | None = None, block_repeats: int = 3, correction: str = "auto",
            n_dev: int = 0, dev_seed: int = 31) -> dict:
    import numpy as np

    from compress.search import latency as lat

    space = space_for(res)
    m = service(cache_dir, res, timing)
    calibration = lat.calibration_configs(space, 10)
    development = lat.random_configs(space, n_dev, dev_seed, calibration)  # choose the rule; none held out
    holdout = lat.random_configs(space, n_holdout, res if seed is None else seed, calibration + development)
    counter = [0]

    def prepare(a):
        counter[0] += 1
        return int8(m, a, work / f"q{counter[0]:04d}") if prec == "int8" else a

    t0 = time.time()
    model, rows = lat.build(space, lambda arts: m.latency(arts, label=f"{res}px {prec}: {len(arts)} artifacts"),
                            work / "arts", input_shape=(1, 3, res, res), calibration=calibration, holdout=holdout,
                            development=development, prepare=prepare, repeats=repeats, block_repeats=block_repeats, correction=correction,
                            log=log)
    meas = [r["measured_ms"] for r in rows]
    out = {"resolution": res, "precision": prec, "holdout_seed": res if seed is None else seed,
           "design": {"repeats": repeats, "block_repeats": block_repeats, "correction": correction,
                      "max_runs": policy(timing, res)["max_runs"], "truth": f"median of {repeats} sessions",
                      "development": {"networks": n_dev, "seed": dev_seed} if n_dev else None},
           "blocks": len(model.table), "seams": model.seams, "block_stat": model.block_stat,
           "block_stat_selection": model.selection,
           "session_drift_per_100": round(model.drift * 100, 5),
           "repeatability_raw": lat.validate([r["raw_reps"][0] for r in rows], [r["raw_reps"][1] for r in rows]),
           "calibration_networks": len(model.calibration),
           "correction": {"kind": model.correction, "a": model.a, "b": model.b, "w": model.w},
           "calibration": [{k: r[k] for k in ("base_ms", "measured_ms", "measured_reps")} for r in model.calibration],
           "seconds": round(time.time() - t0, 1), "cached": m.last_latency_cached,
           "model": lat.validate([r["predicted_ms"] for r in rows], meas), **ablations(model, space, rows),
           "measured_ms": {"min": min(meas), "median": float(np.median(meas)), "max": max(meas)},
           "repeatability": repeatability(rows), "split_half": split_half(rows),
           "model_vs_2_sessions": lat.validate([r["predicted_ms"] for r in rows],
                                               [float(np.mean(r["measured_reps"][:2])) for r in rows]),
           "rows": rows}
    return out, model, space, holdout


ABLATIONS = {  # name: (block statistic, seams?, correction, blocks from their first session only?)
    "plain_sum": ("p50", False, None, False),                 # the p50 table, no correction
    "plain_sum_affine": ("p50", False, "affine", False),      # an earlier session's model
    "p50_seams_affine": ("p50", True, "affine", False),       # the previous session's model (p50 won at both sizes)
    "p50_seams_weights": ("p50", True, "weights", False),     # + the weights term
    "cold_seams_affine": ("cold", True, "affine", False),
    "cold_seams_weights": ("cold", True, "weights", False),
    "loo_rule": ("loo", True, "auto", False),                 # the leave-one-out rule (without development nets)
    "auto_one_block_session": ("auto", True, "auto", True),   # the model's rule, blocks timed in one session
    "affine_one_block_session": ("p50", True, "affine", True),  # the previous session's model and measurement
}


def first_session(model):
    """A copy of ``model`` whose block and pair entries come from their first session only."""
    import copy

    m = copy.deepcopy(model)
    for e in (*m.table.values(), *m.pairs.values()):
        for stat in ("p50", "cold"):
            if e.get(f"{stat}_reps"):
                e[f"{stat}_ms"] = e[f"{stat}_reps"][0]
    return m.restat(m.block_stat)


def ablations(model, space, rows: list[dict]) -> dict:
    """The held-out validation of variants of the model, each refitted on the same calibration nets only."""
    from compress.search import latency as lat

    meas, out = [r["measured_ms"] for r in rows], {}
    cal = [r["config"] for r in model.calibration]
    cal_ms = [r["measured_ms"] for r in model.calibration]
    dev = ([r["config"] for r in model.development], [r["measured_ms"] for r in model.development])
    for name, (stat, seams, corr, one) in ABLATIONS.items():
        src = first_session(model) if one else model
        if stat == "loo" and not model.development:
            continue  # the model itself
        if stat in ("auto", "loo"):
            m = lat.choose(src, space, cal, cal_ms, "auto", corr, dev if stat == "auto" and dev[0] else None)
        else:
            m = src.restat(stat)
            if not seams:
                m.seams = {}
            if corr:
                m.correction = corr
                m = m.refit(space, cal, cal_ms)
        out[name] = lat.validate([m.predict(space, r["config"]) for r in rows], meas)
    return out


def repeatability(rows: list[dict]) -> dict | None:
    """The measurement's own ceiling: session 1 of each held-out net as a 'prediction' of session 2."""
    from compress.search import latency as lat

    if len(rows[0]["measured_reps"]) < 2:
        return None
    return lat.validate([r["measured_reps"][0] for r in rows], [r["measured_reps"][1] for r in rows])


def split_half(rows: list[dict]) -> dict | None:
    """Split-half ceiling: the median of the first half of each held-out net's sessions as a 'prediction' of
    the median of the second half (with 4 sessions: the mean of sessions 1-2 vs of 3-4). Against the truth
    (the median of all sessions) a noise-free predictor scores about half this MAPE."""
    import numpy as np

    from compress.search import latency as lat

    k = len(rows[0]["measured_reps"]) // 2
    if k < 1 or len(rows[0]["measured_reps"]) < 4:
        return None
    return lat.validate([float(np.median(r["measured_reps"][:k])) for r in rows],
                        [float(np.median(r["measured_reps"][k:2 * k])) for r in rows])


def noise_free(rows: list[dict], draws: int = 200, seed: int = 0) -> dict | None:
    """What a noise-free predictor would score against a truth as noisy as this one (simulated): each net's
    truth noise is the standard error of its median over sessions (1.2533 * the robust spread of its sessions'
    log times / sqrt(sessions)); the net's measured latency plays the true one, a truth is drawn around it, and
    validate() scores the measured latencies against it; the mean over ``draws`` draws. Unlike the split half
    (noise on both sides, half the sessions each), this is the ceiling of the model's own rows."""
    import numpy as np

    from compress.search import latency as lat

    reps = [np.log(np.asarray(r["measured_reps"], float)) for r in rows]
    if len(reps[0]) < 3:
        return None
    se = np.asarray([1.2533 * 1.4826 * np.median(np.abs(x - np.median(x))) / np.sqrt(len(x)) for x in reps])
    m = np.asarray([r["measured_ms"] for r in rows])
    rng = np.random.default_rng(seed)
    runs = [lat.validate(list(m), list(m * np.exp(rng.normal(0.0, se)))) for _ in range(draws)]
    out = {k: round(float(np.mean([v[k] for v in runs])), 4) for k in ("mape_pct", "bias_pct", "kendall_tau",
                                                                       "within_10pct", "close_pairs_ordered")}
    return {**out, "n": len(rows), "close_pairs": int(round(np.mean([v["close_pairs"] for v in runs]))),
            "draws": draws}


def prune_chain(models: dict, res: int, n: int, work: Path, cache_dir: Path, timing: dict, repeats: int,
                log, block_repeats: int = 1, correction: str = "auto") -> dict:
    """``n`` held-out subnets spread over the latency range (``latency.spread_configs``, seed 1, none a
    calibration subnet) -> prune.structured adapter -> INT8, each timed in ``repeats`` sessions, in ONE
    session with the INT8 blocks *at the widths the prune leaves* (``PrunedView``), their seams and the 10
    pruned INT8 calibration subnets. Kendall tau between each table's prediction and the measured latency
    after prune + INT8: the pruned INT8 table's, and (for comparison) the unpruned tables' of the main runs."""
    from scipy.stats import kendalltau

    from compress.search import latency as lat
    from compress.search.pruned import PrunedView

    space = next(iter(models.values()))[1]
    m = service(cache_dir, res, timing)
    shape = (1, 3, res, res)
    view = PrunedView(space, lambda model: prune_module(model, shape)[0])
    calibration = lat.calibration_configs(space, 10)
    nets = lat.spread_configs(space, n, seed=1, exclude=calibration)

    def network(c, folder: Path, i: int):
        return pruned(lat.recipe_artifact(space.recipe(c), shape, folder / "fp32", seed=i), folder / "pruned")

    counter = [0]

    def prepare(a):
        counter[0] += 1
        return int8(m, a, work / f"q{counter[0]:04d}")

    pmodel, rows = lat.build(view, lambda arts: m.latency(arts, label=f"pruned {res}px int8: {len(arts)} artifacts"),
                             work / "arts", input_shape=shape, calibration=calibration, holdout=nets, prepare=prepare,
                             repeats=repeats, block_repeats=block_repeats, correction=correction, network=network,
                             log=log)
    meas = [r["measured_ms"] for r in rows]
    reps = list(zip(*[r["measured_reps"] for r in rows]))
    out = {"cached": m.last_latency_cached, "resolution": res, "networks": len(nets), "blocks": len(pmodel.table),
           "held_out": "latency.spread_configs(seed=1), no calibration net",
           "prune": "prune.structured adapter, uniform 25% channels, l2, round_to 8, no fine-tune",
           "measured_ms": meas, "correction": {"a": pmodel.a, "b": pmodel.b},
           "repeat_tau": round(float(kendalltau(reps[0], reps[1]).statistic), 4) if len(reps) > 1 else None,
           "repeatability": lat.validate(reps[0], reps[1]) if len(reps) > 1 else None,
           "kendall_tau_pruned_int8_table": round(float(kendalltau([r["predicted_ms"] for r in rows], meas).statistic), 4),
           "pruned_int8_table": lat.validate([r["predicted_ms"] for r in rows], meas)}
    for prec, (model, _, _, _) in models.items():
        pred = [model.predict(space, c) for c in nets]
        out[f"kendall_tau_unpruned_{prec}_table"] = round(float(kendalltau(pred, meas).statistic), 4)
    out["rows"] = rows
    return out


def fmt(v: dict) -> str:
    """MAPE / tau / close pairs / within +-10% of one validate() dict."""
    cp = "n/a" if v["close_pairs_ordered"] is None else f"{v['close_pairs_ordered']:.0%} of {v['close_pairs']}"
    return f"{v['mape_pct']:.2f}% | {v['bias_pct']:+.2f}% | {v['kendall_tau']:.3f} | {cp} | {v['within_10pct']:.0%}"


def args_clock(report: dict) -> str:
    return next(iter(report["timing"].values()))["clock"] if "clock" not in report["timing"] else report["timing"]["clock"]


ROWS = (("model", "**model** (rule in the row below)"), ("plain_sum", "p50 blocks, plain sum"),
        ("plain_sum_affine", "p50 plain sum + affine"),
        ("affine_one_block_session", "previous model: p50 - seams, affine, blocks from 1 session"),
        ("p50_seams_affine", "p50 - seams, affine"), ("p50_seams_weights", "p50 - seams, affine + weights"),
        ("cold_seams_affine", "cold - seams, affine"), ("cold_seams_weights", "cold - seams, affine + weights"),
        ("loo_rule", "leave-one-out rule (previous model)"),
        ("auto_one_block_session", "model's rule, blocks from 1 session"),
        ("model_vs_2_sessions", "model vs a truth of sessions 1-2 only"),
        ("repeatability", "repeat: session 1 vs session 2"),
        ("split_half", "split half: sessions {a} vs {b}"),
        ("noise_free", "noise-free predictor vs this truth (simulated from each net's session spread)"),
        ("repeatability_raw", "repeat, no drift correction"))


def choice(sel: dict) -> str:
    """How the block statistic and correction were chosen, with every candidate's score."""
    if sel.get("by") == "development":
        return (f"chosen by the MAPE on {sel['development_networks']} development nets {sel['development_mape_pct']}; "
                f"leave-one-out MAPE on the calibration nets {sel['loo_mape_pct']}")
    return f"leave-one-out MAPE {sel.get('loo_mape_pct')}"


def render(report: dict) -> list[str]:
    cpu = report["cpu"]
    lines = ["# Latency model of the search (inverted-residual family, ONNX Runtime CPU, 1 thread, batch 1)", "",
             f"CPU {cpu['cpu_model']} ({', '.join(cpu['cpu_flags'] or [])}), {cpu['physical_cores']} cores, "
             f"clock {args_clock(report)}; timing policy per resolution in the JSON. Every row was measured under "
             "the shared CPU lock (`flock /work/cpu.lock`) by the command and at the 1-min load average given "
             "under it; `--render` re-renders this file from the JSON.", "",
             "Per resolution and precision, ONE interleaved session (sessions in a seeded random order) times every "
             "block and one pair of adjacent blocks per seam, each in `block_repeats` sessions (an entry is the "
             "median over them), the 10 calibration subnets (`latency.calibration_configs`: smallest, largest, "
             "4 spread between them and 4 *contrast* nets whose early and late genes sit at opposite levels: "
             "the only nets anything is fitted on) and 50 held-out random subnets (seed in the row), every "
             "network in `repeats` sessions (truth = their median p50). Model = (sum of the blocks - the seams "
             "between them), then a correction fitted on the calibration nets: affine (a * x + b) or affine + "
             "weights (a * x + b + w * million weights: a block timed alone keeps its weights in cache between "
             "calls, in a network the other blocks evict them), with p50 or cold block entries, the combination "
             "chosen by leave-one-out MAPE on the calibration nets (`latency.choose`; rows tagged [dev..]: by the MAPE "
             "on 20 development nets of the same session instead). Every timing is corrected "
             "for the drift with the order sessions were opened in (calibration nets' sessions only). "
             "Ceilings: 'repeat' = session 1 of each held-out net as a prediction of session 2; 'split half' = "
             "the median of the first half of the sessions as a prediction of the median of the second half "
             "(with 4 sessions: the mean of 1-2 vs of 3-4; a noise-free predictor vs the whole truth scores about "
             "half that MAPE). Rows tagged [..] are later designs (more sessions, development nets), kept beside "
             "the untagged ones; the notes below give each one's protocol, written before its result.", "",
             "| res | prec | predictor | MAPE | bias | Kendall tau | close pairs ordered | within ±10% |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        at = r.get("measured_at", {})
        d = r.get("design") or {"repeats": 2, "block_repeats": 1, "correction": "affine", "truth": "mean of 2"}
        k2 = d["repeats"] // 2
        halves = {"a": f"1-{k2}" if k2 > 1 else "1", "b": f"{k2 + 1}-{2 * k2}" if k2 > 1 else "2"}
        r = {**r, "noise_free": noise_free(r["rows"]) if r.get("rows") else None}
        for k, name in ROWS:
            name = name.format(**halves)
            if r.get(k):
                tag = f" [{r['tag']}]" if r.get("tag") else ""
                lines.append(f"| {r['resolution']}{tag} | {r['precision']} | {name} | {fmt(r[k])} |")
        c = r["correction"]
        lines.append(f"| | | median {r['measured_ms']['median']:.3f} ms [{r['measured_ms']['min']:.3f}-"
                     f"{r['measured_ms']['max']:.3f}], held-out seed {r.get('holdout_seed')}, {r['blocks']} blocks x "
                     f"{d['block_repeats']} sessions, {len(r['seams'])} seams, nets x {d['repeats']} sessions (truth: "
                     f"{d['truth']}), max_runs {d.get('max_runs')}; chosen: {r['block_stat']} entries, "
                     f"{c['kind']} (a {c['a']:.4f}, b {c['b']:.4f} ms, w {c.get('w', 0.0):.4f} ms/M weights; "
                     f"{choice(r.get('block_stat_selection') or {})}); session drift "
                     f"{r.get('session_drift_per_100')}/100 positions; {r.get('seconds')} s; load "
                     f"{at.get('load_before')} -> {at.get('load_after')} ({at.get('utc', '')[:16]}); "
                     f"`{r.get('command', report['command'])}` | | | | | |")
    chain = report.get("prune_chain")
    if chain:
        at = chain.get("measured_at", {})
        taus = "; ".join(f"{k[len('kendall_tau_'):].replace('_', ' ')} **{v}**" for k, v in chain.items()
                         if k.startswith("kendall_tau_"))
        lines += ["", f"Chain ({at.get('utc', '')[:16]}, load {at.get('load_before')} -> {at.get('load_after')}"
                  f"{', measured with the previous design: blocks in 1 session, nets in 2, affine' if 'design' not in chain else ''}): "
                  f"{chain['networks']} held-out subnets at {chain['resolution']}x{chain['resolution']} "
                  f"spread over the latency range ({chain['held_out']}; {min(chain['measured_ms']):.3f}-"
                  f"{max(chain['measured_ms']):.3f} ms after the chain), {chain['prune']}, then INT8, timed "
                  f"in one session with the {chain['blocks']} INT8 blocks at the widths the prune leaves "
                  "(`compress.search.pruned.PrunedView`), their seams and the 10 pruned calibration subnets. "
                  f"Kendall tau between a table's prediction and the measured latency after prune + INT8: {taus}. "
                  f"Pruned INT8 table on these nets: {fmt(chain['pruned_int8_table'])} (MAPE | bias | tau | close "
                  f"pairs | within ±10%); two sessions of the same nets agree at tau {chain['repeat_tau']} (ceiling)."]
    lines += ["", *NOTES]
    return lines


NOTES = ["What was fitted on what: the correction, its kind and the block statistic on the 10 calibration nets "
         "only (leave-one-out, `latency.choose`); the session drift on the calibration nets' sessions only; nothing "
         "on the held-out nets. History: the weights term came from the previous session's held-out sets (32x32 seed "
         "11, 224x224 seed 7, now development sets): there the affine model's residual correlated with the subnet's "
         "weight count (r = 0.53 FP32, 0.84 INT8 at 32x32; none at 224x224). The seed-23 held-out sets of the rows "
         "measured with repeats 4 were drawn fresh and used for no choice; where the leave-one-out rule picked a "
         "variant that does worse held out (32x32 FP32: cold entries, 4.05%, vs p50 + weights 2.88%), the row "
         "shows it and the rule was not changed after the fact.",
         "", "Reading the ceilings: with ~600 sessions in one process, two sessions of the same ONNX file differ by "
         "2-3% MAPE at 32x32 (sub-2 ms networks) even after the drift correction (before it: 4.5-4.6%; the "
         "drift with opening order reached -2.5%/100 sessions). A truth that is the median of 4 sessions has "
         "about half the split-half row's error, which is what a perfect predictor would still score against it.",
         "", "Afternoon runs (tagged rows), protocols written before their results:",
         "", "1. [8 sessions, 100 runs] 224x224 FP32, the same held-out seed 23 and the same leave-one-out rule as "
         "the untagged row, but every network timed in 8 sessions of 100 calls (was 4 of 60). Hypothesis: the "
         "untagged row's truth is noisy because a 60-call session of a 10-20 ms network lasts about one second "
         "(an earlier design with 100 calls read 0.79% MAPE against a 0.58% ceiling). If so, the split-half "
         "ceiling (median of sessions 1-4 vs 5-8) falls clearly below the 3.1% of the 4 x 60 design and the "
         "model's MAPE moves toward 2% or below; if the ceiling stays near 3%, the spread between sessions "
         "(memory placement), not the calls per session, is the limit.",
         "", "Result of 1: the hypothesis holds. Against the 8 x 100 truth the ceilings fell from 3.24% / 3.12% "
         "(session 1 vs 2 / split half, 4 x 60 calls) to 1.82% / 1.12%, and the model (the rule again picked p50 "
         "entries, affine) from 2.66% to 0.85% MAPE, Kendall tau 0.869 -> 0.948, close pairs 73% -> 87% of 254, "
         "beside a split-half ceiling of 85% (of 234 pairs): at 224x224 the short sessions, not the table, "
         "limited the untagged row. The run took 919 s alone under the lock.",
         "", "2. [dev31/held-out41] A selection rule that uses no held-out net, fixed before these runs: 20 "
         "development subnets (seed 31) are timed in the same interleaved session as the table, like the "
         "other nets; of {p50, cold} entries x {affine, affine + weights}, each fitted on the 10 calibration "
         "nets only, the one with the lowest MAPE on the development nets is the model "
         "(`latency.choose(..., development=...)`; ties to p50 and fewer parameters). Reported on 50 fresh "
         "held-out subnets (seed 41), every net in 8 sessions, blocks in 3; seed 41 is used for no choice. "
         "The previous rule (leave-one-out on the 10 calibration nets) is the row 'leave-one-out rule', shown, "
         "not chosen. Why: at 32x32 FP32 leave-one-out on 10 nets picked cold entries (4.05% held out) where "
         "p50 + weights scored 2.88%: its scores differ by less than their own noise. At 224x224 (set before any "
         "of these runs, after run 1's ceilings only, for time: a locked job must stay near 15 min) nets are timed "
         "in 6 sessions of 100 calls (80 nets x 8 x 100 calls of 10-20 ms would take about 19 min): split half = "
         "sessions 1-3 vs 4-6.",
         "", "Result of 2 at 32x32: the development nets picked p50 entries + weights in both cells (as leave-one-out "
         "did on these runs): FP32 2.17% MAPE (tau 0.930; misses 2% by 0.17 points), INT8 1.12% (tau 0.946), on "
         "fresh seed-41 nets; cold entries scored 4.7-5.2% (FP32) and 2.8-2.9% (INT8) held out, so a rule that "
         "can pick them is a risk the development nets remove (their MAPEs separated p50 + weights from the "
         "rest by 2.5 points at FP32, 1.1 at INT8). At 224x224 INT8 (6 sessions of 100 calls) they picked p50 "
         "entries, affine, as leave-one-out did: 1.17% MAPE (tau 0.935), 80% of close pairs, beside a noisier "
         "truth than at 32x32 (session 1 vs 2 2.29%, split half 1.47% / 74%, simulated noise-free ceiling 89%). "
         "At 224x224 FP32 (same design) p50 entries, affine again: 1.04% MAPE (tau 0.951), 84% of close pairs "
         "(split half 1.32% / 80%, simulated noise-free ceiling 90%). All four cells are now within 2% except "
         "32x32 FP32 (2.17%); no cell orders 90% of close pairs (76-87%).",
         "", "3. Close pairs are judged against the 8-session truth, beside the split-half ceiling of the same "
         "run (median of sessions 1-4 vs 5-8): a ceiling below 90% means the measurement, not the model, "
         "cannot show the order of pairs within 5%.",
         "", "Added after the runs of 1 and 2 (an analysis of the measurement, no choice of the model): the row "
         "'noise-free predictor vs this truth' simulates what a perfect predictor would score against a truth "
         "as noisy as each run's (each net's median drawn with the standard error of its own sessions' spread, "
         "200 draws). The split half has noise on both sides and half the sessions on each, so it understates "
         "that ceiling: with 8 sessions it reads 85% of close pairs where a perfect predictor would order about "
         "91-93% (simulated). So 90% of close pairs is within the measurement's reach at 8 sessions; the gap "
         "left is the table's own error (blocks from 3 sessions, the correction).",
         "", "4. [blocks x8, truth x12] Set at 16:49 UTC on 2026-11-23, before the run, to test the reading above "
         "(the gap is the table's own error, so more block sessions should close it): 32x32 INT8, the cell "
         "nearest 90%, on fresh held-out nets (seed 43), the development rule as in 2, every block and seam pair "
         "in 8 sessions instead of 3 and every network in 12 instead of 8 (one interleaved measurement of about "
         "1,900 ORT sessions).",
         "", "Result of 4 (16:57-17:11 UTC, alone under the lock, load 2.1 (the previous job's tail) -> 1.0, 807 s): "
         "worse, not better. Model 1.65% MAPE (tau 0.914), 77% of 222 close pairs; the measurement itself got "
         "noisier: session 1 vs 2 5.60% MAPE (1.78% in run 2's 32x32 INT8 cell, about 1,000 sessions), split half "
         "1.82% / 77%, simulated noise-free ceiling 83% (93% in run 2). More sessions in one process do not buy "
         "precision here: each session costs memory (7 GB resident at the end) and placement noise grows with "
         "their number. reports/search_latency_limits.md re-uses these timings: blocks from 1 ... 8 of their "
         "sessions order 75%, 77%, 78%, ..., 77% of the close pairs (flat after 3).",
         "", "5. [dev31/held-out43] Set at 18:30 UTC on 2026-11-23, before the run: a replicate of run 2's 32x32 "
         "FP32 cell (the one at the 2% line: 2.17%, and 1.66% in the chain run's 4-session replicate) on fresh "
         "held-out nets (seed 43), run 2's design unchanged (development rule, blocks in 3 sessions, nets in 8); "
         "reported whatever it gives.",
         "", "Result of 5 (18:30-18:40 UTC, alone under the lock, load 0.97 -> 1.16, 611 s): the development nets "
         "picked p50 + weights again; 2.21% MAPE (tau 0.899), 71% of 178 close pairs. This run's truth was noisier "
         "than run 2's: session 1 vs 2 3.77% (1.91%), split half 2.38% / 71% (0.91% / 85%), so the model sits at "
         "the measurement's own split-half error. 32x32 FP32 over three runs: 2.17%, 1.66% (4 sessions, the chain "
         "run) and 2.21%: at the 2% line, not under it."]


def measured_at(t0_load: float, cached: bool, previous: dict | None) -> dict:
    """When and at what load a result was timed; a result served from the latency cache keeps the entry of
    the run that timed it."""
    import datetime
    import os

    if cached and previous and not previous.get("cached"):
        return previous
    return {"utc": datetime.datetime.now(datetime.timezone.utc).isoformat(), "load_before": round(t0_load, 2),
            "load_after": round(os.getloadavg()[0], 2), "cached": cached}


def key(result: dict) -> tuple:
    """What a result replaces in the JSON: the earlier result of the same resolution, precision and tag."""
    return result["resolution"], result["precision"], result.get("tag", "")


def seed_for(spec: list[str], res: int) -> int:
    pairs = dict(x.split(":") for x in spec if ":" in x)
    plain = [x for x in spec if ":" not in x]
    return int(pairs.get(str(res), plain[0] if plain else res))


def main(argv: list[str]) -> int:
    import shutil
    import tempfile

    from compress.runtimes.environment import fingerprint

    ap = argparse.ArgumentParser()
    ap.add_argument("--holdout", type=int, default=50)
    ap.add_argument("--res", type=int, nargs="+", default=[224, 32])
    ap.add_argument("--prec", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--prune", action="store_true")
    ap.add_argument("--clock", choices=["wall", "thread_cpu"], default="thread_cpu",
                    help="thread_cpu (default): CPU time of the timing thread (ORT at 1 intra-op thread computes in "
                    "it), immune to preemption on a shared, oversubscribed machine; wall: perf_counter")
    ap.add_argument("--prune-nets", type=int, default=40)
    ap.add_argument("--render", action="store_true", help="only re-render the .md from the existing .json")
    ap.add_argument("--holdout-seed", nargs="+", default=["32:11", "224:7"],
                    help="seed of the held-out random subnets: SEED for every resolution or RES:SEED pairs (default "
                    "32:11 224:7; at 32, seed 7 was the development set the affine correction was chosen on, 11 "
                    "the fresh set it was then validated on); a resolution not named: its own number")
    ap.add_argument("--repeats", type=int, default=4, help="independent sessions per calibration and held-out net "
                    "(truth = their median)")
    ap.add_argument("--block-repeats", type=int, default=3, help="sessions per block and seam pair (entry = median)")
    ap.add_argument("--correction", default="auto", choices=["scale", "affine", "weights", "auto"])
    ap.add_argument("--dev", type=int, default=0, help="development subnets (timed in the same session) that choose "
                    "the block statistic and correction instead of leave-one-out on the calibration nets")
    ap.add_argument("--dev-seed", type=int, default=31, help="seed of the development subnets")
    ap.add_argument("--max-runs", nargs="+", default=[f"{r}:{n}" for r, n in MAX_RUNS.items()],
                    help="RES:N calls per session at most (the cap that bounds the run)")
    ap.add_argument("--tag", default="", help="name of this run's design (e.g. 'truth x8'): its results are kept "
                    "beside, not in place of, earlier results of the same resolution and precision with another tag")
    ap.add_argument("--cache", default=str(ROOT / ".compress-cache-bench"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "search_latency_model"))
    args = ap.parse_args(argv)
    if args.render:
        out = Path(args.out)
        out.with_suffix(".md").write_text("\n".join(render(json.loads(out.with_suffix(".json").read_text()))) + "\n")
        return 0
    timing = timing_spec(args.clock, dict(x.split(":") for x in args.max_runs))
    work = Path(tempfile.mkdtemp(prefix="search-latency-"))
    env = fingerprint()
    import os

    results, models = [], {}
    out = Path(args.out)
    prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    prev_at = {key(r): r.get("measured_at") for r in prev.get("results", [])}
    try:
        for res in args.res:
            for prec in args.prec:
                print(f"== {res}x{res} {prec}", flush=True)
                load0 = os.getloadavg()[0]
                r, model, space, holdout = run_one(res, prec, args.holdout, work / f"{res}-{prec}", Path(args.cache),
                                                   timing, lambda s: print("  " + s, flush=True),
                                                   args.repeats, seed_for(args.holdout_seed, res), args.block_repeats,
                                                   args.correction, args.dev, args.dev_seed)
                models.setdefault(res, {})[prec] = (model, space, holdout, res)
                r["tag"] = args.tag
                r["measured_at"] = measured_at(load0, r.pop("cached"), prev_at.get(key(r)))
                r["command"] = "python benchmarks/search_latency_model.py " + " ".join(argv)
                results.append(r)
                for k in ("model", *ABLATIONS, "model_vs_2_sessions", "repeatability", "split_half",
                          "repeatability_raw"):
                    print(f"  {k:18s} {json.dumps(r.get(k))}", flush=True)
        chain = None
        if args.prune and models:
            res = 32 if 32 in models else next(iter(models))
            load0 = os.getloadavg()[0]
            chain = prune_chain(models[res], res, args.prune_nets, work / "prune", Path(args.cache), timing,
                                args.repeats, lambda s: print("  " + s, flush=True), args.block_repeats,
                                args.correction)
            chain["design"] = {"repeats": args.repeats, "block_repeats": args.block_repeats, "correction": args.correction}
            chain["measured_at"] = measured_at(load0, chain.pop("cached"), (prev.get("prune_chain") or {}).get("measured_at"))
            print(f"== prune + INT8 at {res}: {json.dumps({k: v for k, v in chain.items() if 'tau' in k})}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # merge: a (resolution, precision, tag) not run now keeps its previous result (each row names its command)
    done = {key(r) for r in results}
    results += [r for r in prev.get("results", []) if key(r) not in done]
    results.sort(key=lambda r: (r.get("tag", ""), r["resolution"], r["precision"]))
    report = {"command": "python benchmarks/search_latency_model.py " + " ".join(argv),
              "cpu": {k: env.get(k) for k in ("cpu_model", "cpu_flags", "physical_cores", "load_avg_1m")},
              "packages": env.get("packages"),
              "timing": {**prev.get("timing", {}), **{str(r): policy(timing, r) for r in args.res}},
              "results": results, "prune_chain": chain or prev.get("prune_chain")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = render(report)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
