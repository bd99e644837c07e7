"""Prometheus metrics of the service and its ``/metrics`` endpoint (docs/serving.md, "Metrics").

Request metrics (same names, label names and meaning as BentoML 1.4's HTTP instruments, so dashboards and
alert rules keep working; BentoML's own are switched off with ``metrics.enabled = False`` because they label
series with the raw request path — unbounded under a scan, and PHI-bearing for DICOMweb paths):

* ``bentoml_service_request_total`` counter and ``bentoml_service_request_duration_seconds`` histogram
  {endpoint, service_name, service_version, http_response_code, runner_name};
* ``bentoml_service_request_in_progress`` gauge {endpoint, service_name, service_version, runner_name};
* ``bentoml_service_last_request_timestamp_seconds`` gauge {service_name, service_version, runner_name}
  (no ``pid`` label: the maximum over workers).

``endpoint`` is a **route template** (``/dicomweb/studies/{study}``) from a fixed set (:data:`ENDPOINTS`), and
``other`` for every path that matches none, so a scan of random paths adds at most one series per status
code. The middleware :class:`RequestMiddleware` also enforces the request timeout (``request_timeout_s``:
``anyio.fail_after``, cancelled when the request ends; a 504 problem when it fires before the answer started).

Model metrics:

* ``mimicry_inference_seconds`` histogram {model, backend} — one observation per backend batch;
* ``mimicry_batch_size`` histogram {model, backend};
* ``mimicry_saliency_seconds`` histogram {model, method};
* ``mimicry_predictions_total`` counter {model, class} — by predicted class;
* ``mimicry_abstentions_total`` counter {model}; ``mimicry_ood_total`` counter {model};
* ``mimicry_input_rejected_total`` counter {reason} — a stable problem ``code``;
* ``mimicry_model_info`` gauge = 1 {model, version, sha256, backend, provider};
* ``mimicry_explanation_border_mass`` and ``mimicry_explanation_entropy`` histograms {model, method}.

Labels carry route templates, model names, class names, method names and error codes only — never request
content or PHI.

**Several workers.** ``bentoml serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (``$BENTOML_HOME/
prometheus_multiproc_dir``, wiped at start-up) in every worker before the service instance is created;
``prometheus_client`` picks its storage when a metric is created, so metrics are created lazily
(:func:`get_metrics`) and :func:`metrics_response` aggregates every worker's files with
``prometheus_client.multiprocess.MultiProcessCollector``. Each service instance must have its own
``BENTOML_HOME`` (:func:`serving.launch.build_serve_invocation` sees to it), else a second instance wipes the
first one's counters. Gauges use ``livemax``/``livesum``/``max`` so no series carries a ``pid`` label.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import anyio

__all__ = [
    "ENDPOINTS",
    "OTHER",
    "RequestMiddleware",
    "ServingMetrics",
    "endpoint_label",
    "get_metrics",
    "mark_process_dead",
    "metrics_response",
]

#: Route templates used as ``endpoint`` label values (every route of the service).
ENDPOINTS: tuple[str, ...] = (
    "/v1/predict",
    "/v1/explain",
    "/v1/models",
    "/v1/infer",
    "/dicomweb/studies",
    "/dicomweb/studies/{study}",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/docs.json",
    "/schema.json",
    "/",
)
#: The ``endpoint`` label of every other path.
OTHER = "other"
_PATTERNS = [(re.compile("^" + re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(t)) + "$"), t) for t in ENDPOINTS]
_SERVICE = {"service_name": "mimicry", "service_version": "not available", "runner_name": "mimicry"}
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)


def endpoint_label(path: str) -> str:
    """The route template matching ``path``, or :data:`OTHER`."""
    for pattern, template in _PATTERNS:
        if pattern.match(path):
            return template
    return OTHER


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_UNIT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServingMetrics:
    """The metric objects (``prometheus_client`` instances in the default registry)."""

    inference_seconds: Any
    batch_size: Any
    saliency_seconds: Any
    predictions_total: Any
    abstentions_total: Any
    ood_total: Any
    input_rejected_total: Any
    model_info: Any
    border_mass: Any
    entropy: Any
    request_total: Any
    request_duration: Any
    request_in_progress: Any
    last_request: Any
    decodes_total: Any


@cache
def get_metrics() -> ServingMetrics:
    """Create (once per process) and return the metrics; call after ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServingMetrics(
        inference_seconds=Histogram(
            "mimicry_inference_seconds",
            "Backend inference time per batch.",
            ["model", "backend"],
            buckets=_LATENCY_BUCKETS,
        ),
        batch_size=Histogram(
            "mimicry_batch_size", "Samples per backend batch.", ["model", "backend"], buckets=_BATCH_BUCKETS
        ),
        saliency_seconds=Histogram(
            "mimicry_saliency_seconds",
            "Time to compute one saliency map.",
            ["model", "method"],
            buckets=_LATENCY_BUCKETS,
        ),
        predictions_total=Counter(
            "mimicry_predictions", "Predictions served, by predicted class.", ["model", "class"]
        ),
        abstentions_total=Counter("mimicry_abstentions", "Predictions flagged abstain.", ["model"]),
        ood_total=Counter("mimicry_ood", "Inputs flagged out-of-distribution.", ["model"]),
        input_rejected_total=Counter(
            "mimicry_input_rejected", "Requests refused, by problem code.", ["reason"]
        ),
        model_info=Gauge(
            "mimicry_model_info",
            "Served model versions (value 1).",
            ["model", "version", "sha256", "backend", "provider"],
            multiprocess_mode="livemax",
        ),
        border_mass=Histogram(
            "mimicry_explanation_border_mass",
            "Share of served saliency mass in the 10% image border band.",
            ["model", "method"],
            buckets=_UNIT_BUCKETS,
        ),
        entropy=Histogram(
            "mimicry_explanation_entropy",
            "Normalised Shannon entropy of served saliency maps.",
            ["model", "method"],
            buckets=_UNIT_BUCKETS,
        ),
        request_total=Counter(
            "bentoml_service_request",
            "Requests answered, by route template and status.",
            ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"],
        ),
        request_duration=Histogram(
            "bentoml_service_request_duration_seconds",
            "Request duration, by route template and status.",
            ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"],
            buckets=_DURATION_BUCKETS,
        ),
        request_in_progress=Gauge(
            "bentoml_service_request_in_progress",
            "Requests in progress, by route template.",
            ["endpoint", "service_name", "service_version", "runner_name"],
            multiprocess_mode="livesum",
        ),
        last_request=Gauge(
            "bentoml_service_last_request_timestamp_seconds",
            "Unix time of the last request (maximum over workers).",
            ["service_name", "service_version", "runner_name"],
            multiprocess_mode="max",
        ),
        decodes_total=Counter(
            "mimicry_decodes",
            "DICOM images decoded, by resolution level (0: full; r: a JPEG 2000 film decoded r levels "
            "down for a prediction).",
            ["level"],
        ),
    )


