"""The BentoML 1.4 service: ``bentoml serve serving.service:MimicryService --host 127.0.0.1``.

What runs on one port (REFERENCE.md, "Stack facts"): BentoML's ``/healthz``, ``/livez``, ``/readyz``,
``/metrics`` and ``/docs.json``, the BentoML-native API ``POST /v1/infer`` (batchable, raw preprocessed
tensors), and the mounted Starlette app of :mod:`serving.http` (``/v1/predict``, ``/v1/explain``,
``/v1/models``, ``/dicomweb/studies``), all of which ``/docs.json`` documents (:mod:`serving.openapi`).

Start-up (once per worker): settings from the environment / YAML (:mod:`serving.settings`), pydicom's PHI-
quoting warnings silenced, every model verified, its backend opened and warmed up; ``/readyz`` is 503 until
then and while a backend (Triton) is unreachable. ``GET /readyz`` answers JSON details
(``{"ready", "models": [{"name", "version", "backend", "provider", "ready"}]}``).

Edge middleware, outermost first: bearer token (when configured; not on health, metrics, OpenAPI), request
size limit (413 before the body is read), readiness details.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from serving.auth import BearerAuthMiddleware, RequestSizeLimitMiddleware
from serving.http import create_app
from serving.openapi import install_openapi
from serving.runtime import Runtime, active_runtime, set_active_runtime
from serving.settings import ServeSettings, load_serve_settings

__all__ = ["MimicryService", "quiet_third_party_phi"]

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


class EdgeMiddleware:
    """Bearer auth → size limit → ``/readyz`` details, configured from the active runtime per request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._chain: Any = None
        self._for: Runtime | None = None

    async def _readyz(self, scope: Any, receive: Any, send: Any) -> None:
        rt = active_runtime()
        if scope["type"] == "http" and scope.get("path") == "/readyz" and scope.get("method") == "GET" and rt:
            details = rt.readiness()
            headers = {} if details["ready"] else {"Retry-After": str(rt.settings.retry_after_s)}
            response = JSONResponse(details, status_code=200 if details["ready"] else 503, headers=headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        rt = active_runtime()
        if rt is None:
            await self.app(scope, receive, send)
            return
        if self._for is not rt:
            token = rt.settings.api_token.get_secret_value() if rt.settings.api_token else None
            self._chain = BearerAuthMiddleware(
                RequestSizeLimitMiddleware(self._readyz, rt.settings.max_request_bytes), token
            )
            self._for = rt
        await self._chain(scope, receive, send)


@bentoml.service(name="mimicry", workers=_WORKERS, traffic={"timeout": 600}, metrics={"enabled": True})
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


MimicryService.add_asgi_middleware(EdgeMiddleware)
install_openapi(MimicryService)  # /docs.json: BentoML's spec + the mounted routes (serving/openapi.py)
