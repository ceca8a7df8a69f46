"""What would it take for the per-block latency table to order close pairs of subnets (issue 9: the right
order on >= 90% of held-out pairs whose measured latencies lie within 5% of each other)?

Re-uses the timings of ``benchmarks/search_latency_model.py``'s development-rule cells (dev seed 31, held-out
seed 41; the measurement service's cache serves them when ``--cache`` holds them, otherwise they are timed
again, ~9-16 min a cell on the 2-core EPYC) and asks three questions of each cell, without timing anything new:

* **ceiling**: what a noise-free predictor would score against this truth (median of 6-8 sessions), simulated
  from each net's spread over its sessions (``search_latency_model.noise_free``);
* **block sessions**: the model rebuilt from 1, 2 or all 3 of each block's (and seam pair's) sessions (the mean
  over every subset of that size; block statistic and correction as the model's, refitted on the calibration
  nets): how fast close-pair ordering improves with more block sessions;
* **learned residual**: a ridge regression of log(measured / predicted) on per-resolution block features
  (blocks and their table time at each input resolution) fitted on the 30 calibration + development nets,
  added on top of the table (the issue's "add a small learned predictor"): every penalty of a fixed sweep, and
  the one scikit-learn's RidgeCV picks by leave-one-out on those 30 nets (the only row that chooses without
  seeing the held-out nets).

    python benchmarks/search_latency_limits.py [--cache DIR]     # reports/search_latency_limits.{md,json}
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# RES:PRECISION:SESSIONS:MAX_RUNS[:HELD_OUT_SEED:BLOCK_SESSIONS] (default held-out seed 41, 3 block sessions)
CELLS = ["32:fp32:8:300", "32:int8:8:300", "224:fp32:6:100", "224:int8:6:100"]
PENALTIES = [1.0, 3.0, 10.0, 30.0, 100.0]


def subsets(n: int, k: int, cap: int) -> list[tuple[int, ...]]:
    """Every k of n sessions, or ``cap`` of them drawn (seeded by k) when there are more."""
    import numpy as np

    out = list(itertools.combinations(range(n), k))
    return out if len(out) <= cap else [out[i] for i in np.random.default_rng(k).choice(len(out), cap, replace=False)]


def from_sessions(model, sub: tuple[int, ...]):
    """A copy of ``model`` whose block and pair entries are the median over the sessions ``sub`` only."""
    import numpy as np

    m = copy.deepcopy(model)
    for e in (*m.table.values(), *m.pairs.values()):
        for stat in ("p50", "cold"):
            e[f"{stat}_ms"] = float(np.median([e[f"{stat}_reps"][i] for i in sub]))
    return m


def block_sessions(model, space, rows) -> dict:
    import numpy as np

    from compress.search import latency as lat

    cal = [r["config"] for r in model.calibration]
    cal_ms = [r["measured_ms"] for r in model.calibration]
    meas = [r["measured_ms"] for r in rows]
    n = len(next(iter(model.table.values()))["p50_reps"])
    out = {}
    for k in range(1, n + 1):
        runs = []
        for sub in subsets(n, k, 20):  # 8 block sessions: up to 70 subsets of a size; 20 are enough for a mean
            m = lat.choose(from_sessions(model, sub), space, cal, cal_ms, model.block_stat, model.correction)
            runs.append(lat.validate([m.predict(space, r["config"]) for r in rows], meas))
        out[str(k)] = {"subsets": len(runs), **{key: round(float(np.mean([v[key] for v in runs])), 4)
                                                 for key in ("mape_pct", "kendall_tau", "close_pairs_ordered")}}
    return out


def truth_sessions(model, space, rows) -> dict:
    """The model's close pairs against a truth from fewer of each held-out net's sessions (the median of k of
    them; the mean over up to 10 seeded subsets of each size)."""
    import numpy as np

    from compress.search import latency as lat

    pred = [model.predict(space, r["config"]) for r in rows]
    reps = np.asarray([r["measured_reps"] for r in rows])
    out = {}
    for k in range(2, reps.shape[1] + 1, 2):
        runs = [lat.validate(pred, list(np.median(reps[:, list(sub)], axis=1))) for sub in subsets(reps.shape[1], k, 10)]
        out[str(k)] = {"subsets": len(runs), **{key: round(float(np.mean([v[key] for v in runs])), 4)
                                                 for key in ("mape_pct", "close_pairs_ordered")}}
    return out


def learned_residual(model, space, rows) -> dict:
    import numpy as np
    from sklearn.linear_model import Ridge, RidgeCV

    from compress.search import latency as lat

    train = model.calibration + model.development
    res_keys = sorted({int(b.input_shape[-1]) for r in train + rows for b in space.blocks(r["config"])})

    def x(rs):
        out = []
        for r in rs:
            f = dict(zip(res_keys, [[0.0, 0.0]] * len(res_keys)))
            for b in space.blocks(r["config"]):
                k = int(b.input_shape[-1])
                f[k] = [f[k][0] + 1, f[k][1] + model.table[b.key]["ms"]]
            out.append([v for k in res_keys for v in f[k]])
        return np.asarray(out, float)

    xt, xh = x(train), x(rows)
    mu, sd = xt.mean(0), xt.std(0)
    sd[sd == 0] = 1.0
    xt, xh = (xt - mu) / sd, (xh - mu) / sd
    pt = np.asarray([model.predict(space, r["config"]) for r in train])
    ph = np.asarray([model.predict(space, r["config"]) for r in rows])
    y = np.log(np.asarray([r["measured_ms"] for r in train]) / pt)
    meas = [r["measured_ms"] for r in rows]
    out = {"train_networks": len(train), "features": 2 * len(res_keys), "table": lat.validate(list(ph), meas)}
    for lam in PENALTIES:
        reg = Ridge(alpha=lam).fit(xt, y)
        out[f"ridge_{lam:g}"] = lat.validate(list(ph * np.exp(reg.predict(xh))), meas)
    reg = RidgeCV(alphas=np.logspace(-1, 3, 17)).fit(xt, y)
    out["ridge_loo"] = {"alpha": float(reg.alpha_), **lat.validate(list(ph * np.exp(reg.predict(xh))), meas)}
    return out


def run_cell(spec: str, cache: Path, work: Path) -> dict:
    import search_latency_model as S

    res, prec, reps, max_runs, seed, block_reps = (spec.split(":") + ["41", "3"])[:6]
    res, reps, seed, block_reps = int(res), int(reps), int(seed), int(block_reps)
    timing = S.timing_spec("thread_cpu", {str(res): max_runs})
    t0, load0 = time.time(), os.getloadavg()[0]
    r, model, space, _ = S.run_one(res, prec, 50, work / spec.replace(":", "-"), cache, timing,
                                   lambda s: print("  " + s, flush=True), reps, seed, block_reps, "auto", 20, 31)
    rows = r["rows"]
    return {"cell": spec, "resolution": res, "precision": prec, "sessions": reps, "max_runs": int(max_runs),
            "held_out_seed": seed, "block_sessions_measured": block_reps,
            "timings_from_cache": r["cached"], "load_before": round(load0, 2),
            "seconds": round(time.time() - t0, 1),
            "block_stat": model.block_stat, "correction": model.correction,
            "model": r["model"], "noise_free": S.noise_free(rows), "split_half": r["split_half"],
            "block_sessions": block_sessions(model, space, rows), "truth_sessions": truth_sessions(model, space, rows),
            "learned_residual": learned_residual(model, space, rows)}


def render(rep: dict) -> list[str]:
    f = lambda v: "" if v is None else (f"{v * 100:.0f}%" if v <= 1 else f"{v:.0f}%")  # noqa: E731
    lines = ["# Close pairs: what the latency table would need (issue 9)", "",
             f"Regenerate: `{rep['command']}` (re-uses the timings of `benchmarks/search_latency_model.py`'s "
             "development-rule cells through the measurement cache; nothing new is timed when the cache holds them).", "",
             f"CPU: {rep['cpu']['cpu_model']}, flags {', '.join(rep['cpu']['cpu_flags'] or [])}, "
             f"{rep['cpu']['physical_cores']} cores. Held-out: 50 random subnets, development 20 (seed 31), 10 calibration; "
             "truth: the median of each net's sessions. Close pairs: held-out pairs whose measured latencies lie "
             "within 5% of each other; the target is >= 90% ordered right.", "",
             "| cell | model: MAPE / close pairs | noise-free predictor vs this truth | split half | blocks from 1 / 2 / ... sessions: close pairs | + learned residual, LOO-chosen penalty: MAPE / close pairs | + learned residual, best of the sweep (seen held-out) |",
             "|---|---|---|---|---|---|---|"]
    for c in rep["cells"]:
        bs = c["block_sessions"]
        lr = c["learned_residual"]
        best = max((k for k in lr if k.startswith("ridge_") and k != "ridge_loo"),
                   key=lambda k: lr[k]["close_pairs_ordered"])
        lines.append(
            f"| {c['resolution']} {c['precision'].upper()}, {c['sessions']} sessions, held-out seed {c.get('held_out_seed', 41)} | {c['model']['mape_pct']:.2f}% / "
            f"{f(c['model']['close_pairs_ordered'])} of {c['model']['close_pairs']} | {f(c['noise_free']['close_pairs_ordered'])} "
            f"| {f(c['split_half']['close_pairs_ordered'])} | "
            + " / ".join(f(bs[k]["close_pairs_ordered"]) for k in sorted(bs)) +
            f" | {lr['ridge_loo']['mape_pct']:.2f}% / {f(lr['ridge_loo']['close_pairs_ordered'])} (alpha {lr['ridge_loo']['alpha']:.3g}) "
            f"| {lr[best]['mape_pct']:.2f}% / {f(lr[best]['close_pairs_ordered'])} ({best.replace('ridge_', 'alpha ')}) |")
    lines += ["", "Per cell, every penalty of the learned residual's sweep (MAPE / close pairs):", ""]
    for c in rep["cells"]:
        lr = c["learned_residual"]
        lines.append(f"- {c['resolution']} {c['precision'].upper()}: " + ", ".join(
            f"alpha {k.replace('ridge_', '')}: {lr[k]['mape_pct']:.2f}% / {f(lr[k]['close_pairs_ordered'])}"
            for k in lr if k.startswith("ridge_") and k != "ridge_loo")
            + f"; timings from the cache: {c['timings_from_cache']}, {c['seconds']:.0f} s")
    lines += ["", "The model against a truth from k of each held-out net's sessions (median; close pairs, MAPE):", ""]
    for c in rep["cells"]:
        ts = c.get("truth_sessions") or {}
        lines.append(f"- {c['resolution']} {c['precision'].upper()}, seed {c.get('held_out_seed', 41)}: " + ", ".join(
            f"k {k}: {f(v['close_pairs_ordered'])}, {v['mape_pct']:.2f}%" for k, v in ts.items()))
    lines += ["", *rep.get("reading", [])]
    return lines


def main(argv: list[str]) -> int:
    from compress.runtimes.environment import fingerprint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", nargs="+", default=CELLS, help="RES:PRECISION:SESSIONS:MAX_RUNS")
    ap.add_argument("--cache", default=str(ROOT / ".compress-cache-bench"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "search_latency_limits"))
    ap.add_argument("--render", action="store_true", help="only re-write the markdown from the json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.render:
        rep = json.loads(out.with_suffix(".json").read_text())
    else:
        env = fingerprint()
        work = Path(tempfile.mkdtemp(prefix="search-latency-limits-"))
        prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
        cells = "" if args.cells == CELLS else " --cells " + " ".join(args.cells)
        rep = {"command": "python benchmarks/search_latency_limits.py" + cells,
               "cpu": {k: env.get(k) for k in ("cpu_model", "cpu_flags", "physical_cores", "load_avg_1m")},
               "cells": [run_cell(c, Path(args.cache), work) for c in args.cells], "reading": prev.get("reading", [])}
        out.with_suffix(".json").write_text(json.dumps(rep, indent=1))
    out.with_suffix(".md").write_text("\n".join(render(rep)) + "\n")
    print("\n".join(render(rep)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
