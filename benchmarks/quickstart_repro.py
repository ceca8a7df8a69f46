"""Does the quickstart reproduce? Cold runs of `compress run pipelines/quickstart.yaml`, each from a fresh
clone (its own empty cache), compared: weights hash, accuracy, INT8 speed-up, wall time.

    python benchmarks/quickstart_repro.py            # 3 cold runs from fresh clones of HEAD
    python benchmarks/quickstart_repro.py --runs 1

Writes reports/quickstart_repro.json and reports/quickstart_repro.md (the README's quickstart numbers come
from here), with the CPU model, its ISA flags and the load average, because the trained weights differ
between an AVX2 and an AVX-512 machine (float reductions differ by ISA) and the box may be shared.
Clones HEAD: commit first.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
def cpu() -> dict:
    """CPU model, usable cores and ISA flags, from the same reader the reports use."""
    sys.path.insert(0, str(ROOT))
    from compress.runtimes.environment import machine_key

    m = machine_key()
    return {"model": m["cpu_model"], "cores": m["usable_cores"] or os.cpu_count(), "isa": m["cpu_flags"]}


def one_run(i: int, work: Path) -> dict:
    clone = work / f"clone-{i}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    load = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "compress.cli", "run", "-q", "pipelines/quickstart.yaml"], cwd=clone,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(clone)})
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    rep = json.loads((clone / "runs" / "quickstart" / "report.json").read_text())
    base, final = rep["baseline"], rep["stages"][-1]
    bm, fm = base["measurements"]["ort-cpu"], final["measurements"]["ort-cpu"]
    weights = next((clone / ".compress-cache" / "artifacts").glob("*/model.safetensors"), None)
    training = base["facts"].get("training", {})
    return {
        "run": i, "exit_code": p.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu_s, 1),
        "load_avg_1min_at_start": round(load, 2), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "baseline_hash": base["artifact"]["hash"], "int8_hash": final["artifact"]["hash"],
        "weights_sha256": None if weights is None else hashlib.sha256(weights.read_bytes()).hexdigest(),
        "fp32_accuracy": bm["accuracy"], "int8_accuracy": fm["accuracy"],
        "accuracy_drop": round(bm["accuracy"] - fm["accuracy"], 4), "speedup": fm["speedup_vs_baseline"],
        "speedup_ci": fm.get("speedup_ci"), "training_s": training.get("seconds"),
        "training_threads": training.get("threads"),
        "gates": {g["metric"]: g.get("status", g.get("passed")) for g in rep["gates"]},
    }


def main(argv: list[str]) -> int:
    runs = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else 3
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="quickstart-repro-"))
    results = []
    try:
        for i in range(1, runs + 1):
            r = one_run(i, work)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = {k: len({json.dumps(r[k]) for r in results}) == 1
            for k in ("weights_sha256", "baseline_hash", "int8_hash", "fp32_accuracy", "int8_accuracy")}
    out = {"commit": head, "cpu": cpu(), "command": "compress run -q pipelines/quickstart.yaml (fresh clone, empty "
           "cache)", "runs": results, "identical_across_runs": same,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (ROOT / "reports" / "quickstart_repro.json").write_text(json.dumps(out, indent=2) + "\n")
    c = out["cpu"]
    lines = [f"# Quickstart reproducibility ({out['date']}, commit {head})", "",
             f"CPU: {c['model']}, {c['cores']} cores, ISA: {', '.join(c['isa'])}. "
             f"Command: `{out['command']}`, {runs} times. Regenerate: `python benchmarks/quickstart_repro.py`.", "",
             "Cold wall time depends on what else runs on the machine (the load average at start and end is "
             "given); CPU s (user + system of the run) is what the run itself cost: on an idle 2-core machine "
             "the wall time is about that.", "",
             "| run | exit | cold wall s | CPU s | load avg start/end | training s (threads) | weights sha256 | "
             "FP32 % | INT8 % | drop | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ci = r["speedup_ci"]
        lines.append(f"| {r['run']} | {r['exit_code']} | {r['wall_s']} | {r['cpu_s']} | "
                     f"{r['load_avg_1min_at_start']}/{r['load_avg_1min_at_end']} | "
                     f"{r['training_s']} ({r['training_threads']}) | `{(r['weights_sha256'] or '?')[:12]}` | "
                     f"{r['fp32_accuracy']} | {r['int8_accuracy']} | {r['accuracy_drop']} | {r['speedup']:.2f}x"
                     + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "") + " |")
    lines += ["", "Identical across runs: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()), ""]
    (ROOT / "reports" / "quickstart_repro.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
