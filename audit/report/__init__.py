"""Audit outputs: ``report.json`` (versioned schema), ``summary.md`` and a self-contained ``report.html``."""

from audit.report.html import render_html
from audit.report.json_report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, report_dict
from audit.report.markdown import render_markdown
from audit.report.write import write_reports

__all__ = [
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "render_html",
    "render_markdown",
    "report_dict",
    "write_reports",
]
