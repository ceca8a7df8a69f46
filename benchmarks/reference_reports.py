"""Regenerate the reference reports in reports/ from every pipeline in pipelines/.

    python benchmarks/reference_reports.py            # all pipelines
    python benchmarks/reference_reports.py quickstart # some

Each pipeline runs at full settings with `compress run` (its own cache, so a re-run is cheap unless
--remeasure is given); report.json and report.md are copied to reports/<pipeline>/ (and, for the quickstart, a
headless-Chromium screenshot of its report.html to reports/quickstart/report.png). The exit code of each
run is recorded in reports/index.md, gate failures included: a reference report shows what happened.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
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


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("-")]
    names = [a for a in argv if not a.startswith("-")]
    pipelines = sorted((ROOT / "pipelines").glob("*.yaml"))
    if names:
        pipelines = [p for p in pipelines if p.stem in names]
    rows = []
    for p in pipelines:
        out = ROOT / "runs" / "reference" / p.stem
        cmd = ["compress", "run", "-q", str(p.relative_to(ROOT)), "-o", str(out), *flags]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT)
        dest = ROOT / "reports" / p.stem
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("report.json", "report.md"):
            if (out / f).is_file():
                shutil.copyfile(out / f, dest / f)
        if p.stem == "quickstart" and (out / "report.html").is_file():
            screenshot(out / "report.html", dest / "report.png")
        rows.append(f"| [{p.stem}]({p.stem}/report.md) | `{' '.join(cmd[:4])}` | {rc} |")
    index = ROOT / "reports" / "index.md"
    keep = {}
    if index.is_file():
        for line in index.read_text().splitlines()[4:]:
            if line.startswith("| ["):
                keep[line.split("]")[0][3:]] = line
    for r in rows:
        keep[r.split("]")[0][3:]] = r
    index.write_text("# Reference reports\n\nRegenerate: `python benchmarks/reference_reports.py`\n\n"
                     "| pipeline | command | exit code |\n|---|---|---|\n" + "\n".join(keep[k] for k in sorted(keep)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
