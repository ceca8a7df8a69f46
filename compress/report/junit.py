"""JUnit XML of a report's gates, for CI systems that show test results (GitHub, GitLab, Jenkins): one
test case per gate. A failed gate is a ``<failure>``; an inconclusive one is ``<skipped>``, or an
``<error>`` when the pipeline says ``fail_on_unstable`` (the run then exits 4). Pure renderer; stdlib only.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from compress.report.markdown import interval
from compress.report.model import Report


def render_junit(report: Report, fail_on_unstable: bool = False) -> str:
    suite = ET.Element("testsuite", name=f"compress.{report.pipeline_name}", timestamp=report.created_at)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for g in report.gates:
        counts["tests"] += 1
        case = ET.SubElement(suite, "testcase", classname=f"compress.gates.{report.pipeline_name}",
                             name=f"{g.metric} {g.op} {g.threshold:g} ({g.stage}, {g.target}"
                                  + (f", vs {g.against}" if g.against else "") + ")", time="0")
        text = f"observed {interval(g)}; threshold {g.op} {g.threshold:g} {g.unit}".strip()
        if g.detail:
            text += f"; {g.detail}"
        if g.status == "fail":
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=f"{g.metric} failed: {text}", type="GateFailed").text = text
        elif g.status == "inconclusive":
            kind = "errors" if fail_on_unstable else "skipped"
            counts[kind] += 1
            el = ET.SubElement(case, "error" if fail_on_unstable else "skipped", message=f"inconclusive: {text}")
            el.text = text
        ET.SubElement(case, "system-out").text = text
    for k, v in counts.items():
        suite.set(k, str(v))
    env = report.environment
    props = ET.Element("properties")
    for k, v in (("cpu_model", env.get("cpu_model")), ("cpu_flags", ",".join(env.get("cpu_flags") or [])),
                 ("status", report.status), ("pipeline", report.pipeline)):
        ET.SubElement(props, "property", name=k, value=str(v))
    suite.insert(0, props)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
