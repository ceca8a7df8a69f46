"""The report's renderers: report.html (drawn by headless Chromium), JUnit XML (read by a JUnit library),
`compress diff`, and the CI recipes that use them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import main

ROOT = Path(__file__).parent.parent
GATES = [{"metric": "accuracy", "min": 0.0}, {"metric": "speedup", "min": 0.2},
         {"metric": "size_mb", "max": 1e-6}]  # the last one must fail


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import tiny_pipeline, write_yaml

    tmp = tmp_path_factory.mktemp("outputs")
    p = write_yaml(tmp / "pipe.yaml", tiny_pipeline(tmp, gates=GATES))
    r = CliRunner().invoke(main, ["run", str(p), "--junit", str(tmp / "junit" / "gates.xml")], catch_exceptions=False)
    assert r.exit_code == 1, r.output  # the size gate fails
    return tmp


def test_junit_has_one_case_per_gate(run_dir):
    from junitparser import Failure, JUnitXml

    xml = JUnitXml.fromfile(str(run_dir / "junit" / "gates.xml"))
    suites = list(xml)
    cases = [c for s in suites for c in s]
    assert len(cases) == len(GATES)
    failed = [c for c in cases if any(isinstance(r, Failure) for r in c.result)]
    assert len(failed) == 1 and "size_mb" in failed[0].name
    assert suites[0].failures == 1 and suites[0].tests == 3
    speed = next(c for c in cases if c.name.startswith("speedup"))
    assert speed.is_passed and "(95%, n=" in speed.system_out


def test_report_command_renders_html_and_junit_again(run_dir, tmp_path):
    rep = str(run_dir / "run" / "report.json")
    r = CliRunner().invoke(main, ["report", rep, "--format", "html", "--junit", str(tmp_path / "j.xml")])
    assert r.exit_code == 1 and r.output.count("<svg") >= 3  # gate failed -> exit 1; three charts
    assert (tmp_path / "j.xml").read_text().count("<testcase") == 3


def test_diff_compares_latency_only_on_the_same_machine(run_dir, tmp_path):
    rep = run_dir / "run" / "report.json"
    r = CliRunner().invoke(main, ["diff", str(rep), str(rep)])
    assert r.exit_code == 0 and "p50 ms" in r.output and "(+0.00)" in r.output
    other = json.loads(rep.read_text())
    other["environment"]["cpu_flags"] = ["avx2", "fma", "avx512_vnni"]
    other["stages"][-1]["measurements"]["ort"]["accuracy"] -= 1.5
    (tmp_path / "b.json").write_text(json.dumps(other))
    r = CliRunner().invoke(main, ["diff", str(rep), str(tmp_path / "b.json")])
    assert r.exit_code == 0 and "different machines" in r.output and "avx512_vnni" in r.output
    assert "p50 ms" not in r.output and "(-1.50)" in r.output


def test_pareto_front():
    from compress.report.html import pareto_front

    pts = [(1.0, 90.0), (0.5, 89.0), (0.8, 95.0), (0.4, 80.0), (0.9, 94.0)]
    assert pareto_front(pts) == [3, 1, 2]  # (1.0, 90) and (0.9, 94) are beaten by (0.8, 95)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.integration
@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"), reason="no chromium (.ci/run installs it)")
def test_html_report_draws_its_charts_in_headless_chromium(run_dir, tmp_path):
    """Chromium loads report.html from disk (offline), the DOM it built holds the three charts with drawn
    paths, and a screenshot of the page is not blank."""
    import numpy as np
    from PIL import Image

    html = run_dir / "run" / "report.html"
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    charts = dom.split('class="chart"')[1:]
    assert len(charts) == 3
    for chart in charts:
        assert "<svg" in chart and chart.count("<path") >= 5  # axes, ticks, markers, boxes, bars
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", html.as_uri()], capture_output=True,
                   timeout=120, check=True)
    px = np.asarray(Image.open(shot).convert("L"))
    assert px.shape == (1600, 1200)
    assert (px < 200).mean() > 0.02  # text, tables and charts: not a blank page


TEMPLATES = ROOT / "compress" / "ci_templates"


def _compress_commands(lines: list[str]) -> list[list[str]]:
    import shlex

    cmds = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part.replace('"$PIPELINE"', "pipelines/quickstart.yaml"))
            if words and words[0] == "compress":
                cmds.append(words[1:])
    return cmds


def _check_commands(cmds: list[list[str]]) -> None:
    """Every compress command line in a recipe parses with the real CLI (subcommand and options exist)."""
    names = [c[0] for c in cmds]
    assert names.count("validate") == 1 and names.count("run") == 1
    run = next(c for c in cmds if c[0] == "run")
    assert "--junit" in run
    for c in cmds:
        sub = main.get_command(None, c[0])
        assert sub is not None, c
        sub.make_context(c[0], list(c[1:]))  # raises click.UsageError on an unknown option


def test_github_actions_recipe():
    wf = yaml.safe_load((TEMPLATES / "github-actions.yml").read_text())
    steps = wf["jobs"]["gate"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    assert any('pip install -e ".[dev]"' in r for r in runs)
    _check_commands(_compress_commands(runs))
    gate = next(s for s in steps if "compress run" in s.get("run", ""))
    assert "continue-on-error" not in gate and "|| true" not in gate["run"]  # exit 1 fails the job
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "report.html" in upload["with"]["path"]
    assert wf["env"]["PIPELINE"] == "pipelines/quickstart.yaml" and (ROOT / wf["env"]["PIPELINE"]).is_file()


def test_gitlab_recipe():
    ci = yaml.safe_load((TEMPLATES / "gitlab-ci.yml").read_text())
    job = ci["compress-gate"]
    assert 'pip install -e ".[dev]"' in job["script"]
    _check_commands(_compress_commands(job["script"]))
    assert job["artifacts"]["when"] == "always" and job["artifacts"]["reports"]["junit"] == "runs/ci/junit.xml"
    assert "allow_failure" not in job
