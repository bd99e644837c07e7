"""The HTTP surface of the service: FastAPI apps mounted into the BentoML service with ``@bentoml.asgi_app``.

Routes of :func:`create_app` (docs/serving.md has the full reference):

* ``POST /v1/predict`` — one DICOM → :class:`~serving.schemas.Prediction`;
* ``POST /v1/explain`` — one DICOM + ``method``/``target``/``format`` → saliency (json, png, overlay, or
  dicom: a Secondary Capture of the overlay placed by :func:`serving.results.results_policy`,
  :mod:`serving.secondary_capture`);
* ``GET /v1/models`` — the served models' cards and the saliency methods each can run;
* ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` — STOW-RS (:mod:`serving.dicomweb`); with
  a push destination every accepted instance's result objects are spooled (:mod:`serving.push`);
* ``GET /metrics`` — Prometheus text (:mod:`serving.metrics`);
* any other path — a 404 problem (``not_found``).

:func:`create_health_app` holds ``GET /readyz`` with its JSON details (BentoML's own ``/readyz`` route answers
first in the service; :class:`serving.service.EdgeMiddleware` hands ``GET /readyz`` to this app).

**Accepted bodies** for a DICOM: ``application/dicom`` (PS3.18 media type), ``application/octet-stream``
(what ``curl --data-binary`` and many scripts send), ``multipart/form-data`` with the file in the field
``file`` (other fields are parameters), or ``multipart/related`` (its first part). Parameters may also be
query parameters; form fields win. Bodies are read as a stream against ``max_request_bytes``
(:func:`dicom_body`, a dependency): a declared ``Content-Length`` over the limit is refused before a byte is
read, a chunked body as soon as it passes the limit.

**Admission control** (:class:`serving.runtime.Admission`): :func:`dicom_body` takes a place for the request
*before* reading its body and holds it until the route returns (503 ``overloaded`` with ``Retry-After`` when
every place of the worker is taken); decode + preprocessing run under the worker's decode slots
(``max_concurrent_decodes``). ``/v1/predict`` decodes a JPEG 2000 film at a reduced resolution level
(:func:`predict_only`, ``min_side`` = :func:`serving.pipeline.decode_side`); ``/v1/explain`` decodes in full,
its maps are on the radiograph's native grid.

Every failure is an ``application/problem+json`` answer (:mod:`serving.problems`): the route class
:class:`ProblemRoute` maps every exception a route raises (and request validation errors) to a problem, so bad
input is always 4xx and leaves the service ready. Log records name error codes and exception types only,
never request content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.message
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from mimicry.dicom import DicomIngestError
from mimicry.dicom.results import ResultsError
from mimicry.indicators import border_mass, map_entropy
from mimicry.saliency import SaliencyError
from serving import dicomweb, pipeline, problems, render, results
from serving.auth import token_matches
from serving.backends.protocol import BackendError, BackendUnavailableError
from serving.metrics import metrics_response
from serving.push import QueueFull, shared_queue
from serving.runtime import OverloadedError, Runtime, active_runtime
from serving.schemas import Explanation, ModelList, Prediction, Readiness, StowWithPredictions
from serving.secondary_capture import secondary_capture

__all__ = ["DICOM_MEDIA_TYPES", "ProblemRoute", "create_app", "create_health_app"]

logger = logging.getLogger(__name__)

DICOM_MEDIA_TYPES = ["application/dicom", "application/octet-stream", "multipart/form-data"]
FORMATS = ("json", "png", "overlay", "dicom")
ENCODINGS = ("png16", "float16")
SPACES = ("source", "model")
PROBLEM = problems.PROBLEM_MEDIA_TYPE
_BINARY = {"type": "string", "format": "binary"}
_MAX_FORM_FIELDS = 32


# ------------------------------------------------------------------------------------------ errors


def _problem_for(exc: BaseException, rt: Runtime | None) -> problems.Problem:
    retry = rt.settings.retry_after_s if rt is not None else 5
    if isinstance(exc, problems.Problem):
        return exc
    if isinstance(exc, DicomIngestError):
        return problems.from_ingest_error(exc)
    if isinstance(exc, RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in exc.errors()) or "request"
        return problems.invalid_parameter(f"Invalid parameter: {where}.")
    if isinstance(exc, dicomweb.MultipartError):
        return problems.invalid_parameter(str(exc))
    if isinstance(exc, OverloadedError):
        return problems.overloaded(retry, exc.detail)
    if isinstance(exc, BackendUnavailableError):
        return problems.backend_unavailable(retry)
    if isinstance(exc, pipeline.TargetError):
        return problems.invalid_parameter(str(exc))
    if isinstance(exc, SaliencyError):
        return problems.Problem(
            422, "invalid_explanation_request", "The explanation cannot be computed", str(exc)
        )
    if isinstance(exc, BackendError):
        logger.error("backend error: %s", type(exc).__name__)
        return problems.backend_unavailable(retry, "The inference backend failed.")
    logger.exception("internal error (%s)", type(exc).__name__)
    return problems.internal_error()


class ProblemRoute(APIRoute):
    """An ``APIRoute`` whose handler answers every exception as an RFC 9457 problem (FastAPI's documented
    custom route class hook), counting 4xx refusals in ``mimicry_input_rejected_total``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def problem_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                rt = active_runtime()
                problem = _problem_for(exc, rt)
                if 400 <= problem.status < 500 and rt is not None and problem.code != "unauthorized":
                    rt.metrics.input_rejected_total.labels(reason=problem.code).inc()
                return problem.to_response()

        return problem_handler


