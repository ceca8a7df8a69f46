"""The terminal rendering of a report (a rich table of the same rows as the Markdown)."""
from __future__ import annotations

from pathlib import Path

from compress.report.markdown import COLUMNS, GATE_COLUMNS, gate_rows, rows
from compress.report.model import Report


def print_report(ui, report: Report, path: Path) -> None:
    from rich.table import Table

    table = Table(title=f"compress: {report.pipeline_name}", show_lines=False)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("stage", "type", "target", "precision") else "right")
    for r in rows(report):
        table.add_row(*r)
    ui.out.print(table)
    if report.gates:
        gt = Table(title="gates")
        for c in GATE_COLUMNS:
            gt.add_column(c)
        for r in gate_rows(report):
            style = {"PASS": "green", "FAIL": "bold red"}.get(r[0], "bold yellow")
            gt.add_row(f"[{style}]{r[0]}[/{style}]", *r[1:])
        ui.out.print(gt)
    for w in report.warnings:
        ui.warn(w)
    status = {"passed": "[green]passed[/green]", "gate_failed": "[bold red]GATE FAILED[/bold red]",
              "unstable": "[bold yellow]UNSTABLE MEASUREMENT[/bold yellow]"}[report.status]
    ui.out.print(f"{status} — report: {path} (and report.md, model.onnx beside it)")
