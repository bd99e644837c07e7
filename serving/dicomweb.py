"""DICOMweb STOW-RS (PS3.18 §10.5) on ``POST /dicomweb/studies``, with predictions attached.

**Request.** ``Content-Type: multipart/related; type="application/dicom"; boundary=...`` (PS3.18 §8.6.1.2),
one DICOM Part 10 instance per part (each part's own ``Content-Type`` must be ``application/dicom`` when
present). Split on the RFC 2046 §5.1.1 delimiters, byte-exact; part headers parsed with :mod:`email`.

**Response** (``application/dicom+json``, PS3.18 §10.5.3, Table 10.5.3-1), a DICOM JSON dataset with

* ``00081199`` Referenced SOP Sequence — instances that were accepted (and predicted), each with
  ``00081150`` Referenced SOP Class UID and ``00081155`` Referenced SOP Instance UID;
* ``00081198`` Failed SOP Sequence — refused instances with the same two attributes (when readable) and
  ``00081197`` Failure Reason: ``0xC000`` (49152, cannot understand: malformed), ``0x0122`` (290, SOP class /
  content not supported: the 422 codes), ``0xA700`` (42752, out of resources: too large);

and one extension member that is not a DICOM tag, ``"mimicry"``: ``{"predictions": [...]}`` with, for every
part in request order, ``{"index", "status": "stored"|"failed", "prediction" | "problem"}`` (prediction as
``/v1/predict`` returns it; problem as RFC 9457). Nothing is stored: the service is stateless, "stored" means
"accepted and predicted".

HTTP status: 200 when every instance was accepted, 202 when some failed, 409 when all failed (PS3.18
§10.5.3.1 lists 409 Conflict for "none of the instances were stored").
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import io
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mimicry.dicom import DicomIngestError
from serving import problems

__all__ = ["DicomPart", "MultipartError", "failure_reason", "parse_multipart_related", "stow_response"]

STOW_MEDIA_TYPE = "application/dicom+json"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


class MultipartError(ValueError):
    """The multipart/related body is malformed (answered 400)."""


@dataclass(frozen=True)
class DicomPart:
    """One body part: its declared media type and bytes."""

    content_type: str
    data: bytes


def _boundary_and_type(content_type: str) -> tuple[str, str]:
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    if msg.get_content_type() != "multipart/related":
        raise MultipartError("The body must be multipart/related.")
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MultipartError("The multipart/related Content-Type has no boundary.")
    declared = msg.get_param("type")
    return boundary, (declared if isinstance(declared, str) else "application/dicom").lower()


def parse_multipart_related(body: bytes, content_type: str) -> list[DicomPart]:
    """Split a ``multipart/related`` body (RFC 2387 / RFC 2046 §5.1.1) into its parts, byte-exact.

    The Content-Type parameters are parsed with :class:`email.message.Message`; the body is split on the
    delimiter ``CRLF--boundary`` (binary parts are never re-encoded).

    Raises:
        MultipartError: not multipart/related, no boundary, a ``type`` other than ``application/dicom``,
            a part whose media type is not ``application/dicom``, or no closing delimiter.
    """
    boundary, declared = _boundary_and_type(content_type)
    if declared != "application/dicom":
        raise MultipartError('Only multipart/related; type="application/dicom" is accepted.')
    delim = b"--" + boundary.encode("latin-1")
    # the first delimiter may start the body (no preamble) or follow a preamble and CRLF
    body = b"\r\n" + body
    sep = b"\r\n" + delim
    chunks = body.split(sep)
    if len(chunks) < 2:
        raise MultipartError("The multipart body has no boundary delimiter.")
    parts: list[DicomPart] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        head, blank, data = chunk.partition(b"\r\n\r\n")
        if not blank:
            raise MultipartError("A body part has no header/body separator.")
        headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(
            head.lstrip(b" \t\r\n") + b"\r\n\r\n"
        )
        ctype = headers.get_content_type() if headers.get("Content-Type") else "application/dicom"
        if ctype != "application/dicom":
            raise MultipartError("Every part must be application/dicom.")
        parts.append(DicomPart(ctype, data))
    if not closed:
        raise MultipartError("The multipart body has no closing delimiter.")
    return parts


def failure_reason(problem: problems.Problem) -> int:
    """PS3.4 / PS3.18 Failure Reason (0008,1197) for a refusal."""
    if problem.status == 413:
        return 0xA700
    if problem.status == 422:
        return 0x0122
    return 0xC000


def _sop_uids(data: bytes) -> dict[str, Any]:
    """Referenced SOP Class/Instance UID attributes of a part, when its header is readable."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        out: dict[str, Any] = {}
        if "SOPClassUID" in ds:
            out[_SOP_CLASS] = {"vr": "UI", "Value": [str(ds.SOPClassUID)]}
        if "SOPInstanceUID" in ds:
            out[_SOP_INSTANCE] = {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}
        return out
    except Exception:
        return {}


async def stow_response(runtime: Any, request: Request, predict_one: Any) -> Response:
    """Handle one STOW-RS request (see the module docstring)."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "multipart/related":
        raise problems.unsupported_media_type(
            ctype.split(";")[0].strip() or "(none)", ['multipart/related; type="application/dicom"']
        )
    body = await request.body()
    try:
        parts = parse_multipart_related(body, ctype)
    except MultipartError as exc:
        raise problems.invalid_parameter(str(exc)) from None
    if not parts:
        raise problems.missing_dicom("The multipart/related body has no parts.")
    model = runtime.model(request.query_params.get("model"))
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        uids = _sop_uids(part.data)
        try:
            if not part.data:
                raise problems.missing_dicom("An empty part.")
            record, _, _ = await predict_one(runtime, model, part.data, {})
        except (DicomIngestError, problems.Problem) as exc:
            problem = problems.from_ingest_error(exc) if isinstance(exc, DicomIngestError) else exc
            runtime.metrics.input_rejected_total.labels(reason=problem.code).inc()
            failed.append({**uids, _FAILURE_REASON: {"vr": "US", "Value": [failure_reason(problem)]}})
            predictions.append({"index": i, "status": "failed", "problem": problem.to_dict()})
            continue
        referenced.append(uids)
        predictions.append({"index": i, "status": "stored", "prediction": record})
    out: dict[str, Any] = {}
    if failed:
        out[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        out[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    out["mimicry"] = {"predictions": predictions}
    status = 200 if not failed else (202 if referenced else 409)
    return JSONResponse(out, status_code=status, media_type=STOW_MEDIA_TYPE)
