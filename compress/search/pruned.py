"""A search space seen after a structured prune: the same configs, run at the channel widths the prune
leaves them (``round_to`` and coupled channels included), so a latency table of this view predicts the
network the chain deploys rather than the one the search picked.

The widths are read from the pruned network itself (the prune is the caller's callable, e.g. the
``prune.structured`` adapter), never recomputed here: a space that supports it exposes
``blocks(config, model=...)``, reading channel counts from a built model's layers. Which channels go
depends on the weights; how many does not for a uniform ratio, so a seeded random network gives the
widths.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from compress.search.space import Block, Config, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


class PrunedView(SearchSpace):
    """``space``'s configs with their blocks at the widths ``prune(model) -> model`` leaves."""

    def __init__(self, space: SearchSpace, prune: Callable[["nn.Module"], "nn.Module"], seed: int = 0):
        self.space, self.prune, self.seed = space, prune, seed
        self.name = f"{space.name}:pruned"
        self._blocks: dict[str, list[Block]] = {}

    def choices(self) -> dict[str, list[Any]]:
        return self.space.choices()

    def active_genes(self, config: Config) -> set[str]:
        return self.space.active_genes(config)

    def recipe(self, config: Config) -> dict[str, Any]:
        return self.space.recipe(config)

    def covering_configs(self) -> list[Config]:
        return self.space.covering_configs()

    def model(self, config: Config) -> "nn.Module":
        """The config's network (seeded random weights), pruned."""
        import torch

        from compress.artifact import import_callable

        r = self.space.recipe(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = import_callable(r["callable"])(**r["kwargs"]).eval()
        return self.prune(model)

    def blocks(self, config: Config) -> list[Block]:
        key = self.space.key(config)
        if key not in self._blocks:
            self._blocks[key] = self.space.blocks(config, model=self.model(config))
        return self._blocks[key]
