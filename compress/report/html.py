"""A self-contained ``report.html``: a pure renderer of :class:`Report` (jinja2 template, matplotlib charts
drawn as inline SVG, no JavaScript, no network), so it opens offline and can be attached to a CI run.

Charts: accuracy (or top-1 agreement when there are no labels) vs p50 latency for every stage on every
target with the Pareto front; the latency distribution of every artifact; the speed-up of every stage with
its confidence interval. Tables: stages, gates (with intervals), per-layer precision / sparsity / kept
channels, warnings, environment.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from compress.report.markdown import COLUMNS, GATE_COLUMNS, gate_rows, rows
from compress.report.model import Report

TEMPLATE_DIR = Path(__file__).parent / "templates"
#: a stage fact that is a dict of layer -> number and whose name holds one of these words is a per-layer
#: column (e.g. pruning's kept channels, per-layer sparsity); op-type counts are not
PER_LAYER_WORDS = ("layer", "channel", "sparsity", "kept")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, quality) that no other point beats on both: lower or equal latency
    and higher or equal quality, one of them strictly. Sorted by latency."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any((l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for j, (l2, q2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined into HTML


def _quality(report: Report) -> tuple[str, dict]:
    """Accuracy where the data has labels, else top-1 agreement with the baseline."""
    labelled = any(m.accuracy is not None for r in report.records() for m in r.measurements.values())
    key = "accuracy" if labelled else "agreement"
    return key, {(r.name, t): getattr(m, key) for r in report.records() for t, m in r.measurements.items()}


def tradeoff_chart(report: Report) -> str | None:
    import matplotlib.pyplot as plt

    key, quality = _quality(report)
    pts, labels = [], []
    for r in [*report.records(), *report.references]:
        for t, m in r.measurements.items():
            q = quality.get((r.name, t), getattr(m, key))
            if m.latency and q is not None:
                pts.append((m.latency.p50_ms, q))
                labels.append((r.name, t))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    targets = sorted({t for _, t in labels})
    markers = "osD^v<>"
    for k, t in enumerate(targets):
        idx = [i for i, (_, tt) in enumerate(labels) if tt == t]
        ax.scatter([pts[i][0] for i in idx], [pts[i][1] for i in idx], marker=markers[k % len(markers)], s=60,
                   label=f"target {t}", zorder=3)
    for (lat, q), (name, _) in zip(pts, labels):
        ax.annotate(name, (lat, q), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="tab:red", lw=1.2,
            label="Pareto front", zorder=2)
    ax.set_xlabel("p50 latency (ms, batch " + str(report.targets[0].get("batch_size", 1) if report.targets else 1) + ")")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"{key} vs latency, every stage on every target")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def latency_chart(report: Report) -> str | None:
    import matplotlib.pyplot as plt

    data, names = [], []
    for r in [*report.records(), *report.references]:
        for t, m in r.measurements.items():
            if m.latency and m.latency.samples_ms:
                data.append(m.latency.samples_ms)
                names.append(f"{r.name}\n{t}" if len(report.targets) > 1 else r.name)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(data)))
    ax.boxplot(data, orientation="horizontal", showfliers=True, whis=(1, 99), flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")  # a loaded machine's tail is 10-30x the median: keep the boxes readable
    ax.set_xlabel("latency per call (ms, log scale); box: p25-p75, line: p50, whiskers: p1-p99")
    ax.set_title("latency distribution per artifact (all timed samples)")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def speedup_chart(report: Report) -> str | None:
    import matplotlib.pyplot as plt

    bars = []
    for r in report.stages:
        for t, m in r.measurements.items():
            if m.speedup_vs_baseline is not None:
                lo, hi = m.speedup_ci or (m.speedup_vs_baseline, m.speedup_vs_baseline)
                bars.append((f"{r.name} ({t})", m.speedup_vs_baseline, lo, hi))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(bars)))
    y = range(len(bars))
    ax.barh(list(y), [b[1] for b in bars], color="tab:blue", alpha=0.7,
            xerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]], capsize=4)
    ax.set_yticks(list(y), [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speed-up vs baseline (x), median of paired rounds, bars: 95% interval")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def layer_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Per-layer rows: precision of every stage, plus any per-layer numbers a stage recorded in its facts
    (e.g. sparsity or kept channels: a dict of layer -> number)."""
    cols: list[tuple[str, dict[str, Any]]] = []
    for r in report.records():
        if r.artifact.layer_precision:
            cols.append((f"{r.name}: precision", r.artifact.layer_precision))
        for k, v in r.facts.items():
            if any(w in k for w in PER_LAYER_WORDS) and isinstance(v, dict) and len(v) > 1 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
                cols.append((f"{r.name}: {k}", v))
    layers: list[str] = []
    for _, d in cols:
        layers += [name for name in d if name not in layers]
    fmt = (lambda x: "" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x)))
    return ["layer"] + [c for c, _ in cols], [[name] + [fmt(d.get(name)) for _, d in cols] for name in layers]


def render_html(report: Report) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display; SVG only
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(["html", "j2"]))
    layer_cols, layer_rows = layer_table(report)
    charts = [(title, svg) for title, svg in (
        ("Accuracy vs latency (Pareto front)", tradeoff_chart(report)),
        ("Speed-up with 95% interval", speedup_chart(report)),
        ("Latency distributions", latency_chart(report)),
    ) if svg]
    efficiency = [(r.name, t, r.artifact.precision, r.artifact.macs, m.latency.p50_ms, m.efficiency)
                  for r in [*report.records(), *report.references] for t, m in r.measurements.items()
                  if m.efficiency is not None and m.latency]
    return env.get_template("report.html.j2").render(efficiency=efficiency,
        r=report, columns=COLUMNS, rows=rows(report), gate_columns=GATE_COLUMNS, gate_rows=gate_rows(report),
        charts=charts, layer_cols=layer_cols, layer_rows=layer_rows,
        environment={k: v for k, v in report.environment.items() if k not in ("packages", "thread_env")},
        packages=report.environment.get("packages", {}),
    )
