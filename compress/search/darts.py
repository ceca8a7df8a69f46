"""Differentiable, hardware-aware architecture search (DARTS with a latency term, ProxylessNAS/FBNet style).

* **Mixed operation**: every searchable edge computes ``sum_i softmax(alpha)_i * op_i(x)`` over its candidate
  operations (:class:`MixedOp`). Cell edges of the same kind (normal / reduction) and position share one
  ``alpha`` row, as in DARTS; each inverted-residual layer has its own.
* **Expected latency**: ``sum over mixed edges of softmax(alpha) . t`` where ``t`` holds the per-operation
  latencies of that edge at its input shape, read from a table timed on the declared target
  (:func:`build_latency_table`, through the measurement service). It enters the architecture loss relative
  to ``E0``, the expected latency of the uniform mixture (the start of the search), so that the weight does
  not depend on the model's size or the machine: ``latency_weight * E / E0``; with a budget,
  ``latency_weight * relu((b + E) / budget - 1)`` (``b + E``: the predicted latency of the mixture).
* **Bi-level, first order**: the network weights train on one half of the training split through the one
  training loop (:func:`compress.training.train`); after every weight step, :class:`ArchStep` (the loop's
  ``after_step`` hook) takes one Adam step on the architecture parameters alone, on a batch of the other,
  disjoint half (Liu et al. 2019, first-order approximation). The alphas do not require grad while the loop
  builds its optimizer, so the weight optimizer never holds them; the hook computes their gradient with
  ``torch.autograd.grad`` on the alphas only, so it never touches a weight.
* **Against collapse** (``anti_collapse: darts-``, the default): DARTS- (Chu et al., ICLR 2021) adds an
  auxiliary skip ``beta * x`` to every stride-1 mixed edge, ``beta`` decaying linearly from 1 to 0 over the
  search, so that skip connections no longer win by easing optimisation. ``none`` is the bare DARTS.
* **Deriving**: an inverted-residual layer takes its arg-max operation; a cell node keeps its two strongest
  incoming edges (strength: the largest non-``none`` weight) with their arg-max non-``none`` operation.

Imports torch: import it inside functions of light modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compress.search import cells

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact
    from compress.data import Dataset


class MixedOp(nn.Module):
    """``sum_i softmax(alpha[key])_i * candidate_i(x)`` (+ ``beta * x`` when the auxiliary skip is on)."""

    def __init__(self, candidates: Sequence[str], modules: Sequence[nn.Module], key: str, c_in: int, c_out: int,
                 stride: int, aux_skip: bool) -> None:
        super().__init__()
        self.candidates = list(candidates)
        self.ops = nn.ModuleList(modules)
        self.key, self.c_in, self.c_out, self.stride = key, c_in, c_out, stride
        self.aux_skip = aux_skip and stride == 1 and c_in == c_out
        self.in_hw: tuple[int, int] | None = None  # set by probe_shapes
        self.latency: torch.Tensor | None = None  # ms per candidate, set by attach_latency
        self._net: list[Supernet] = []  # the owner, unregistered (holds alphas and beta)

    def weights(self) -> torch.Tensor:
        return F.softmax(self._net[0].alphas[self.key], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        out = sum(w[i] * op(x) for i, op in enumerate(self.ops))
        beta = self._net[0].beta
        return out + beta * x if self.aux_skip and beta > 0 else out


class Supernet(nn.Module):
    """A template network whose edges are :class:`MixedOp`; ``alphas`` holds one parameter row per key."""

    def __init__(self, net: nn.Module, alpha_sizes: dict[str, int], seed: int = 0, space: str = "cells") -> None:
        super().__init__()
        self.net, self.space = net, space
        g = torch.Generator().manual_seed(seed)
        self.alphas = nn.ParameterDict({k: nn.Parameter(1e-3 * torch.randn(n, generator=g), requires_grad=False)
                                        for k, n in alpha_sizes.items()})
        self.beta = 0.0
        for m in self.mixed():
            m._net.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def mixed(self) -> list[MixedOp]:
        return [m for m in self.net.modules() if isinstance(m, MixedOp)]

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())


# -- spaces --------------------------------------------------------------------------------------------


@dataclass
class CellSpace:
    """DARTS cells (see :mod:`compress.search.cells`)."""

    num_classes: int
    in_channels: int
    ops: Sequence[str] = cells.CELL_OPS
    nodes: int = 3
    c: int = 8
    layout: str = "NRN"
    name: str = "cells"

    def _edges(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.nodes) for j in range(2 + i)]

    def supernet(self, aux_skip: bool, seed: int = 0) -> Supernet:
        edges = self._edges()

        def wiring(kind: str):
            return [[(j, e) for e, (i2, j) in enumerate(edges) if i2 == i] for i in range(self.nodes)]

        def make_edge(kind: str, cell: int, width: int):
            def edge(node: int, j: int, stride: int, e: int) -> MixedOp:
                mods = [_search_cell_op(op, width, stride) for op in self.ops]
                return MixedOp(self.ops, mods, f"{kind}:{e}", width, width, stride, aux_skip)
            return edge

        net = cells.CellNetwork(self.num_classes, self.in_channels, self.c, self.layout, self.nodes, wiring,
                                make_edge, affine=False)
        sizes = {f"{kind}:{e}": len(self.ops) for kind in ("normal", "reduce") for e in range(len(edges))}
        return Supernet(net, sizes, seed, self.name)

    def derive(self, net: Supernet) -> dict[str, list[list[Any]]]:
        """Per node: the two strongest incoming edges, each with its arg-max non-``none`` operation."""
        geno: dict[str, list[list[Any]]] = {}
        edges = self._edges()
        keep = [k for k, op in enumerate(self.ops) if op != "none"] or list(range(len(self.ops)))
        for kind in ("normal", "reduce"):
            pairs: list[list[Any]] = []
            for i in range(self.nodes):
                scored = []
                for e, (i2, j) in enumerate(edges):
                    if i2 != i:
                        continue
                    key = f"{kind}:{e}"
                    w = F.softmax(net.alphas[key].detach(), -1) if key in net.alphas else torch.zeros(len(self.ops))
                    best = max(keep, key=lambda k: float(w[k]))
                    scored.append((float(w[best]), -j, self.ops[best], j))
                top = sorted(scored, reverse=True)[:2]
                pairs += [[op, j] for _, _, op, j in sorted(top, key=lambda t: t[3])]
            geno[kind] = pairs
        return geno

    def chosen(self, net: Supernet, genotype: dict) -> list[tuple[MixedOp, str]]:
        """The mixed edges a genotype keeps, with the operation it picks on each."""
        edges = self._edges()
        out = []
        for cell in net.net.cells:
            kind = "reduce" if cell.reduction else "normal"
            for n, (op, j) in enumerate(genotype[kind]):
                out.append((cell.edges[edges.index((n // 2, int(j)))], op))
        return out

    def pick(self, net: Supernet, how: str, rng) -> dict[str, list[list[Any]]]:
        """A genotype of the cheapest / dearest / random operations by the edges' current ``latency``
        vectors (the calibration networks of the latency model)."""
        edges, real = self._edges(), [o for o in self.ops if o != "none"]
        geno: dict[str, list[list[Any]]] = {}
        for kind in ("normal", "reduce"):
            pairs = []
            for i in range(self.nodes):
                inputs = (0, 1) if how != "random" else sorted(rng.choice(2 + i, size=2, replace=False).tolist())
                for j in inputs:
                    key = f"{kind}:{edges.index((i, j))}"
                    ms = [m for m in net.mixed() if m.key == key]
                    cost = {o: sum(float(m.latency[m.candidates.index(o)]) for m in ms) for o in real}
                    op = (min(real, key=cost.get) if how == "min" else max(real, key=cost.get) if how == "max"
                          else real[int(rng.integers(len(real)))])
                    pairs.append([op, int(j)])
            geno[kind] = pairs
        return geno

    def recipe(self, genotype: dict) -> dict[str, Any]:
        return {"callable": "compress.search.cells:cell_network",
                "kwargs": {"genotype": genotype, "num_classes": self.num_classes, "in_channels": self.in_channels,
                           "c": self.c, "layout": self.layout, "nodes": self.nodes}}


@dataclass
class InvertedResidualSpace:
    """ProxylessNAS/FBNet layers: per layer one MBConv of a kernel x expansion, or ``skip``."""

    num_classes: int
    in_channels: int
    kernels: Sequence[int] = (3, 5, 7)
    expands: Sequence[int] = (3, 6)
    stem: int = 16
    stages: Sequence[Sequence[int]] = ((16, 1, 1), (24, 2, 2), (32, 2, 2))
    head: int = 64
    skip: bool = True
    name: str = "inverted_residual"
    _cands: list[list[str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._cands = [cells.ir_candidates(self.kernels, self.expands, ci, co, s, self.skip)
                       for ci, co, s in cells.ir_layer_shapes(self.stem, self.stages)]

    def supernet(self, aux_skip: bool, seed: int = 0) -> Supernet:
        def layer(i: int, c_in: int, c_out: int, s: int) -> MixedOp:
            cands = self._cands[i]
            return MixedOp(cands, [cells.ir_op(op, c_in, c_out, s) for op in cands], f"layer:{i}", c_in, c_out, s,
                           aux_skip)

        net = cells.IRNetwork(self.num_classes, self.in_channels, self.stem, self.stages, self.head, layer)
        return Supernet(net, {f"layer:{i}": len(c) for i, c in enumerate(self._cands)}, seed, self.name)

    def derive(self, net: Supernet) -> list[str]:
        return [c[int(torch.argmax(net.alphas[f"layer:{i}"].detach()))] for i, c in enumerate(self._cands)]

    def chosen(self, net: Supernet, genotype: list[str]) -> list[tuple[MixedOp, str]]:
        return list(zip(net.mixed(), genotype))

    def pick(self, net: Supernet, how: str, rng) -> list[str]:
        out = []
        for m in net.mixed():
            k = (int(torch.argmin(m.latency)) if how == "min" else int(torch.argmax(m.latency)) if how == "max"
                 else int(rng.integers(len(m.candidates))))
            out.append(m.candidates[k])
        return out

    def recipe(self, genotype: list[str]) -> dict[str, Any]:
        return {"callable": "compress.search.cells:ir_network",
                "kwargs": {"genotype": list(genotype), "num_classes": self.num_classes,
                           "in_channels": self.in_channels, "stem": self.stem,
                           "stages": [list(s) for s in self.stages], "head": self.head}}


def _search_cell_op(op: str, c: int, stride: int) -> nn.Module:
    """A cell operation inside the supernet: non-affine BN, and a BN after pooling (as in DARTS)."""
    m = cells.cell_op(op, c, stride, affine=False)
    return nn.Sequential(m, nn.BatchNorm2d(c, affine=False)) if "pool" in op else m


# -- latency ---------------------------------------------------------------------------------------------


def probe_shapes(net: Supernet, input_shape: Sequence[int]) -> None:
    """Record each mixed edge's input resolution with one forward pass."""
    hooks = [m.register_forward_pre_hook(lambda mod, args: setattr(mod, "in_hw", tuple(args[0].shape[2:])))
             for m in net.mixed()]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *input_shape[1:]))
    finally:
        for h in hooks:
            h.remove()


