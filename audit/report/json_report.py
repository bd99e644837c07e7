"""``report.json``: the machine-readable audit report (schema ``mimicry.audit.report``, version 1).

Top level: ``schema``, ``schema_version``, ``started`` / ``finished`` (ISO 8601 UTC), ``passed`` (the gate),
``status`` (``passed`` / ``failed`` / ``error``: a model's audit could not run), ``config``, ``policy``
(+ ``policy_sha256``), ``models`` and ``comparisons``. Each model: ``ref``, ``model``,
``version``, ``sha256`` (white-box: of the registry artifacts; black-box: the endpoint's ``model.onnx``),
``architecture``, ``mode`` (``whitebox`` / ``blackbox``), ``endpoint``, ``not_applicable`` (check → why
it could not run), ``run_id`` (history), ``passed``, ``status``, ``errors``, ``n_cases``, ``n_cached``,
``duration_s``, ``methods``, ``table`` (the Table-2-shaped text), ``verdicts`` (criterion, column, method,
status, value, threshold, op, gate, reason) and ``results`` (check, method, summaries with bootstrap CIs,
baselines, details, per-case ``values`` keyed by non-identifying case keys). Non-finite numbers are written as
``null`` so the file is strict JSON.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from audit.policy import format_table
from audit.runner import AuditReport, ModelAudit

__all__ = ["REPORT_SCHEMA", "REPORT_SCHEMA_VERSION", "report_dict"]

REPORT_SCHEMA = "mimicry.audit.report"
REPORT_SCHEMA_VERSION = 1


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def model_dict(m: ModelAudit) -> dict[str, Any]:
    return {
        "ref": m.ref,
        "model": m.name,
        "version": m.version,
        "sha256": m.sha256,
        "architecture": m.architecture,
        "mode": m.mode,
        "endpoint": m.endpoint,
        "not_applicable": dict(m.not_applicable),
        "run_id": m.run_id,
        "passed": m.passed,
        "status": m.status,
        "errors": list(m.errors),
        "n_cases": m.n_cases,
        "n_cached": m.n_cached,
        "duration_s": m.duration_s,
        "methods": list(m.methods),
        "table": format_table(m.verdicts, methods=m.methods),
        "verdicts": [v.to_dict() for v in m.verdicts],
        "results": [r.to_dict() for r in m.results],
    }


def report_dict(report: AuditReport) -> dict[str, Any]:
    """The report as a JSON-able dict (see the module docstring for the schema)."""
    return _clean(
        {
            "schema": REPORT_SCHEMA,
            "schema_version": REPORT_SCHEMA_VERSION,
            "started": _iso(report.started),
            "finished": _iso(report.finished),
            "passed": report.passed,
            "status": report.status,
            "config": report.config,
            "policy": report.policy.model_dump(mode="json"),
            "policy_sha256": report.policy.sha256,
            "models": [model_dict(m) for m in report.models],
            "comparisons": [c.to_dict() for c in report.comparisons],
        }
    )
