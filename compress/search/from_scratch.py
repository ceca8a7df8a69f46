"""The validation every search owes its user: train the searched architecture and a baseline architecture
from scratch with the *same* recipe (:func:`compress.training.train`) over several seeds, and report the
accuracy of each as mean +- spread, so the user sees whether the search was worth it.

Each architecture is a recipe (``{"callable": "module:fn", "kwargs": {...}}``); seed ``s`` seeds both the
weight initialisation and the training run. Accuracy is top-1 of the torch model on the eval split.
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compress.data import Dataset
    from compress.training import TrainConfig


def train_from_scratch(recipe: Mapping[str, Any], dataset: "Dataset", cfg: "TrainConfig", seed: int,
                       base_dir=None, progress: Callable[[int, int, dict[str, float]], None] | None = None,
                       ) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Build ``recipe`` with weights initialised under ``seed``, train it with ``cfg`` (seed ``seed``), and
    return the model and its history (with ``eval_accuracy``, top-1 % on the eval split)."""
    import torch

    from compress.artifact import import_callable
    from compress.training import accuracy, train

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = import_callable(recipe["callable"], base_dir)(**recipe.get("kwargs", {}))
    hist = train(model, dataset, cfg.model_copy(update={"seed": seed}), progress=progress)
    hist["eval_accuracy"] = round(accuracy(model, dataset, "eval"), 4)
    return model, hist


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of per-seed values."""
    vals = [float(v) for v in values]
    return {"values": [round(v, 4) for v in vals], "mean": round(statistics.fmean(vals), 4),
            "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
            "min": round(min(vals), 4), "max": round(max(vals), 4), "n": len(vals)}


def compare(recipes: Mapping[str, Mapping[str, Any]], dataset: "Dataset", cfg: "TrainConfig",
            seeds: Sequence[int], base_dir=None, progress: Callable[[str, int, int], None] | None = None,
            ) -> tuple[dict[str, Any], dict[str, "torch.nn.Module"]]:
    """Train every recipe from scratch for every seed; return ``{name: {accuracy: spread, steps, seconds}}``
    and the model of each recipe trained with the first seed."""
    out: dict[str, Any] = {}
    first: dict[str, "torch.nn.Module"] = {}
    for name, recipe in recipes.items():
        accs, secs, steps = [], 0.0, 0
        for s in seeds:
            model, hist = train_from_scratch(recipe, dataset, cfg, s, base_dir,
                                             progress=(lambda st, t, i, n=name: progress(n, st, t)) if progress else None)
            accs.append(hist["eval_accuracy"])
            secs += hist["seconds"]
            steps += hist["steps"]
            first.setdefault(name, model)
        out[name] = {"accuracy": spread(accs), "train_steps": steps, "train_seconds": round(secs, 2)}
    return out, first
