"""Prometheus exposition of audit results (issue 6, "Continual mode and Prometheus").

Metric names follow the Prometheus naming conventions (base units, ``_total`` for counters):

* ``mimicry_audit_score{model,version,method,check,metric}`` — gauge, the mean of each summarised score;
* ``mimicry_audit_check_passed{model,version,method,check}`` — gauge, 1 when every criterion of the policy on
  that check PASSes for that method, 0 when one FAILs (absent when all are N/A);
* ``mimicry_audit_last_success_timestamp_seconds`` — gauge, Unix time of the last run that completed without
  error (whatever its verdict);
* ``mimicry_audit_run_duration_seconds`` — gauge, wall time of the last run;
* ``mimicry_audit_runs_total{status}`` — counter of runs by status (``passed`` / ``failed`` / ``error``).

Black-box probes of a live endpoint (``audit watch --endpoint``) are exported separately, so that they never
overwrite the white-box series of the same version:

* ``mimicry_audit_probe_score{model,version,method,check,metric}`` and
  ``mimicry_audit_probe_check_passed{model,version,method,check}`` — as above, from the served maps;
* ``mimicry_audit_probe_up`` — 1 when the last probe reached the endpoint and completed, else 0;
* ``mimicry_audit_probe_last_success_timestamp_seconds`` — Unix time of the last completed probe.

:class:`AuditMetrics` owns a private ``CollectorRegistry`` (never the process-global default), so several
instances can coexist in tests. ``audit watch`` serves it on ``/metrics``; ``audit run --pushgateway URL``
pushes it once (a Kubernetes CronJob).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server

from audit.policy import Policy
from audit.runner import AuditReport, ModelAudit

__all__ = ["PUSH_JOB", "AuditMetrics"]

PUSH_JOB = "mimicry_audit"


class AuditMetrics:
    """The audit's Prometheus metrics on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.score = Gauge(
            "mimicry_audit_score",
            "Mean audit score per model version, saliency method, check and metric.",
            ["model", "version", "method", "check", "metric"],
            registry=self.registry,
        )
        self.check_passed = Gauge(
            "mimicry_audit_check_passed",
            "1 when every policy criterion of the check passes for the method, else 0.",
            ["model", "version", "method", "check"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "mimicry_audit_last_success_timestamp_seconds",
            "Unix time of the last audit run that completed without error.",
            registry=self.registry,
        )
        self.duration = Gauge(
            "mimicry_audit_run_duration_seconds", "Wall time of the last audit run.", registry=self.registry
        )
        self.runs = Counter("mimicry_audit_runs", "Audit runs by status.", ["status"], registry=self.registry)
        for status in ("passed", "failed", "error"):
            self.runs.labels(status=status)  # export zeros from the start
        self.probe_score = Gauge(
            "mimicry_audit_probe_score",
            "Mean black-box audit score of a served model version (live endpoint probe).",
            ["model", "version", "method", "check", "metric"],
            registry=self.registry,
        )
        self.probe_check_passed = Gauge(
            "mimicry_audit_probe_check_passed",
            "1 when every policy criterion of the check passes on the live endpoint's maps, else 0.",
            ["model", "version", "method", "check"],
            registry=self.registry,
        )
        self.probe_up = Gauge(
            "mimicry_audit_probe_up",
            "1 when the last endpoint probe completed, else 0.",
            registry=self.registry,
        )
        self.probe_last_success = Gauge(
            "mimicry_audit_probe_last_success_timestamp_seconds",
            "Unix time of the last endpoint probe that completed without error.",
            registry=self.registry,
        )

    def observe_model(self, m: ModelAudit, policy: Policy) -> None:
        """Record one model version's scores, check verdicts and run status."""
        self._scores(m, policy, self.score, self.check_passed)
        status = "error" if m.errors else ("passed" if m.passed else "failed")
        self.runs.labels(status=status).inc()

    def observe_probe(self, report: AuditReport) -> None:
        """Record a black-box probe of a live endpoint (``probe_*`` series)."""
        for m in report.models:
            self._scores(m, report.policy, self.probe_score, self.probe_check_passed)
        ok = bool(report.models) and not any(m.errors for m in report.models)
        self.probe_up.set(1.0 if ok else 0.0)
        if ok:
            self.probe_last_success.set(report.finished)

    def probe_failed(self) -> None:
        """The endpoint could not be probed (unreachable, refused)."""
        self.probe_up.set(0.0)

    @staticmethod
    def _scores(m: ModelAudit, policy: Policy, score: Gauge, check_passed: Gauge) -> None:
        labels = {"model": m.name, "version": str(m.version)}
        for r in m.results:
            for metric, s in r.summaries.items():
                score.labels(**labels, method=r.method, check=r.check, metric=metric).set(s.mean)
        check_of = {c.id: c.check for c in policy.criteria}
        verdict: dict[tuple[str, str], list[str]] = {}
        for v in m.verdicts:
            verdict.setdefault((v.method, check_of.get(v.criterion, "?")), []).append(v.status)
        for (method, check), statuses in verdict.items():
            decided = [s for s in statuses if s != "N/A"]
            if decided:
                ok = all(s == "PASS" for s in decided)
                check_passed.labels(**labels, method=method, check=check).set(1.0 if ok else 0.0)

    def observe(self, report: AuditReport) -> None:
        """Record a whole ``audit run``."""
        for m in report.models:
            self.observe_model(m, report.policy)
        self.duration.set(report.finished - report.started)
        if report.models and not any(m.errors for m in report.models):
            self.last_success.set(report.finished)

    def mark_success(self, when: float | None = None) -> None:
        self.last_success.set(time.time() if when is None else when)

    def push(self, gateway: str, *, job: str = PUSH_JOB, timeout: float = 10.0) -> None:
        """Push every metric to a Pushgateway (``PUT /metrics/job/<job>``, replacing the group)."""
        push_to_gateway(gateway, job=job, registry=self.registry, timeout=timeout)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` over HTTP in a daemon thread; returns the server (call ``shutdown()``)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
