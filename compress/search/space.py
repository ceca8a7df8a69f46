"""The search-space interface, the genome operators every space shares, and loading a space from config.

A *config* is a flat dict ``{gene: value}`` whose genes and allowed values come from
:meth:`SearchSpace.choices`; sampling, mutation, crossover and the numeric encoding are generic over it.
A space (a built-in family or the user's own ``module:callable`` returning a :class:`SearchSpace`) adds:

* :meth:`~SearchSpace.supernet` -> a torch module holding the largest network's weights, with
  ``activate(config)`` (the next forward runs that subnet with shared, sliced weights) and
  ``activate(None)`` (the largest network);
* :meth:`~SearchSpace.extract` -> a standalone ``torch.nn.Module`` of plain layers with the weights the
  subnet inherits (equal to the supernet with that config active);
* :meth:`~SearchSpace.recipe` -> ``{"callable": "module:fn", "kwargs": {...}}`` that rebuilds the
  standalone model without weights (the artifact recipe: no pickles);
* optionally :meth:`~SearchSpace.blocks` -> the blocks a config runs, each buildable and measurable on
  its own, for the per-block latency table (without it the latency model learns from whole networks).

Only numpy at import time; torch inside the families' functions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

Config = dict[str, Any]


@dataclass(frozen=True)
class Block:
    """One block a config runs: a module recipe and the input shape it sees in the network."""

    kind: str
    recipe: dict[str, Any]  # {"callable": "module:fn", "kwargs": {...}}
    input_shape: tuple[int, ...]
    counts: dict[str, int] = field(default_factory=dict, compare=False)  # {"params", "macs"} if known

    @property
    def key(self) -> str:
        return json.dumps({"recipe": self.recipe, "shape": list(self.input_shape)}, sort_keys=True)


class SearchSpace:
    """Base class: subclasses define :meth:`choices`, :meth:`supernet`, :meth:`extract`, :meth:`recipe`
    (and optionally :meth:`blocks`, :meth:`active_genes`)."""

    name: str = "space"

    # -- what the user implements -----------------------------------------------------------------
    def choices(self) -> dict[str, list[Any]]:
        raise NotImplementedError

    def supernet(self) -> "torch.nn.Module":
        raise NotImplementedError

    def extract(self, supernet: "torch.nn.Module", config: Config) -> "torch.nn.Module":
        raise NotImplementedError

    def recipe(self, config: Config) -> dict[str, Any]:
        raise NotImplementedError

    def blocks(self, config: Config) -> list[Block] | None:
        """The blocks ``config`` runs, in order; ``None``: no per-block latency table for this space."""
        return None

    def active_genes(self, config: Config) -> set[str]:
        """Genes that change the network for ``config`` (others are set to their first choice)."""
        return set(self.choices())

    # -- generic genome operators ---------------------------------------------------------------------
    def canonical(self, config: Config) -> Config:
        """``config`` with inactive genes at their first choice, so equal networks compare equal."""
        ch = self.choices()
        active = self.active_genes(config)
        return {g: (config[g] if g in active else vals[0]) for g, vals in ch.items()}

    def key(self, config: Config) -> str:
        return json.dumps(self.canonical(config), sort_keys=True)

    def largest(self) -> Config:
        return self.canonical({g: vals[-1] for g, vals in self.choices().items()})

    def smallest(self) -> Config:
        return self.canonical({g: vals[0] for g, vals in self.choices().items()})

    def sample(self, rng: "np.random.Generator") -> Config:
        return self.canonical({g: vals[int(rng.integers(len(vals)))] for g, vals in self.choices().items()})

    def mutate(self, config: Config, rng: "np.random.Generator", prob: float = 0.1) -> Config:
        """Each gene is resampled with probability ``prob``; at least one active gene changes."""
        ch = self.choices()
        out = dict(config)
        for g, vals in ch.items():
            if rng.random() < prob:
                out[g] = vals[int(rng.integers(len(vals)))]
        if self.key(out) == self.key(config):
            active = sorted(g for g in self.active_genes(config) if len(ch[g]) > 1)
            if active:
                g = active[int(rng.integers(len(active)))]
                others = [v for v in ch[g] if v != config[g]]
                out[g] = others[int(rng.integers(len(others)))]
        return self.canonical(out)

    def crossover(self, a: Config, b: Config, rng: "np.random.Generator") -> Config:
        """Uniform crossover: each gene from ``a`` or ``b`` with equal probability."""
        return self.canonical({g: (a[g] if rng.random() < 0.5 else b[g]) for g in self.choices()})

    def encode(self, config: Config) -> list[float]:
        """Each gene as its choice index scaled to [0, 1] (for learned predictors)."""
        out = []
        for g, vals in self.choices().items():
            out.append(vals.index(config[g]) / max(len(vals) - 1, 1))
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "choices": self.choices()}


# --------------------------------------------------------------------------------------------------
# loading

#: built-in families: name -> "module:class"
FAMILIES: dict[str, str] = {
    "inverted_residual": "compress.search.mbnet:InvertedResidualSpace",
    "residual": "compress.search.resnet:ResidualSpace",
}


def load_space(family: str, kwargs: dict[str, Any], base_dir=None) -> SearchSpace:
    """A built-in family by name, or the user's ``module:callable`` (called with ``kwargs``)."""
    from compress.artifact import import_callable

    spec = FAMILIES.get(family, family)
    if ":" not in spec:
        raise ValueError(f"unknown search space '{family}': use one of {', '.join(FAMILIES)} or 'module:callable'")
    space = import_callable(spec, base_dir)(**kwargs)
    # how a worker (or a cached supernet's recipe) rebuilds the same space
    space.origin = {"family": family, "kwargs": kwargs, "base_dir": str(base_dir) if base_dir else None}
    missing = [m for m in ("choices", "supernet", "extract", "recipe") if not callable(getattr(space, m, None))]
    if missing:
        raise ValueError(f"search space '{family}' lacks {', '.join(missing)} (see compress/search/space.py)")
    return space
