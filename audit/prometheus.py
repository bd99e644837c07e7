"""Prometheus exposition of audit results (docs/audit.md, "Continual mode and Prometheus").

Metric names follow the Prometheus naming conventions (base units, ``_total`` for counters):

* ``mimicry_audit_score{model,version,method,check,metric}`` — gauge, the mean of each summarised score;
* ``mimicry_audit_check_passed{model,version,method,check}`` — gauge, 1 when every criterion of the policy on
  that check PASSes for that method, 0 when one FAILs (absent when all are N/A, e.g. the method errored);
* ``mimicry_audit_status{model,version,status}`` — gauge, 1 on the status of the version's last audit and 0 on
  the other two: ``passed``, ``failed`` (a gating criterion FAILed) or ``error`` (the audit, or a method of
  it, could not run: its verdicts are incomplete; never shown as a FAIL);
* ``mimicry_audit_last_success_timestamp_seconds`` — gauge, Unix time of the last run that completed without
  error (whatever its verdict);
* ``mimicry_audit_run_duration_seconds`` — gauge, wall time of the last run;
* ``mimicry_audit_runs_total{status}`` — counter of runs by status (``passed`` / ``failed`` / ``error``).

Black-box probes of a live endpoint (``audit watch --endpoint``) are exported separately, so that they never
overwrite the white-box series of the same version:

* ``mimicry_audit_probe_score{model,version,method,check,metric}``,
  ``mimicry_audit_probe_check_passed{model,version,method,check}`` and
  ``mimicry_audit_probe_status{model,version,status}`` — as above, from the served maps;
* ``mimicry_audit_probe_up`` — 1 when the last probe reached the endpoint and completed, else 0;
* ``mimicry_audit_probe_last_success_timestamp_seconds`` — Unix time of the last completed probe.

:class:`AuditMetrics` owns a private ``CollectorRegistry`` (never the process-global default), so several
instances can coexist in tests. ``audit watch`` serves it on ``/metrics``; ``audit run --pushgateway URL``
pushes it once (a Kubernetes CronJob). Each observation of a version first removes that version's previous
score / check / status series, so a method that errors now does not keep the verdict of an earlier run.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server

from audit.policy import Policy
from audit.runner import AuditReport, ModelAudit

__all__ = ["PUSH_JOB", "STATUSES", "AuditMetrics"]

PUSH_JOB = "mimicry_audit"

#: The values of the ``status`` label of ``mimicry_audit_status`` / ``mimicry_audit_runs_total``.
STATUSES = ("passed", "failed", "error")


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
        for status in STATUSES:
            self.runs.labels(status=status)  # export zeros from the start
        self.status = Gauge(
            "mimicry_audit_status",
            "1 on the status (passed, failed, error) of the model version's last audit, 0 on the others.",
            ["model", "version", "status"],
            registry=self.registry,
        )
        self.probe_status = Gauge(
            "mimicry_audit_probe_status",
            "1 on the status (passed, failed, error) of the served version's last probe, 0 on the others.",
            ["model", "version", "status"],
            registry=self.registry,
        )
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
        # label values set per (gauge, model, version), removed before the version is observed again
        self._series: dict[tuple[int, str, str], set[tuple[str, ...]]] = {}
        score_labels = ("model", "version", "method", "check", "metric")
        check_labels = ("model", "version", "method", "check")
        status_labels = ("model", "version", "status")
        self._labelnames: dict[int, tuple[str, ...]] = {
            id(self.score): score_labels,
            id(self.probe_score): score_labels,
            id(self.check_passed): check_labels,
            id(self.probe_check_passed): check_labels,
            id(self.status): status_labels,
            id(self.probe_status): status_labels,
        }

    def observe_model(self, m: ModelAudit, policy: Policy) -> None:
        """Record one model version's scores, check verdicts and run status."""
        self._forget(m, self.score, self.check_passed, self.status)
        self._scores(m, policy, self.score, self.check_passed)
        self._status(m, self.status)
        self.runs.labels(status=m.status).inc()

    def observe_error(self, name: str, version: int) -> None:
        """A version whose audit raised before it produced a report: ``error`` state, no scores."""
        m = ModelAudit(name, version, "", "", [], errors=["audit raised"])
        self._forget(m, self.score, self.check_passed, self.status)
        self._status(m, self.status)
        self.runs.labels(status="error").inc()

    def observe_probe(self, report: AuditReport) -> None:
        """Record a black-box probe of a live endpoint (``probe_*`` series)."""
        for m in report.models:
            self._forget(m, self.probe_score, self.probe_check_passed, self.probe_status)
            self._scores(m, report.policy, self.probe_score, self.probe_check_passed)
            self._status(m, self.probe_status)
        ok = bool(report.models) and not any(m.errors for m in report.models)
        self.probe_up.set(1.0 if ok else 0.0)
        if ok:
            self.probe_last_success.set(report.finished)

    def probe_failed(self) -> None:
        """The endpoint could not be probed (unreachable, refused)."""
        self.probe_up.set(0.0)

    def _set(self, gauge: Gauge, m: ModelAudit, value: float, **labels: str) -> None:
        """``gauge{model, version, **labels} = value``, remembering the series for :meth:`_forget`."""
        full = {"model": m.name, "version": str(m.version), **labels}
        gauge.labels(**full).set(value)
        values = tuple(full[n] for n in self._labelnames[id(gauge)])
        self._series.setdefault((id(gauge), m.name, str(m.version)), set()).add(values)

    def _forget(self, m: ModelAudit, *gauges: Gauge) -> None:
        for gauge in gauges:
            for values in self._series.pop((id(gauge), m.name, str(m.version)), set()):
                gauge.remove(*values)

    def _status(self, m: ModelAudit, gauge: Gauge) -> None:
        for status in STATUSES:
            self._set(gauge, m, 1.0 if status == m.status else 0.0, status=status)

    def _scores(self, m: ModelAudit, policy: Policy, score: Gauge, check_passed: Gauge) -> None:
        for r in m.results:
            for metric, s in r.summaries.items():
                self._set(score, m, s.mean, method=r.method, check=r.check, metric=metric)
        check_of = {c.id: c.check for c in policy.criteria}
        verdict: dict[tuple[str, str], list[str]] = {}
        for v in m.verdicts:
            verdict.setdefault((v.method, check_of.get(v.criterion, "?")), []).append(v.status)
        for (method, check), statuses in verdict.items():
            decided = [s for s in statuses if s != "N/A"]
            if decided:
                ok = all(s == "PASS" for s in decided)
                self._set(check_passed, m, 1.0 if ok else 0.0, method=method, check=check)

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
