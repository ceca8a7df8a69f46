"""``compress diff A/report.json B/report.json``: what changed between two reports (a PR's run against
main's, or today's against last release's), as Markdown. Quality and size compare anywhere; latency
numbers are compared only when both reports were measured on the same kind of machine (CPU model, ISA
flags, cores, runtime version): otherwise the diff says so and shows no latency deltas.
"""
from __future__ import annotations

from compress.report.markdown import _fmt, speedup_cell
from compress.report.model import Report
from compress.runtimes.environment import differences


def _delta(a, b, spec=".2f") -> str:
    if a is None and b is None:
        return "—"
    if a is None or b is None:
        return f"{_fmt(a, spec)} → {_fmt(b, spec)}"
    return f"{a:{spec}} → {b:{spec}} ({b - a:+{spec}})"


def diff_reports(a: Report, b: Report, a_name: str = "A", b_name: str = "B") -> str:
    env_diff = differences(a.environment, b.environment)
    lines = [f"## compress diff: `{a.pipeline_name}` ({a_name}) → `{b.pipeline_name}` ({b_name})", "",
             f"Status: {a.status} → {b.status}.", ""]
    if env_diff:
        lines += [f"⚠️ Measured on different machines ({'; '.join(env_diff)}): latency and speed-ups are not "
                  "compared (re-run both on one machine, or gate with `against:` which re-times both here).", ""]
    cols = ["stage", "target", "accuracy %", "agreement %", "size MB"] + ([] if env_diff else ["p50 ms", "speed-up"])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    recs_b = {r.name: r for r in b.records()}
    names = [r.name for r in a.records()] + [r.name for r in b.records() if r.name not in {x.name for x in a.records()}]
    recs_a = {r.name: r for r in a.records()}
    for name in names:
        ra, rb = recs_a.get(name), recs_b.get(name)
        targets = list(dict.fromkeys([*(ra.measurements if ra else {}), *(rb.measurements if rb else {})]))
        for t in targets:
            ma = ra.measurements.get(t) if ra else None
            mb = rb.measurements.get(t) if rb else None
            row = [name + ("" if ra and rb else (" (only in B)" if rb else " (only in A)")), t,
                   _delta(ma and ma.accuracy, mb and mb.accuracy),
                   _delta(ma and ma.agreement, mb and mb.agreement),
                   _delta(ra and ra.artifact.size_bytes / 1e6, rb and rb.artifact.size_bytes / 1e6, ".3f")]
            if not env_diff:
                row += [_delta(ma and ma.latency and ma.latency.p50_ms, mb and mb.latency and mb.latency.p50_ms, ".3f"),
                        f"{speedup_cell(ma) if ma else '—'} → {speedup_cell(mb) if mb else '—'}"]
            lines.append("| " + " | ".join(row) + " |")
    ga = {(g.metric, g.stage, g.target, g.against): g for g in a.gates}
    gb = {(g.metric, g.stage, g.target, g.against): g for g in b.gates}
    if ga or gb:
        lines += ["", "| gate | " + a_name + " | " + b_name + " |", "|---|---|---|"]
        for key in list(dict.fromkeys([*ga, *gb])):
            cell = (lambda g: "—" if g is None else f"{g.status.upper()} ({_fmt(g.observed, '.4g')})")
            lines.append(f"| {key[0]} ({key[1]}, {key[2]}) | {cell(ga.get(key))} | {cell(gb.get(key))} |")
    return "\n".join(lines) + "\n"
