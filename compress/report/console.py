"""The terminal rendering of a report: the rows of the Markdown table, narrowed to fit 80 columns.

By default the table shows the columns a reader compares (``COMPACT``); ``wide`` (``--wide``/``-v``)
shows every column of ``COLUMNS``, like ``report.md``. A renderer that adds a column to ``COLUMNS`` adds it
to ``COMPACT`` (with a short header in ``SHORT``) only if the table still fits in 80 columns: the test
renders the widest realistic report at 80 columns and fails on any cut cell.
"""
from __future__ import annotations

from pathlib import Path

from compress.report.markdown import COLUMNS, GATE_COLUMNS, gate_rows, rows
from compress.report.model import Report

#: the columns shown by default (names from COLUMNS), in order; "target" only when there are several
COMPACT = ["stage", "target", "accuracy %", "Δ acc", "agree %", "p50 ms", "speed-up", "size"]
#: shorter headers for the compact table
SHORT = {"accuracy %": "acc %"}
_LEFT = ("stage", "type", "target", "precision")
WIDTH = 80


def table_columns(report: Report, wide: bool) -> list[str]:
    if wide:
        return list(COLUMNS)
    several_targets = len({t for r in report.records() for t in r.measurements}) > 1
    return [c for c in COMPACT if c in COLUMNS and (c != "target" or several_targets)]


def print_report(ui, report: Report, path: Path, wide: bool = False) -> None:
    from rich import box
    from rich.table import Table

    cols = table_columns(report, wide)
    idx = [COLUMNS.index(c) for c in cols]
    table = Table(title=f"compress: {report.pipeline_name}", box=box.SIMPLE_HEAD if not wide else box.HEAVY_HEAD,
                  pad_edge=wide)
    for c in cols:
        table.add_column(c if wide else SHORT.get(c, c), justify="left" if c in _LEFT else "right",
                         no_wrap=c != "stage", overflow="fold")
    all_rows = rows(report)  # grouped by target: a rule between the groups
    for k, r in enumerate(all_rows):
        last_of_group = k + 1 < len(all_rows) and all_rows[k + 1][2] != r[2]
        table.add_row(*(r[i] for i in idx), end_section=last_of_group)
    ui.out.print(table)
    if report.gates:
        gt = Table(title="gates", box=box.SIMPLE_HEAD if not wide else box.HEAVY_HEAD, pad_edge=wide)
        grows = gate_rows(report)
        show_note = wide  # compact: notes go below the table, one line each
        for c in GATE_COLUMNS if show_note else GATE_COLUMNS[:-1]:
            gt.add_column(c, overflow="fold")
        for r in grows:
            style = {"PASS": "green", "FAIL": "bold red"}.get(r[0], "bold yellow")
            cells = list(r[1:len(gt.columns)])
            if not wide:  # the interval stays, its confidence and round count go to --wide / report.md
                cells[2] = cells[2].split(" (")[0]
            gt.add_row(f"[{style}]{r[0]}[/{style}]", *cells)
        ui.out.print(gt)
        if not show_note:
            for r in grows:
                if r[-1]:
                    ui.out.print(f"  {r[0]} {r[1]}: {r[-1]}", markup=False)
    ev = report.evaluation
    if ev and (ev.get("task", "classification") != "classification" or ev.get("metric")):
        ui.out.print(f"quality ({ev['task']}): {ev.get('quality', '')}"
                     + (f"; metric {ev['metric']}: " + ", ".join(
                         f"{r.name}/{t} {m.metric:.4g}" for r in report.records()
                         for t, m in r.measurements.items() if m.metric is not None) if ev.get("metric") else ""),
                     markup=False)
    for w in report.warnings:
        ui.warn(w)
    status = {"passed": "[green]passed[/green]", "gate_failed": "[bold red]GATE FAILED[/bold red]",
              "unstable": "[bold yellow]UNSTABLE MEASUREMENT[/bold yellow]"}[report.status]
    beside = [f for f in ("report.md", "report.html", "model.onnx") if (path.parent / f).is_file()]
    ui.out.print(f"{status} — report: {path}" + (f" ({' and '.join(beside)} beside it)" if beside else ""))
    if not wide:
        ui.out.print("[dim](--wide for every column: type, cosine, p90, params, MACs, precision, cached)[/dim]")
