"""Write the three audit outputs into a directory."""

from __future__ import annotations

import json
from pathlib import Path

from audit.report.html import render_html
from audit.report.json_report import report_dict
from audit.report.markdown import render_markdown
from audit.runner import AuditReport
from mimicry.io import atomic_write_text

__all__ = ["write_reports"]


def write_reports(report: AuditReport, out_dir: Path | str) -> dict[str, Path]:
    """Write ``report.json``, ``summary.md`` and ``report.html`` (each atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "summary.md", "html": out / "report.html"}
    atomic_write_text(paths["json"], json.dumps(report_dict(report), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], render_markdown(report) + "\n")
    atomic_write_text(paths["html"], render_html(report))
    return paths
