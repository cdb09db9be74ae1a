"""The run report: typed (schema.py), assembled once (build.py), written as report.json and
report.md (markdown.py) with two plots (plots.py)."""

from dwfc.report.markdown import render_markdown, write_report
from dwfc.report.schema import SCHEMA_VERSION, RunReport, as_report

__all__ = ["SCHEMA_VERSION", "RunReport", "as_report", "render_markdown", "write_report"]
