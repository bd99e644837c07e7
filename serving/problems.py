"""RFC 9457 problem details for every error the service answers with.

Every non-2xx answer of the ``/v1`` and ``/dicomweb`` routes is ``application/problem+json``: ``type``,
``title``, ``status``, ``detail`` plus the extension member ``code`` (stable snake_case, the contract clients
branch on). DICOM ingest refusals reuse :meth:`mimicry.dicom.DicomIngestError.to_problem` (400 malformed,
413 too large, 422 unsupported content); the serving layer adds the codes below. Details never quote request
content (no PHI, no file names).

=====================  ======  =======================================================================
code                   status  meaning
=====================  ======  =======================================================================
missing_dicom          400     no DICOM in the request (empty body, no multipart ``file`` field)
invalid_parameter      400     a query/form parameter is malformed (``target``, ``format``, ``params``)
unauthorized           401     bearer token missing or wrong (``WWW-Authenticate: Bearer``)
model_not_found        404     the requested model is not served
not_found              404     no such route
method_not_allowed     405     the route does not accept this method
request_too_large      413     the request body exceeds ``max_request_bytes`` (refused while reading)
unsupported_media_type 415     the Content-Type is not one the endpoint accepts
unknown_method         422     the saliency method is not offered
unsupported_format     422     the explanation format cannot be produced for this request
backend_unavailable    503     the inference backend (e.g. Triton) cannot be reached (``Retry-After``)
overloaded             503     the adaptive batcher dropped the request after ``max_latency_ms``, or every
                               decode slot and queue place was taken (``max_concurrent_decodes``)
not_ready              503     models are still loading / warming up
request_timeout        504     the request ran longer than ``request_timeout_s``
internal_error         500     a bug: never caused by input; logged without request content
=====================  ======  =======================================================================
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from mimicry.dicom import DicomIngestError

__all__ = ["PROBLEM_MEDIA_TYPE", "PROBLEM_TYPE_BASE", "Problem", "from_ingest_error", "problem_response"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Relative type URIs (RFC 9457 §3.1.1), documented in docs/serving.md under the same paths.
PROBLEM_TYPE_BASE = "/problems/"
_INGEST_TYPE_BASE = "/problems/dicom/"


class Problem(Exception):
    """An error answered as an RFC 9457 problem (raise it anywhere in a request handler).

    Args:
        status: HTTP status.
        code: Stable snake_case code (the ``code`` extension member).
        title: Short summary of the problem type.
        detail: Occurrence-specific message; must not contain PHI or request content.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
        type_uri: ``type`` member; defaults to ``/problems/<code>``.
        extra: Further extension members.
    """

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        type_uri: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.type_uri = type_uri or f"{PROBLEM_TYPE_BASE}{code}"
        self.extra = dict(extra or {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON body."""
        return {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.extra,
        }

    def to_response(self) -> JSONResponse:
        """A response with media type ``application/problem+json``."""
        return problem_response(self.to_dict(), headers=self.headers)


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """``body`` (a problem dict with ``status``) as an ``application/problem+json`` response."""
    return JSONResponse(body, status_code=int(body["status"]), headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def from_ingest_error(exc: DicomIngestError) -> Problem:
    """A DICOM ingest refusal as a :class:`Problem` (status and code from the error class)."""
    body = exc.to_problem(_INGEST_TYPE_BASE)
    return Problem(
        int(body["status"]),
        str(body["code"]),
        str(body["title"]),
        str(body["detail"]),
        type_uri=str(body["type"]),
    )


# ---------------------------------------------------------------------------- constructors of common problems


def missing_dicom(detail: str = "The request carries no DICOM file.") -> Problem:
    return Problem(400, "missing_dicom", "No DICOM in the request", detail)


def invalid_parameter(detail: str) -> Problem:
    return Problem(400, "invalid_parameter", "A request parameter is invalid", detail)


def unauthorized(detail: str = "A valid bearer token is required.") -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="mimicry"'},
    )


def not_found() -> Problem:
    return Problem(404, "not_found", "Not found", "There is no such resource; see GET /docs.json.")


def method_not_allowed(allowed: list[str]) -> Problem:
    return Problem(
        405,
        "method_not_allowed",
        "Method not allowed",
        "This route does not accept this method.",
        headers={"Allow": ", ".join(allowed)} if allowed else None,
    )


def model_not_found(detail: str) -> Problem:
    return Problem(404, "model_not_found", "The model is not served", detail)


def request_too_large(limit: int) -> Problem:
    return Problem(
        413,
        "request_too_large",
        "The request body is too large",
        f"The request body exceeds the limit of {limit} bytes.",
        extra={"limit_bytes": limit},
    )


def unsupported_media_type(got: str, accepted: list[str]) -> Problem:
    shown = got if len(got) <= 100 and got.isprintable() else "(unprintable)"
    return Problem(
        415,
        "unsupported_media_type",
        "The media type is not supported",
        f"Content-Type {shown!r} is not accepted here; send one of: {', '.join(accepted)}.",
        headers={"Accept": ", ".join(accepted)},
    )


def unknown_method(method: str, offered: list[str]) -> Problem:
    shown = method if len(method) <= 64 and method.isprintable() else "(unprintable)"
    return Problem(
        422,
        "unknown_method",
        "The saliency method is not offered",
        f"Method {shown!r} is not offered; methods: {', '.join(offered)}.",
    )


def unsupported_format(detail: str) -> Problem:
    return Problem(422, "unsupported_format", "The explanation format cannot be produced", detail)


def backend_unavailable(retry_after_s: int, detail: str = "The inference backend is unreachable.") -> Problem:
    return Problem(
        503,
        "backend_unavailable",
        "The inference backend is unavailable",
        detail,
        headers={"Retry-After": str(retry_after_s)},
    )


def overloaded(retry_after_s: int, detail: str | None = None) -> Problem:
    return Problem(
        503,
        "overloaded",
        "The service is overloaded",
        detail or "The request waited longer than the batching latency budget.",
        headers={"Retry-After": str(retry_after_s)},
    )


def not_ready(retry_after_s: int) -> Problem:
    return Problem(
        503,
        "not_ready",
        "The service is not ready",
        "Models are loading or warming up.",
        headers={"Retry-After": str(retry_after_s)},
    )


def request_timeout(limit_s: float) -> Problem:
    return Problem(
        504,
        "request_timeout",
        "The request took too long",
        f"The request did not finish within {limit_s:g} s.",
    )


def internal_error() -> Problem:
    return Problem(
        500, "internal_error", "Internal server error", "An unexpected error occurred; see the log."
    )
