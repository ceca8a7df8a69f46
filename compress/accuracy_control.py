"""Accuracy-aware quantization, written once for every quantizer: keep the most sensitive layers in
float until a quality target holds.

The quantizer is a callable ``build(float_nodes, tag) -> Artifact`` (quantize everything except the
named nodes); quality comes from the measurement service (``ctx.measure.evaluate``: the artifact run in
the target runtime on the evaluation split, vs the float model's outputs). The search:

1. measure the fully quantized model; done if its drop is within ``max_drop``;
2. sensitivity: for each group of layers (a block, or a single layer), quantize all *but* that group
   and measure how much of the drop it removes;
3. greedily keep the most sensitive groups in float, one more at a time, until the target holds (or
   all but one group is float: then the target is reported as not met, and the model as it stands).

A drop is in the objective's own unit: top-1 points for ``accuracy`` (labelled data), percentage
points of top-1 agreement with the float model for ``agreement``, and ``1 - cosine`` for ``cosine``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:  # pragma: no cover
    from compress.artifact import Artifact

Metric = Literal["accuracy", "agreement", "cosine"]


@dataclass(frozen=True)
class Objective:
    metric: Metric
    max_drop: float

    def drop(self, reference: dict[str, Any], result: dict[str, Any]) -> float:
        if self.metric == "accuracy":
            return round(reference["accuracy"] - result["accuracy"], 4)
        if self.metric == "agreement":
            return round(100.0 - result["agreement"], 4)
        return round(1.0 - result["cosine"], 6)

    def describe(self) -> str:
        unit = {"accuracy": "top-1 points", "agreement": "points of top-1 agreement with the float model",
                "cosine": "of output cosine (1 - cosine)"}[self.metric]
        return f"max_drop {self.max_drop:g} {unit}"


def resolve_metric(setting: str, labelled: bool) -> Metric:
    """``auto``: accuracy where the evaluation data has labels, else top-1 agreement with the float model."""
    if setting == "auto":
        return "accuracy" if labelled else "agreement"
    if setting == "accuracy" and not labelled:
        from compress.errors import ConfigError

        raise ConfigError("max_drop_metric: accuracy needs labelled evaluation data; use agreement or cosine "
                          "(fidelity vs the float model) for unlabelled data")
    return setting  # type: ignore[return-value]


COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def layer_groups(nodes: list[tuple[str, str]], granularity: Literal["block", "layer"]) -> dict[str, list[str]]:
    """Group the float graph's ``(node name, op type)`` pairs (in graph order) into what is kept in float
    together: every node, so that no quantize/dequantize pair is left around a float layer.

    ``block``: by the module block in the node name (``/blocks.3/conv/Conv`` -> ``blocks.3``); ``layer``:
    each compute node (Conv/MatMul/Gemm) with the nodes that follow it up to the next compute node. Nodes
    with no block in their name, and those before the first compute node, join the group before them
    (or the first group)."""
    groups: dict[str, list[str]] = {}
    pending: list[str] = []
    current: str | None = None
    for name, op in nodes:
        parts = [p for p in name.split("/") if p]
        if granularity == "layer":
            key = name if op in COMPUTE_OPS else None
        else:
            key = ("/".join(parts[:-2]) if len(parts) >= 3 else "/".join(parts[:-1])) or None
        if key is None:
            if current is None:
                pending.append(name)
            else:
                groups[current].append(name)
            continue
        current = key
        groups.setdefault(key, []).extend(pending + [name])
        pending = []
    if pending and groups:
        groups[next(iter(groups))][:0] = pending
    return groups


def keep_sensitive_in_float(
    groups: dict[str, list[str]],
    build: Callable[[list[str], str], "Artifact"],
    evaluate: Callable[[list["Artifact"]], list[dict[str, Any]]],
    reference_score: dict[str, Any],
    quantized: "Artifact",
    objective: Objective,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the search (module docstring). Returns the chosen artifact and what the report shows."""
    (q_score,) = evaluate([quantized])
    drop0 = objective.drop(reference_score, q_score)
    out: dict[str, Any] = {"objective": objective.describe(), "drop_all_quantized": drop0, "float_groups": [],
                           "float_nodes": [], "drop": drop0, "met": drop0 <= objective.max_drop,
                           "artifact": quantized, "candidates_measured": 1}
    if out["met"]:
        log(f"accuracy control: fully quantized drop {drop0:g} is within {objective.describe()}")
        return out
    log(f"accuracy control: fully quantized drop {drop0:g} misses {objective.describe()}; measuring the "
        f"sensitivity of {len(groups)} layer group(s), each kept in float in turn")
    names = list(groups)
    singles = [build(groups[g], f"sens-{i}") for i, g in enumerate(names)]
    drops = [objective.drop(reference_score, s) for s in evaluate(singles)]
    sensitivity = {g: round(drop0 - d, 6) for g, d in zip(names, drops)}
    out["sensitivity"] = dict(sorted(sensitivity.items(), key=lambda kv: -kv[1]))
    out["candidates_measured"] += len(singles)
    order = list(out["sensitivity"])
    best_single = min(range(len(names)), key=lambda i: drops[i])
    if drops[best_single] <= objective.max_drop:  # one group suffices: take the cheapest such
        chosen, art, drop = [names[best_single]], singles[best_single], drops[best_single]
    else:
        chosen, art, drop = [], quantized, drop0
        for k, g in enumerate(order[:-1], start=1):  # at least one group stays quantized
            chosen.append(g)
            if k == 1:
                art, drop = singles[names.index(g)], drops[names.index(g)]
            else:
                art = build([n for c in chosen for n in groups[c]], f"greedy-{k}")
                (s,) = evaluate([art])
                drop = objective.drop(reference_score, s)
                out["candidates_measured"] += 1
            log(f"accuracy control: {k} group(s) in float ({g} added): drop {drop:g}")
            if drop <= objective.max_drop:
                break
    out.update(float_groups=chosen, float_nodes=[n for c in chosen for n in groups[c]], drop=drop,
               met=drop <= objective.max_drop, artifact=art)
    return out
