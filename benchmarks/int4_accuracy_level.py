"""Weight-only INT4 in ONNX Runtime: ``accuracy_level`` 0 vs 4 against FP32, timed interleaved.

The model is the one of ``pipelines/int4.yaml``: the zoo ``transformer`` (row tokens, dim 384, depth 2)
trained on scikit-learn's digits with :func:`compress.training.train`, exported with the legacy exporter.
The INT4 models are made by the ``quantize.weights`` stage itself (``MatMulNBitsQuantizer``, symmetric,
block 32): one with ``accuracy_level: 0`` (float32 compute, the kernel's default) and one with
``accuracy_level: 4`` (int8 compute), plus nncf's INT4 (``backend: nncf``, accuracy_level patched to 4).
All are timed in one process, interleaved (:func:`compress.runtimes.measure_interleaved`), at batch 1 on
1 thread, graph optimization all, in several rounds; ratios are FP32 p50 / model p50. Accuracy is top-1
on the digits eval split in ONNX Runtime.

    python benchmarks/int4_accuracy_level.py        # writes reports/int4_accuracy_level.md and .json
    python benchmarks/int4_accuracy_level.py --dim 512 --depth 1 --batch 8 --out /tmp/x
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> quantize.weights config (None = the FP32 export itself)
VARIANTS = {
    "fp32": None,
    "int4 ort, accuracy_level 0": {"backend": "onnxruntime", "bits": 4, "group_size": 32, "accuracy_level": 0},
    "int4 ort, accuracy_level 4": {"backend": "onnxruntime", "bits": 4, "group_size": 32, "accuracy_level": 4},
    "int4 nncf, accuracy_level 4": {"backend": "nncf", "bits": 4, "group_size": 32, "accuracy_level": 4},
}


def target(batch: int, min_seconds: float):
    from compress.runtimes import TimingPolicy
    from compress.runtimes.onnxruntime import OrtTarget

    return OrtTarget(name="ort-cpu", threads=1, inter_op_threads=1, graph_optimization="all", batch_size=batch,
                     timing=TimingPolicy(min_seconds=min_seconds, max_seconds=max(15.0, 3 * min_seconds)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--epochs", type=float, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="batch size for latency")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (ratios per round + median)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per model per round (at least)")
    p.add_argument("--out", default=str(ROOT / "reports" / "int4_accuracy_level"), help="report path, no suffix")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from compress import zoo
    from compress.artifact import ONNX, Artifact, save_onnx, save_torch
    from compress.context import StageContext
    from compress.data import DataConfig, load_dataset
    from compress.evaluation import run_outputs, score
    from compress.export import ExportConfig, export_onnx
    from compress.runtimes import get_runtime, measure_interleaved
    from compress.stages.quantize_weights import QuantizeWeights, QuantizeWeightsConfig
    from compress.training import TrainConfig, train

    t0 = time.monotonic()
    ds = load_dataset(DataConfig(source="digits", seed=0), ROOT)
    kwargs = {"num_classes": 10, "in_channels": 1, "image_size": 8, "dim": args.dim, "depth": args.depth,
              "heads": 4, "mlp_ratio": 2.0}
    torch.manual_seed(args.seed)
    model = zoo.get("transformer")(**kwargs)
    hist = train(model, ds, TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, seed=args.seed))
    shape = (1, *ds.sample_shape)
    tgt = target(args.batch, args.min_seconds)
    runtime = get_runtime("onnxruntime")
    x_eval, y_eval = ds.split("eval")
    rng = np.random.default_rng(0)
    x_time = np.ascontiguousarray(x_eval[rng.choice(len(x_eval), size=args.batch, replace=False)])

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="int4-bench-") as tmp:
        tmp = Path(tmp)
        stub = Artifact(format="torch", precision="float32", dir=tmp, files={}, file_hashes={}, input_shape=shape,
                        recipe={"callable": zoo.ZOO["transformer"], "kwargs": kwargs})
        base = save_torch(model, tmp / "float", like=stub, producer="baseline")
        (tmp / "fp32").mkdir()
        export_onnx(model, shape, tmp / "fp32" / ONNX, ExportConfig())
        fp32 = save_onnx(tmp / "fp32" / ONNX, tmp / "fp32", like=base, producer="export", precision="float32")
        paths = {}
        for i, (name, cfg) in enumerate(VARIANTS.items()):
            if cfg is None:
                paths[name], facts = fp32.path("onnx"), {}
            else:
                work = tmp / f"q{i}"
                work.mkdir()
                ctx = StageContext(dataset=ds, work_dir=work, export=ExportConfig(), base_dir=ROOT, stage_name=name,
                                   log=lambda m, n=name: print(f"  [{n}] {m}"))
                art = QuantizeWeights(QuantizeWeightsConfig(**cfg)).run(fp32, ctx)
                paths[name], facts = art.path("onnx"), art.facts
            with runtime.open(paths[name], tgt) as sess:
                acc = score(run_outputs(sess, ds, "eval", 256), y_eval, None)["accuracy"]
            results[name] = {"config": cfg, "accuracy": acc, "file_bytes": paths[name].stat().st_size,
                             "weight_ratio": facts.get("weight_ratio"),
                             "quantized_layers": facts.get("quantized_layers"),
                             "layers_by_bits": facts.get("layers_by_bits"), "rounds": []}

        sessions = {name: runtime.open(path, tgt) for name, path in paths.items()}
        try:
            for r in range(args.rounds):
                stats = measure_interleaved({n: s.runner(x_time) for n, s in sessions.items()}, tgt.timing)
                for name, st in stats.items():
                    results[name]["rounds"].append({"p50_ms": round(st.p50_ms, 5), "p90_ms": round(st.p90_ms, 5),
                                                    "n": st.n, "robust_cv": round(st.robust_cv, 4),
                                                    "speedup_vs_fp32": round(stats["fp32"].p50_ms / st.p50_ms, 4)})
                print(f"round {r + 1}: " + ", ".join(f"{n} {st.p50_ms:.3f} ms" for n, st in stats.items()), flush=True)
        finally:
            for s in sessions.values():
                s.close()

    fp32_file = results["fp32"]["file_bytes"]
    for res in results.values():
        res["p50_ms"] = round(statistics.median(r["p50_ms"] for r in res["rounds"]), 5)
        res["speedup_vs_fp32"] = round(statistics.median(r["speedup_vs_fp32"] for r in res["rounds"]), 4)
        res["size_ratio"] = round(res["file_bytes"] / fp32_file, 4)
        res["accuracy_drop"] = round(results["fp32"]["accuracy"] - res["accuracy"], 4)
    out = {
        "setup": {"model": "transformer", "kwargs": kwargs, "data": ds.source_desc,
                  "eval_samples": int(len(y_eval)), "training": hist, "timing_batch": args.batch,
                  "runtime": "onnxruntime, CPUExecutionProvider, 1 intra-op thread, graph_optimization all",
                  "timing": tgt.timing.model_dump(mode="json"), "rounds": args.rounds},
        "results": results,
        "command": " ".join(["python benchmarks/int4_accuracy_level.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "total_seconds": round(time.monotonic() - t0, 1),
    }
    write(out, Path(args.out))
    print(json.dumps({n: {k: r[k] for k in ("accuracy", "p50_ms", "speedup_vs_fp32", "size_ratio")}
                      for n, r in results.items()}, indent=1))
    return out


def write(res: dict, out: Path) -> None:
    import onnxruntime as ort

    from compress.runtimes.environment import fingerprint

    res["environment"] = fingerprint({"intra_op": 1, "inter_op": 1})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    s, rs = res["setup"], res["results"]
    k = s["kwargs"]
    lines = [
        "# Weight-only INT4 in ONNX Runtime: accuracy_level 0 vs 4",
        "",
        f"Model: zoo `transformer` (dim {k['dim']}, depth {k['depth']}, {k['heads']} heads, MLP x{k['mlp_ratio']:g}; "
        f"8 row tokens), trained on {s['data']} ({s['training']['steps']} steps). INT4 = the `quantize.weights` "
        f"stage (symmetric, block 32). Latency: batch {s['timing_batch']}, {s['runtime']} "
        f"(onnxruntime {ort.__version__}), all models timed interleaved in one process, {s['rounds']} rounds; "
        "p50 and speed-up are medians over rounds (speed-up = FP32 p50 / model p50, per round). Accuracy: "
        f"top-1 on {s['eval_samples']} eval digits in ONNX Runtime. Size: whole ONNX file vs FP32; weight "
        "ratio: MatMul/Gemm weight storage (packed 4-bit + scales [+ zero points]) vs float32.",
        "",
        "| model | accuracy | Δ points | p50 ms | speed-up vs FP32 | per round | file size | size ratio | "
        "weight ratio | layers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rs.items():
        rounds = " / ".join(f"{x['speedup_vs_fp32']:.2f}x" for x in r["rounds"])
        layers = ", ".join(f"{b} x{n}" for b, n in (r["layers_by_bits"] or {}).items()) or "float32"
        wr = "" if r["weight_ratio"] is None else f"{r['weight_ratio']:.3f}"
        lines.append(f"| {name} | {r['accuracy']:.2f}% | {0.0 - r['accuracy_drop']:+.2f} | {r['p50_ms']:.3f} | "
                     f"**{r['speedup_vs_fp32']:.2f}x** | {rounds} | {r['file_bytes'] / 1e6:.2f} MB | "
                     f"{r['size_ratio']:.3f} | {wr} | {layers} |")
    env = res["environment"]
    lines += [
        "",
        "`accuracy_level` is the MatMulNBits compute type: 0 = unset (float32), 4 = int8 (activations quantized "
        "per block on the fly). With 0 the 4-bit model dequantizes weights and computes in float, which is "
        "slower than the FP32 model here; with 4 it uses integer dot products and is faster. The nncf row has "
        "its `accuracy_level` set to 4 by the stage (nncf 3.4 writes 0) and keeps the K=8 embedding in INT8 "
        "(no group >= 16 divides 8), so it is 'mixed'.",
        "",
        f"Command: `{res['command']}` ({res['total_seconds']} s in all on {env.get('cpu_model', 'this CPU')}, "
        f"load average {env.get('load_avg_1m', env.get('load', '?'))} at the end).",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