def metrics_response() -> Any:
    """The ``/metrics`` answer: every worker's metrics (multiprocess mode) or this process's registry."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from starlette.responses import Response

    get_metrics()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


def mark_process_dead() -> None:
    """Drop this worker's live gauges from the multiprocess directory (at shutdown)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


class RequestMiddleware:
    """ASGI middleware: request metrics with route-template labels, and the request timeout.

    The timeout is the active runtime's ``request_timeout_s`` (:class:`serving.settings.ServeSettings`),
    enforced with ``anyio.fail_after``: its deadline is cancelled when the request ends, so nothing of a
    finished request stays referenced. When it fires before the answer started, the client gets a 504
    ``request_timeout`` problem.
    """

    def __init__(self, app: Any, timeout_s: Callable[[], float | None] = lambda: None) -> None:
        """``timeout_s``: called per request for the deadline in seconds (``None``: none), e.g. the active
        runtime's ``request_timeout_s`` (passed in by the service, so this module imports no runtime)."""
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from serving import problems

        m = get_metrics()
        endpoint = endpoint_label(scope.get("path", ""))
        timeout = self.timeout_s()
        status = 500
        started = False

        async def send_wrapper(message: Any) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
            await send(message)

        if endpoint != "/metrics":
            m.last_request.labels(**_SERVICE).set(time.time())
        in_progress = m.request_in_progress.labels(endpoint=endpoint, **_SERVICE)
        in_progress.inc()
        t0 = time.perf_counter()
        try:
            with anyio.fail_after(timeout):
                await self.app(scope, receive, send_wrapper)
        except TimeoutError:
            if started:
                raise
            status = 504
            await problems.request_timeout(timeout or 0).to_response()(scope, receive, send)
        finally:
            in_progress.dec()
            labels = {"endpoint": endpoint, "http_response_code": str(status), **_SERVICE}
            m.request_total.labels(**labels).inc()
            m.request_duration.labels(**labels).observe(time.perf_counter() - t0)
