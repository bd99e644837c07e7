"""Prometheus metrics of the service (issue 5, "Metrics"), next to BentoML's own request metrics.

* ``mimicry_inference_seconds`` histogram {model, backend} — one observation per backend batch;
* ``mimicry_batch_size`` histogram {model, backend};
* ``mimicry_saliency_seconds`` histogram {model, method};
* ``mimicry_predictions_total`` counter {model, class} — by predicted class;
* ``mimicry_abstentions_total`` counter {model}; ``mimicry_ood_total`` counter {model};
* ``mimicry_input_rejected_total`` counter {reason} — a stable problem ``code``;
* ``mimicry_model_info`` gauge = 1 {model, version, sha256, backend, provider};
* ``mimicry_explanation_border_mass`` and ``mimicry_explanation_entropy`` histograms {model, method}.

Labels carry model names, class names, method names and error codes only — never request content or PHI.

**Several workers.** ``bentoml serve --workers N`` runs N processes and sets ``PROMETHEUS_MULTIPROC_DIR``
in each before the service instance is created; ``prometheus_client`` picks its storage when it is first
imported. This module therefore imports ``prometheus_client`` only inside :func:`get_metrics`, which the
service calls from its constructor, and the gauge uses ``multiprocess_mode="livemax"`` so that ``/metrics``
(BentoML's multiprocess collector) reports one series per model, not one per PID.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["ServingMetrics", "get_metrics"]

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
    )
