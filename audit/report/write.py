"""Write the three audit outputs into a directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audit.report.html import render_html
from audit.report.json_report import report_dict
from audit.report.markdown import render_markdown
from audit.runner import AuditReport

__all__ = ["write_reports"]


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(report: AuditReport, out_dir: Path | str) -> dict[str, Path]:
    """Write ``report.json``, ``summary.md`` and ``report.html`` (each atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "summary.md", "html": out / "report.html"}
    _atomic(paths["json"], json.dumps(report_dict(report), indent=2, allow_nan=False) + "\n")
    _atomic(paths["markdown"], render_markdown(report) + "\n")
    _atomic(paths["html"], render_html(report))
    return paths
