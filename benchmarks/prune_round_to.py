"""How `round_to` changes what a pruned channel buys in ONNX Runtime (the default of prune.structured).

    python benchmarks/prune_round_to.py [--model resnet18 --size 112 --ratio 0.45]

Prunes the same random-weight zoo model uniformly at one channel ratio with round_to None / 4 / 8 / 16
(torch-pruning via compress.stages.prune_structured.make_pruner), exports each, and times all of them and the
unpruned model interleaved in one process (the one timing loop, 1 thread, batch 1). Channel counts differ by
the rounding, so the comparison is time per MAC (ms per GMAC) and the speed-up per MAC reduction; writes
reports/prune_round_to.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    import torch

    from compress.export import ExportConfig, export_onnx
    from compress.facts import torch_facts
    from compress.runtimes import measure_interleaved
    from compress.runtimes.environment import fingerprint
    from compress.runtimes.onnxruntime import OnnxRuntime
    from compress.runtimes.timing import TimingPolicy, paired_speedup
    from compress.stages.prune_structured import PruneStructuredConfig, make_pruner
    from compress.zoo import get

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--ratio", type=float, default=0.45)
    ap.add_argument("--channels", type=int, default=1)
    args = ap.parse_args(argv)
    shape = (1, args.channels, args.size, args.size)
    torch.manual_seed(0)
    variants = {"unpruned": None, "none": None, "4": 4, "8": 8, "16": 16}
    rows, runners, sessions = {}, {}, []

    class Target:  # the onnxruntime options of the pipelines' ort-cpu target
        name, runtime, threads, inter_op_threads, graph_optimization = "ort-cpu", "onnxruntime", 1, 1, "all"
        providers, batch_size = ["CPUExecutionProvider"], 1

    x = torch.randn(*shape).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        for name, rt in variants.items():
            model = get(args.model)(num_classes=10, in_channels=args.channels).eval()
            if name != "unpruned":
                cfg = PruneStructuredConfig(pruning_ratio=args.ratio, round_to=rt, finetune=None)
                make_pruner(model, cfg, shape, args.ratio, 1).step()
            f = torch_facts(model, shape)
            widths = sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)})
            path = export_onnx(model, shape, Path(tmp) / f"{name}.onnx", ExportConfig())
            sess = OnnxRuntime().open(path, Target)
            sessions.append(sess)
            runners[name] = sess.runner(x)
            rows[name] = {"macs": f["macs"], "conv_widths": widths}
        stats = measure_interleaved(runners, TimingPolicy(min_runs=30, max_runs=300, min_seconds=3, max_seconds=40))
        for s in sessions:
            s.close()
    base = stats["unpruned"]
    for name, r in rows.items():
        st = stats[name]
        sp = paired_speedup(base, st) or base.p50_ms / st.p50_ms
        r.update({"p50_ms": round(st.p50_ms, 4), "ms_per_gmac": round(st.p50_ms / (r["macs"] / 1e9), 3),
                  "speedup": round(sp, 4), "macs_reduction": round(rows["unpruned"]["macs"] / r["macs"], 4),
                  "speedup_per_mac_reduction": round(sp / (rows["unpruned"]["macs"] / r["macs"]), 4)})
    env = fingerprint()
    out = {"command": "python benchmarks/prune_round_to.py " + " ".join(argv), "model": args.model, "shape": shape,
           "ratio": args.ratio, "rows": rows,
           "environment": {k: env.get(k) for k in ("cpu_model", "vnni", "load_avg_1m")}
           | {"avx2": "avx2" in (env.get("cpu_flags") or []), "avx512f": "avx512f" in (env.get("cpu_flags") or [])}}
    (ROOT / "reports" / "prune_round_to.json").write_text(json.dumps(out, indent=2))
    lines = ["# round_to: time per MAC of a uniformly pruned model in ONNX Runtime", "",
             f"`{out['command']}` — {args.model} at {shape}, channel ratio {args.ratio}, random weights; "
             f"1 thread, batch 1, all variants timed interleaved. CPU: {out['environment']}. Shared, noisy box.", "",
             "| round_to | MACs | p50 ms | ms / GMAC | speed-up | MAC reduction | speed-up / MAC reduction |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['macs']:,} | {r['p50_ms']} | {r['ms_per_gmac']} | {r['speedup']} | "
                     f"{r['macs_reduction']} | {r['speedup_per_mac_reduction']} |")
    (ROOT / "reports" / "prune_round_to.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
