"""Supernet training with the sandwich rule and in-place distillation (Yu et al., BigNAS / OFA), through
the one training loop (:func:`compress.training.train` with a ``step_loss``), and the accuracy of a
candidate (extract -> recalibrate BatchNorm on training batches -> top-1 on a split).

Each step: the largest subnet learns from the labels; the smallest and ``random_subnets`` random
subnets learn from the largest one's (detached) soft outputs when ``inplace_distill`` is on. Training is
split into phases (``warmup_fraction`` of the steps on the largest network alone, then the sandwich);
each finished phase is cached like any artifact, so an interrupted run resumes from the last finished
phase.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from compress.search.space import Config, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compress.cache import Cache
    from compress.data import Dataset
    from compress.training import TrainConfig


class SupernetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup_fraction: float = Field(0.25, ge=0, lt=1, description="Share of the steps that train the largest "
                                   "network alone before the sandwich rule starts.")
    random_subnets: int = Field(2, ge=0, description="Random subnets per step besides the largest and smallest.")
    inplace_distill: bool = Field(True, description="Smaller subnets learn from the largest one's outputs.")
    kd_temperature: float = Field(1.0, gt=0)


def build_supernet(family: str, kwargs: dict[str, Any], base_dir: str | None = None) -> "torch.nn.Module":
    """Artifact recipe of a cached supernet."""
    from compress.search.space import load_space

    return load_space(family, kwargs, base_dir).supernet()


def sandwich_loss(space: SearchSpace, supernet, cfg: SupernetConfig, seed: int) -> Callable:
    """The step loss of the sandwich rule (largest + smallest + random subnets, in-place KD)."""
    import numpy as np
    import torch.nn.functional as F

    from compress.training import kd_loss

    rng = np.random.default_rng(seed)
    largest, smallest = space.largest(), space.smallest()

    def step(model, xb, yb):
        model.activate(largest)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        soft = out.detach()
        for c in [smallest] + [space.sample(rng) for _ in range(cfg.random_subnets)]:
            model.activate(c)
            o = model(xb)
            loss = loss + (kd_loss(o, soft, cfg.kd_temperature) if cfg.inplace_distill else F.cross_entropy(o, yb))
        model.activate(None)
        return loss

    return step


def train_supernet(space: SearchSpace, dataset: "Dataset", train_cfg: TrainConfig, cfg: SupernetConfig, *,
                   cache: "Cache",
                   key_parts: dict[str, Any], log: Callable[[str], None] = print,
                   progress=None) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Train (or load from the cache) the supernet phase by phase; return it and its history."""
    from safetensors.torch import load_file

    from compress.cache import cache_key
    from compress.training import train

    from compress.training import total_steps

    steps = total_steps(train_cfg, len(dataset.splits["train"]))
    warm = int(round(cfg.warmup_fraction * steps))
    phases = [("largest", warm), ("sandwich", steps - warm)]
    supernet = space.supernet()
    recipe = {"callable": "compress.search.supernet:build_supernet", "kwargs": space.origin}
    hist: dict[str, Any] = {"phases": []}
    prev = None
    for i, (name, n) in enumerate(phases):
        if n <= 0:
            continue
        key = cache_key(step="supernet", phase=i, prev=prev, space=space.origin, config=cfg.model_dump(mode="json"),
                        train=train_cfg.model_dump(mode="json"),
                        **key_parts)
        art = cache.get_artifact(key)
        if art is not None:
            supernet.load_state_dict(load_file(str(art.path("weights"))))
            hist["phases"].append({**art.facts, "cached": True})
            log(f"supernet phase '{name}': cached")
        else:
            tcfg = train_cfg.model_copy(update={"steps": n, "seed": train_cfg.seed + i})
            loss = None if name == "largest" else sandwich_loss(space, supernet, cfg, seed=train_cfg.seed + 1000 + i)
            supernet.activate(None)
            if progress is not None:
                with progress(f"supernet: {name}", n) as bar:
                    h = train(supernet, dataset, tcfg, step_loss=loss, progress=lambda s, t, info: bar.update(1, **info))
            else:
                h = train(supernet, dataset, tcfg, step_loss=loss)
            h = {"phase": name, **h}

            def build(wd: Path, h=h) -> Any:
                return _save(supernet, recipe, wd, h)

            art = cache.build_artifact(key, build)
            hist["phases"].append({**h, "cached": False})
            log(f"supernet phase '{name}': {h['steps']} steps in {h['seconds']} s, loss {h['final_loss']}")
        prev = art.hash
    supernet.activate(None)
    supernet.eval()
    return supernet, hist


def _save(model, recipe, wd: Path, facts: dict[str, Any]):
    from compress.artifact import Artifact, save_torch

    stub = Artifact(format="torch", precision="float32", dir=wd, files={}, file_hashes={}, input_shape=(1,),
                    recipe=recipe)
    return save_torch(model, wd, like=stub, producer="search:supernet", facts=facts)


# --------------------------------------------------------------------------------------------------
# candidate accuracy (runs in executor workers)

_LOADED: dict[str, tuple[SearchSpace, Any]] = {}


def eval_payload(space: SearchSpace, supernet, dataset: "Dataset", *, split: str, bn_batches: int,
                 bn_batch_size: int) -> dict[str, Any]:
    """What a worker needs to score candidates (sent once per worker)."""
    from compress.artifact import sha256_json

    state = {k: v.detach().clone() for k, v in supernet.state_dict().items()}
    ident = sha256_json({"space": space.origin, "sums": [float(v.double().sum()) for v in state.values()],
                         "data": dataset.fingerprint, "split": split, "bn": [bn_batches, bn_batch_size]})
    return {"id": ident, "space": space.origin, "state": state, "dataset": dataset, "split": split,
            "bn_batches": bn_batches, "bn_batch_size": bn_batch_size}


def candidate_accuracy(payload: dict[str, Any], config: Config) -> float:
    """Top-1 (%) of the extracted subnet after BatchNorm recalibration on fixed training batches.
    A pure function of (payload, config): the same in any process, in any order."""
    import torch

    from compress.search.space import load_space
    from compress.training import accuracy, recalibrate_bn

    if payload["id"] not in _LOADED:
        _LOADED.clear()
        space = load_space(**payload["space"])
        sup = space.supernet()
        sup.load_state_dict(payload["state"])
        _LOADED[payload["id"]] = (space, sup.eval())
    space, sup = _LOADED[payload["id"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sub = space.extract(sup, config)
        recalibrate_bn(sub, payload["dataset"], "train", batches=payload["bn_batches"],
                       batch_size=payload["bn_batch_size"])
        return round(accuracy(sub, payload["dataset"], payload["split"]), 4)
    finally:
        torch.set_num_threads(threads)
