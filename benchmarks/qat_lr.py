"""Which QAT learning rate recovers most of the PTQ loss, across seeds: settles quantize.qat's default lr.

    python benchmarks/qat_lr.py [--lrs 1e-4 3e-4 1e-3 3e-3] [--seeds 0 1 2]

Runs benchmarks/qat_vs_ptq.py (narrow tiny_cnn on digits, NNCF PTQ vs the quantize.qat stage from the
same start, 3 epochs, KD on) once per learning rate and writes reports/qat_lr.md / .json: per lr, the
recovered fraction (qat - ptq) / (float - ptq) per seed, its mean and its minimum.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> dict:
    import qat_vs_ptq

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "reports" / "qat_lr"))
    p.add_argument("--from-json", type=Path, help="re-summarize a previous run's .json instead of running")
    args = p.parse_args(argv)
    if args.from_json:
        old = json.loads(args.from_json.read_text())
        result = summarize(old["rows"], old["seeds"], old["seconds"], old["command"])
        write(result, Path(args.out))
        return result
    t0 = time.monotonic()
    out_dir = Path(args.out)
    rows = []
    for lr in args.lrs:
        res = qat_vs_ptq.main(["--qat-lr", str(lr), "--seeds", *map(str, args.seeds),
                               "--out", str(out_dir / f"lr_{lr:g}")])
        rows.append({"lr": lr, "recovered": [r["recovered_fraction"] for r in res["runs"]],
                     "accuracy": [r["accuracy"] for r in res["runs"]],
                     "mean_recovered": res["mean_recovered_fraction"], "min_recovered": res["min_recovered_fraction"]})
    result = summarize(rows, args.seeds, time.monotonic() - t0,
                       " ".join(["python benchmarks/qat_lr.py", *(argv if argv is not None else sys.argv[1:])]))
    write(result, Path(args.out))
    return result


MIN_LOSS = 1.0  # points: a seed where PTQ loses less says nothing about recovery (the ratio explodes)


def summarize(rows: list[dict], seeds: list[int], seconds: float, command: str) -> dict:
    """Best lr: the highest minimum recovery over the seeds where PTQ lost >= MIN_LOSS points; among lrs
    within 5% of it, the smallest (least disturbance of the trained model)."""
    for r in rows:
        kept = [f for f, a in zip(r["recovered"], r["accuracy"]) if a["float"] - a["ptq"] >= MIN_LOSS and f is not None]
        r["min_recovered_informative"] = min(kept) if kept else None
    top = max(r["min_recovered_informative"] or -1 for r in rows)
    best = min((r for r in rows if (r["min_recovered_informative"] or -1) >= top - 0.05), key=lambda r: r["lr"])
    return {"rows": rows, "best_lr": best["lr"], "seeds": seeds, "seconds": round(seconds, 1), "command": command,
            "criterion": f"highest minimum recovered fraction over the seeds where PTQ lost >= {MIN_LOSS:g} point; "
                         "the smallest lr within 5% of it"}


def write(result: dict, out: Path) -> None:
    rows, seeds = result["rows"], result["seeds"]
    lines = ["# QAT learning rate: PTQ loss recovered by quantize.qat, across seeds", "",
             "tiny_cnn (width 8) on digits, NNCF INT8; QAT = quantize.qat, 3 epochs, Adam, cosine, KD on; "
             "recovered = (qat - ptq) / (float - ptq) on the digits eval split in ONNX Runtime. "
             "PTQ loss per seed (points): " + ", ".join(
                 f"seed {s}: {a['float'] - a['ptq']:.2f}" for s, a in zip(seeds, rows[0]["accuracy"])) + ".", "",
             "| lr | " + " | ".join(f"seed {s}" for s in seeds) + f" | min (seeds losing >= {MIN_LOSS:g} pt) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for r in rows:
        cells = ["n/a" if f is None else f"{100 * f:.0f}%" for f in r["recovered"]]
        m = r["min_recovered_informative"]
        lines.append(f"| {r['lr']:g} | " + " | ".join(cells) + f" | {'n/a' if m is None else f'{100 * m:.0f}%'} |")
    lines += ["", f"Chosen ({result['criterion']}): **lr {result['best_lr']:g}**, the quantize.qat default.", "",
              f"Command: `{result['command']}` ({result['seconds']} s, shared 2-core AVX2 box)."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
