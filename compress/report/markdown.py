"""Markdown rendering of a :class:`Report` (for PR comments) and the rows shared with the terminal."""
from __future__ import annotations

from compress.report.model import Report


def _fmt(v, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def _human(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


COLUMNS = ["stage", "type", "target", "accuracy %", "Δ acc", "agree %", "cosine", "p50 ms", "p90 ms", "speed-up",
           "size", "params", "MACs", "precision", "cached"]


def precision_cell(rec, m) -> str:
    """The artifact's precision and, for a quantized one, how many compute layers the *runtime* executes
    as integer kernels (``mixed 12/49``), from its optimized graph; ``⚠`` when most run in float."""
    from compress.kernels import compute_layers

    cell = rec.artifact.precision
    if rec.artifact.precision != "float32" and m.optimized_ops:
        ints, floats = compute_layers(m.optimized_ops)
        cell += f" {ints}/{ints + floats}" + (" ⚠" if floats > ints else "")
    return cell


def fidelity_line(m) -> str:
    """``top-1 97.2%, top-5 99.8%, cosine 0.995 (worst 1% 0.970), rel. error 0.081`` (vs the baseline)."""
    parts = []
    if m.agreement is not None:
        parts.append(f"top-1 agreement {m.agreement:.1f}%")
    if m.agreement_top5 is not None:
        parts.append(f"top-5 {m.agreement_top5:.1f}%")
    if m.cosine is not None:
        parts.append(f"cosine {m.cosine:.4f}" + (f" (worst 1% {m.cosine_p1:.4f})" if m.cosine_p1 is not None else ""))
    if m.relative_error is not None:
        parts.append(f"rel. error {m.relative_error:.3g}")
    return ", ".join(parts)


def speedup_cell(m) -> str:
    """``2.20x [2.15–2.26]``: the paired speed-up with its 95% interval (compress/stats.py)."""
    cell = _fmt(m.speedup_vs_baseline, ".2f", "x")
    if m.speedup_ci and m.speedup_vs_baseline is not None and m.speedup_vs_baseline != 1.0:
        cell += f" [{m.speedup_ci[0]:.2f}–{m.speedup_ci[1]:.2f}]"
    return cell


def interval(g) -> str:
    """A gate's observed value with its interval, e.g. ``1.52 [1.49, 1.55] (95%, 212 rounds)``."""
    text = _fmt(g.observed, ".4g")
    if g.ci_low is not None and g.ci_high is not None:
        text += f" [{g.ci_low:.4g}, {g.ci_high:.4g}] ({g.confidence:.0%}, n={g.rounds})"
    elif g.rounds is not None:
        text += f" (no interval yet, n={g.rounds})"
    return text


GATE_COLUMNS = ["result", "gate", "threshold", "observed [interval]", "margin", "note"]


def target_names(report: Report) -> list[str]:
    """The targets of a report, in the pipeline's order."""
    names = [t["name"] for t in report.targets if "name" in t]
    seen = {t for r in report.records() for t in r.measurements}
    return [n for n in names if n in seen] + sorted(seen - set(names))


def rows(report: Report, target: str | None = None) -> list[list[str]]:
    """One row per (target, stage), grouped by target in the pipeline's order (only ``target`` if given).
    An artifact a target's runtime cannot run shows ``n/a`` (e.g. an ONNX-only artifact on a torch target)."""
    out = []
    base = report.baseline
    for t in target_names(report) if target is None else [target]:
        for rec in report.records():
            m = rec.measurements.get(t)
            if m is None:
                continue
            if m.na:
                out.append([rec.name, rec.type, t, *["n/a"] * (len(COLUMNS) - 8), f"{rec.artifact.size_bytes / 1e6:.2f} MB",
                            _human(rec.artifact.params), _human(rec.artifact.macs), rec.artifact.precision,
                            "yes" if rec.cache_hit else "no"])
                continue
            b = base.measurements.get(t)
            drop = (m.accuracy - b.accuracy) if (m.accuracy is not None and b and b.accuracy is not None) else None
            lat = m.latency
            out.append([
                rec.name, rec.type, t, _fmt(m.accuracy), _fmt(drop, "+.2f"), _fmt(m.agreement, ".1f"),
                _fmt(m.cosine, ".4f"),
                _fmt(lat.p50_ms if lat else None, ".3f") + (" ⚠" if lat and lat.unstable else ""),
                _fmt(lat.p90_ms if lat else None, ".3f"), speedup_cell(m),
                f"{rec.artifact.size_bytes / 1e6:.2f} MB", _human(rec.artifact.params), _human(rec.artifact.macs),
                precision_cell(rec, m), "yes" if rec.cache_hit else "no",
            ])
    return out


def gate_rows(report: Report) -> list[list[str]]:
    return [[g.status.upper(), f"{g.metric} ({g.stage}, {g.target}" + (f", vs {g.against}" if g.against else "") + ")",
             f"{g.op} {g.threshold:g}{(' ' + g.unit) if g.unit in ('%', 'ms', 'x') else ''}", interval(g),
             _fmt(g.margin, "+.4g"), g.detail] for g in report.gates]


def _fact_items(facts: dict) -> list[str]:
    """Scalar facts and small summaries of a stage, in the order the stage recorded them."""
    items = []
    for k, v in facts.items():
        if k in ("onnx_ops", "layer_precision", "settings"):
            continue
        if isinstance(v, bool) or isinstance(v, (int, float, str)):
            items.append(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
        elif isinstance(v, dict) and v and len(v) <= 6 and all(not isinstance(x, (dict, list)) for x in v.values()):
            items.append(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items()))
        elif isinstance(v, list) and v and len(v) <= 4:
            items.append(f"{k}: {', '.join(map(str, v))}")
    return items


def stage_details(report: Report) -> list[str]:
    """One bullet per stage: layer precision histogram, ops the runtime ran, and the stage's own facts."""
    lines = []
    for rec in report.records():
        hist: dict[str, int] = {}
        for prec in rec.artifact.layer_precision.values():
            hist[prec] = hist.get(prec, 0) + 1
        parts = []
        if hist:
            parts.append("layers: " + ", ".join(f"{k} ×{v}" for k, v in sorted(hist.items())))
        for t, m in rec.measurements.items():
            if m.efficiency is not None:
                prec = "float32" if rec.artifact.precision == "float32" else "int8"
                parts.append(f"{t} efficiency: {m.efficiency:.1%} of this machine's {prec} peak "
                             f"({report.peak.get(t, {}).get('gmacs', {}).get(prec, 0):.1f} GMAC/s)")
            if rec is not report.baseline and (fid := fidelity_line(m)):
                parts.append(f"{t} fidelity vs baseline: {fid}")
            if m.optimized_ops:
                top = sorted(m.optimized_ops.items(), key=lambda kv: -kv[1])[:6]
                parts.append(f"{t} runs: " + ", ".join(f"{k} ×{v}" for k, v in top))
        parts += _fact_items(rec.facts)
        lines.append(f"- **{rec.name}** ({rec.type}): " + "; ".join(parts))
    return lines


def reference_lines(report: Report) -> list[str]:
    """The released models gates compared with, re-measured on this machine, and the final stage vs each."""
    if not report.references:
        return []
    final = report.record("final")
    lines = ["", "### Compared with the released model (re-measured here, timed interleaved, same data)", "",
             "| reference | target | its accuracy % | its p50 ms | final: accuracy % | final: agreement % | "
             "final: time vs reference |", "|---|---|---|---|---|---|---|"]
    for ref in report.references:
        for t, rm in ref.measurements.items():
            m = final.measurements.get(t)
            if m is None:
                continue
            vs = m.vs_reference.get(ref.name) or {}
            ratio = "—"
            if m.latency and rm.latency:
                from compress.report.gate import latency_interval

                ci = latency_interval("latency_p50", m.latency, rm.latency, 0.95)
                if ci and ci.point is not None:
                    ratio = f"{ci.point:+.1f}%" + (f" [{ci.low:+.1f}, {ci.high:+.1f}]" if ci.bounded else "")
            lines.append(f"| `{ref.name}` | {t} | {_fmt(rm.accuracy)} | {_fmt(rm.latency.p50_ms if rm.latency else None, '.3f')} "
                         f"| {_fmt(m.accuracy)} | {_fmt(vs.get('agreement'), '.1f')} | {ratio} |")
    return lines


def target_line(report: Report, name: str) -> str:
    """``openvino, precision f32, 1 thread`` from the target config and what the runtime reported."""
    cfg = next((t for t in report.targets if t.get("name") == name), {})
    parts = [str(cfg.get("runtime", "?"))]
    sess = next((r.measurements[name].session for r in report.records()
                 if name in r.measurements and r.measurements[name].session), {})
    if sess.get("inference_precision"):
        parts.append(f"inference precision {sess['inference_precision']}")
    if sess.get("providers"):
        parts.append("/".join(sess["providers"]))
    if sess.get("mode"):
        parts.append(str(sess["mode"]))
    threads = sess.get("intra_op_threads", sess.get("threads", cfg.get("threads")))
    if threads is not None:
        parts.append(f"{threads} thread(s)")
    if sess.get("device_name"):
        parts.append(str(sess["device_name"]))
    return ", ".join(parts)


def render_markdown(report: Report) -> str:
    status = {"passed": "✅ passed", "gate_failed": "❌ gate failed", "unstable": "⚠️ unstable measurement"}
    lines = [f"## compress: `{report.pipeline_name}` — {status[report.status]}", ""]
    env = report.environment
    lines.append(f"Data: {report.data.get('source', '?')} (fingerprint `{str(report.data.get('fingerprint', ''))[:12]}`). "
                 f"CPU: {env.get('cpu_model', '?')} ({env.get('isa') or 'ISA unknown'}). Latency measured interleaved, batch "
                 f"{report.targets[0]['batch_size'] if report.targets else '?'}; speed-up = baseline time / stage time, median over interleaved rounds. "
                 f"agree % / cosine: top-1 agreement and mean output cosine vs the baseline on the same samples; "
                 f"precision N/M: compute layers the runtime executes as integer kernels (its optimized graph)."
                 + (f" Input range [{r['min']:.3g}, {r['max']:.3g}] (mean {r['mean']:.3g}, std {r['std']:.3g})."
                    if (r := report.data.get("input_range")) else ""))
    ev = report.evaluation
    if ev:
        lines.append("")
        lines.append(f"Quality ({ev.get('task', 'classification')}): {ev.get('quality', '')}"
                     + (f"; metric = `{ev['metric']}`: "
                        + ", ".join(f"{r.name} on {t} {m.metric:.4g}" for r in report.records()
                                    for t, m in r.measurements.items() if m.metric is not None)
                        if ev.get("metric") else "") + ".")
    targets = target_names(report)
    for t in targets:  # one table (column group) per target
        if len(targets) > 1:
            lines += ["", f"### Target `{t}`: {target_line(report, t)}"]
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows(report, t)]
    lines += ["", "<details><summary>Stage details (per-layer precision, runtime kernels, stage facts)</summary>", ""]
    lines += stage_details(report) + ["", "Full per-layer data: `report.json`.", "", "</details>"]
    if report.gates:
        lines += ["", "### Gates", "", "| " + " | ".join(GATE_COLUMNS) + " |", "|" + "---|" * len(GATE_COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in gate_rows(report)]
    lines += reference_lines(report)
    if report.warnings:
        lines += ["", "### Warnings", ""] + [f"- ⚠️ {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"
