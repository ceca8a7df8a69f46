"""Evolution vs random search at an equal budget, over several seeds, on pipelines/search.yaml.

For each seed and each strategy (nsga2, evolution) the search pipeline runs with that seed (finetune
off); the stage always runs random search with the same number of distinct feasible candidates and the
same seed beside it, and records both fronts' hypervolumes (latency reference = the budget, accuracy
reference 0). The supernet, the latency table and every candidate's score are cached, so the runs differ
only in the search. The hypervolumes are compared with a one-sided Wilcoxon signed-rank test paired by
seed (scipy.stats.wilcoxon, alternative "greater") and a one-sided Mann-Whitney U test.

    python benchmarks/search_strategies.py [--seeds 0 1 2 3 4 5 6] [--candidates 96]

Writes reports/search_strategies.json and .md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    import numpy as np
    from scipy.stats import mannwhitneyu, wilcoxon

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(7)))
    ap.add_argument("--strategies", nargs="+", default=["nsga2", "evolution"])
    ap.add_argument("--candidates", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "reports" / "search_strategies"))
    args = ap.parse_args(argv)
    base = yaml.safe_load((ROOT / "pipelines" / "search.yaml").read_text())
    work = ROOT / "runs" / "search-strategies"
    work.mkdir(parents=True, exist_ok=True)
    hv: dict[str, dict[int, float]] = {s: {} for s in [*args.strategies, "random"]}
    fronts: dict[str, dict[int, int]] = {s: {} for s in hv}
    for seed in args.seeds:
        for strategy in args.strategies:
            cfg = json.loads(json.dumps(base))
            st = cfg["stages"][0]["config"]
            st.update({"seed": seed, "strategy": strategy, "finetune": None, "measure_front": 2})
            if args.candidates:
                st["candidates"] = args.candidates
            cfg["gates"] = []
            cfg["output"] = {"dir": str(work / f"{strategy}-{seed}"), "cache_dir": str(ROOT / ".compress-cache")}
            p = work / f"{strategy}-{seed}.yaml"
            p.write_text(yaml.safe_dump(cfg, sort_keys=False))
            print(f"$ compress run -q {p}", flush=True)
            rc = subprocess.call([sys.executable, "-m", "compress.cli", "run", "-q", str(p)], cwd=ROOT)
            if rc not in (0, 1):
                print(f"run failed with exit code {rc}", file=sys.stderr)
                return rc
            rep = json.loads((work / f"{strategy}-{seed}" / "report.json").read_text())
            facts = rep["stages"][0]["facts"]["search"]
            hv[strategy][seed] = facts["hypervolume"][strategy]
            hv["random"][seed] = facts["hypervolume"]["random"]
            fronts[strategy][seed] = len(facts["front"])
            fronts["random"][seed] = len(facts["random_front"])
            print(f"  seed {seed}: {strategy} {hv[strategy][seed]:.4f}, random {hv['random'][seed]:.4f}", flush=True)
    tests = {}
    for s in args.strategies:
        a = [hv[s][k] for k in args.seeds]
        b = [hv["random"][k] for k in args.seeds]
        tests[s] = {"median": float(np.median(a)), "median_random": float(np.median(b)),
                    "wins": int(sum(x > y for x, y in zip(a, b))), "seeds": len(a),
                    "wilcoxon_p": float(wilcoxon(a, b, alternative="greater").pvalue) if a != b else 1.0,
                    "mannwhitney_p": float(mannwhitneyu(a, b, alternative="greater").pvalue)}
    from compress.runtimes.environment import fingerprint

    env = fingerprint()
    report = {"command": "python benchmarks/search_strategies.py " + " ".join(argv),
              "pipeline": "pipelines/search.yaml", "candidates": args.candidates or base["stages"][0]["config"]["candidates"],
              "cpu": {k: env.get(k) for k in ("cpu_model", "cpu_flags", "physical_cores")},
              "hypervolume": hv, "front_points": fronts, "tests": tests}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = ["# Evolution vs random search at an equal budget (pipelines/search.yaml)", "",
             f"`{report['command']}` — {report['candidates']} distinct feasible candidates per strategy and seed; "
             "hypervolume of the accuracy/latency front (latency reference = the budget, accuracy reference 0; "
             "accuracy from inherited supernet weights on the calibration split).", "",
             "| seed | " + " | ".join(hv) + " |", "|---|" + "---|" * len(hv)]
    for k in args.seeds:
        lines.append(f"| {k} | " + " | ".join(f"{hv[s][k]:.4f}" for s in hv) + " |")
    lines += ["", "| strategy | median HV | random median HV | seeds won | Wilcoxon p (one-sided) | Mann-Whitney p |",
              "|---|---|---|---|---|---|"]
    for s, t in tests.items():
        lines.append(f"| {s} | {t['median']:.4f} | {t['median_random']:.4f} | {t['wins']}/{t['seeds']} | "
                     f"{t['wilcoxon_p']:.4f} | {t['mannwhitney_p']:.4f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