def signature(m: MixedOp, op: str) -> str:
    """The latency-table key of ``op`` on edge ``m`` (the key of its :func:`block`)."""
    return block(m._net[0].space, m, op).key


def attach_latency(net: Supernet, table: dict[str, float], scale: float = 1.0) -> None:
    """Give every mixed edge its vector of per-candidate latencies (ms): ``scale * table`` (``none``: 0)."""
    for m in net.mixed():
        m.latency = torch.tensor([0.0 if op == "none" else scale * float(table[signature(m, op)])
                                  for op in m.candidates])


def expected_latency(net: Supernet) -> torch.Tensor:
    """``sum over mixed edges of softmax(alpha) . latency`` in ms (differentiable in the alphas)."""
    total = torch.zeros(())
    for m in net.mixed():
        total = total + (m.weights() * m.latency).sum()
    return total


def table_sum(chosen: Sequence[tuple[MixedOp, str]], table: dict[str, float]) -> float:
    """The plain sum of the table entries of a derived network's operations (ms)."""
    return sum(0.0 if op == "none" else table[signature(m, op)] for m, op in chosen)


@dataclass
class LatencyTable:
    """Per-operation p50 (ms) at each input shape, and ``measured ~ a * sum + b`` fitted on whole networks."""

    table: dict[str, float]
    a: float = 1.0
    b: float = 0.0
    calibration: list[dict[str, Any]] = field(default_factory=list)
    measured: int = 0
    seconds: float = 0.0

    def predict(self, chosen: Sequence[tuple[MixedOp, str]]) -> float:
        return self.a * table_sum(chosen, self.table) + self.b

    def summary(self) -> dict[str, Any]:
        return {"entries": len(self.table), "a": round(self.a, 5), "b_ms": round(self.b, 5),
                "calibration": self.calibration, "artifacts_timed": self.measured, "seconds": self.seconds}


