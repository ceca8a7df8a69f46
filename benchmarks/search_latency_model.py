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


def service(cache_dir: Path, res: int, timing: dict):
    import numpy as np

    from compress.cache import Cache
    from compress.config import EvaluationConfig, TargetConfig
    from compress.data import Dataset
    from compress.export import ExportConfig
    from compress.measure import Measure

    ds = Dataset.from_arrays(np.random.default_rng(0).standard_normal((4, 3, res, res)).astype(np.float32),
                             np.arange(4) % 2)
    target = TargetConfig(name="ort-cpu", threads=1, graph_optimization="all", timing=timing)
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


def pruned(art, folder: Path, ratio: float):
    """prune.structured's torch-pruning adapter, one shot, no fine-tune (latency does not need it)."""
    from compress.artifact import build_module, save_torch
    from compress.stages.prune_structured import PruneStructuredConfig, history_json, make_pruner, prune_edit

    model = build_module(art)
    cfg = PruneStructuredConfig(pruning_ratio=ratio, importance="l2", round_to=8, finetune=None)
    pruner = make_pruner(model, cfg, art.input_shape, ratio, 1)
    pruner.step()
    edit = prune_edit(history_json(pruner), art.input_shape)
    return save_torch(model, folder, like=art, producer="bench:prune", edits=art.edits + (edit,))


def run_one(res: int, prec: str, n_holdout: int, work: Path, cache_dir: Path, timing: dict, log) -> dict:
    import numpy as np

    from compress.search import latency as lat

    space = space_for(res)
    m = service(cache_dir, res, timing)
    rng = np.random.default_rng(res)
    calibration = lat.calibration_configs(space, 10)
    seen = {space.key(c) for c in calibration}
    holdout = []
    while len(holdout) < n_holdout:
        c = space.sample(rng)
        if space.key(c) not in seen:
            seen.add(space.key(c))
            holdout.append(c)
    counter = [0]

    def prepare(a):
        counter[0] += 1
        return int8(m, a, work / f"q{counter[0]:04d}") if prec == "int8" else a

    t0 = time.time()
    model, rows = lat.build(space, lambda arts: m.latency(arts, label=f"{res}px {prec}: {len(arts)} artifacts"),
                            work / "arts", input_shape=(1, 3, res, res), calibration=calibration, holdout=holdout,
                            prepare=prepare, log=log)
    meas = [r["measured_ms"] for r in rows]
    out = {"resolution": res, "precision": prec, "blocks": len(model.table), "calibration_networks": len(calibration),
           "affine": {"a": model.a, "b": model.b}, "seconds": round(time.time() - t0, 1),
           "plain_sum": lat.validate([r["sum_ms"] for r in rows], meas),
           "affine_sum": lat.validate([r["predicted_ms"] for r in rows], meas),
           "measured_ms": {"min": min(meas), "median": float(np.median(meas)), "max": max(meas)},
           "rows": rows}
    return out, model, space, holdout


def prune_chain(fp32: tuple, n: int, work: Path, cache_dir: Path, timing: dict) -> dict:
    from scipy.stats import kendalltau

    from compress.search import latency as lat

    model, space, holdout, res = fp32
    m = service(cache_dir, res, timing)
    nets = holdout[:n]
    arts = []
    for i, c in enumerate(nets):
        a = lat.recipe_artifact(space.recipe(c), (1, 3, res, res), work / f"p{i:03d}" / "fp32", seed=i)
        p = pruned(a, work / f"p{i:03d}" / "pruned", 0.25)
        arts.append(int8(m, p, work / f"p{i:03d}" / "int8"))
    stats = m.latency(arts, label=f"{len(arts)} pruned INT8 subnets")
    pred = [model.predict(space, c) for c in nets]
    meas = [s.p50_ms for s in stats]
    return {"resolution": res, "networks": len(nets), "prune": "prune.structured adapter, 25% channels, l2, round_to 8",
            "kendall_tau": round(float(kendalltau(pred, meas).statistic), 4),
            "predicted_fp32_ms": pred, "measured_pruned_int8_ms": meas}


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
    ap.add_argument("--prune-nets", type=int, default=20)
    ap.add_argument("--cache", default=str(ROOT / ".compress-cache-bench"))
    ap.add_argument("--out", default=str(ROOT / "reports" / "search_latency_model"))
    args = ap.parse_args(argv)
    timing = {"warmup_runs": 3, "warmup_seconds": 0.02, "min_runs": 15, "max_runs": 200, "min_seconds": 0.1,
              "max_seconds": 5.0, "block": 3, "clock": args.clock}
    work = Path(tempfile.mkdtemp(prefix="search-latency-"))
    env = fingerprint()
    results, fp32_models = [], {}
    try:
        for res in args.res:
            for prec in args.prec:
                print(f"== {res}x{res} {prec}", flush=True)
                r, model, space, holdout = run_one(res, prec, args.holdout, work / f"{res}-{prec}", Path(args.cache),
                                                   timing, lambda s: print("  " + s, flush=True))
                if prec == "fp32":
                    fp32_models[res] = (model, space, holdout, res)
                results.append(r)
                print(f"  plain sum: {json.dumps(r['plain_sum'])}\n  affine:    {json.dumps(r['affine_sum'])}",
                      flush=True)
        chain = None
        if args.prune and fp32_models:
            res = 32 if 32 in fp32_models else next(iter(fp32_models))
            chain = prune_chain(fp32_models[res], args.prune_nets, work / "prune", Path(args.cache), timing)
            print(f"== prune + INT8 at {res}: Kendall tau {chain['kendall_tau']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"command": "python benchmarks/search_latency_model.py " + " ".join(argv),
              "cpu": {k: env.get(k) for k in ("cpu_model", "cpu_flags", "physical_cores", "load_avg_1m")},
              "packages": env.get("packages"), "timing": timing, "results": results, "prune_chain": chain}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = ["# Latency model of the search (inverted-residual family, ONNX Runtime CPU, 1 thread, batch 1)", "",
             f"`{report['command']}` — CPU {report['cpu']['cpu_model']} ({', '.join(report['cpu']['cpu_flags'] or [])}), "
             f"{report['cpu']['physical_cores']} cores, 1-min load {report['cpu']['load_avg_1m']} at the start "
             f"(a shared, busy machine). Clock: {report['timing']['clock']}.", "",
             "Held-out subnets timed in the same interleaved session as the blocks and the 10 calibration subnets.",
             "", "| res | precision | blocks | held-out | median ms | plain-sum MAPE | bias | affine MAPE | Kendall tau "
             "| within ±10% | close pairs ordered |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a, p = r["affine_sum"], r["plain_sum"]
        lines.append(f"| {r['resolution']} | {r['precision']} | {r['blocks']} | {a['n']} | {r['measured_ms']['median']:.3f} "
                     f"| {p['mape_pct']}% | {p['bias_pct']}% | {a['mape_pct']}% | {a['kendall_tau']} | "
                     f"{a['within_10pct']:.0%} | {a['close_pairs_ordered']} of {a['close_pairs']} |")
    if chain:
        lines += ["", f"Chain: {chain['networks']} held-out subnets at {chain['resolution']}x{chain['resolution']}, "
                  f"{chain['prune']}, then INT8: Kendall tau between the FP32 table's prediction and the measured "
                  f"latency after prune + INT8 = **{chain['kendall_tau']}**."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
