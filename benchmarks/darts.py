"""search.darts acceptance: anti-collapse on vs off, and the latency_weight sweep, on digits 8x8.

Same space, seed and budget as ``pipelines/search-darts.yaml`` (DARTS cells: 8 operations, 3 nodes, layout
N-R-N, 8 channels; 10 epochs of first-order search over half of data.train at batch 32). One latency table
is timed on ONNX Runtime (CPU, 1 thread, graph optimization all) through the measurement service; then:

* one search per ``latency_weight`` in ``--weights`` (DARTS- on) and one bare search (``anti_collapse:
  none``) at the first weight, run ``--jobs`` at a time;
* every derived architecture is timed in ONE interleaved measurement (p50, ms) next to its predicted
  latency; the measured latency must fall as latency_weight rises (monotone over the sweep);
* DARTS- on vs off: the share of skip operations in the derived cells and each architecture trained from
  scratch with the same recipe over ``--seeds`` (top-1 on the digits eval split, mean +- sample std).

The from-scratch comparison against a hand-picked baseline of similar latency is the pipeline's own
stage record (``compress run pipelines/search-darts.yaml``; reports/search-darts/). ``--match-baseline
REPORT.json`` re-checks it: it times the pipeline's searched architecture interleaved with ``tiny_cnn`` at
several widths, takes the width of the closest measured latency, trains it from scratch with the stage's
recipe and seeds, and sets it beside the searched architecture's accuracies from the record
(reports/darts_baseline.md).

    python benchmarks/darts.py                       # writes reports/darts.md and reports/darts.json
    python benchmarks/darts.py --steps 20 --retrain-epochs 2 --seeds 0 --out /tmp/x   # a quick look

Exit status 1 when the measured latency is not monotone over the sweep.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = {"nodes": 3, "c": 8, "layout": "NRN"}


def dataset():
    from compress.data import load_dataset
    from compress.data.config import DataConfig

    return load_dataset(DataConfig(source="digits", seed=0), ROOT)


def one_search(args: tuple) -> dict:
    """One search in a worker process: returns the genotype, skip share, history and softmax(alpha)."""
    import torch

    from compress.search import cells, darts
    from compress.stages.search_darts import SearchTrainConfig

    name, mode, weight, table, a, b, steps, seed = args
    torch.set_num_threads(1)
    ds = dataset()
    space = darts.CellSpace(10, 1, **SPACE)
    net = space.supernet(aux_skip=mode == "darts-", seed=seed)
    darts.probe_shapes(net, (1, 1, 8, 8))
    darts.attach_latency(net, table, a)
    train = SearchTrainConfig(batch_size=32, lr=0.003, seed=seed, **({"steps": steps} if steps else {"epochs": 10}))
    arch = darts.ArchConfigValues(batch_size=32, latency_weight=weight, overhead_ms=b, anti_collapse=mode, seed=seed)
    t0 = time.monotonic()
    net, hist = darts.search(space, ds, train, arch, arch_share=0.5, net=net)
    geno = space.derive(net)
    return {"name": name, "anti_collapse": mode, "latency_weight": weight, "genotype": geno,
            "skip_share": round(cells.skip_share("cells", geno), 4),
            "predicted_ms": round(darts.LatencyTable(table, a, b).predict(space.chosen(net, geno)), 5),
            "search_seconds": round(time.monotonic() - t0, 1), "weight_steps": hist["steps"],
            "arch_steps": hist["arch_steps"], "alphas": darts.alpha_table(net)}


def setup(args, prefix: str):
    """A temporary folder, the digits data set and a measurement service on ONNX Runtime (1 thread)."""
    from compress.cache import Cache
    from compress.config import EvaluationConfig, TargetConfig
    from compress.export import ExportConfig
    from compress.measure import Measure

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    ds = dataset()
    target = TargetConfig(name="ort-cpu", runtime="onnxruntime", threads=1, graph_optimization="all")
    measure = Measure(Cache(Path(args.cache or tmp / "cache")), targets=[target], dataset=ds, export=ExportConfig(),
                      evaluation=EvaluationConfig(), base_dir=ROOT)
    return tmp, ds, measure


def table_for(args, measure, tmp: Path):
    """The space of the pipeline, its supernet (shapes probed) and the latency table timed on the target."""
    from compress.search import darts

    space = darts.CellSpace(10, 1, **SPACE)
    net = space.supernet(aux_skip=True, seed=args.seed)
    darts.probe_shapes(net, (1, 1, 8, 8))
    table = darts.build_latency_table(space, net, lambda arts: measure.latency(arts), tmp / "table", (1, 1, 8, 8),
                                      args.seed)
    return space, net, table


def time_beside_calibration(space, genotypes: list, names: list[str], table, measure, tmp: Path):
    """Time the networks of ``genotypes`` in ONE interleaved session with the table's calibration networks;
    return their stats and the affine fit redone on this session (``a``, ``b``)."""
    from compress.search.latency import fit_affine, recipe_artifact

    cal = table.calibration
    arts = [recipe_artifact(space.recipe(g), (1, 1, 8, 8), tmp / f"net{i}", seed=0) for i, g in enumerate(genotypes)]
    arts += [recipe_artifact(space.recipe(c["genotype"]), (1, 1, 8, 8), tmp / f"cal{i}", seed=i)
             for i, c in enumerate(cal)]
    stats = measure.latency(arts, names=list(names) + [f"cal{i}" for i in range(len(cal))])
    a2, b2 = fit_affine([c["sum_ms"] for c in cal], [s.p50_ms for s in stats[len(genotypes):]])
    return stats[:len(genotypes)], a2, b2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    ap.add_argument("--steps", type=int, default=None, help="search steps (default: 10 epochs, as the pipeline)")
    ap.add_argument("--retrain-epochs", type=float, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=0, help="the search seed")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=None, help="measurement cache folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--match-baseline", default=None, help="a search-darts report.json: match a tiny_cnn baseline")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32, 40, 48])
    ap.add_argument("--repredict", default=None, help="a darts.json: rebuild the table with the current code and "
                    "predict its derived architectures again, timed beside them (reports/darts_repredict.md)")
    args = ap.parse_args()
    if args.match_baseline:
        return match_baseline(args)
    if args.repredict:
        return repredict(args)

    import torch

    from compress.runtimes.environment import fingerprint
    from compress.search.from_scratch import compare
    from compress.stages.search_darts import RetrainConfig

    torch.set_num_threads(1)
    started = time.monotonic()
    tmp, ds, measure = setup(args, "darts-bench-")
    space, net, table = table_for(args, measure, tmp)
    print(f"latency table: {len(table.table)} entries, a={table.a:.3f} b={table.b:.4f} ms, {table.seconds} s",
          flush=True)

    jobs = [(f"darts- w={w:g}", "darts-", w, table.table, table.a, table.b, args.steps, args.seed) for w in args.weights]
    jobs.append((f"bare w={args.weights[0]:g}", "none", args.weights[0], table.table, table.a, table.b, args.steps,
                 args.seed))
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        runs = list(pool.map(one_search, jobs))
    for r in runs:
        print(f"{r['name']}: skip share {r['skip_share']}, predicted {r['predicted_ms']} ms, "
              f"{r['search_seconds']} s", flush=True)

    # every derived architecture, timed in one interleaved measurement with the table's three calibration
    # networks (so the affine fit can also be redone in the same session: predicted_same_session_ms)
    stats, a2, b2 = time_beside_calibration(space, [r["genotype"] for r in runs], [r["name"] for r in runs], table,
                                            measure, tmp)
    for r, s in zip(runs, stats):
        r["measured_ms"] = round(s.p50_ms, 5)
        r["robust_cv"] = round(s.robust_cv, 4)
        r["prediction_error_pct"] = round(100 * (r["predicted_ms"] - s.p50_ms) / s.p50_ms, 2)
        same = a2 * (r["predicted_ms"] - table.b) / table.a + b2
        r["predicted_same_session_ms"] = round(same, 5)
        r["same_session_error_pct"] = round(100 * (same - s.p50_ms) / s.p50_ms, 2)
    sweep = [r for r in runs if r["anti_collapse"] == "darts-"]
    measured = [r["measured_ms"] for r in sweep]
    monotone = all(x > y for x, y in zip(measured, measured[1:]))

    # DARTS- on vs off: from scratch, same recipe, same seeds
    on, off = runs[0], runs[-1]
    recipe = RetrainConfig(epochs=args.retrain_epochs, batch_size=64, lr=0.003)
    scratch, _ = compare({"darts-": space.recipe(on["genotype"]), "none": space.recipe(off["genotype"])}, ds,
                         recipe, args.seeds, ROOT)

    env = fingerprint()
    result = {"command": "python benchmarks/darts.py " + " ".join(sys.argv[1:]), "environment": env,
              "space": {"kind": "cells", **SPACE, "ops": list(space.ops)}, "input": [1, 1, 8, 8],
              "latency_table": table.summary(), "runs": runs, "monotone": monotone,
              "from_scratch": {"seeds": args.seeds, "recipe": recipe.model_dump(mode="json"), **scratch},
              "wall_seconds": round(time.monotonic() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "darts.json").write_text(json.dumps(result, indent=2))
    (out / "darts.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if monotone else 1


def repredict(args) -> int:
    """The latency model of the current code on the derived architectures of an earlier run (no search)."""
    import torch

    from compress.runtimes.environment import fingerprint
    from compress.search import darts

    torch.set_num_threads(1)
    started = time.monotonic()
    runs = json.loads(Path(args.repredict).read_text())["runs"]
    tmp, ds, measure = setup(args, "darts-repredict-")
    space, net, table = table_for(args, measure, tmp)
    stats, a2, b2 = time_beside_calibration(space, [r["genotype"] for r in runs], [r["name"] for r in runs], table,
                                            measure, tmp)
    rows = []
    for r, st in zip(runs, stats):
        chosen = space.chosen(net, r["genotype"])
        pred, same = table.predict(chosen), a2 * darts.table_sum(chosen, table.table) + b2
        rows.append({"name": r["name"], "measured_ms": round(st.p50_ms, 5), "predicted_ms": round(pred, 5),
                     "error_pct": round(100 * (pred - st.p50_ms) / st.p50_ms, 2),
                     "same_session_ms": round(same, 5),
                     "same_session_error_pct": round(100 * (same - st.p50_ms) / st.p50_ms, 2)})
    env = fingerprint()
    result = {"command": "python benchmarks/darts.py " + " ".join(sys.argv[1:]), "environment": env,
              "latency_table": table.summary(), "rows": rows, "wall_seconds": round(time.monotonic() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "darts_repredict.json").write_text(json.dumps(result, indent=2))
    lines = ["# search.darts: latency predictions of the current table on earlier derived architectures", "",
             f"`{result['command']}` — {result['wall_seconds']} s wall on {env.get('cpu_model')} (flags "
             f"{', '.join(env.get('cpu_flags') or [])}; shared, load average {env.get('load_avg_1m')}).", "",
             "Table entries are each op's p50 minus an identity's at the same input shape; the affine fit uses a "
             f"skip-heavy, a conv-heavy and a random network: measured = {table.a:.4f} x sum + {table.b:.5f} ms.", "",
             "| architecture | measured p50 ms | predicted ms | error | same-session fit ms | error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {x['name']} | {x['measured_ms']:.4f} | {x['predicted_ms']:.4f} | {x['error_pct']:+.1f}% | "
              f"{x['same_session_ms']:.4f} | {x['same_session_error_pct']:+.1f}% |" for x in rows]
    (out / "darts_repredict.md").write_text("\n".join(lines + [""]))
    print("\n".join(lines))
    return 0


def match_baseline(args) -> int:
    """Time the searched architecture of a pipeline record beside tiny_cnn widths; train the closest one."""
    import torch

    from compress.runtimes.environment import fingerprint
    from compress.search.from_scratch import compare
    from compress.search.latency import recipe_artifact
    from compress.stages.search_darts import RetrainConfig

    torch.set_num_threads(1)
    started = time.monotonic()
    rep = json.loads(Path(args.match_baseline).read_text())
    stage = next(s for s in rep["stages"] if s["type"] == "search.darts")
    facts = stage["facts"]
    tmp, ds, measure = setup(args, "darts-base-")
    searched = {"callable": "compress.search.cells:cell_network",
                "kwargs": {"genotype": facts["genotype"], "num_classes": 10, "in_channels": 1, **SPACE}}
    recipes = {"searched": searched} | {f"tiny_cnn w{w}": {"callable": "compress.zoo.tiny:tiny_cnn", "kwargs": {
        "num_classes": 10, "in_channels": 1, "width": w}} for w in args.widths}
    arts = [recipe_artifact(r, (1, 1, 8, 8), tmp / f"a{i}") for i, r in enumerate(recipes.values())]
    stats = dict(zip(recipes, measure.latency(arts, names=list(recipes))))
    ms = {k: round(s.p50_ms, 5) for k, s in stats.items()}
    best = min((k for k in recipes if k != "searched"), key=lambda k: abs(ms[k] - ms["searched"]))
    cfg = RetrainConfig(**facts["from_scratch"]["recipe"])
    seeds = facts["from_scratch"]["seeds"]
    scratch, _ = compare({best: recipes[best]}, ds, cfg, seeds, ROOT)
    result = {"command": "python benchmarks/darts.py " + " ".join(sys.argv[1:]), "environment": fingerprint(),
              "measured_ms": ms, "baseline": best, "seeds": seeds, "recipe": cfg.model_dump(mode="json"),
              "searched": facts["from_scratch"]["searched"]["accuracy"], "searched_genotype": facts["genotype"],
              "matched": scratch[best]["accuracy"], "pipeline_baseline": facts["from_scratch"]["baseline"]["accuracy"],
              "pipeline_baseline_recipe": facts["from_scratch"]["baseline_recipe"],
              "wall_seconds": round(time.monotonic() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "darts_baseline.json").write_text(json.dumps(result, indent=2))
    env = result["environment"]
    s, m = result["searched"], result["matched"]
    md = "\n".join([
        "# search.darts: the searched architecture vs a baseline of matched measured latency", "",
        f"`{result['command']}` — {result['wall_seconds']} s wall on {env.get('cpu_model')} (flags "
        f"{', '.join(env.get('cpu_flags') or [])}; shared, load average {env.get('load_avg_1m')}).", "",
        "Measured p50 (ms, ONNX Runtime 1 thread, batch 1, one interleaved session): "
        + ", ".join(f"{k} {v}" for k, v in ms.items()) + ".", "",
        f"Closest baseline: **{best}**. From scratch with the stage's recipe ("
        f"{f'{cfg.steps} steps' if cfg.steps else f'{cfg.epochs:g} epochs'}, Adam lr {cfg.lr}, "
        f"batch {cfg.batch_size}), seeds {seeds}, top-1 % on the digits eval split (torch):", "",
        "| architecture | p50 ms | accuracy mean | std | min | max |", "|---|---|---|---|---|---|",
        f"| searched (pipeline record) | {ms['searched']} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:.2f} | {s['max']:.2f} |",
        f"| {best} | {ms[best]} | {m['mean']:.2f} | {m['std']:.2f} | {m['min']:.2f} | {m['max']:.2f} |", ""])
    (out / "darts_baseline.md").write_text(md)
    print(md)
    return 0


def markdown(r: dict) -> str:
    env = r["environment"]
    cpu = env.get("cpu_model", "?")
    flags = "flags " + ", ".join(env.get("cpu_flags") or []) + f", load average {env.get('load_avg_1m')} at the end"
    lines = [
        "# search.darts: anti-collapse and the latency term (digits 8x8)", "",
        f"`{r['command']}` — {r['wall_seconds']} s wall on {cpu} ({env.get('logical_cores', '?')} cores, shared with other "
        f"work: timings are noisy); {flags}", "",
        f"Space: DARTS cells, {len(r['space']['ops'])} operations, {r['space']['nodes']} nodes, layout "
        f"{r['space']['layout']}, {r['space']['c']} channels. Latency table: {r['latency_table']['entries']} "
        f"operations + 3 networks timed interleaved on ONNX Runtime (1 thread), fit measured = "
        f"{r['latency_table']['a']} x sum + {r['latency_table']['b_ms']} ms.", "",
        "## Searches (same seed, same budget)", "",
        "| search | latency_weight | skip share | predicted ms | measured p50 ms | error | same-session fit: predicted, error | search s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(f"| {x['name']} | {x['latency_weight']:g} | {x['skip_share']:.2f} | {x['predicted_ms']:.4f} | "
                     f"{x['measured_ms']:.4f} | {x['prediction_error_pct']:+.1f}% | {x['predicted_same_session_ms']:.4f}, "
                     f"{x['same_session_error_pct']:+.1f}% | {x['search_seconds']} |")
    lines += ["", "Predicted: the table's sum with the affine fit of the table session; same-session fit: the "
              "three calibration networks timed again beside the derived ones and the fit redone (the machine's "
              "speed drifts between sessions under load).", "",
              f"Measured latency {'falls monotonically' if r['monotone'] else 'does NOT fall monotonically'} "
              "as latency_weight rises (DARTS- runs, one interleaved measurement).", "",
              "## DARTS- on vs off, trained from scratch", "",
              f"Same recipe ({r['from_scratch']['recipe']['epochs']:g} epochs, Adam lr "
              f"{r['from_scratch']['recipe']['lr']}, batch {r['from_scratch']['recipe']['batch_size']}), seeds "
              f"{r['from_scratch']['seeds']}; top-1 % on the digits eval split (torch).", "",
              "| anti_collapse | skip share | accuracy mean | std | min | max |", "|---|---|---|---|---|---|"]
    shares = {x["anti_collapse"]: x["skip_share"] for x in (r["runs"][0], r["runs"][-1])}
    for k in ("darts-", "none"):
        a = r["from_scratch"][k]["accuracy"]
        lines.append(f"| {k} | {shares[k]:.2f} | {a['mean']:.2f} | {a['std']:.2f} | {a['min']:.2f} | {a['max']:.2f} |")
    lines += ["", "Genotypes: see darts.json (`runs[].genotype`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
