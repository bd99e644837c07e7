"""DICOMweb STOW-RS (PS3.18 §10.5) on ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``.

**Request.** ``Content-Type: multipart/related; type="application/dicom"; boundary=...`` (PS3.18 §8.6.1.2),
one DICOM Part 10 instance per part. The body is parsed **as a stream** (python-multipart's
:class:`~python_multipart.MultipartParser`): each part is predicted as soon as its closing delimiter arrives,
so at most one instance (bounded by ``max_request_bytes``) is held in memory. A ``type`` other than
``application/dicom`` (e.g. ``application/dicom+xml``, the XML metadata form we do not accept) and any other
media type are 415; a body without a boundary or without the closing delimiter is a 400 problem.

**Response** (``application/dicom+json``, PS3.18 §10.5.3 and Annex I): one DICOM JSON dataset (PS3.18 Annex F)
with exactly these top-level attributes, so that standard clients (e.g. ``dicomweb_client``) parse it:

* ``00081190`` Retrieve URL (Type 2: empty; the service stores nothing, so there is nothing to retrieve);
* ``00081199`` Referenced SOP Sequence — accepted (and predicted) instances, each item with ``00081150``
  Referenced SOP Class UID, ``00081155`` Referenced SOP Instance UID and an empty ``00081190``;
* ``00081198`` Failed SOP Sequence — refused instances with the two UIDs (when readable) and ``00081197``
  Failure Reason (PS3.18 Table I.2-2): ``0xA700`` out of resources (the instance is over the size limit
  or its image over ``ingest.max_pixels``), ``0xA900`` data set does not match (a DICOM we do not serve:
  modality, colour, multi-frame, no pixels; or an instance of another study than ``{study}``), ``0xC000``
  cannot understand (malformed), ``0xC122`` transfer syntax not supported, ``0x0110`` processing failure.

HTTP status: 200 when every instance was accepted, 202 when some failed, 409 when none was accepted.

**Predictions** are not part of the standard answer. A client opts in with ``?include=predictions``: the
answer is then ``application/json`` :class:`serving.schemas.StowWithPredictions`, ``{"dicom": <the dataset
above>, "predictions": [{"index", "status": "stored"|"failed", "prediction" | "problem"}]}`` (prediction as
``/v1/predict`` returns it, problem as RFC 9457), with the same status code. Nothing is stored: the service is
stateless, "stored" means "accepted and predicted".

**Results pushed back.** With a push destination configured (``push.kind`` ``stow`` or ``dimse``), every
accepted instance also gets its AI result objects (:func:`serving.results.results_of`: the Structured Report
and the saliency Segmentation, in the source's study by default) spooled to :mod:`serving.push`, which
delivers them to the destination; an instance is "accepted" only once its results are spooled (the spool
full: Failure Reason ``0xA700``; a source without the UIDs the results reference: ``0xA900``). The answer
then carries ``X-Mimicry-Results-Destination`` (the destination kind) and ``X-Mimicry-Results-Spooled`` (how
many objects this request spooled); the Retrieve URLs stay empty (the service keeps no copy to retrieve).
"""

from __future__ import annotations

import email.message
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mimicry.dicom import DicomIngestError
from serving import problems

__all__ = [
    "STOW_MEDIA_TYPE",
    "AfterPredict",
    "MultipartError",
    "StowParts",
    "failure_reason",
    "push_spool_full",
    "stow_response",
]

STOW_MEDIA_TYPE = "application/dicom+json"
ACCEPTED_TYPE = 'multipart/related; type="application/dicom"'
_RETRIEVE_URL = "00081190"
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"

#: PS3.18 Table I.2-2 failure reasons used here.
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110


class MultipartError(ValueError):
    """The multipart/related body is malformed (answered 400)."""


def request_type(content_type: str) -> str:
    """Check the request's Content-Type and return its boundary.

    Raises:
        Problem: 415 for another media type or a ``type`` parameter other than ``application/dicom``;
            400 when the boundary is missing.
    """
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    media = content_type.split(";")[0].strip().lower()
    if media != "multipart/related":
        raise problems.unsupported_media_type(media or "(none)", [ACCEPTED_TYPE])
    declared = msg.get_param("type")
    declared = (declared if isinstance(declared, str) else "application/dicom").strip().lower()
    if declared != "application/dicom":
        raise problems.unsupported_media_type(f"multipart/related; type={declared}", [ACCEPTED_TYPE])
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise problems.invalid_parameter("The multipart/related Content-Type has no boundary.")
    return boundary


