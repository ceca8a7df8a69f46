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
    args = p.parse_args(argv)
    t0 = time.monotonic()
    out_dir = Path(args.out)
    rows = []
    for lr in args.lrs:
        res = qat_vs_ptq.main(["--qat-lr", str(lr), "--seeds", *map(str, args.seeds),
                               "--out", str(out_dir / f"lr_{lr:g}")])
        rows.append({"lr": lr, "recovered": [r["recovered_fraction"] for r in res["runs"]],
                     "accuracy": [r["accuracy"] for r in res["runs"]],
                     "mean_recovered": res["mean_recovered_fraction"], "min_recovered": res["min_recovered_fraction"]})
    best = max(rows, key=lambda r: (r["min_recovered"] or -1, r["mean_recovered"] or -1))
    result = {"rows": rows, "best_lr": best["lr"], "seeds": args.seeds, "criterion": "highest minimum recovered "
              "fraction across seeds (then highest mean)", "seconds": round(time.monotonic() - t0, 1),
              "command": " ".join(["python benchmarks/qat_lr.py", *(argv if argv is not None else sys.argv[1:])])}
    lines = ["# QAT learning rate: PTQ loss recovered by quantize.qat, across seeds", "",
             "tiny_cnn (width 8) on digits, NNCF INT8; QAT = quantize.qat, 3 epochs, Adam, cosine, KD on; "
             "recovered = (qat - ptq) / (float - ptq) on the digits eval split in ONNX Runtime.", "",
             "| lr | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | min |",
             "|---|" + "---|" * (len(args.seeds) + 2)]
    for r in rows:
        cells = ["n/a" if f is None else f"{100 * f:.0f}%" for f in r["recovered"]]
        lines.append(f"| {r['lr']:g} | " + " | ".join(cells) + f" | {100 * (r['mean_recovered'] or 0):.0f}% | "
                     f"{100 * (r['min_recovered'] or 0):.0f}% |")
    lines += ["", f"Best ({result['criterion']}): **lr {best['lr']:g}**.", "",
              f"Command: `{result['command']}` ({result['seconds']} s, shared 2-core box)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2))
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
