"""Search strategies over a :class:`~compress.search.space.SearchSpace`: random search (the baseline
that is always reported), aging evolution (Real et al., 2019; maximises accuracy under the
constraints) and NSGA-II (Deb et al., 2002; Pareto front of accuracy vs latency), plus the Pareto
front and its 2-D hypervolume.

Every strategy evaluates exactly ``budget`` distinct feasible candidates; proposals that break a
constraint (checked on the predicted latency and the counted MACs/params, which cost nothing) or that
were already evaluated are re-drawn and not counted. Candidates are evaluated in fixed-size batches
through ``evaluate(configs) -> accuracies`` (the executor), so the result depends on the seed and the
batch size only, never on how many workers ran the batches.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from compress.search.space import Config, SearchSpace

Evaluate = Callable[[list[Config]], list[float]]


@dataclass
class Candidate:
    config: Config
    accuracy: float
    latency_ms: float  # predicted
    order: int  # evaluation order (0-based)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Pool:
    """Feasibility-checked, de-duplicated proposals and the evaluated history."""

    def __init__(self, space: SearchSpace, evaluate: Evaluate, latency: Callable[[Config], float],
                 feasible: Callable[[Config], bool], budget: int, tries: int = 2000):
        self.space, self.evaluate, self.latency, self.feasible = space, evaluate, latency, feasible
        self.budget, self.tries = budget, tries
        self.history: list[Candidate] = []
        self.seen: set[str] = set()

    @property
    def left(self) -> int:
        return self.budget - len(self.history)

    def propose(self, make: Callable[[], Config], pending: set[str]) -> Config:
        for _ in range(self.tries):
            c = self.space.canonical(make())
            k = self.space.key(c)
            if k not in self.seen and k not in pending and self.feasible(c):
                pending.add(k)
                return c
        raise RuntimeError(f"no new feasible candidate in {self.tries} proposals: the constraints leave too few "
                           f"subnets for the budget ({len(self.history)} evaluated); relax them or lower candidates")

    def run(self, configs: list[Config]) -> list[Candidate]:
        accs = self.evaluate(configs)
        out = []
        for c, a in zip(configs, accs):
            self.seen.add(self.space.key(c))
            cand = Candidate(config=c, accuracy=float(a), latency_ms=float(self.latency(c)), order=len(self.history))
            self.history.append(cand)
            out.append(cand)
        return out


def random_search(pool: _Pool, rng, batch: int = 8, **_: Any) -> list[Candidate]:
    while pool.left > 0:
        pending: set[str] = set()
        pool.run([pool.propose(lambda: pool.space.sample(rng), pending) for _ in range(min(batch, pool.left))])
    return pool.history


def aging_evolution(pool: _Pool, rng, batch: int = 8, population: int = 16, sample_size: int = 4,
                    mutate_prob: float = 0.15, **_: Any) -> list[Candidate]:
    """Regularized (aging) evolution: a queue of ``population``; each child mutates the most accurate of
    ``sample_size`` random members; the oldest member dies. ``batch`` children per round."""
    from collections import deque

    pending: set[str] = set()
    queue: deque[Candidate] = deque(maxlen=population)
    while pool.left > 0 and len(queue) < population:
        pending = set()
        queue.extend(pool.run([pool.propose(lambda: pool.space.sample(rng), pending)
                               for _ in range(min(batch, population - len(queue), pool.left))]))
    while pool.left > 0:
        pending = set()
        children = []
        for _ in range(min(batch, pool.left)):
            members = [queue[int(i)] for i in rng.choice(len(queue), size=min(sample_size, len(queue)), replace=False)]
            parent = max(members, key=lambda c: (c.accuracy, -c.latency_ms))
            children.append(pool.propose(lambda: pool.space.mutate(parent.config, rng, mutate_prob), pending))
        queue.extend(pool.run(children))
    return pool.history


def nsga2(pool: _Pool, rng, batch: int = 8, population: int = 16, mutate_prob: float = 0.15,
          crossover_prob: float = 0.5, **_: Any) -> list[Candidate]:
    """NSGA-II on (accuracy max, latency min): non-dominated sorting + crowding distance, binary
    tournament, uniform crossover and mutation; ``population`` children per generation (in batches)."""
    pending: set[str] = set()
    pop: list[Candidate] = []
    while pool.left > 0 and len(pop) < population:
        pending = set()
        pop += pool.run([pool.propose(lambda: pool.space.sample(rng), pending)
                         for _ in range(min(batch, population - len(pop), pool.left))])
    while pool.left > 0:
        rank, crowd = _rank_and_crowding(pop)

        def pick() -> Candidate:
            i, j = (int(v) for v in rng.choice(len(pop), size=2, replace=len(pop) < 2))
            return pop[i] if (rank[i], -crowd[i]) <= (rank[j], -crowd[j]) else pop[j]

        def child() -> Config:
            a, b = pick(), pick()
            c = pool.space.crossover(a.config, b.config, rng) if rng.random() < crossover_prob else a.config
            return pool.space.mutate(c, rng, mutate_prob)

        children: list[Candidate] = []
        n = min(population, pool.left)
        while len(children) < n:
            pending = set()
            children += pool.run([pool.propose(child, pending) for _ in range(min(batch, n - len(children)))])
        merged = pop + children
        rank, crowd = _rank_and_crowding(merged)
        order = sorted(range(len(merged)), key=lambda i: (rank[i], -crowd[i], merged[i].order))
        pop = [merged[i] for i in order[:population]]
    return pool.history


STRATEGIES = {"random": random_search, "evolution": aging_evolution, "nsga2": nsga2}


def run_strategy(name: str, space: SearchSpace, evaluate: Evaluate, latency: Callable[[Config], float],
                 feasible: Callable[[Config], bool], *, budget: int, seed: int, **options: Any) -> list[Candidate]:
    import numpy as np

    pool = _Pool(space, evaluate, latency, feasible, budget)
    return STRATEGIES[name](pool, np.random.default_rng(seed), **options)


# --------------------------------------------------------------------------------------------------
# fronts


def _dominates(a: Candidate, b: Candidate) -> bool:
    return (a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms
            and (a.accuracy > b.accuracy or a.latency_ms < b.latency_ms))


def _rank_and_crowding(cands: list[Candidate]) -> tuple[list[int], list[float]]:
    n = len(cands)
    rank = [0] * n
    dominated_by = [[j for j in range(n) if _dominates(cands[j], cands[i])] for i in range(n)]
    left, r = set(range(n)), 0
    while left:
        front = [i for i in left if not any(j in left for j in dominated_by[i])]
        for i in front:
            rank[i] = r
        left -= set(front)
        r += 1
    crowd = [0.0] * n
    for rr in set(rank):
        idx = [i for i in range(n) if rank[i] == rr]
        for key in (lambda c: c.accuracy, lambda c: c.latency_ms):
            idx.sort(key=lambda i: key(cands[i]))
            lo, hi = key(cands[idx[0]]), key(cands[idx[-1]])
            crowd[idx[0]] = crowd[idx[-1]] = float("inf")
            for a, i, b in zip(idx, idx[1:], idx[2:]):
                crowd[i] += (key(cands[b]) - key(cands[a])) / (hi - lo) if hi > lo else 0.0
    return rank, crowd


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Non-dominated candidates (max accuracy, min latency), sorted by latency."""
    front = [c for c in cands if not any(_dominates(o, c) for o in cands)]
    uniq: dict[tuple[float, float], Candidate] = {}
    for c in sorted(front, key=lambda c: (c.latency_ms, -c.accuracy, c.order)):
        uniq.setdefault((c.latency_ms, c.accuracy), c)
    return list(uniq.values())


def hypervolume(cands: list[Candidate], ref_latency_ms: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by the front inside [0, ref_latency] x [ref_accuracy, 100], normalised to [0, 1]
    (latency / ref_latency, accuracy in percent); points beyond the reference add nothing."""
    pts = sorted((c.latency_ms, c.accuracy) for c in pareto_front(cands)
                 if c.latency_ms <= ref_latency_ms and c.accuracy > ref_accuracy)
    area, best = 0.0, ref_accuracy
    for i, (lat, acc) in enumerate(pts):
        best = max(best, acc)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_latency_ms
        area += (nxt - lat) * (best - ref_accuracy)
    return area / (ref_latency_ms * (100.0 - ref_accuracy))
