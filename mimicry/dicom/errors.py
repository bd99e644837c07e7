"""Typed refusals of the DICOM ingest layer.

Every way :func:`mimicry.dicom.read_dicom` can refuse an input is one subclass of
:class:`DicomIngestError` with a stable, snake_case :attr:`~DicomIngestError.code`, the HTTP status the
serving layer answers with, and a human message (``detail``). :meth:`DicomIngestError.to_problem` renders
the error as an RFC 9457 *problem details* object (``type``/``title``/``status``/``detail`` plus the
extension member ``code``).

Status convention (shared with the serving layer):

* ``400`` — the bytes are malformed: not DICOM, truncated, unreadable, inconsistent pixel geometry;
* ``413`` — the image is larger than the configured pixel budget;
* ``422`` — a well-formed DICOM object whose *content* we do not accept (no pixel data, a modality outside
  the allow-list, several frames, colour, a transfer syntax we cannot decode).

Messages never contain PHI: no patient names, IDs, dates or UIDs, and no file-system paths. They describe
the offending attribute by its name and tag instead, e.g. ``"Modality (0008,0060) ..."``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "ERROR_TYPES",
    "PROBLEM_TYPE_BASE",
    "ColourImageError",
    "DicomIngestError",
    "ImageTooLargeError",
    "InvalidGeometryError",
    "MultiFrameError",
    "NoPixelDataError",
    "NotDicomError",
    "TruncatedDicomError",
    "UnreadableDicomError",
    "UnsupportedModalityError",
    "UnsupportedTransferSyntaxError",
]

#: Prefix of the RFC 9457 ``type`` member; the full type is ``PROBLEM_TYPE_BASE + code``. It is a relative
#: URI reference (RFC 9457 §3.1.1 allows them), resolved against the URL of the API that returned the
#: problem; the serving layer documents each code at that path, or passes an absolute base to
#: :meth:`DicomIngestError.to_problem`.
PROBLEM_TYPE_BASE = "/problems/dicom/"

#: Every concrete error class by its code (filled in as subclasses are defined).
ERROR_TYPES: dict[str, type[DicomIngestError]] = {}

_CODE_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


class DicomIngestError(Exception):
    """Base class of every refusal raised by :func:`mimicry.dicom.read_dicom`.

    Args:
        detail: Human-readable explanation specific to this occurrence. Must not contain PHI (names,
            IDs, dates, UIDs) or file-system paths.

    Attributes:
        code: Stable snake_case identifier of the failure (class attribute; part of the API contract).
        http_status: HTTP status the serving layer answers with (class attribute).
        title: Short human summary of the problem type (class attribute; the RFC 9457 ``title``).
        detail: The occurrence-specific message given to the constructor.
    """

    code: ClassVar[str] = "dicom_ingest_error"
    http_status: ClassVar[int] = 400
    title: ClassVar[str] = "The DICOM input was refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _CODE_RE.match(cls.code):
            raise TypeError(f"{cls.__name__}.code {cls.code!r} is not snake_case")
        if cls.code in ERROR_TYPES:
            raise TypeError(f"duplicate DICOM ingest error code {cls.code!r}")
        ERROR_TYPES[cls.code] = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"

    def to_problem(self, type_base: str = PROBLEM_TYPE_BASE) -> dict[str, str | int]:
        """Return this error as an RFC 9457 problem details object (a JSON-ready dict).

        Args:
            type_base: Prefix of the ``type`` URI; the code is appended to it.

        Returns:
            ``{"type", "title", "status", "detail", "code"}``; ``code`` is an RFC 9457 extension member
            carrying :attr:`code` so that clients can branch on it without parsing URIs.
        """
        return {
            "type": f"{type_base}{self.code}",
            "title": self.title,
            "status": self.http_status,
            "detail": self.detail,
            "code": self.code,
        }


class NotDicomError(DicomIngestError):
    """The input is not a DICOM Part 10 file (empty, random bytes, an image in another format, or a bare
    dataset without File Meta Information, PS3.10 §7.1)."""

    code = "not_dicom"
    http_status = 400
    title = "The input is not a DICOM file"


class TruncatedDicomError(DicomIngestError):
    """The file ends before the data it declares (e.g. cut in the middle of the Pixel Data)."""

    code = "truncated"
    http_status = 400
    title = "The DICOM file is truncated"


class UnreadableDicomError(DicomIngestError):
    """The input could not be read or parsed, or decoding failed for a reason not covered by a more
    specific code (the original exception is chained as ``__cause__``)."""

    code = "unreadable"
    http_status = 400
    title = "The DICOM file could not be read"


class InvalidGeometryError(DicomIngestError):
    """The Image Pixel module (PS3.3 C.7.6.3) is missing, invalid or inconsistent with the Pixel Data."""

    code = "invalid_geometry"
    http_status = 400
    title = "The DICOM pixel description is invalid"


class NoPixelDataError(DicomIngestError):
    """A valid DICOM object without an image (structured report, DICOMDIR, RT plan, ...)."""

    code = "no_pixel_data"
    http_status = 422
    title = "The DICOM object has no pixel data"


class UnsupportedModalityError(DicomIngestError):
    """Modality (0008,0060) is missing or not in :attr:`IngestSettings.allowed_modalities`."""

    code = "unsupported_modality"
    http_status = 422
    title = "The DICOM modality is not accepted"


class MultiFrameError(DicomIngestError):
    """Number of Frames (0028,0008) is greater than one; a chest radiograph is a single frame."""

    code = "multi_frame"
    http_status = 422
    title = "Multi-frame DICOM images are not accepted"


class ColourImageError(DicomIngestError):
    """Samples per Pixel (0028,0002) is not 1 or Photometric Interpretation (0028,0004) is a colour one
    (RGB, YBR_*, PALETTE COLOR, ...); only MONOCHROME1/MONOCHROME2 are accepted."""

    code = "colour_image"
    http_status = 422
    title = "Colour DICOM images are not accepted"


class ImageTooLargeError(DicomIngestError):
    """Rows x Columns exceeds :attr:`IngestSettings.max_pixels` (checked before any pixel decoding)."""

    code = "image_too_large"
    http_status = 413
    title = "The DICOM image is too large"


class UnsupportedTransferSyntaxError(DicomIngestError):
    """No installed pixel-data decoder handles the Transfer Syntax UID (0002,0010)."""

    code = "unsupported_transfer_syntax"
    http_status = 422
    title = "The DICOM transfer syntax is not supported"
