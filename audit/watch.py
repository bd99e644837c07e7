"""Continual audit (``mimicry audit watch``): audit every new or changed registry version as it appears,
re-audit each on a schedule, and keep the Prometheus metrics current (served on ``/metrics``). An audit that
cannot run (a method errors, or the audit raises) shows as ``mimicry_audit_status{status="error"} 1`` for that
version, never as a FAIL, and the loop goes on.

A version is (re-)audited when it is new, when its artifacts' sha256 changed, or when ``interval_s`` has
passed since its last audit; the registry is polled every ``poll_s`` seconds.

With ``endpoint`` (``--endpoint URL``) every poll also lists the live service's models (``GET /v1/models``)
and probes each served version with the reference cases (a black-box audit, :mod:`audit.blackbox`) when it
is new, when its ``model.onnx`` sha256 changed (a redeploy), or when ``interval_s`` has passed; the results go
to the ``mimicry_audit_probe_*`` series (:class:`audit.prometheus.AuditMetrics`), reports (with ``out_dir``)
to ``probe-<name>-<version>/``. An unreachable endpoint sets ``mimicry_audit_probe_up`` to 0 and the loop
goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from audit.blackbox import EndpointClient
from audit.errors import AuditError
from audit.prometheus import AuditMetrics
from audit.report import write_reports
from audit.runner import AuditConfig, AuditReport, model_sha256, resolve_models, run_audit
from mimicry.registry import Registry, RegistryError

__all__ = ["parse_interval", "watch"]

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """``"90"`` / ``"90s"`` / ``"10m"`` / ``"1h"`` / ``"1d"`` → seconds (> 0).

    Raises:
        ValueError: anything else.
    """
    t = text.strip().lower()
    unit = t[-1] if t and t[-1] in _UNITS else "s"
    number = t[:-1] if t and t[-1] in _UNITS else t
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"invalid interval {text!r}: use e.g. 30s, 10m, 1h") from None
    if value <= 0:
        raise ValueError(f"interval must be positive, got {text!r}")
    return value


def watch(
    config: AuditConfig,
    metrics: AuditMetrics,
    *,
    interval_s: float,
    poll_s: float = 30.0,
    out_dir: Path | None = None,
    max_cycles: int | None = None,
    stop: threading.Event | None = None,
    on_report: Callable[[AuditReport], None] | None = None,
    endpoint: str | None = None,
) -> int:
    """Run the watch loop until ``stop`` is set or ``max_cycles`` polls are done; returns the audits (registry
    audits and endpoint probes) run.

    ``config.models`` is ignored: every version of every model in the registry (and, with ``endpoint``, every
    model the endpoint serves) is watched.
    """
    stop = stop or threading.Event()
    seen: dict[tuple[str, int], tuple[str, float]] = {}
    probed: dict[str, tuple[str, float]] = {}
    audits = 0
    cycles = 0
    while not stop.is_set():
        try:
            registry = Registry(config.registry)
            versions = resolve_models(registry, ["all"])
        except RegistryError as exc:
            log.error("registry unreadable: %s", type(exc).__name__)
            versions = []
        now = time.time()
        for name, version in versions:
            if stop.is_set():
                break
            try:
                sha = model_sha256(registry.card(f"{name}:{version}"))
            except RegistryError:
                continue
            last = seen.get((name, version))
            if last is not None and last[0] == sha and now - last[1] < interval_s:
                continue
            try:
                report = run_audit(dataclasses.replace(config, models=[f"{name}:{version}"]))
            except (AuditError, RegistryError) as exc:
                # e.g. an unreadable reference store: an error state, not a FAIL; retried next interval
                log.error("audit of %s:%s could not run: %s", name, version, type(exc).__name__)
                metrics.observe_error(name, version)
                seen[(name, version)] = (sha, time.time())
                continue
            metrics.observe(report)
            seen[(name, version)] = (sha, time.time())
            audits += 1
            if out_dir is not None:
                write_reports(report, Path(out_dir) / f"{name}-{version}")
            if on_report is not None:
                on_report(report)
        if endpoint and not stop.is_set():
            audits += _probe(config, metrics, endpoint, probed, interval_s, out_dir, on_report)
        cycles += 1
        if max_cycles is not None and cycles >= max_cycles:
            break
        stop.wait(poll_s)
    return audits


def _probe(
    config: AuditConfig,
    metrics: AuditMetrics,
    endpoint: str,
    probed: dict[str, tuple[str, float]],
    interval_s: float,
    out_dir: Path | None,
    on_report: Callable[[AuditReport], None] | None,
) -> int:
    """Probe the endpoint's new, redeployed or due models; returns the probes run."""
    try:
        with EndpointClient(
            endpoint, token=config.endpoint_token, timeout_s=30.0, retries=config.endpoint_retries
        ) as client:
            served = client.models()
    except AuditError as exc:
        log.error("endpoint probe failed: %s", type(exc).__name__)
        metrics.probe_failed()
        return 0
    now = time.time()
    count = 0
    for info in served:
        last = probed.get(info.ref)
        if last is not None and last[0] == info.sha256 and now - last[1] < interval_s:
            continue
        try:
            report = run_audit(dataclasses.replace(config, endpoint=endpoint, models=[info.ref]))
        except AuditError as exc:
            log.error("endpoint probe of %s failed: %s", info.ref, type(exc).__name__)
            metrics.probe_failed()
            continue
        metrics.observe_probe(report)
        probed[info.ref] = (info.sha256, time.time())
        count += 1
        if out_dir is not None:
            write_reports(report, Path(out_dir) / f"probe-{info.name}-{info.version}")
        if on_report is not None:
            on_report(report)
    return count
