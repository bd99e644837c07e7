"""Black-box audit: an HTTP client of a running mimicry service (docs/audit.md, "Black-box mode").

With ``mimicry audit run --endpoint URL`` the reference DICOMs are sent to the service's ``POST /v1/explain``
and the returned maps are scored exactly like the white-box ones (no model weights needed); ``audit watch
--endpoint`` probes a live endpoint with reference cases the same way. The audit talks to the service over
HTTP only (import-linter: ``serving`` and ``audit`` are independent), using the documented wire format
(docs/serving.md, ``serving/http.py``):

* ``GET /v1/models`` → ``{"models": [{"name", "version", "requested", "default", "sha256", "methods",
  "card"}, …]}``;
* ``POST /v1/explain`` (body ``application/dicom``; query parameters ``model``, ``method``, ``target`` (class
  name or ``predicted``), ``format=json``, ``encoding=png16``, ``space=source|model``, ``params`` (JSON)) →
  ``{"model": {name, version, sha256, ref}, "method", "target": {"class", "index"}, "map": {"encoding",
  "data", "shape", "space", …}, "prediction": {"probabilities": {class: p}, "class_names", …}}``.

Maps are requested as 16-bit PNG (``round(m·65535)``, lossless to 1.5e-5) and decoded with Pillow; the
``float16`` encoding is decoded too. Errors are RFC 9457 problem documents; only their ``code``, ``title``
and status are surfaced (never request content).

Robustness: a per-request timeout, retries with exponential backoff on 503 / 429 and transport errors that
honour ``Retry-After`` (seconds or an HTTP date, capped), bounded concurrency (``--jobs``), and an optional
bearer token read from ``MIMICRY_AUDIT_ENDPOINT_TOKEN`` (RFC 6750; never logged).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from PIL import Image
from pydantic import ValidationError

from audit.errors import AuditError
from mimicry.registry import ModelCard

__all__ = [
    "ENDPOINT_TOKEN_ENV",
    "EndpointClient",
    "EndpointError",
    "EndpointExplanation",
    "EndpointPrediction",
    "EndpointRequestError",
    "EndpointUnavailableError",
    "ExplainRequest",
    "ServedModelInfo",
    "decode_map",
    "public_url",
    "retry_after_seconds",
    "select_served",
]

log = logging.getLogger(__name__)

#: Environment variable holding the service's bearer token (optional).
ENDPOINT_TOKEN_ENV = "MIMICRY_AUDIT_ENDPOINT_TOKEN"
#: HTTP statuses worth retrying (service not ready / overloaded / rate limited / gateway hiccups).
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class EndpointError(AuditError):
    """The audited endpoint answered something the audit cannot use."""


class EndpointUnavailableError(EndpointError):
    """The endpoint could not be reached, or stayed unavailable through every retry."""


class EndpointRequestError(EndpointError):
    """The endpoint refused a request (a 4xx/5xx problem document that is not worth retrying).

    Attributes:
        status: HTTP status. code: the problem's ``code`` (``unknown_method``, ``invalid_parameter`` …).
    """

    def __init__(self, status: int, code: str, title: str) -> None:
        super().__init__(f"HTTP {status} {code}: {title}")
        self.status = status
        self.code = code


def public_url(url: str) -> str:
    """``url`` without user-info, query or fragment (safe to write into reports and the history)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (RFC 9110 §10.2.3: delay seconds or an HTTP date) → seconds ≥ 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ref = datetime.now(tz=UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - ref)