#: Paths BentoML routes *after* the mounted apps (so a catch-all here must leave them alone).
_BENTOML_LATE_PATHS = frozenset({"/", "/docs.json"})
_BENTOML_LATE_PREFIXES = ("/static_content/", "/assets/")


class _NotFoundRoute(BaseRoute):
    """Every path no other route serves: a 404 problem. BentoML's ``PassiveMount`` hands a request to a
    mounted app only when one of its routes matches, so the catch-all is a route; it leaves alone the paths
    BentoML itself routes after the mounted apps (its index page, ``/docs.json`` and static assets). A path
    that a route serves with other methods is a 405 problem (with ``Allow``)."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.routes = routes

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in _BENTOML_LATE_PATHS or path.startswith(_BENTOML_LATE_PREFIXES):
            return Match.NONE, {}
        return Match.FULL, {}

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        allowed: set[str] = set()
        for route in self.routes:
            if route is not self and isinstance(route, APIRoute) and route.matches(scope)[0] == Match.PARTIAL:
                allowed |= route.methods or set()
        problem = problems.not_found() if not allowed else problems.method_not_allowed(sorted(allowed))
        await problem.to_response()(scope, receive, send)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Routing errors (no route: 404, wrong method: 405) as problems."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    if status == 405:
        return problems.method_not_allowed([]).to_response()
    if status == 404:
        return problems.not_found().to_response()
    return problems.internal_error().to_response()


# ------------------------------------------------------------------------------------------ dependencies


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="Required on every route but health, metrics and /docs.json when MIMICRY_SERVE_API_TOKEN "
    "is set.",
)


def runtime() -> Runtime:
    """The ready runtime of this worker (503 problem while loading or while a backend is unreachable)."""
    rt = active_runtime()
    if rt is None or not rt.loaded:
        raise problems.not_ready(5 if rt is None else rt.settings.retry_after_s)
    if not rt.is_ready():  # loaded, but a backend (Triton) does not answer
        raise problems.backend_unavailable(rt.settings.retry_after_s)
    return rt


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> None:
    """RFC 6750 bearer token when one is configured (constant-time comparison); 401 problem otherwise."""
    rt = active_runtime()
    token = rt.settings.api_token.get_secret_value() if rt and rt.settings.api_token else None
    if token and not token_matches(request.headers.get("authorization"), token):
        raise problems.unauthorized()


def _limit(rt: Runtime) -> int:
    return int(rt.settings.max_request_bytes)


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise problems.invalid_parameter("Content-Length is not an integer.") from None
    if length > limit:
        raise problems.request_too_large(limit)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, read as a stream; a 413 problem as soon as it passes ``limit``."""
    _check_declared_length(request, limit)
    buf = bytearray()
    async for chunk in request.stream():
        buf.extend(chunk)
        if len(buf) > limit:
            raise problems.request_too_large(limit)
    return bytes(buf)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _header_param(value: str, header: str, param: str) -> str | None:
    """A parameter of a MIME header value (RFC 2045 / 2183 syntax, parsed by :mod:`email`)."""
    msg = email.message.Message()
    msg[header] = value
    got = msg.get_param(param, header=header)
    if isinstance(got, tuple):  # RFC 2231 encoded
        got = email.utils.collapse_rfc2231_value(got)
    return got if isinstance(got, str) else None


