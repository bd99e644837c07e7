"""The HTTP surface of the service: a Starlette app mounted into the BentoML service (``/v1``, ``/dicomweb``).

Routes (docs/serving.md has the full reference):

* ``POST /v1/predict`` — one DICOM → prediction JSON;
* ``POST /v1/explain`` — one DICOM + ``method``/``target``/``format`` → saliency (json, png, overlay, or
  dicom: a de-identified Secondary Capture of the overlay, :mod:`serving.secondary_capture`);
* ``GET /v1/models`` — the served models' cards;
* ``POST /dicomweb/studies`` — STOW-RS (see :mod:`serving.dicomweb`).

**Accepted bodies** for a DICOM: ``application/dicom`` (PS3.18 media type), ``application/octet-stream``
(what ``curl --data-binary`` and many scripts send), or ``multipart/form-data`` with the file in the field
``file`` (other fields are parameters). Parameters may also be query parameters; form fields win.

Every failure is an ``application/problem+json`` answer (:mod:`serving.problems`); bad input is always 4xx
and leaves the service ready. Log records name error codes and exception types only, never request content.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mimicry.dicom import DicomIngestError
from mimicry.indicators import border_mass, map_entropy
from mimicry.saliency import SaliencyError
from serving import dicomweb, pipeline, problems, render
from serving.auth import BodyTooLargeError
from serving.backends.protocol import BackendError, BackendUnavailableError
from serving.runtime import OverloadedError, Runtime, active_runtime
from serving.secondary_capture import secondary_capture

__all__ = ["DICOM_MEDIA_TYPES", "create_app"]

logger = logging.getLogger(__name__)

DICOM_MEDIA_TYPES = ["application/dicom", "application/octet-stream", "multipart/form-data"]
FORMATS = ("json", "png", "overlay", "dicom")
ENCODINGS = ("png16", "float16")
SPACES = ("source", "model")


def _runtime() -> Runtime:
    rt = active_runtime()
    if rt is None or not rt.loaded:
        raise problems.not_ready(5 if rt is None else rt.settings.retry_after_s)
    if not rt.is_ready():  # loaded, but a backend (Triton) does not answer
        raise problems.backend_unavailable(rt.settings.retry_after_s)
    return rt


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_dicom_request(request: Request) -> tuple[bytes, dict[str, str]]:
    """The DICOM bytes of a request and its parameters (query, overridden by form fields).

    Raises:
        Problem: 415 for another media type, 400 when no DICOM is present.
        BodyTooLargeError: the body passed the size limit while streaming.
    """
    params: dict[str, str] = dict(request.query_params)
    media = _media_type(request)
    if media in ("application/dicom", "application/octet-stream"):
        data = await request.body()
    elif media == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=32)
        except BodyTooLargeError:
            raise
        except Exception:
            raise problems.invalid_parameter("The multipart/form-data body could not be parsed.") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
            for key, value in form.multi_items():
                if isinstance(value, str):
                    params[key] = value
            data = await upload.read() if upload is not None else b""
        finally:
            await form.close()
    elif media == "multipart/related":
        body = await request.body()
        parts = dicomweb.parse_multipart_related(body, request.headers.get("content-type", ""))
        data = parts[0].data if parts else b""
    else:
        raise problems.unsupported_media_type(media or "(none)", DICOM_MEDIA_TYPES)
    if not data:
        raise problems.missing_dicom()
    return data, params


def _problem_for(exc: BaseException, rt: Runtime | None) -> problems.Problem:
    retry = rt.settings.retry_after_s if rt is not None else 5
    if isinstance(exc, problems.Problem):
        return exc
    if isinstance(exc, DicomIngestError):
        return problems.from_ingest_error(exc)
    if isinstance(exc, BodyTooLargeError):
        return problems.request_too_large(exc.limit)
    if isinstance(exc, dicomweb.MultipartError):
        return problems.invalid_parameter(str(exc))
    if isinstance(exc, OverloadedError):
        return problems.overloaded(retry)
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


def _handled(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        rt = active_runtime()
        try:
            return await handler(request)
        except Exception as exc:
            problem = _problem_for(exc, rt)
            if 400 <= problem.status < 500 and rt is not None:
                rt.metrics.input_rejected_total.labels(reason=problem.code).inc()
            return problem.to_response()

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _ingest_and_prepare(
    rt: Runtime, model: pipeline.ServedModel, data: bytes, timings: dict[str, float]
) -> pipeline.PreparedInput:
    t0 = time.perf_counter()
    image = await anyio.to_thread.run_sync(pipeline.ingest, data, rt.settings.ingest)
    t1 = time.perf_counter()
    prepared = await anyio.to_thread.run_sync(pipeline.prepare, image, model.card)
    timings["ingest_ms"] = 1000 * (t1 - t0)
    timings["preprocess_ms"] = 1000 * (time.perf_counter() - t1)
    return prepared


async def predict_one(
    rt: Runtime, model: pipeline.ServedModel, data: bytes, timings: dict[str, float]
) -> tuple[dict[str, Any], pipeline.PreparedInput, Any]:
    """Ingest → prepare → batched inference → prediction record (shared by predict, explain and STOW)."""
    prepared = await _ingest_and_prepare(rt, model, data, timings)
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


@_handled
async def predict(request: Request) -> Response:
    """POST /v1/predict."""
    rt = _runtime()
    t0 = time.perf_counter()
    data, params = await read_dicom_request(request)
    model = rt.model(params.get("model"))
    timings: dict[str, float] = {}
    record, _, _ = await predict_one(rt, model, data, timings)
    timings["total_ms"] = 1000 * (time.perf_counter() - t0)
    record["timings_ms"] = timings
    return JSONResponse(record)


def _choice(params: dict[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = params.get(key, default) or default
    if value not in allowed:
        raise problems.invalid_parameter(f"{key} must be one of: {', '.join(allowed)}.")
    return value


@_handled
async def explain(request: Request) -> Response:
    """POST /v1/explain."""
    rt = _runtime()
    t0 = time.perf_counter()
    data, params = await read_dicom_request(request)
    model = rt.model(params.get("model"))
    method = params.get("method") or pipeline.DEFAULT_METHOD
    offered = pipeline.offered_methods(rt.settings)
    if method not in offered:
        raise problems.unknown_method(method, offered)
    fmt = _choice(params, "format", "json", FORMATS)
    encoding = _choice(params, "encoding", "png16", ENCODINGS)
    space = _choice(params, "space", "source", SPACES)
    try:
        method_params = pipeline.parse_params(params.get("params"))
    except ValueError as exc:
        raise problems.invalid_parameter(str(exc)) from None
    timings: dict[str, float] = {}
    record, prepared, out = await predict_one(rt, model, data, timings)
    target = pipeline.resolve_target(model.card, params.get("target"), record["predicted_index"])
    t1 = time.perf_counter()
    if method in pipeline.ONNX_METHODS:
        smap = await anyio.to_thread.run_sync(
            pipeline.explain_map, model, prepared, out, target, method, method_params
        )
    else:
        smap = await anyio.to_thread.run_sync(
            pipeline.explain_map, model, prepared, out, target, method, method_params, limiter=rt.twin_limiter
        )
    saliency_s = time.perf_counter() - t1
    rt.metrics.saliency_seconds.labels(model=model.name, method=method).observe(saliency_s)
    timings["saliency_ms"] = 1000 * saliency_s
    if space == "source" or fmt in ("overlay", "dicom"):
        smap = await anyio.to_thread.run_sync(pipeline.to_source_grid, smap, prepared.box)
    indicators = {"border_mass": border_mass(smap), "entropy": map_entropy(smap)}
    rt.metrics.border_mass.labels(model=model.name, method=method).observe(indicators["border_mass"])
    rt.metrics.entropy.labels(model=model.name, method=method).observe(indicators["entropy"])
    target_name = model.card.class_names[target]
    headers = {
        "X-Mimicry-Model": model.card.ref,
        "X-Mimicry-Method": method,
        "X-Mimicry-Target": target_name,
    }
    if fmt == "png":
        return Response(render.heatmap_png(smap), media_type="image/png", headers=headers)
    if fmt == "overlay":
        png = render.overlay_png(prepared.image.pixels, smap)
        return Response(png, media_type="image/png", headers=headers)
    if fmt == "dicom":
        description = f"{method} saliency of class {target_name} by {model.card.ref} (mimicry; research use)"
        salt = rt.settings.ingest.uid_salt.get_secret_value()
        rgb = render.overlay_rgb(prepared.image.pixels, smap)
        sc = await anyio.to_thread.run_sync(
            lambda: secondary_capture(data, rgb, salt=salt, description=description)
        )
        return Response(sc, media_type="application/dicom", headers=headers)
    if encoding == "png16":
        payload = {
            "encoding": "png16",
            "data": base64.b64encode(render.encode_png16(smap)).decode("ascii"),
            "scale": 65535,
        }
    else:
        payload = {"encoding": "float16", "dtype": "<f2", "data": render.encode_float16(smap)}
    timings["total_ms"] = 1000 * (time.perf_counter() - t0)
    body = {
        "model": record["model"],
        "method": method,
        "target": {"class": target_name, "index": target},
        "map": {**payload, "shape": list(smap.shape), "space": space},
        "indicators": indicators,
        "prediction": {k: v for k, v in record.items() if k != "model"},
        "timings_ms": timings,
    }
    return JSONResponse(body, headers=headers)


@_handled
async def models(request: Request) -> Response:
    """GET /v1/models."""
    rt = _runtime()
    out = []
    for m in rt.models.values():
        card = m.card.model_dump(mode="json")
        out.append(
            {
                "name": m.name,
                "version": m.card.version,
                "requested": m.requested,
                "default": m.name == rt.default,
                "backend": m.backend.name,
                "provider": m.backend.provider,
                "sha256": m.sha256,
                "methods": pipeline.offered_methods(rt.settings),
                "card": card,
            }
        )
    return JSONResponse({"models": out})


@_handled
async def stow(request: Request) -> Response:
    """POST /dicomweb/studies (STOW-RS)."""
    rt = _runtime()
    return await dicomweb.stow_response(rt, request, predict_one)


def create_app() -> Starlette:
    """The Starlette app mounted at ``/`` into the BentoML service (routes only; the runtime is looked up per
    request with :func:`serving.runtime.active_runtime`)."""
    return Starlette(
        routes=[
            Route("/v1/predict", predict, methods=["POST"]),
            Route("/v1/explain", explain, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/dicomweb/studies", stow, methods=["POST"]),
        ]
    )
