"""Regenerate the reference reports in reports/ from every pipeline in pipelines/.

    python benchmarks/reference_reports.py            # all pipelines
    python benchmarks/reference_reports.py quickstart # some

Each pipeline runs at full settings with `compress run` (its own cache, so a re-run is cheap unless
--remeasure is given); report.json and report.md are copied to reports/<pipeline>/ (and, for the quickstart, a
headless-Chromium screenshot of its report.html to reports/quickstart/report.png). The exit code of each
run is recorded in reports/index.md, gate failures included: a reference report shows what happened.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def screenshot(html: Path, png: Path) -> None:
    """report.html as headless Chromium draws it (Debian package `chromium`), for the README."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("no chromium: screenshot skipped (apt-get install -y chromium)")
        return
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
                    "--window-size=1200,2600", html.resolve().as_uri()], check=True, capture_output=True, timeout=120)


def cpu() -> str:
    """The CPU model and instruction set (what decides INT8 speed), from the reader the reports use."""
    sys.path.insert(0, str(ROOT))  # this checkout's package
    from compress.runtimes.environment import isa, machine_key

    m = machine_key()
    return f"{m['cpu_model'] or platform.machine()}, {isa(m['cpu_flags'])}"


def row(stem: str, cmd: list[str], rc: int, seconds: float, load: tuple[float, float]) -> str:
    return (f"| [{stem}]({stem}/report.md) | `{' '.join(cmd[:4])}` | {rc} | {seconds:.0f} s | "
            f"{load[0]:.1f} -> {load[1]:.1f} | {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} |")


HEADER = ("# Reference reports\n\nRegenerate: `python benchmarks/reference_reports.py` (every pipeline; names to run "
          "some). Each row is written by that command: exit code, wall time and the 1-minute load average before -> "
          "after the run.\n\n")
FOOTER = ("\n`compress bench` against the pipeline's own speed-up: [bench_vs_pipeline.md](bench_vs_pipeline.md) "
          "(the `compress bench` command it ran is in that file).\n")


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("-")]
    names = [a for a in argv if not a.startswith("-")]
    pipelines = sorted((ROOT / "pipelines").glob("*.yaml"))
    if names:
        pipelines = [p for p in pipelines if p.stem in names]
    index = ROOT / "reports" / "index.md"
    keep: dict[str, str] = {}
    if index.is_file():  # rows of pipelines not re-run this time stay as they were written
        keep = {ln.split("]")[0][3:]: ln for ln in index.read_text().splitlines() if ln.startswith("| [")}
    worst = 0
    for p in pipelines:
        out = ROOT / "runs" / "reference" / p.stem
        cmd = ["compress", "run", "-q", str(p.relative_to(ROOT)), "-o", str(out), *flags]
        print("$", " ".join(cmd), flush=True)
        load0, t0 = os.getloadavg()[0], time.monotonic()
        # `python -m compress` runs this checkout's package whichever one the `compress` script was installed from
        rc = subprocess.call([sys.executable, "-m", "compress", *cmd[1:]], cwd=ROOT)
        seconds, load1 = time.monotonic() - t0, os.getloadavg()[0]
        dest = ROOT / "reports" / p.stem
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("report.json", "report.md"):
            if (out / f).is_file():
                shutil.copyfile(out / f, dest / f)
        if p.stem == "quickstart" and (out / "report.html").is_file():
            screenshot(out / "report.html", dest / "report.png")
        keep[p.stem] = row(p.stem, cmd, rc, seconds, (load0, load1))
        worst = max(worst, rc)
    existing = {p.stem for p in (ROOT / "pipelines").glob("*.yaml")}
    rows = [keep[k] for k in sorted(keep) if k in existing]
    index.write_text(HEADER + f"CPU: {cpu()}, "
                     f"{os.cpu_count()} cores.\n\n| pipeline | command | exit code | wall | load | run at (UTC) |\n"
                     "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n" + FOOTER)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