async def _read_form(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """``multipart/form-data``: the ``file`` field (else the first file) and the text fields, streamed through
    python-multipart under the request limit."""
    _check_declared_length(request, limit)
    boundary = _header_param(request.headers.get("content-type", ""), "content-type", "boundary")
    if not boundary:
        raise problems.invalid_parameter("The multipart/form-data body could not be parsed.")
    fields: list[tuple[str, bool, bytearray]] = []  # (name, is_file, data)
    state: dict[str, Any] = {"field": bytearray(), "value": bytearray(), "name": "", "file": False}
    total = 0

    def header_end() -> None:
        if bytes(state["field"]).strip().lower() == b"content-disposition":
            value = bytes(state["value"]).decode("utf-8", "replace")
            state["name"] = _header_param(value, "content-disposition", "name") or ""
            state["file"] = _header_param(value, "content-disposition", "filename") is not None
        state["field"], state["value"] = bytearray(), bytearray()

    def part_begin() -> None:
        state["name"], state["file"] = "", False

    def headers_finished() -> None:
        if len(fields) >= _MAX_FORM_FIELDS:
            raise problems.invalid_parameter("Too many multipart/form-data fields.")
        fields.append((state["name"], state["file"], bytearray()))

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": lambda d, s, e: state["field"].extend(d[s:e]),
        "on_header_value": lambda d, s, e: state["value"].extend(d[s:e]),
        "on_header_end": header_end,
        "on_headers_finished": headers_finished,
        "on_part_data": lambda d, s, e: fields[-1][2].extend(d[s:e]),
    }
    parser = MultipartParser(boundary.encode("latin-1"), callbacks)  # type: ignore[arg-type]
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise problems.request_too_large(limit)
        try:
            parser.write(chunk)
        except MultipartParseError:
            raise problems.invalid_parameter("The multipart/form-data body could not be parsed.") from None
    params: dict[str, str] = {}
    data = b""
    files = [(n, bytes(v)) for n, is_file, v in fields if is_file]
    for name, is_file, value in fields:
        if not is_file:
            params[name] = value.decode("utf-8", "replace")
    by_name = dict(files)
    if "file" in by_name:
        data = by_name["file"]
    elif files:
        data = files[0][1]
    return data, params