class _TableSpace:
    """The supernet seen by the search stage's table builder (:func:`compress.search.latency.build`): a
    config is ``{"genotype": ...}`` (its blocks: the operations it keeps) or ``{"all": True}`` (every
    candidate operation of every edge: the one covering config)."""

    def __init__(self, space, net: Supernet) -> None:
        self.space, self.net = space, net

    def covering_configs(self) -> list[dict[str, Any]]:
        return [{"all": True}]

    def blocks(self, config: dict[str, Any]) -> list:
        if config.get("all"):  # every candidate, and an identity per input shape (the per-call reference)
            ops = [block(self.space.name, m, op) for m in self.net.mixed() for op in m.candidates if op != "none"]
            return ops + [identity_block(s) for s in sorted({b.input_shape for b in ops})]
        return [block(self.space.name, m, op) for m, op in self.space.chosen(self.net, config["genotype"])
                if op != "none"]

    def recipe(self, config: dict[str, Any]) -> dict[str, Any]:
        return self.space.recipe(config["genotype"])


def block(space_name: str, m: MixedOp, op: str):
    """``op`` on edge ``m`` as a block of the latency table: its stand-alone recipe at its input shape."""
    from compress.search.space import Block

    return Block(kind=op, recipe={"callable": "compress.search.cells:single_op",
                                  "kwargs": {"space": space_name, "op": op, "c_in": m.c_in, "c_out": m.c_out,
                                             "stride": m.stride}},
                 input_shape=(1, m.c_in, *(m.in_hw or (0, 0))))


