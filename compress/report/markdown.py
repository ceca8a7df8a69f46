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


COLUMNS = ["stage", "type", "target", "accuracy %", "Δ acc", "p50 ms", "p90 ms", "speed-up", "size", "params", "MACs",
           "precision", "cached"]


def rows(report: Report) -> list[list[str]]:
    out = []
    base = report.baseline
    for rec in report.records():
        for t, m in rec.measurements.items():
            b = base.measurements.get(t)
            drop = (m.accuracy - b.accuracy) if (m.accuracy is not None and b and b.accuracy is not None) else None
            lat = m.latency
            out.append([
                rec.name, rec.type, t, _fmt(m.accuracy), _fmt(drop, "+.2f"),
                _fmt(lat.p50_ms if lat else None, ".3f") + (" ⚠" if lat and lat.unstable else ""),
                _fmt(lat.p90_ms if lat else None, ".3f"), _fmt(m.speedup_vs_baseline, ".2f", "x"),
                f"{rec.artifact.size_bytes / 1e6:.2f} MB", _human(rec.artifact.params), _human(rec.artifact.macs),
                rec.artifact.precision, "yes" if rec.cache_hit else "no",
            ])
    return out


def gate_rows(report: Report) -> list[list[str]]:
    return [[("PASS" if g.passed else "FAIL"), f"{g.metric} ({g.stage}, {g.target})", f"{g.op} {g.threshold:g}",
             _fmt(g.observed, ".4g"), _fmt(g.margin, "+.4g"), g.detail] for g in report.gates]


def render_markdown(report: Report) -> str:
    status = {"passed": "✅ passed", "gate_failed": "❌ gate failed", "unstable": "⚠️ unstable measurement"}
    lines = [f"## compress: `{report.pipeline_name}` — {status[report.status]}", ""]
    env = report.environment
    lines.append(f"Data: {report.data.get('source', '?')} (fingerprint `{str(report.data.get('fingerprint', ''))[:12]}`). "
                 f"CPU: {env.get('cpu_model', '?')}. Latency measured interleaved, batch "
                 f"{report.targets[0]['batch_size'] if report.targets else '?'}; speed-up = baseline p50 / stage p50.")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    if report.gates:
        lines += ["", "### Gates", "", "| result | gate | threshold | observed | margin | note |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in gate_rows(report)]
    if report.warnings:
        lines += ["", "### Warnings", ""] + [f"- ⚠️ {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"