async def read_dicom_request(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """The DICOM bytes of a request and its parameters (query, overridden by form fields).

    Raises:
        Problem: 415 for another media type, 400 when no DICOM is present, 413 over ``limit``.
    """
    params: dict[str, str] = dict(request.query_params)
    media = _media_type(request)
    if media in ("application/dicom", "application/octet-stream"):
        data = await _read_limited(request, limit)
    elif media == "multipart/form-data":
        data, form = await _read_form(request, limit)
        params.update(form)
    elif media == "multipart/related":
        _check_declared_length(request, limit)
        parser = dicomweb.StowParts(dicomweb.request_type(request.headers.get("content-type", "")), limit)
        first: bytes | problems.Problem | None = None
        async for chunk in request.stream():
            parser.feed(chunk)
            taken = parser.take()
            if first is None and taken:
                first = taken[0]
        if isinstance(first, problems.Problem):
            raise first
        data = first or b""
    else:
        raise problems.unsupported_media_type(media or "(none)", DICOM_MEDIA_TYPES)
    if not data:
        raise problems.missing_dicom()
    return data, params


@contextlib.asynccontextmanager
async def admitted_dicom(request: Request, rt: Runtime) -> AsyncIterator[tuple[bytes, dict[str, str]]]:
    """Admission (:meth:`serving.runtime.Admission.admit`, before a byte of the body is read), then the
    request's DICOM and parameters under the request size limit; the place is held until the block exits,
    then freed heap is handed back to the OS after a large body (:meth:`Runtime.after_large_request`).

    Raises:
        OverloadedError: every place of this worker is taken (a 503 ``overloaded`` problem).
    """
    size = 0
    async with rt.admission.admit():
        data, params = await read_dicom_request(request, _limit(rt))
        size = len(data)
        try:
            yield data, params
        finally:
            del data
    rt.after_large_request(size)


async def dicom_body(
    request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> AsyncIterator[tuple[bytes, dict[str, str]]]:
    """Dependency: :func:`admitted_dicom` for the duration of the route function (``scope="function"``)."""
    async with admitted_dicom(request, rt) as body:
        yield body


RuntimeDep = Annotated[Runtime, Depends(runtime)]
DicomDep = Annotated[tuple[bytes, dict[str, str]], Depends(dicom_body, scope="function")]


# ------------------------------------------------------------------------------------------ OpenAPI pieces


def _problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if retry_after:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return out


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem(
        "Malformed request or DICOM (`missing_dicom`, `not_dicom`, `truncated`, `unreadable`, "
        "`invalid_geometry`, `invalid_parameter`)."
    ),
    401: _problem("Bearer token missing or wrong (`unauthorized`; only when a token is configured)."),
    404: _problem("Model not served (`model_not_found`)."),
    413: _problem(
        "Body over `max_request_bytes` (`request_too_large`) or image too large (`image_too_large`)."
    ),
    415: _problem("Another Content-Type (`unsupported_media_type`)."),
    422: _problem(
        "DICOM content not served (`unsupported_modality`, `no_pixel_data`, `multi_frame`, `colour_image`, "
        "`unsupported_transfer_syntax`)."
    ),
    503: _problem("Not ready, backend unreachable or overloaded.", retry_after=True),
}


def _dicom_body_doc(form_fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": "One DICOM Part 10 instance (PS3.10), as the body or the multipart field `file`.",
            "content": {
                "application/dicom": {"schema": _BINARY},
                "application/octet-stream": {"schema": _BINARY},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": dict(_BINARY), **form_fields},
                    },
                    "encoding": {"file": {"contentType": "application/dicom, application/octet-stream"}},
                },
            },
        }
    }


_STR = {"type": "string"}
_PREDICT_FIELDS = {"model": _STR}
_EXPLAIN_FIELDS = {
    "model": _STR,
    "method": _STR,
    "target": _STR,
    "format": {"type": "string", "enum": list(FORMATS)},
    "encoding": {"type": "string", "enum": list(ENCODINGS)},
    "space": {"type": "string", "enum": list(SPACES)},
    "params": _STR,
}
ModelQuery = Annotated[
    str | None, Query(description="Served model: NAME, NAME:VERSION or the configured reference.")
]
Include = Annotated[
    Literal["predictions"] | None,
    Query(description="`predictions`: answer application/json with the predictions (not standard STOW)."),
]


# ------------------------------------------------------------------------------------------ handlers


async def _ingest_and_prepare(
    rt: Runtime,
    model: pipeline.ServedModel,
    data: bytes,
    timings: dict[str, float],
    *,
    reduced: bool = False,
) -> pipeline.PreparedInput:
    min_side = pipeline.decode_side(model.card) if reduced else None
    async with rt.admission.decoding():  # the worker's decode slots: full-size pixel arrays exist only here
        t0 = time.perf_counter()
        image = await anyio.to_thread.run_sync(
            lambda: pipeline.ingest(data, rt.settings.ingest, min_side=min_side)
        )
        t1 = time.perf_counter()
        prepared = await anyio.to_thread.run_sync(pipeline.prepare, image, model.card)
        del image
    timings["ingest_ms"] = 1000 * (t1 - t0)
    timings["preprocess_ms"] = 1000 * (time.perf_counter() - t1)
    rt.metrics.decodes_total.labels(level=str(prepared.image.level)).inc()
    return prepared


