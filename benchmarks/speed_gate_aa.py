"""A/A and A/B study of the statistical speed gate (compress/report/gate.py + compress/stats.py).

    python benchmarks/speed_gate_aa.py [--runs 100] [--threshold 3] [--slowdown 5] [--report runs/quickstart/report.json]

The gate under study is the one a pipeline gets from ``{metric: latency_p50, max_regression_pct: 3}``: the
candidate and the reference are timed interleaved by the one timing loop with the target's default
TimingPolicy, the measurement extends itself until the 95% sign-test interval of the paired per-round
ratio excludes the threshold (or the budget, ``max_seconds`` per artifact, ends: inconclusive), and the
gate decides pass / fail / inconclusive.

* **A/A**: the model against itself (two sessions of the same file). Every "fail" is a false failure.
* **A/B**: the model against a copy with an extra op that costs about ``--slowdown`` percent (a 3x3
  convolution of the input, summed and added to the output times zero; its output channels sized by a
  calibration measurement). Every
  "fail" is a caught regression.

The model is the quickstart's architecture (zoo ``resnet20``, 1x32x32 input, FP32; latency does not
depend on the weights' values, so it is not trained) exported to ONNX; ``--report`` instead takes the
models of a finished quickstart run (its INT8 final model and its FP32 baseline). Results go to reports/speed_gate_aa.md and .json, with the CPU flags and
the machine's load (the box is shared: other work runs beside the study).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def inject_slowdown(src: Path, dst: Path, width: int) -> None:
    """``dst`` = ``src`` plus ``out += 0 * ReduceSum(Conv3x3(x, W[width, c_in]))``: real work that the runtime
    cannot fold away (it depends on the input), whose cost scales with ``width`` (output channels). A
    convolution like the model's own, with a few KB of weights, so its share of the time does not swing
    with the neighbours' cache pressure (a MatMul with a large weight matrix did: 5.1% then 7.2%)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    x, y = g.input[0], g.output[0]
    c_in = x.type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(0)
    g.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((width, c_in, 3, 3)).astype(np.float32), "aa_w"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "aa_zero"),
    ])
    old = y.name
    for node in g.node:  # rename the graph output's producer so the extra Add writes the output
        for i, o in enumerate(node.output):
            if o == old:
                node.output[i] = "aa_pre"
    g.node.extend([
        helper.make_node("Conv", [x.name, "aa_w"], ["aa_conv"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceSum", ["aa_conv"], ["aa_sum"], keepdims=0),
        helper.make_node("Mul", ["aa_sum", "aa_zero"], ["aa_z"]),
        helper.make_node("Add", ["aa_pre", "aa_z"], [old]),
    ])
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def export_resnet20(path: Path) -> Path:
    """The quickstart's architecture (zoo resnet20, 1 channel, 32x32) exported to ONNX, FP32, eval mode."""
    if path.is_file():
        return path
    import torch

    from compress import zoo
    from compress.export import ExportConfig, export_onnx

    torch.manual_seed(0)
    model = zoo.get("resnet20")(num_classes=10, in_channels=1).eval()
    export_onnx(model, [1, 1, 32, 32], path, ExportConfig())
    return path


def open_runner(path: Path, x):
    from compress.config import TargetConfig
    from compress.runtimes import get_runtime

    sess = get_runtime("onnxruntime").open(path, TargetConfig(name="ort-cpu"))
    return sess, sess.runner(x)


def decision(ref: Path, cand: Path, x, threshold: float) -> dict:
    """One gate decision, exactly as the runner makes it."""
    from compress.config import GateConfig, TargetConfig
    from compress.report.gate import latency_interval, latency_questions, measurement_decided
    from compress.runtimes.timing import measure_interleaved
    from compress.stats import decide

    target = TargetConfig(name="ort-cpu")
    gate = GateConfig(metric="latency_p50", max_regression_pct=threshold, stage="cand")
    q = latency_questions([gate], "ort-cpu", "ort-cpu", {"cand": "cand", "baseline": "ref", "final": "cand"})
    s1, r1 = open_runner(ref, x)
    s2, r2 = open_runner(cand, x)
    t0 = time.perf_counter()
    stats = measure_interleaved({"ref": r1, "cand": r2}, target.timing, until=lambda s: measurement_decided(q, s))
    secs = time.perf_counter() - t0
    s1.close(), s2.close()
    ci = latency_interval("latency_p50", stats["cand"], stats["ref"], gate.confidence)
    return {"decision": decide(ci, "<=", threshold), "regression_pct": ci.point, "ci": [ci.low, ci.high],
            "rounds": ci.n, "seconds": round(secs, 2), "load_1m": round(os.getloadavg()[0], 2)}


def true_slowdown(ref: Path, cand: Path, x, seconds: float) -> tuple[float, list]:
    from compress.runtimes.timing import TimingPolicy, measure_interleaved, paired_ratios
    from compress.stats import ratio_ci

    s1, r1 = open_runner(ref, x)
    s2, r2 = open_runner(cand, x)
    pol = TimingPolicy(min_seconds=seconds, max_seconds=seconds * 2, max_runs=10 ** 6)
    st = measure_interleaved({"ref": r1, "cand": r2}, pol)
    ci = ratio_ci(paired_ratios(st["ref"], st["cand"])).inverted()
    return (ci.point - 1) * 100, [(ci.low - 1) * 100, (ci.high - 1) * 100]


def calibrate(src: Path, work: Path, x, want: float, log) -> tuple[Path, int, float, list]:
    """Find the extra Conv width (channels) whose measured slowdown is closest to ``want`` percent."""
    width, best = 8, None
    for _ in range(8):
        dst = work / f"slow_{width}.onnx"
        inject_slowdown(src, dst, width)
        pct, ci = true_slowdown(src, dst, x, 4.0)
        log(f"  width {width}: +{pct:.2f}% [{ci[0]:.2f}, {ci[1]:.2f}]")
        if best is None or abs(pct - want) < abs(best[2] - want):
            best = (dst, width, pct, ci)
        if abs(pct - want) <= 0.25:
            break
        width = max(1, int(round(width * want / max(pct, 0.2))))
    return best


def study(name: str, model: Path, work: Path, x, runs: int, threshold: float, slowdown: float, log,
          width: int | None = None, kinds: tuple[str, ...] = ("aa", "ab")) -> dict:
    if width is None:
        log(f"[{name}] calibrating a +{slowdown}% extra op on {model}")
        slow, width, _, _ = calibrate(model, work, x, slowdown, log)
    else:
        slow = work / f"slow_{width}.onnx"
        inject_slowdown(model, slow, width)
    pct, ci = true_slowdown(model, slow, x, 20.0)  # the injected slowdown, measured long
    log(f"[{name}] extra Conv3x3, {width} channels: measured +{pct:.2f}% [{ci[0]:.2f}, {ci[1]:.2f}] (20 s interleaved)")
    out = {"model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model), "extra_op_width": width,
           "injected_slowdown_pct": round(pct, 3), "injected_slowdown_ci": [round(v, 3) for v in ci]}
    for kind, cand in (("aa", model), ("ab", slow)):
        if kind not in kinds:
            continue
        ds = []
        for i in range(runs):
            d = decision(model, cand, x, threshold)
            ds.append(d)
            if i % 10 == 9:
                log(f"[{name}] {kind} {i + 1}/{runs}: " + ", ".join(
                    f"{k} {sum(e['decision'] == k for e in ds)}" for k in ("pass", "fail", "inconclusive")))
        secs = [d["seconds"] for d in ds]
        out[kind] = {
            "runs": runs, **{k: sum(d["decision"] == k for d in ds) for k in ("pass", "fail", "inconclusive")},
            "seconds_median": round(statistics.median(secs), 2), "seconds_max": round(max(secs), 2),
            "rounds_median": statistics.median(d["rounds"] for d in ds),
            "load_1m_median": statistics.median(d["load_1m"] for d in ds), "decisions": ds,
        }
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=3.0)
    ap.add_argument("--slowdown", type=float, default=5.0)
    ap.add_argument("--report", default=None, help="a quickstart run's report.json (default: export zoo resnet20)")
    ap.add_argument("--models", default="int8,fp32", help="with --report: int8 (final), fp32 (baseline)")
    ap.add_argument("--out", default="reports/speed_gate_aa")
    ap.add_argument("--width", type=int, default=None, help="extra Conv3x3 channels (default: calibrate to --slowdown)")
    ap.add_argument("--studies", default="aa,ab", help="aa, ab or both")
    ap.add_argument("--merge", action="store_true", help="add these studies to an existing results file")
    args = ap.parse_args(argv)

    import numpy as np

    from compress.runtimes.environment import fingerprint

    work = ROOT / "runs" / "speed_gate_aa"
    work.mkdir(parents=True, exist_ok=True)
    if args.report:
        from compress.report.model import Report

        rep = Report.model_validate_json((ROOT / args.report).read_text())
        paths = {"int8": Path(rep.stages[-1].artifact.onnx_path), "fp32": Path(rep.baseline.artifact.onnx_path)}
        paths = {k: paths[k] for k in args.models.split(",")}
    else:
        paths = {"resnet20-fp32": export_resnet20(work / "resnet20.onnx")}
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32)

    def log(msg: str) -> None:
        print(msg, flush=True)

    env = fingerprint()
    result = {"command": "python benchmarks/speed_gate_aa.py " + " ".join(argv), "threshold_pct": args.threshold,
              "gate": f"{{metric: latency_p50, max_regression_pct: {args.threshold:g}}}", "timing": "TimingPolicy() "
              "defaults (1 thread, block 5, min 1 s, budget max_seconds 15 s per artifact)",
              "environment": {k: env[k] for k in ("cpu_model", "cpu_flags", "logical_cores", "usable_cores",
                                                  "load_avg_1m", "packages")},
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "models": {}}
    out = (ROOT / args.out).with_suffix(".json")
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        result["models"] = old["models"]
        result["command"] = old["command"] + " ; " + result["command"]
    for name in paths:
        sub = work / name
        sub.mkdir(exist_ok=True)
        r = study(name, paths[name], sub, x, args.runs, args.threshold, args.slowdown, log, args.width,
                  tuple(args.studies.split(",")))
        prev = result["models"].get(name, {})
        if "aa" in prev and "aa" not in r:  # keep the A/A study, record the new injected op with the A/B one
            r["aa"] = prev["aa"]
        result["models"][name] = r
        write(result, ROOT / args.out)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write(result, ROOT / args.out)
    return 0


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    env = result["environment"]
    lines = [f"# Speed gate A/A study (threshold {result['threshold_pct']:g}%)", "",
             f"`{result['command'].strip()}` — gate `{result['gate']}`, timing {result['timing']}.",
             f"CPU: {env['cpu_model']} (flags: {', '.join(env['cpu_flags'])}), {env['usable_cores']} usable cores, "
             f"shared with other work (1-min load when each decision ended: median column). "
             f"Started {result['started']}.", "",
             "| model | study | runs | pass | fail | inconclusive | decision s (median / max) | rounds (median) | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        for kind, label in (("aa", "A/A (itself)"), ("ab", f"A/B (+{r['injected_slowdown_pct']:.2f}% extra op)")):
            if kind in r:
                s = r[kind]
                lines.append(f"| {name} | {label} | {s['runs']} | {s['pass']} | {s['fail']} | {s['inconclusive']} | "
                             f"{s['seconds_median']} / {s['seconds_max']} | {s['rounds_median']} | {s['load_1m_median']} |")
    lines += ["", "A/A: every *fail* is a false failure (acceptance: at most 1 in 100). A/B: every *fail* is a caught "
              "regression (acceptance: at least 95 in 100). The injected slowdown is measured separately, 20 s "
              "interleaved, and given with its 95% interval per model:", ""]
    for name, r in result["models"].items():
        lines.append(f"- {name}: `{r['model']}` + extra Conv3x3 with {r['extra_op_width']} channels: +{r['injected_slowdown_pct']:.2f}% "
                     f"[{r['injected_slowdown_ci'][0]:.2f}, {r['injected_slowdown_ci'][1]:.2f}]")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