@dataclass
class StowParts:
    """Incremental multipart/related parser: feed chunks, take completed parts.

    A completed part is ``bytes`` (its body) or a :class:`~serving.problems.Problem` (over ``max_part_bytes``:
    413, its bytes discarded while streaming; or a part whose media type is not ``application/dicom``: 415).
    """

    boundary: str
    max_part_bytes: int
    done: list[bytes | problems.Problem] = field(default_factory=list)
    finished: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _too_large: bool = False
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _ctype: str | None = None
    _parser: Any = None

    def __post_init__(self) -> None:
        callbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_end": self._finish,
        }
        self._parser = MultipartParser(self.boundary.encode("latin-1"), callbacks)  # type: ignore[arg-type]

    def _begin(self) -> None:
        self._buf = bytearray()
        self._too_large = False
        self._ctype = None

    def _header_end(self) -> None:
        if bytes(self._header_field).strip().lower() == b"content-type":
            self._ctype = bytes(self._header_value).decode("latin-1").split(";")[0].strip().lower()
        self._header_field.clear()
        self._header_value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._too_large:
            return
        if len(self._buf) + (end - start) > self.max_part_bytes:
            self._too_large = True
            self._buf = bytearray()
            return
        self._buf.extend(data[start:end])

    def _end(self) -> None:
        if self._ctype not in (None, "application/dicom"):
            self.done.append(problems.unsupported_media_type("(part)", ["application/dicom"]))
        elif self._too_large:
            self.done.append(problems.request_too_large(self.max_part_bytes))
        else:
            self.done.append(bytes(self._buf))
        self._buf = bytearray()

    def _finish(self) -> None:
        self.finished = True

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body.

        Raises:
            MultipartError: the body is not a valid multipart body.
        """
        if self.finished or not chunk:
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise MultipartError("The multipart/related body could not be parsed.") from None

    def take(self) -> list[bytes | problems.Problem]:
        out, self.done = self.done, []
        return out


def failure_reason(problem: problems.Problem) -> int:
    """PS3.18 Table I.2-2 Failure Reason (0008,1197) for a refused instance."""
    if problem.status == 413 or problem.code == "push_spool_full":
        return OUT_OF_RESOURCES
    if problem.code == "unsupported_transfer_syntax":
        return TRANSFER_SYNTAX_NOT_SUPPORTED
    if problem.code == "study_mismatch" or problem.status in (415, 422):
        return DATA_SET_DOES_NOT_MATCH
    if problem.status >= 500:
        return PROCESSING_FAILURE
    return CANNOT_UNDERSTAND


def _header_uids(data: bytes) -> tuple[dict[str, Any], str | None]:
    """Referenced SOP Class/Instance UID attributes of a part and its Study Instance UID, when readable."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        out: dict[str, Any] = {}
        if "SOPClassUID" in ds:
            out[_SOP_CLASS] = {"vr": "UI", "Value": [str(ds.SOPClassUID)]}
        if "SOPInstanceUID" in ds:
            out[_SOP_INSTANCE] = {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}
        study = str(ds.StudyInstanceUID) if "StudyInstanceUID" in ds else None
        return out, study
    except Exception:
        return {}, None


def study_mismatch() -> problems.Problem:
    return problems.Problem(
        409,
        "study_mismatch",
        "The instance belongs to another study",
        "The instance's Study Instance UID is not the study of the request URL.",
    )


PredictOne = Callable[[Any, Any, bytes, dict[str, float]], Awaitable[tuple[dict[str, Any], Any, Any]]]
#: Called after an instance was predicted (its bytes, model, record, prepared input, backend output): builds
#: and spools its result objects; raising a Problem makes the instance a failed one.
AfterPredict = Callable[[bytes, Any, dict[str, Any], Any, Any], Awaitable[None]]


def push_spool_full(retry_after_s: int) -> problems.Problem:
    """The push spool is full: the instance fails with Out of Resources and the sender retries later."""
    return problems.Problem(
        503,
        "push_spool_full",
        "Results cannot be queued",
        "The result push spool is full; retry later.",
        headers={"Retry-After": str(retry_after_s)},
    )


async def stow_response(
    runtime: Any,
    request: Request,
    predict_one: PredictOne,
    *,
    study: str | None = None,
    include_predictions: bool = False,
    model_ref: str | None = None,
    after: AfterPredict | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Handle one STOW-RS request (see the module docstring).

    Raises:
        Problem: 415 (media type), 400 (malformed body, no parts), 404 (model).
    """
    boundary = request_type(request.headers.get("content-type", ""))
    model = runtime.model(model_ref)
    parser = StowParts(boundary, runtime.settings.max_request_bytes)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []

    async def handle(part: bytes | problems.Problem) -> None:
        index = len(predictions)
        uids: dict[str, Any] = {}
        try:
            if isinstance(part, problems.Problem):
                raise part
            if not part:
                raise problems.missing_dicom("An empty part.")
            uids, part_study = _header_uids(part)
            if study is not None and part_study != study:
                raise study_mismatch()
            record, prepared, out = await predict_one(runtime, model, part, {})
            if after is not None:
                await after(part, model, record, prepared, out)
        except (DicomIngestError, problems.Problem) as exc:
            problem = problems.from_ingest_error(exc) if isinstance(exc, DicomIngestError) else exc
            runtime.metrics.input_rejected_total.labels(reason=problem.code).inc()
            failed.append({**uids, _FAILURE_REASON: {"vr": "US", "Value": [failure_reason(problem)]}})
            predictions.append({"index": index, "status": "failed", "problem": problem.to_dict()})
            return
        referenced.append({**uids, _RETRIEVE_URL: {"vr": "UR"}})
        predictions.append({"index": index, "status": "stored", "prediction": record})

    async for chunk in request.stream():
        parser.feed(chunk)
        for part in parser.take():
            await handle(part)
    if not parser.finished:
        raise problems.invalid_parameter("The multipart body has no closing delimiter.")
    if not predictions:
        raise problems.missing_dicom("The multipart/related body has no parts.")
    out: dict[str, Any] = {_RETRIEVE_URL: {"vr": "UR"}}
    if failed:
        out[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        out[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    if include_predictions:
        return JSONResponse({"dicom": out, "predictions": predictions}, status_code=status, headers=headers)
    return JSONResponse(out, status_code=status, media_type=STOW_MEDIA_TYPE, headers=headers)