async def predict_one(
    rt: Runtime,
    model: pipeline.ServedModel,
    data: bytes,
    timings: dict[str, float],
    *,
    reduced: bool = False,
) -> tuple[dict[str, Any], pipeline.PreparedInput, Any]:
    """Ingest → prepare → batched inference → prediction record (shared by predict, explain and STOW).

    ``reduced``: only the prediction is needed, so a JPEG 2000 film may be decoded at a reduced resolution
    level (``min_side`` = :func:`serving.pipeline.decode_side`); ``prepared.image`` is then *not* on the
    radiograph's native grid. Default: the full decode (explanations map back to the native grid).
    """
    prepared = await _ingest_and_prepare(rt, model, data, timings, reduced=reduced)
    t0 = time.perf_counter()
    out = await rt.infer(model, prepared.x)
    timings["inference_ms"] = 1000 * (time.perf_counter() - t0)
    record = pipeline.prediction_record(model, out, prepared, rt.settings)
    rt.metrics.predictions_total.labels(model=model.name, **{"class": record["predicted_class"]}).inc()
    if record["uncertainty"]["abstain"]:
        rt.metrics.abstentions_total.labels(model=model.name).inc()
    if (record["uncertainty"]["ood"] or {}).get("ood"):
        rt.metrics.ood_total.labels(model=model.name).inc()
    return record, prepared, out


async def predict_only(
    rt: Runtime, model: pipeline.ServedModel, data: bytes, timings: dict[str, float]
) -> tuple[dict[str, Any], pipeline.PreparedInput, Any]:
    """:func:`predict_one` with the reduced decode: for callers that need only the prediction record
    (``/v1/predict``; STOW-RS when it returns predictions only)."""
    return await predict_one(rt, model, data, timings, reduced=True)