def identity_block(shape: Sequence[int]):
    """``torch.nn.Identity`` at ``shape``: what one session call costs with nothing to compute."""
    from compress.search.space import Block

    return Block(kind="identity", recipe={"callable": "torch.nn:Identity", "kwargs": {}}, input_shape=tuple(shape))


def build_latency_table(space, net: Supernet, measure: Callable[[list["Artifact"]], list[Any]], work_dir: Path,
                        input_shape: Sequence[int], seed: int = 0) -> LatencyTable:
    """The search stage's table builder (:func:`compress.search.latency.build`) on this supernet: every
    (operation, input shape) alone, plus three whole networks (cheapest, dearest and a random genotype,
    chosen by parameter count before anything is timed) that fit ``measured ~ a * sum + b``, all in ONE
    interleaved ``measure`` call (the stage passes ``ctx.measure.latency``)."""
    import time

    import numpy as np

    from compress.search import latency

    t0 = time.monotonic()
    _latency_by_params(net)
    rng = np.random.default_rng(seed)
    genos = [space.pick(net, how, rng) for how in ("min", "max", "random")]
    adapter = _TableSpace(space, net)
    # the table's entries are single candidate ops, not a chain of blocks: no seams between them, and
    # each entry is its p50 (the identity's per-call cost is subtracted below instead)
    model, _ = latency.build(adapter, measure, work_dir, input_shape=tuple(input_shape),
                             calibration=[{"genotype": g} for g in genos], seams=False, block_stat="p50")
    # an entry is the op's p50 minus that of an identity at the same input shape: timed alone, every op pays
    # the cost of a session call, which a whole network pays once (plain p50s made cheap ops look dear)
    ms = {k: v["ms"] for k, v in model.table.items()}
    table = {}
    for m in net.mixed():
        for op in m.candidates:
            if op != "none":
                k = signature(m, op)
                table[k] = max(0.0, ms[k] - ms[identity_block((1, m.c_in, *m.in_hw)).key])
    sums = [table_sum(space.chosen(net, g), table) for g in genos]
    measured = [r["measured_ms"] for r in model.calibration]
    a, b = latency.fit_affine(sums, measured)
    if a <= 0:  # noise swamped the spread of the three networks: keep the sum's scale, fit the offset
        a, b = latency.fit_affine(sums[:1], measured[:1])
    attach_latency(net, table, a)
    cal = [{"genotype": r["config"]["genotype"], "sum_ms": round(sm, 5), "measured_ms": round(r["measured_ms"], 5)}
           for r, sm in zip(model.calibration, sums)]
    return LatencyTable(table, a, b, cal, len(model.table) + len(genos), round(time.monotonic() - t0, 2))


