"""The BentoML 1.4 service: ``bentoml serve serving.service:MimicryService --host 127.0.0.1``.

What runs on one port (docs/serving.md, "Endpoints"): BentoML's ``/healthz``, ``/livez``, ``/readyz`` and
``/docs.json``, the BentoML-native API ``POST /v1/infer`` (``@bentoml.api(batchable=True)``: BentoML's
adaptive batching over raw preprocessed tensors), and two FastAPI apps mounted with ``@bentoml.asgi_app``
(:mod:`serving.http`): the API (``/v1/predict``, ``/v1/explain``, ``/v1/models``, ``/dicomweb/studies``,
``/metrics``) and ``/readyz`` with its details. BentoML merges the FastAPI apps' OpenAPI into ``/docs.json``.

Start-up (once per worker): settings from the environment / YAML (:mod:`serving.settings`), pydicom's PHI-
quoting warnings silenced, every model verified, its backend opened and warmed up; ``/readyz`` is 503 until
then and while a backend (Triton) is unreachable.

Configuration given to BentoML (all public; docs/serving.md, "Metrics" and "Timeouts"):

* ``metrics.enabled = False`` — BentoML's request metrics label series with the raw request path (unbounded
  under a scan, PHI-bearing for DICOMweb paths): :mod:`serving.metrics` exports the same metric names with
  route-template labels and serves ``/metrics`` itself;
* the request timeout is :class:`serving.metrics.RequestMiddleware`'s (``request_timeout_s``; a deadline
  cancelled when the request ends). BentoML 1.4 always arms its own per-request timer for
  ``traffic.timeout`` seconds (the value must be > 0) and never cancels it; the timer keeps the request's
  context alive until it fires, so ``traffic.timeout`` is only a backstop just above ``request_timeout_s``
  and ``tracing.excluded_urls`` keeps BentoML's OpenTelemetry middleware from putting a span (it holds the URL
  and client address) into that context: what a finished request leaves behind is BentoML's timer stub
  (a timer handle, a future and an empty context), not the request.

Edge middleware, outermost first: request metrics and the request timeout (:mod:`serving.metrics`), bearer
token on every path but the open ones (:data:`serving.auth.PUBLIC_PATHS`), ``GET /readyz`` to the health app.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import bentoml
import numpy as np

from serving.auth import BearerAuthMiddleware
from serving.http import create_app, create_health_app
from serving.metrics import RequestMiddleware, mark_process_dead
from serving.runtime import Runtime, active_runtime, set_active_runtime
from serving.settings import ServeSettings, load_serve_settings

__all__ = ["BACKSTOP_TIMEOUT_S", "MimicryService", "quiet_third_party_phi"]

logger = logging.getLogger(__name__)



def quiet_third_party_phi() -> None:
    """pydicom's warnings and log records quote malformed attribute values (names, UIDs): keep them out.

    Same policy as ``mimicry_cli.main.quiet_third_party_phi`` (replicated: serving must not import the CLI).
    """
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?")


def _import_settings() -> ServeSettings | None:
    try:
        return load_serve_settings()
    except Exception:  # invalid env at import: the instance constructor reports it properly
        return None


_AT_IMPORT = _import_settings()
_MAX_BATCH = _AT_IMPORT.max_batch_size if _AT_IMPORT else 32
_MAX_LATENCY_MS = _AT_IMPORT.max_latency_ms if _AT_IMPORT else 10_000
_WORKERS = _AT_IMPORT.workers if _AT_IMPORT else 2  # default; BENTOML_CONFIG_OPTIONS overrides
_REQUEST_TIMEOUT_S = _AT_IMPORT.request_timeout_s if _AT_IMPORT else 600.0
#: BentoML's ``traffic.timeout`` (must be > 0 in BentoML 1.4): a backstop a little above ours, so that ours
#: (a 504 problem) fires first. See the module docstring.
BACKSTOP_TIMEOUT_S = math.ceil(_REQUEST_TIMEOUT_S) + 5 if _REQUEST_TIMEOUT_S else 3600
_HEALTH_APP = create_health_app()  # mounted (for /docs.json) and called by EdgeMiddleware


class EdgeMiddleware:
    """Bearer auth (default deny), then ``GET /readyz`` to the health app (configured per active runtime)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._chain: Any = None
        self._for: Runtime | None = None

    async def _route(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope.get("path") == "/readyz"
            and scope.get("method") in ("GET", "HEAD")
        ):
            await _HEALTH_APP(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        rt = active_runtime()
        if rt is None:
            await self._route(scope, receive, send)
            return
        if self._for is not rt:
            token = rt.settings.api_token.get_secret_value() if rt.settings.api_token else None
            self._chain = BearerAuthMiddleware(self._route, token)
            self._for = rt
        await self._chain(scope, receive, send)


@bentoml.service(
    name="mimicry",
    workers=_WORKERS,
    traffic={"timeout": BACKSTOP_TIMEOUT_S},
    metrics={"enabled": False},  # serving.metrics exports bounded request metrics and serves /metrics
    tracing={"excluded_urls": [".*"]},  # no per-request span (it holds the URL) in BentoML's timeout timer
)
@bentoml.asgi_app(_HEALTH_APP, path="/", name="mimicry-health")
@bentoml.asgi_app(create_app(), path="/", name="mimicry-http")
class MimicryService:
    """Inference-and-audit service for explainable chest X-ray models (predictions, saliency, STOW-RS).

    Research use; not for clinical decisions. See docs/serving.md for every endpoint.
    """

    def __init__(self) -> None:
        quiet_third_party_phi()
        self.settings = load_serve_settings()
        self.runtime = Runtime(self.settings)
        set_active_runtime(self.runtime)

    def __is_ready__(self) -> bool:
        return self.runtime.is_ready()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if active_runtime() is self.runtime:
            set_active_runtime(None)
        self.runtime.close()
        mark_process_dead()

    @bentoml.api(batchable=True, max_batch_size=_MAX_BATCH, max_latency_ms=_MAX_LATENCY_MS, route="/v1/infer")
    def infer(self, images: np.ndarray) -> np.ndarray:
        """Raw tensors: ``float32[N, 1, S, S]`` preprocessed as the default model's card says →
        probabilities ``float32[N, K]`` in card order (BentoML adaptive batching)."""
        model = self.runtime.model(None)
        x = np.asarray(images, dtype=np.float32)
        size = model.card.preprocessing.size
        if x.ndim != 4 or x.shape[1:] != (1, size, size):
            raise bentoml.exceptions.InvalidArgument(f"images must be float32[N, 1, {size}, {size}]")
        return self.runtime.infer_now(model, x).probs


def _request_timeout_s() -> float | None:
    rt = active_runtime()
    return rt.settings.request_timeout_s if rt is not None else None


# first added = outermost: counts 401s and 404s too
MimicryService.add_asgi_middleware(RequestMiddleware, timeout_s=_request_timeout_s)
MimicryService.add_asgi_middleware(EdgeMiddleware)
