"""The report: a schema-versioned pydantic model (``report.json`` is the source of truth) and pure
renderers of it (Markdown for PR comments, the terminal table)."""
from compress.report.model import SCHEMA_VERSION, GateResult, Measurement, Report, StageRecord

__all__ = ["SCHEMA_VERSION", "GateResult", "Measurement", "Report", "StageRecord"]