def _latency_by_params(net: Supernet) -> None:
    """Stand-in latency vectors (parameter count + 1; identity and ``none``: 0) to pick the calibration
    networks before timing: the cheapest one is then skip-heavy, the fixed cost of the network alone."""
    for m in net.mixed():
        m.latency = torch.tensor([0.0 if op == "none" or isinstance(m.ops[i], nn.Identity)
                                  else float(sum(p.numel() for p in m.ops[i].parameters()) + 1)
                                  for i, op in enumerate(m.candidates)])


# -- the bi-level step ------------------------------------------------------------------------------------


@dataclass
class ArchConfigValues:
    lr: float = 3e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    start: float = 0.2  # fraction of the weight steps before the first architecture step
    latency_weight: float = 0.0
    latency_budget_ms: float | None = None
    overhead_ms: float = 0.0
    anti_collapse: Literal["darts-", "none"] = "darts-"
    seed: int = 0


class ArchStep:
    """The ``after_step`` hook of :func:`compress.training.train`: one first-order architecture step on a
    batch of the ``arch`` split (and the DARTS- ``beta`` schedule)."""

    def __init__(self, net: Supernet, dataset: "Dataset", cfg: ArchConfigValues, total_steps: int,
                 split: str = "arch") -> None:
        self.net, self.cfg, self.total = net, cfg, max(1, total_steps)
        x, y = dataset.split(split)
        if y is None or len(x) == 0:
            raise ValueError(f"the architecture split '{split}' needs labelled samples")
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.g = torch.Generator().manual_seed(cfg.seed + 1)
        self.perm, self.pos = torch.randperm(len(self.x), generator=self.g), 0
        self.opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.lr, betas=(0.5, 0.999),
                                    weight_decay=cfg.weight_decay)
        self.steps = 0
        self.e0 = max(float(sum(m.latency.mean() for m in net.mixed())), 1e-9)  # E of the uniform mixture
        self.last: dict[str, float] = {}
        self.seen: list[torch.Tensor] = []  # indices (into the split) of every batch, for tests
        net.beta = 1.0 if cfg.anti_collapse == "darts-" else 0.0

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos >= len(self.x):
            self.perm, self.pos = torch.randperm(len(self.x), generator=self.g), 0
        idx = self.perm[self.pos:self.pos + self.cfg.batch_size]
        self.pos += self.cfg.batch_size
        self.seen.append(idx)
        return self.x[idx], self.y[idx]

    def latency_term(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, term)``: the expected latency (ms) and its share of the loss (see the module docstring)."""
        e = expected_latency(self.net)
        if self.cfg.latency_budget_ms is not None:
            return e, self.cfg.latency_weight * F.relu((self.cfg.overhead_ms + e) / self.cfg.latency_budget_ms - 1)
        return e, self.cfg.latency_weight * e / self.e0

    def __call__(self, model: nn.Module, step: int) -> None:
        if self.cfg.anti_collapse == "darts-":
            self.net.beta = max(0.0, 1.0 - step / self.total)
        if step < self.cfg.start * self.total:
            return
        self.arch_step()

    def arch_step(self) -> None:
        alphas = self.net.arch_parameters()
        xb, yb = self._batch()
        for a in alphas:
            a.requires_grad_(True)
        try:
            ce = F.cross_entropy(self.net(xb), yb)
            e, lat = self.latency_term()
            grads = torch.autograd.grad(ce + lat, alphas)
        finally:
            for a in alphas:
                a.requires_grad_(False)
        self.opt.zero_grad(set_to_none=True)
        for a, g in zip(alphas, grads):
            a.grad = g
        self.opt.step()
        for a in alphas:
            a.grad = None
        self.steps += 1
        self.last = {"arch_ce": float(ce.detach()), "expected_ms": float(e.detach())}


def split_for_search(dataset: "Dataset", arch_share: float, seed: int) -> "Dataset":
    """The dataset with its training split cut in two disjoint seeded parts: ``train`` (weights) and ``arch``."""
    import numpy as np

    idx = dataset.indices("train")
    perm = np.random.default_rng([int(seed), 12]).permutation(len(idx))
    n_arch = int(round(arch_share * len(idx)))
    if n_arch < 1 or n_arch >= len(idx):
        raise ValueError(f"cannot split {len(idx)} training samples {1 - arch_share:.2f}/{arch_share:.2f}")
    arch, weights = np.sort(idx[perm[:n_arch]]), np.sort(idx[perm[n_arch:]])
    return replace(dataset, splits={**dataset.splits, "train": weights, "arch": arch})


def alpha_table(net: Supernet) -> dict[str, dict[str, float]]:
    """softmax(alpha) per key, rounded, for the record."""
    out = {}
    for m in net.mixed():
        if m.key not in out:
            out[m.key] = {op: round(float(w), 4) for op, w in zip(m.candidates, m.weights().detach())}
    return out


def search(space, dataset: "Dataset", train_cfg, arch: ArchConfigValues, *, arch_share: float = 0.5,
           table: dict[str, float] | None = None, net: Supernet | None = None,
           progress: Callable[[int, int, dict[str, float]], None] | None = None) -> tuple[Supernet, dict[str, Any]]:
    """Run the bi-level search through the one training loop; return the supernet and a history."""
    from compress.training import total_steps, train

    net = net or space.supernet(aux_skip=arch.anti_collapse == "darts-", seed=arch.seed)
    if table is not None:
        attach_latency(net, table)
    for m in net.mixed():
        if m.latency is None:
            m.latency = torch.zeros(len(m.candidates))
    ds = split_for_search(dataset, arch_share, arch.seed)
    steps = total_steps(train_cfg, len(ds.splits["train"]))
    hook = ArchStep(net, ds, arch, steps)

    def prog(s: int, t: int, info: dict[str, float]) -> None:
        if progress is not None:
            progress(s, t, {**info, **hook.last})

    hist = train(net, ds, train_cfg, after_step=hook, progress=prog)
    hist.update({"arch_steps": hook.steps, "weight_samples": int(len(ds.splits["train"])),
                 "arch_samples": int(len(ds.splits["arch"])),
                 "expected_ms_final": round(float(expected_latency(net)), 5)})
    return net, hist