def decode_map(payload: dict[str, Any]) -> np.ndarray:
    """The ``map`` object of a ``/v1/explain`` JSON answer → ``float32[H, W]`` in [0, 1].

    Raises:
        EndpointError: unknown encoding, or data that does not match ``shape``.
    """
    try:
        shape = tuple(int(v) for v in payload["shape"])
        encoding = payload["encoding"]
        raw = base64.b64decode(payload["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise EndpointError(f"malformed map in the explanation: {type(exc).__name__}") from None
    if encoding == "png16":
        try:
            with Image.open(io.BytesIO(raw)) as im:
                arr = np.asarray(im, dtype=np.float64)
        except OSError as exc:
            raise EndpointError(f"the PNG-16 map cannot be decoded: {exc}") from None
        scale = float(payload.get("scale", 65535))
        out = (arr / scale).astype(np.float32)
    elif encoding == "float16":
        out = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if out.size != int(np.prod(shape)):
            raise EndpointError(f"float16 map holds {out.size} values, shape {shape} needs {np.prod(shape)}")
        out = out.reshape(shape)
    else:
        raise EndpointError(f"unknown map encoding {encoding!r}")
    if out.shape != shape:
        raise EndpointError(f"map shape {out.shape} differs from the announced {shape}")
    if not np.all(np.isfinite(out)):
        raise EndpointError("the map holds non-finite values")
    return out


@dataclass(frozen=True)
class ServedModelInfo:
    """One model served by the endpoint (from ``GET /v1/models``).

    Attributes:
        name, version: the served version. sha256: of its ``model.onnx`` (the endpoint's identity of the
            artifacts; recorded in the history). requested: the reference the service was started with
            (``name``, ``name:3``, ``name@production``). default: the endpoint's default model.
        methods: saliency methods ``/v1/explain`` offers. card: the parsed model card (``None`` when the card
            does not validate against this version of :class:`mimicry.registry.ModelCard`).
        class_names: output classes, in logit order.
    """

    name: str
    version: int
    sha256: str
    requested: str
    default: bool
    methods: tuple[str, ...]
    class_names: tuple[str, ...]
    card: ModelCard | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def architecture(self) -> str:
        return self.card.architecture if self.card is not None else "unknown"


@dataclass(frozen=True)
class ExplainRequest:
    """One ``/v1/explain`` call: a DICOM and its parameters (``target``: a class name or ``predicted``)."""

    dicom: bytes
    model: str | None
    method: str
    target: str = "predicted"
    space: str = "source"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointExplanation:
    """A decoded ``/v1/explain`` answer.

    Attributes:
        map: ``float32[H, W]`` in [0, 1]; space: ``source`` (the DICOM's grid) or ``model`` (the input grid).
        probabilities: ``float64[K]`` in ``class_names`` order. target_index / target_class: the class
            explained. model: ``{"name", "version", "sha256", "ref"}`` as the endpoint reported it.
    """

    map: np.ndarray
    space: str
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    target_index: int
    target_class: str
    method: str
    model: dict[str, Any]


@dataclass(frozen=True)
class EndpointPrediction:
    """A decoded ``/v1/predict`` answer: ``probabilities`` (``float64[K]``) in ``class_names`` order and the
    ``model`` identity the endpoint reported (``{"name", "version", "sha256", "ref"}``)."""

    probabilities: np.ndarray
    class_names: tuple[str, ...]
    model: dict[str, Any]


def _parse_explanation(body: Any) -> EndpointExplanation:
    try:
        pred = body["prediction"]
        names = tuple(str(n) for n in pred["class_names"])
        probs = np.array([float(pred["probabilities"][n]) for n in names], dtype=np.float64)
        target = body["target"]
        return EndpointExplanation(
            map=decode_map(body["map"]),
            space=str(body["map"].get("space", "source")),
            probabilities=probs,
            class_names=names,
            target_index=int(target["index"]),
            target_class=str(target["class"]),
            method=str(body["method"]),
            model=dict(body["model"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EndpointError(f"unexpected /v1/explain answer: {type(exc).__name__} {exc}") from None


def _problem(response: httpx.Response) -> EndpointRequestError:
    code, title = "http_error", response.reason_phrase or "error"
    try:
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("code", code))
            title = str(body.get("title", title))
    except ValueError:
        pass
    return EndpointRequestError(response.status_code, code, title)


class EndpointClient:
    """Synchronous, thread-safe client of a mimicry service.

    Args:
        base_url: the service root (``http://127.0.0.1:3000``).
        token: bearer token (default: ``$MIMICRY_AUDIT_ENDPOINT_TOKEN``; empty → none).
        timeout_s: per-request timeout (connect, read, write, pool).
        retries: further attempts after the first on 429/502/503/504 and transport errors.
        backoff_s: first back-off; doubles per attempt, capped at ``max_backoff_s`` (as is ``Retry-After``).
        jobs: requests in flight at once (:meth:`explain_many`).
        transport: an ``httpx`` transport (tests: ``httpx.MockTransport``).
        sleep: the sleep function (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        jobs: int = 1,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EndpointError("the endpoint must be an http(s) URL, e.g. http://127.0.0.1:3000")
        if token is None:
            token = os.environ.get(ENDPOINT_TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = public_url(base_url)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.jobs = max(1, int(jobs))
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            limits=httpx.Limits(max_connections=self.jobs, max_keepalive_connections=self.jobs),
        )
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="audit-endpoint")

    def close(self) -> None:
        self._pool.shutdown()
        self._client.close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ transport

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
        backoff = self.backoff_s * (2**attempt)
        return min(self.max_backoff_s, hinted if hinted is not None else backoff)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request with retries; returns a 2xx response.

        Raises:
            EndpointUnavailableError: unreachable, or 429/5xx-retryable through every attempt.
            EndpointRequestError: any other non-2xx answer (a problem document).
        """
        last = ""
        for attempt in range(self.retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = type(exc).__name__
            else:
                if response.status_code < 300:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise _problem(response)
                last = f"HTTP {response.status_code}"
            if attempt < self.retries:
                delay = self._delay(attempt, response)
                log.info("endpoint %s %s: %s; retrying in %.2f s", method, path, last, delay)
                self._sleep(delay)
        raise EndpointUnavailableError(
            f"{self.url}{path} unavailable after {self.retries + 1} attempt(s): {last}"
        )

    # ------------------------------------------------------------------------------------ API

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (one attempt, no retry)."""
        try:
            return self._client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[ServedModelInfo]:
        """The served models (``GET /v1/models``)."""
        body = self.request("GET", "/v1/models").json()
        out = []
        try:
            for m in body["models"]:
                card: ModelCard | None
                try:
                    card = ModelCard.model_validate(m["card"])
                except ValidationError:
                    card = None
                names = tuple(m["card"]["class_names"])
                out.append(
                    ServedModelInfo(
                        name=str(m["name"]),
                        version=int(m["version"]),
                        sha256=str(m["sha256"]),
                        requested=str(m.get("requested", m["name"])),
                        default=bool(m.get("default", False)),
                        methods=tuple(m.get("methods", ())),
                        class_names=names,
                        card=card,
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise EndpointError(f"unexpected /v1/models answer: {type(exc).__name__} {exc}") from None
        return out

    def explain(self, req: ExplainRequest) -> EndpointExplanation:
        """``POST /v1/explain`` with an ``application/dicom`` body; the map as PNG-16."""
        params: dict[str, str] = {
            "method": req.method,
            "target": req.target,
            "format": "json",
            "encoding": "png16",
            "space": req.space,
        }
        if req.model:
            params["model"] = req.model
        if req.params:
            params["params"] = json.dumps(req.params, sort_keys=True)
        response = self.request(
            "POST",
            "/v1/explain",
            params=params,
            content=req.dicom,
            headers={"Content-Type": "application/dicom"},
        )
        try:
            body = response.json()
        except ValueError:
            raise EndpointError("/v1/explain did not answer JSON") from None
        return _parse_explanation(body)

    def predict(self, dicom: bytes, model: str | None = None) -> EndpointPrediction:
        """``POST /v1/predict`` with an ``application/dicom`` body."""
        response = self.request(
            "POST",
            "/v1/predict",
            params={"model": model} if model else {},
            content=dicom,
            headers={"Content-Type": "application/dicom"},
        )
        try:
            body = response.json()
            names = tuple(str(n) for n in body["class_names"])
            probs = np.array([float(body["probabilities"][n]) for n in names], dtype=np.float64)
            return EndpointPrediction(probabilities=probs, class_names=names, model=dict(body["model"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EndpointError(f"unexpected /v1/predict answer: {type(exc).__name__}") from None

    def predict_many(
        self, dicoms: Sequence[bytes], model: str | None = None
    ) -> list[EndpointPrediction | EndpointError]:
        """:meth:`predict` for each DICOM, at most ``jobs`` in flight; answers or errors in order."""

        def one(dicom: bytes) -> EndpointPrediction | EndpointError:
            try:
                return self.predict(dicom, model)
            except EndpointError as exc:
                return exc

        return list(self._pool.map(one, dicoms))

    def explain_many(self, requests: Sequence[ExplainRequest]) -> list[EndpointExplanation | EndpointError]:
        """Run ``requests`` with at most ``jobs`` in flight; each answer, or the :class:`EndpointError` it
        raised, in request order."""

        def one(req: ExplainRequest) -> EndpointExplanation | EndpointError:
            try:
                return self.explain(req)
            except EndpointError as exc:
                return exc

        return list(self._pool.map(one, requests))


def select_served(served: Sequence[ServedModelInfo], specs: Sequence[str]) -> list[ServedModelInfo]:
    """The served models matching ``specs`` (``all``, ``NAME``, ``NAME:VERSION``, ``NAME:all``, or the exact
    reference the service was started with, e.g. ``NAME@production``).

    Raises:
        EndpointError: a spec matches no served model.
    """
    out: list[ServedModelInfo] = []
    for spec in specs:
        if spec == "all":
            hits = list(served)
        elif spec.endswith(":all"):
            hits = [s for s in served if s.name == spec[: -len(":all")]]
        else:
            hits = [s for s in served if spec in (s.name, s.ref, s.requested)]
            if not hits and "@" in spec:
                hits = [s for s in served if s.name == spec.split("@", 1)[0]]
        if not hits:
            offered = ", ".join(s.ref for s in served) or "none"
            raise EndpointError(f"the endpoint serves no model matching {spec!r} (served: {offered})")
        out.extend(hits)
    seen: set[str] = set()
    return [s for s in out if not (s.ref in seen or seen.add(s.ref))]  # type: ignore[func-returns-value]