def _choice(params: dict[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = params.get(key, default) or default
    if value not in allowed:
        raise problems.invalid_parameter(f"{key} must be one of: {', '.join(allowed)}.")
    return value


_results_limiter_of: list[tuple[Any, anyio.CapacityLimiter]] = []  # (event loop, its limiter): one entry


def _results_limiter(size: int) -> anyio.CapacityLimiter:
    """Threads building result objects in this worker's event loop (each holds a full-size saliency map and
    the objects): at most ``dimse.max_concurrent`` at once, whatever the number of STOW-RS requests."""
    loop = asyncio.get_running_loop()
    if (
        not _results_limiter_of
        or _results_limiter_of[0][0] is not loop
        or _results_limiter_of[0][1].total_tokens != size
    ):
        _results_limiter_of[:] = [(loop, anyio.CapacityLimiter(size))]
    return _results_limiter_of[0][1]


async def _stow(
    rt: Runtime, request: Request, study: str | None, model: str | None, include: str | None
) -> Any:
    """Both STOW-RS routes: the body streamed instance by instance, results pushed when configured."""
    after, headers = _stow_results(rt)
    return await dicomweb.stow_response(
        rt,
        request,
        predict_one,
        study=study,
        include_predictions=include == "predictions",
        model_ref=model,
        after=after,
        headers=headers,
    )


def _stow_results(rt: Runtime) -> tuple[dicomweb.AfterPredict | None, dict[str, str] | None]:
    """With a push destination (``push.kind`` not ``none``): the STOW-RS hook that builds every accepted
    instance's result objects (as the DICOM listener does: ``dimse.method``, ``dimse.segmentation_threshold``,
    ``dimse.secondary_capture``; at most ``dimse.max_concurrent`` at once) and spools them, and the answer's
    headers it keeps up to date."""
    settings = rt.settings
    queue = shared_queue(settings.push)
    if queue is None:
        return None, None
    cfg = settings.dimse
    n_objects = 3 if cfg.secondary_capture else 2
    headers = {"X-Mimicry-Results-Destination": settings.push.kind, "X-Mimicry-Results-Spooled": "0"}

    def build_and_spool(data: bytes, model: Any, record: Any, prepared: Any, out: Any) -> int:
        objects = results.results_of(
            data,
            model,
            settings,
            record,
            prepared,
            out,
            method=cfg.method,
            threshold=cfg.segmentation_threshold,
            secondary_capture=cfg.secondary_capture,
        )
        encoded = objects.part10()
        del objects
        queue.put(encoded)
        return len(encoded)

    async def after(data: bytes, model: Any, record: Any, prepared: Any, out: Any) -> None:
        if queue.room() < n_objects:
            raise dicomweb.push_spool_full(settings.retry_after_s)
        try:
            limiter = _results_limiter(cfg.max_concurrent)
            spooled = await anyio.to_thread.run_sync(
                build_and_spool, data, model, record, prepared, out, limiter=limiter
            )
        except QueueFull:
            raise dicomweb.push_spool_full(settings.retry_after_s) from None
        except ResultsError:
            raise problems.Problem(
                422,
                "results_not_built",
                "No result objects for this instance",
                "The instance lacks a UID the result objects must reference.",
            ) from None
        except Exception as exc:  # the instance fails (0110), the request and the service go on
            logger.error("result objects not built (%s)", type(exc).__name__)
            raise problems.internal_error() from None
        headers["X-Mimicry-Results-Spooled"] = str(int(headers["X-Mimicry-Results-Spooled"]) + spooled)

    return after, headers


def create_app() -> FastAPI:
    """The FastAPI app mounted at ``/`` into the BentoML service (the runtime is looked up per request with
    :func:`serving.runtime.active_runtime`)."""
    app = FastAPI(
        title="mimicry",
        version="1",
        openapi_url=None,  # BentoML serves the merged document at /docs.json
        docs_url=None,
        redoc_url=None,
        exception_handlers={StarletteHTTPException: _http_exception},
    )
    app.router.route_class = ProblemRoute
    secured = [Depends(require_token)]

    @app.post(
        "/v1/predict",
        tags=["mimicry"],
        operation_id="mimicry__predict",
        summary="Predict one DICOM",
        description="Per-class probabilities in card order, predicted class, uncertainty (predictive "
        "entropy, ensemble disagreement, abstain, out-of-distribution), provenance, safe metadata.",
        response_model=Prediction,
        response_model_exclude_unset=True,
        responses={**_ERRORS, 200: {"description": "The prediction."}},
        openapi_extra=_dicom_body_doc(_PREDICT_FIELDS),
        dependencies=secured,
    )
    async def predict(rt: RuntimeDep, body: DicomDep, model: ModelQuery = None) -> Any:
        t0 = time.perf_counter()
        data, params = body
        served = rt.model(params.get("model"))
        timings: dict[str, float] = {}
        record, _, _ = await predict_only(rt, served, data, timings)
        timings["total_ms"] = 1000 * (time.perf_counter() - t0)
        record["timings_ms"] = timings
        return record

    @app.post(
        "/v1/explain",
        tags=["mimicry"],
        operation_id="mimicry__explain",
        summary="Explain one DICOM",
        description="A saliency map of `target` by `method` (default `gradcam` from the ONNX `cam` output) "
        "as JSON, a PNG heatmap, an overlay, or a DICOM Secondary Capture (in the source's study by "
        "default).",
        response_model=Explanation,
        response_model_exclude_unset=True,
        responses={
            **_ERRORS,
            200: {
                "description": "`format=json`: the map and the prediction; `png`/`overlay`: image/png; "
                "`dicom`: a Secondary Capture (application/dicom).",
                "content": {"image/png": {"schema": _BINARY}, "application/dicom": {"schema": _BINARY}},
            },
            422: _problem("DICOM content not served, or `unknown_method` / `invalid_explanation_request`."),
        },
        openapi_extra=_dicom_body_doc(_EXPLAIN_FIELDS),
        dependencies=secured,
    )
    async def explain(
        rt: RuntimeDep,
        body: DicomDep,
        response: Response,
        model: ModelQuery = None,
        method: Annotated[str | None, Query(description="Saliency method (GET /v1/models).")] = None,
        target: Annotated[str | None, Query(description="`predicted`, a class name or index.")] = None,
        format: Literal["json", "png", "overlay", "dicom"] = "json",
        encoding: Literal["png16", "float16"] = "png16",
        space: Literal["source", "model"] = "source",
        params: Annotated[str | None, Query(description="Method parameters as a JSON object.")] = None,
    ) -> Any:
        t0 = time.perf_counter()
        data, given = body
        served = rt.model(given.get("model"))
        chosen = given.get("method") or pipeline.DEFAULT_METHOD
        offered = rt.methods_for(served)
        if chosen not in offered:
            raise problems.unknown_method(chosen, offered)
        fmt = _choice(given, "format", "json", FORMATS)
        enc = _choice(given, "encoding", "png16", ENCODINGS)
        grid = _choice(given, "space", "source", SPACES)
        try:
            method_params = pipeline.parse_params(given.get("params"))
        except ValueError as exc:
            raise problems.invalid_parameter(str(exc)) from None
        timings: dict[str, float] = {}
        record, prepared, out = await predict_one(rt, served, data, timings)
        index = pipeline.resolve_target(served.card, given.get("target"), record["predicted_index"])
        t1 = time.perf_counter()
        limiter = None if chosen in pipeline.ONNX_METHODS else rt.twin_limiter
        smap = await anyio.to_thread.run_sync(
            lambda: pipeline.explain_map(served, prepared, out, index, chosen, method_params),
            limiter=limiter,
        )
        saliency_s = time.perf_counter() - t1
        rt.metrics.saliency_seconds.labels(model=served.name, method=chosen).observe(saliency_s)
        timings["saliency_ms"] = 1000 * saliency_s
        if grid == "source" or fmt in ("overlay", "dicom"):
            smap = await anyio.to_thread.run_sync(pipeline.to_source_grid, smap, prepared.box)
        indicators = {"border_mass": border_mass(smap), "entropy": map_entropy(smap)}
        rt.metrics.border_mass.labels(model=served.name, method=chosen).observe(indicators["border_mass"])
        rt.metrics.entropy.labels(model=served.name, method=chosen).observe(indicators["entropy"])
        target_name = served.card.class_names[index]
        headers = {
            "X-Mimicry-Model": served.card.ref,
            "X-Mimicry-Method": chosen,
            "X-Mimicry-Target": target_name,
        }
        if fmt == "png":
            return Response(render.heatmap_png(smap), media_type="image/png", headers=headers)
        if fmt == "overlay":
            png = render.overlay_png(prepared.image.pixels, smap)
            return Response(png, media_type="image/png", headers=headers)
        if fmt == "dicom":
            description = (
                f"{chosen} saliency of class {target_name} by {served.card.ref} (mimicry; research use)"
            )
            rgb = render.overlay_rgb(prepared.image.pixels, smap)
            policy = results.results_policy(rt.settings)  # the source's study by default, keyed UIDs
            algorithm = results.algorithm_of(served, chosen)
            sc = await anyio.to_thread.run_sync(
                lambda: secondary_capture(
                    data, rgb, description=description, policy=policy, algorithm=algorithm, target=target_name
                )
            )
            return Response(sc, media_type="application/dicom", headers=headers)
        if enc == "png16":
            payload: dict[str, Any] = {
                "encoding": "png16",
                "data": base64.b64encode(render.encode_png16(smap)).decode("ascii"),
                "scale": 65535,
            }
        else:
            payload = {"encoding": "float16", "dtype": "<f2", "data": render.encode_float16(smap)}
        timings["total_ms"] = 1000 * (time.perf_counter() - t0)
        response.headers.update(headers)
        return {
            "model": record["model"],
            "method": chosen,
            "target": {"class": target_name, "index": index},
            "map": {**payload, "shape": list(smap.shape), "space": grid},
            "indicators": indicators,
            "prediction": {k: v for k, v in record.items() if k != "model"},
            "timings_ms": timings,
        }

    @app.get(
        "/v1/models",
        tags=["mimicry"],
        operation_id="mimicry__models",
        summary="Served models and their cards",
        response_model=ModelList,
        response_model_exclude_unset=True,
        responses={200: {"description": "The served models."}, 401: _ERRORS[401], 503: _ERRORS[503]},
        dependencies=secured,
    )
    async def models(rt: RuntimeDep) -> Any:
        out = []
        for m in rt.models.values():
            out.append(
                {
                    "name": m.name,
                    "version": m.card.version,
                    "requested": m.requested,
                    "default": m.name == rt.default,
                    "backend": m.backend.name,
                    "provider": m.backend.provider,
                    "sha256": m.sha256,
                    "methods": rt.methods_for(m),
                    "card": m.card.model_dump(mode="json"),
                }
            )
        return {"models": out}

    stow_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "description": 'multipart/related; type="application/dicom"; one DICOM instance per part.',
            "content": {
                "multipart/related": {
                    "schema": {"type": "object", "properties": {"file": {"type": "array", "items": _BINARY}}},
                    "encoding": {"file": {"contentType": "application/dicom"}},
                }
            },
        }
    }
    dicom_json = {"type": "object", "description": "DICOM JSON dataset (PS3.18 Annex F)."}
    results_headers = {
        "X-Mimicry-Results-Destination": {
            "description": "With a push destination: its kind (`stow` or `dimse`), where every accepted "
            "instance's result objects (SR, Segmentation) go.",
            "schema": {"type": "string", "enum": ["stow", "dimse"]},
        },
        "X-Mimicry-Results-Spooled": {
            "description": "With a push destination: result objects this request spooled for it.",
            "schema": {"type": "integer"},
        },
    }
    stow_responses: dict[int | str, dict[str, Any]] = {
        **{
            code: {
                "description": text + " DICOM JSON (PS3.18 §10.5.3); with `include=predictions`: "
                "application/json `StowWithPredictions`.",
                "content": {"application/dicom+json": {"schema": dicom_json}},
                "headers": results_headers,
            }
            for code, text in (
                (200, "Every instance accepted."),
                (202, "Some instances failed."),
                (409, "Every instance failed."),
            )
        },
        400: _problem("Malformed multipart/related body (`invalid_parameter`) or no part (`missing_dicom`)."),
        401: _ERRORS[401],
        404: _ERRORS[404],
        415: _problem('Not multipart/related; type="application/dicom" (`unsupported_media_type`).'),
        503: _ERRORS[503],
    }

    @app.post(
        "/dicomweb/studies",
        tags=["mimicry", "DICOMweb"],
        operation_id="mimicry__stow",
        summary="STOW-RS (PS3.18 §10.5): store instances, get predictions",
        response_model=StowWithPredictions,
        responses=stow_responses,
        openapi_extra=stow_doc,
        dependencies=secured,
    )
    async def stow(
        request: Request, rt: RuntimeDep, model: ModelQuery = None, include: Include = None
    ) -> Any:
        return await _stow(rt, request, None, model, include)

    @app.post(
        "/dicomweb/studies/{study}",
        tags=["mimicry", "DICOMweb"],
        operation_id="mimicry__stow_study",
        summary="STOW-RS into one study: instances of another study fail (0xA900)",
        response_model=StowWithPredictions,
        responses=stow_responses,
        openapi_extra=stow_doc,
        dependencies=secured,
    )
    async def stow_study(
        request: Request, study: str, rt: RuntimeDep, model: ModelQuery = None, include: Include = None
    ) -> Any:
        return await _stow(rt, request, study, model, include)

    @app.get(
        "/metrics",
        tags=["Infrastructure"],
        operation_id="mimicry__metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={
            200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": _STR}}}
        },
    )
    async def metrics() -> Response:
        return await anyio.to_thread.run_sync(metrics_response)

    app.router.routes.append(_NotFoundRoute(app.router.routes))

    return app


def create_health_app() -> FastAPI:
    """``GET /readyz`` with its details (a separate app: BentoML's own ``/readyz`` route is matched before a
    mounted app; :class:`serving.service.EdgeMiddleware` routes ``GET /readyz`` here)."""
    app = FastAPI(title="mimicry-health", version="1", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(
        "/readyz",
        tags=["Infrastructure"],
        operation_id="mimicry__readyz",
        description="200 once every model is loaded and warmed up and every backend answers; 503 with "
        "Retry-After otherwise.",
        response_model=Readiness,
        responses={
            200: {"description": "Ready."},
            503: {
                "description": "Not ready.",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}},
            },
        },
    )
    async def readyz() -> Response:
        rt = active_runtime()
        if rt is None:
            return JSONResponse({"ready": False, "models": []}, status_code=503, headers={"Retry-After": "5"})
        details = await anyio.to_thread.run_sync(rt.readiness)
        headers = {} if details["ready"] else {"Retry-After": str(rt.settings.retry_after_s)}
        return JSONResponse(details, status_code=200 if details["ready"] else 503, headers=headers)

    return app
