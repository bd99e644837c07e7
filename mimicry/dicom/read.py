"""Read one DICOM chest radiograph into display-ready pixels plus PHI-free metadata.

:func:`read_dicom` is the single entry point of every DICOM that reaches mimicry (PACS export, the
BentoML service, the EGD reader, phantom round trips). It validates the file, decodes the pixel data with
pydicom's pixel handlers, runs the DICOM grayscale display pipeline (PS3.4 N.2.1.1: Modality LUT ->
VOI LUT -> Presentation) and returns an :class:`XrayImage`; anything it cannot accept is refused with a
typed :class:`~mimicry.dicom.errors.DicomIngestError`.

Nothing PHI-bearing leaves this module: :class:`SafeMetadata` holds acquisition and pixel-description
attributes only, the SOP Instance UID is reported as a salted hash, and log records and error messages name
attributes by tag, never their values.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import math
import os
import re
import struct
import zlib
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from mimicry.dicom.errors import (
    ColourImageError,
    DicomIngestError,
    ImageTooLargeError,
    InvalidGeometryError,
    MultiFrameError,
    NoPixelDataError,
    NotDicomError,
    TruncatedDicomError,
    UnreadableDicomError,
    UnsupportedModalityError,
    UnsupportedTransferSyntaxError,
)
from mimicry.settings import IngestSettings

__all__ = ["DicomSource", "SafeMetadata", "XrayImage", "hash_uid", "read_dicom"]

logger = logging.getLogger(__name__)

#: What :func:`read_dicom` accepts: the file's bytes, a path to it, or a binary file object.
DicomSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

#: Length of :attr:`SafeMetadata.sop_instance_uid_hash` in hex characters (128 bits).
UID_HASH_HEX_CHARS = 32

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Sequence Delimitation Item (FFFE,E0DD) with its zero length, little and big endian.
_SEQUENCE_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
# (7FE0,0010) with undefined length in Explicit VR Little Endian: the header of encapsulated (compressed)
# Pixel Data (PS3.5 A.4), which is always encoded this way. The VR should be OB; some writers put OW.
_ENCAPSULATED_PIXEL_DATA_HEADER = re.compile(rb"\xe0\x7f\x10\x00(?:OB|OW|UN)\x00\x00\xff\xff\xff\xff")
# VRs that can open a File Meta Information group written without the 128-byte preamble + "DICM".
_FILE_META_VRS = frozenset({b"UL", b"OB", b"UI", b"SH", b"AE", b"UR"})
_DEFLATED_TS = DeflatedExplicitVRLittleEndian.encode("ascii")
# Inflation budget of a deflated dataset: the pixel data (at most 4 bytes a pixel for 32-bit data) plus
# 64 MiB for everything else (overlays, ICC profiles, private blobs).
_MAX_BYTES_PER_PIXEL = 4
_MAX_NON_PIXEL_BYTES = 64 * 2**20
_INFLATE_CHUNK = 2**20
# Compressed syntaxes whose codestream header states the image size, checked against Rows/Columns before
# decoding (a header claiming a far larger image than Rows x Columns would make the codec allocate it).
_JPEG_FAMILY = frozenset(JPEGTransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes)
_J2K_FAMILY = frozenset(JPEG2000TransferSyntaxes)  # JPEG 2000 Part 1 and 2 and HTJ2K (Part 15)
# JPEG 2000 allows at most 32 decomposition levels; encoders use 5-6.
_MAX_REDUCE = 32
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = frozenset(
    {
        "RGB",
        "PALETTE COLOR",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "ARGB",
        "CMYK",
        "HSV",
    }
)
# Defined terms of Modality (0008,0060) (PS3.3 C.7.3.1.1.1) that may be echoed in an error message; any
# other value is described, not quoted, since a free-text value could carry PHI.
_MODALITY_TERMS = (
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO "
    "LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG RTDOSE "
    "RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG "
    "US VA XA XC"
)
_KNOWN_MODALITIES = frozenset(_MODALITY_TERMS.split())


@dataclass(frozen=True)
class SafeMetadata:
    """Metadata of one image that is safe to log, return and store (no names, IDs, dates or raw UIDs).

    Attributes:
        modality: Modality (0008,0060), upper-cased; ``None`` when absent (only possible with
            ``allow_any_modality``).
        view_position: View Position (0018,5101), e.g. ``"PA"``, ``"AP"``, ``"LL"``; ``None`` when absent.
        photometric_interpretation: ``"MONOCHROME1"`` or ``"MONOCHROME2"`` as stored (the pixels are
            already inverted for MONOCHROME1).
        rows: Rows (0028,0010).
        columns: Columns (0028,0011).
        pixel_spacing: ``(row spacing, column spacing)`` in mm from Pixel Spacing (0028,0030), else
            Imager Pixel Spacing (0018,1164) (detector plane); ``None`` when absent or invalid.
        bits_stored: Bits Stored (0028,0101).
        transfer_syntax_uid: Transfer Syntax UID (0002,0010) (a standard UID, not PHI).
        transfer_syntax_name: Its name, e.g. ``"JPEG 2000 Image Compression (Lossless Only)"``.
        sop_instance_uid_hash: First :data:`UID_HASH_HEX_CHARS` hex digits of
            ``sha256(salt + SOPInstanceUID)`` (see :func:`hash_uid`; the File Meta's Media Storage SOP
            Instance UID stands in when the dataset lacks one); ``None`` when the file has neither. Links
            repeated submissions of one image without revealing its UID.
    """

    modality: str | None
    view_position: str | None
    photometric_interpretation: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    bits_stored: int
    transfer_syntax_uid: str
    transfer_syntax_name: str
    sop_instance_uid_hash: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as a JSON-ready dict (``pixel_spacing`` becomes a list)."""
        out = asdict(self)
        if self.pixel_spacing is not None:
            out["pixel_spacing"] = list(self.pixel_spacing)
        return out


@dataclass(frozen=True, eq=False)
class XrayImage:
    """A decoded, display-ready radiograph.

    Attributes:
        pixels: ``float32`` array of shape ``(rows, columns)`` with values in ``[0, 1]``, 0 = black,
            1 = white, after the display pipeline of :func:`read_dicom`. The array is a fresh array owned by
            the caller.
        meta: The PHI-free :class:`SafeMetadata` of the image.
        level: Resolution level of ``pixels``: 0 = full resolution (``(rows, columns)``); ``r > 0`` = a
            JPEG 2000 image decoded ``r`` wavelet levels down, ``(ceil(rows / 2**r), ceil(columns / 2**r))``
            (see ``min_side`` of :func:`read_dicom`).
    """

    pixels: np.ndarray = field(repr=False)
    meta: SafeMetadata
    level: int = 0

    def __post_init__(self) -> None:
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.dtype != np.float32 or px.ndim != 2:
            raise ValueError("XrayImage.pixels must be a 2-D float32 numpy array")
        if px.shape != reduced_shape((self.meta.rows, self.meta.columns), self.level):
            raise ValueError(
                f"XrayImage.pixels has shape {px.shape}, metadata says {(self.meta.rows, self.meta.columns)} "
                f"at resolution level {self.level}"
            )


def reduced_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """Shape of a JPEG 2000 image decoded ``level`` resolution levels down (ITU-T T.800 B.5, offset 0)."""
    return (-(-int(shape[0]) // 2**level), -(-int(shape[1]) // 2**level))


def resolution_level(shape: tuple[int, int], min_side: int) -> int:
    """The coarsest resolution level whose longer side is still at least ``min_side`` pixels (0 if none)."""
    level = 0
    while max(reduced_shape(shape, level + 1)) >= min_side and level < _MAX_REDUCE:
        level += 1
    return level


def hash_uid(uid: str, salt: str) -> str:
    """Return the salted hash reported as :attr:`SafeMetadata.sop_instance_uid_hash`.

    ``sha256((salt + uid).encode("utf-8")).hexdigest()[:32]``: 128 bits, enough to make collisions
    between images negligible; without the salt the hash cannot be tested against a list of known UIDs.
    """
    return hashlib.sha256((salt + uid).encode("utf-8")).hexdigest()[:UID_HASH_HEX_CHARS]


@cache
def _default_settings() -> IngestSettings:
    # One IngestSettings per process, so that the random default salt (see IngestSettings.uid_salt) is
    # stable within the process rather than per call.
    return IngestSettings()


def read_dicom(
    src: DicomSource, *, settings: IngestSettings | None = None, min_side: int | None = None
) -> XrayImage:
    """Read, validate and decode one single-frame grayscale DICOM image.

    Args:
        src: The DICOM Part 10 file as ``bytes``/``bytearray``/``memoryview``, a path (``str`` or
            ``os.PathLike``), or a binary file object (read from its current position to the end).
        settings: What to accept (modality allow-list, pixel budget, UID-hash salt). Defaults to
            ``IngestSettings()`` created once per process.
        min_side: The caller needs the image only with its longer side at least this many pixels (e.g.
            twice the model's input side, ahead of an area-averaging downscale). A JPEG 2000 / HTJ2K image
            with unsigned pixels is then decoded at the coarsest resolution level of its wavelet pyramid
            whose longer side is still ``>= min_side`` (OpenJPEG's *reduce* option, through Pillow's JPEG
            2000 plugin): a fraction of the cost of a full decode, since the finer sub-bands are never
            synthesised. ``XrayImage.level`` records the level; every other syntax (and a stream with
            fewer decomposition levels) decodes in full. ``None``: always full resolution.

    Returns:
        The :class:`XrayImage`: ``float32`` pixels in ``[0, 1]`` of shape ``(Rows, Columns)`` (reduced as
        ``min_side`` allows) plus :class:`SafeMetadata`.

    Raises:
        DicomIngestError: Always one of its subclasses (see :mod:`mimicry.dicom.errors`), never another
            exception type; unexpected failures are wrapped as ``unreadable`` with the original exception
            chained as ``__cause__``.

    **Accepted files.** DICOM Part 10 files (PS3.10 §7.1): 128-byte preamble + ``DICM`` + File Meta
    Information. Files whose writer omitted the preamble (starting with ``DICM``, or directly with the
    File Meta group (0002,xxxx)) are accepted too; in the latter case pydicom is called with
    ``force=True``, which is safe because the File Meta group is recognised first. A bare dataset
    without File Meta Information is refused as ``not_dicom``: its transfer syntax would have to be
    guessed, and so would be any random bytes.

    **Checks, in order** (each refusal is the named error code):

    1. the bytes are a Part 10 file (``not_dicom``); a Deflated Explicit VR Little Endian dataset does
       not inflate beyond what ``settings.max_pixels`` needs (``image_too_large``, checked while
       streaming the inflation, before pydicom inflates it in memory); pydicom parses the file
       (``unreadable``) and the file is complete: a value shorter than its declared length, a cut inside
       an element header, the File Meta Information or the last sequence, or encapsulated Pixel Data
       without its delimiter mean the file was cut (``truncated``); the File Meta Information has a
       Transfer Syntax UID (``unreadable``);
    2. Modality (0008,0060) is in ``settings.allowed_modalities`` unless ``settings.allow_any_modality``
       (``unsupported_modality``);
    3. Pixel Data (7FE0,0010) is present (``no_pixel_data``);
    4. Rows and Columns are positive integers (``invalid_geometry``) and ``Rows * Columns <=
       settings.max_pixels`` (``image_too_large``), before anything else about the pixels is examined
       and long before decoding;
    5. the Image Pixel module (PS3.3 C.7.6.3) is consistent: Bits Allocated in {1, 8, 16, 32},
       1 <= Bits Stored <= Bits Allocated, Pixel Representation 0 or 1, a Photometric Interpretation
       (``invalid_geometry``); Samples per Pixel 1 and MONOCHROME1/2 (``colour_image``); one frame
       (``multi_frame``);
    6. a decoder for the transfer syntax is installed (``unsupported_transfer_syntax``); for native
       (uncompressed) syntaxes the Pixel Data holds at least Rows x Columns x Samples x Bits Allocated
       bits, and for JPEG, JPEG-LS and JPEG 2000 the image size in the codestream header equals Rows x
       Columns (``invalid_geometry``; a codestream claiming a larger image would make the codec allocate
       it);
    7. decoding succeeds (``unreadable``) and yields a ``(Rows, Columns)`` array (``invalid_geometry``).

    **Display pipeline** (PS3.4 N.2.1.1 grayscale pipeline, applied with pydicom's own functions):

    1. ``pydicom.pixels.pixel_array`` decodes the stored values; for native data it keeps only the
       low Bits Stored bits (garbage in the unused high bits is masked) and sign-extends signed data
       (Pixel Representation 1); JPEG-LS/JPEG 2000 signedness mismatches are corrected by pydicom.
    2. ``apply_modality_lut``: Modality LUT Sequence (0028,3000) or Rescale Slope/Intercept
       (0028,1053)/(0028,1052).
    3. VOI, first applicable of:

       a. VOI LUT Sequence (0028,3010), first item (``apply_voi``). Modality values are rounded to the
          nearest integer and clamped to the LUT's input range first (PS3.3 C.11.2.1.1: values below
          the first mapped value map to the first entry, above the last to the last entry). Output
          range: ``[0, 2**n - 1]`` with ``n`` the third LUT Descriptor value.
       b. Window Center/Width (0028,1050)/(0028,1051), the first value when multi-valued, with VOI LUT
          Function LINEAR (default), LINEAR_EXACT or SIGMOID (``apply_windowing``, PS3.3 C.11.2.1.2).
          Output range: the ``[y_min, y_max]`` pydicom maps the window onto, obtained by evaluating
          ``apply_windowing`` at -inf and +inf, so that values at or below the bottom of the window map
          to 0 and values above its top to 1.
       c. No VOI: the output range is the modality-LUT'd range of the stored bits: the stored range
          (``[0, 2**BitsStored - 1]`` unsigned, ``[-2**(BitsStored-1), 2**(BitsStored-1) - 1]`` signed)
          through Rescale Slope/Intercept, or ``[0, 2**n - 1]`` for a Modality LUT Sequence with ``n``
          output bits. E.g. unsigned 12-bit, slope 1, intercept 0: ``value / 4095``.

       A VOI transform the file describes but pydicom rejects (e.g. Window Width < 1 for LINEAR, an
       unsupported LUT depth) is skipped for the next option, with a warning log.
    4. ``(y - low) / (high - low)`` with the output range of step 3, clipped to ``[0, 1]``, then
       ``1 - value`` for MONOCHROME1 (whose minimum is white, PS3.3 C.7.6.3.1.2).

    The mapping depends only on the header, never on the image's own minimum or maximum: a dark image
    stays dark. Presentation LUT Shape (2050,0020) is not applied: for DX/CR it restates the
    photometric interpretation (PS3.3 C.8.11.1.1.1), which step 4 already honours. Pixel Padding Value
    (0028,0120) is not treated specially.
    """
    settings = settings if settings is not None else _default_settings()
    try:
        image = _read(src, settings, min_side)
    except DicomIngestError as exc:
        logger.info("DICOM input refused: code=%s", exc.code)
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # not only Exception: Rust codecs raise pyo3's PanicException
        logger.info("DICOM input refused: code=unreadable (unexpected %s)", type(exc).__name__)
        raise UnreadableDicomError(
            f"The DICOM file could not be read ({type(exc).__name__} while processing it)."
        ) from exc
    logger.debug(
        "DICOM image read: modality=%s size=%dx%d transfer_syntax=%s sop_hash=%s",
        image.meta.modality,
        image.meta.rows,
        image.meta.columns,
        image.meta.transfer_syntax_name,
        image.meta.sop_instance_uid_hash,
    )
    return image


# --------------------------------------------------------------------------------------------- reading


def _read(src: DicomSource, settings: IngestSettings, min_side: int | None = None) -> XrayImage:
    data = _load_bytes(src)
    ds = _parse(data, settings)
    ts = _transfer_syntax(ds)
    modality = _check_modality(ds, settings)
    _check_has_pixel_data(ds, data)
    rows, columns = _check_size(ds, settings)
    bits_stored, pixel_representation, photometric = _check_pixel_module(ds)
    _check_decodable(ds, ts)
    level = 0
    if min_side is not None and ts in _J2K_FAMILY and pixel_representation == 0:
        level = resolution_level((rows, columns), int(min_side))
    arr = _decode_reduced(ds, rows, columns, level) if level else None
    if arr is None:
        level = 0
        arr = _decode(ds, rows, columns)
    pixels = _display(arr, ds, bits_stored, pixel_representation, photometric)
    meta = SafeMetadata(
        modality=modality,
        view_position=_optional_str(ds, "ViewPosition"),
        photometric_interpretation=photometric,
        rows=rows,
        columns=columns,
        pixel_spacing=_pixel_spacing(ds),
        bits_stored=bits_stored,
        transfer_syntax_uid=str(ts),
        transfer_syntax_name=ts.name,
        sop_instance_uid_hash=_sop_hash(ds, settings),
    )
    return XrayImage(pixels=pixels, meta=meta, level=level)


def _load_bytes(src: DicomSource) -> bytes:
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src)
    if isinstance(src, str | os.PathLike):
        try:
            return Path(src).read_bytes()
        except FileNotFoundError as exc:
            raise UnreadableDicomError("The input file does not exist.") from exc
        except IsADirectoryError as exc:
            raise UnreadableDicomError("The input path is a directory, not a file.") from exc
        except OSError as exc:  # permissions, I/O errors; the message would contain the path
            raise UnreadableDicomError(f"The input file could not be read ({type(exc).__name__}).") from exc
    if hasattr(src, "read"):
        data = src.read()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UnreadableDicomError("The input file object is not opened in binary mode.")
        return bytes(data)
    raise UnreadableDicomError(
        f"read_dicom() takes bytes, a path or a binary file object, not {type(src).__name__}."
    )


def _parse(data: bytes, settings: IngestSettings) -> Dataset:
    if not data:
        raise NotDicomError("The input is empty.")
    if data[128:132] == b"DICM":
        pass  # PS3.10 §7.1: preamble + prefix
    elif data[:4] == b"DICM":
        data = bytes(128) + data  # preamble omitted, prefix kept: restore an all-zero preamble
    elif data[:2] == b"\x02\x00" and data[4:6] in _FILE_META_VRS:
        data = bytes(128) + b"DICM" + data  # preamble and prefix omitted, File Meta Information first
    else:
        raise NotDicomError(
            "The input is not a DICOM Part 10 file: no 'DICM' prefix and no File Meta Information."
        )
    if len(data) < 144:  # preamble, prefix and at least the File Meta group length element
        raise TruncatedDicomError("The DICOM file ends inside its File Meta Information.")
    _check_inflated_size(data, settings)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError as exc:
        raise NotDicomError("The input is not a DICOM Part 10 file.") from exc
    except (EOFError, struct.error) as exc:
        # reading from memory, a short unpack only happens at the end of the data
        raise TruncatedDicomError("The DICOM file ends in the middle of a data element.") from exc
    except Exception as exc:
        raise UnreadableDicomError(f"The DICOM file could not be parsed ({type(exc).__name__}).") from exc
    _check_complete(ds, data)
    return ds


def _check_inflated_size(data: bytes, settings: IngestSettings) -> None:
    """Refuse a Deflated Explicit VR Little Endian file that would inflate beyond the pixel budget.

    pydicom inflates the whole dataset in memory while reading, before any of our checks can run, so a
    small deflated file could otherwise expand to gigabytes (a "zip bomb"). The File Meta Information is
    never deflated; it starts with its group length (0002,0000) (PS3.10 §7.1, Type 1).
    """
    if data[132:138] != b"\x02\x00\x00\x00UL":
        return
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    if _DEFLATED_TS not in data[132:meta_end]:
        return
    limit = _MAX_NON_PIXEL_BYTES + _MAX_BYTES_PER_PIXEL * settings.max_pixels
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[meta_end:], 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > limit:
                raise ImageTooLargeError(
                    f"The deflated dataset inflates to more than {limit} bytes, more than an image of at "
                    f"most {settings.max_pixels} pixels needs."
                )
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise UnreadableDicomError("The deflated dataset is not a valid deflate stream.") from exc
    if not inflater.eof:
        raise TruncatedDicomError("The DICOM file ends inside its deflated dataset.")


def _check_complete(ds: Dataset, data: bytes) -> None:
    """Refuse a file cut short, which pydicom mostly reads without error.

    pydicom stops reading the File Meta Information where the data ends, keeps a value shorter than its
    declared length, silently ignores fewer than 8 bytes left after the last complete element (a cut
    inside the next element's header) and ends an undefined-length sequence at the end of the data.
    """
    if data[132:138] == b"\x02\x00\x00\x00UL" and len(data) < 144 + int.from_bytes(data[140:144], "little"):
        raise TruncatedDicomError("The DICOM file ends inside its File Meta Information.")
    last_elem: Any = None
    last_end, last_pos = None, -1
    for container in (getattr(ds, "file_meta", None), ds):
        if container is None:
            continue
        for tag in list(container.keys()):
            elem = container.get_item(tag)
            if not isinstance(elem, RawDataElement):
                position = getattr(elem, "file_tell", None)
                if container is ds and position is not None and position > last_pos:
                    last_elem, last_end, last_pos = elem, None, position  # parsed: its end is not recorded
                continue
            value_len = len(elem.value) if elem.value is not None else 0
            if elem.length != _UNDEFINED_LENGTH and elem.value is not None and value_len < elem.length:
                where = "Pixel Data (7FE0,0010)" if tag == _PIXEL_DATA else f"element {tag}"
                raise TruncatedDicomError(
                    f"The DICOM file is truncated: {where} declares {elem.length} bytes but the file ends "
                    f"after {value_len}."
                )
            if container is ds and elem.value_tell > last_pos:
                last_elem, last_pos = elem, elem.value_tell
                # an undefined-length value is followed by an 8-byte Sequence Delimitation Item
                last_end = elem.value_tell + (
                    value_len + 8 if elem.length == _UNDEFINED_LENGTH else elem.length
                )
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # positions refer to the inflated stream
    if last_end is not None and (len(data) < last_end or 0 < len(data) - last_end < 8):
        raise TruncatedDicomError("The DICOM file ends inside the header of its last data element.")
    if (
        last_elem is not None
        and last_end is None
        and getattr(last_elem, "VR", None) == "SQ"
        and getattr(last_elem, "is_undefined_length", False)
        and data[-8:] not in _SEQUENCE_DELIMITERS
    ):
        raise TruncatedDicomError("The DICOM file ends inside its last sequence.")


def _transfer_syntax(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not ts:
        raise UnreadableDicomError("The File Meta Information has no Transfer Syntax UID (0002,0010).")
    return UID(str(ts))


def _check_modality(ds: Dataset, settings: IngestSettings) -> str | None:
    modality = _optional_str(ds, "Modality")
    modality = modality.upper() if modality else None
    if settings.allow_any_modality:
        return modality
    allowed = ", ".join(settings.allowed_modalities) or "none"
    if modality is None:
        raise UnsupportedModalityError(f"Modality (0008,0060) is missing; accepted modalities: {allowed}.")
    if modality not in settings.allowed_modalities:
        shown = f"'{modality}'" if modality in _KNOWN_MODALITIES else "an unlisted value"
        raise UnsupportedModalityError(
            f"Modality (0008,0060) is {shown}, which is not accepted; accepted modalities: {allowed}."
        )
    return modality


def _check_has_pixel_data(ds: Dataset, data: bytes) -> None:
    if _PIXEL_DATA in ds:
        return
    if _ENCAPSULATED_PIXEL_DATA_HEADER.search(data):
        # pydicom stops with a warning when encapsulated Pixel Data has no Sequence Delimitation Item
        # before the end of the file, and drops the element.
        raise TruncatedDicomError(
            "The DICOM file is truncated inside its encapsulated Pixel Data (7FE0,0010)."
        )
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise NoPixelDataError("Only integer Pixel Data (7FE0,0010) is supported, not float pixel data.")
    raise NoPixelDataError("The DICOM object has no Pixel Data (7FE0,0010).")


def _required_int(ds: Dataset, keyword: str, tag: str) -> int:
    try:
        value = ds[keyword].value if keyword in ds else None
        if value is None or value == "":
            raise InvalidGeometryError(f"{keyword} {tag} is missing or empty.")
        if isinstance(value, MultiValue | list | tuple):
            raise InvalidGeometryError(f"{keyword} {tag} has more than one value.")
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidGeometryError(f"{keyword} {tag} is not a valid integer.") from exc
    return number


def _check_size(ds: Dataset, settings: IngestSettings) -> tuple[int, int]:
    rows = _required_int(ds, "Rows", "(0028,0010)")
    columns = _required_int(ds, "Columns", "(0028,0011)")
    if rows < 1 or columns < 1:
        raise InvalidGeometryError(
            f"Rows (0028,0010) and Columns (0028,0011) must be positive, got {rows}x{columns}."
        )
    if rows * columns > settings.max_pixels:
        raise ImageTooLargeError(
            f"The image is {rows}x{columns} = {rows * columns} pixels; "
            f"at most {settings.max_pixels} are accepted."
        )
    return rows, columns


def _check_pixel_module(ds: Dataset) -> tuple[int, int, str]:
    samples = _required_int(ds, "SamplesPerPixel", "(0028,0002)")
    bits_allocated = _required_int(ds, "BitsAllocated", "(0028,0100)")
    bits_stored = _required_int(ds, "BitsStored", "(0028,0101)")
    pixel_representation = _required_int(ds, "PixelRepresentation", "(0028,0103)")
    photometric = _optional_str(ds, "PhotometricInterpretation")
    if bits_allocated not in (1, 8, 16, 32):
        raise InvalidGeometryError(
            f"Bits Allocated (0028,0100) must be 1, 8, 16 or 32, got {bits_allocated}."
        )
    if not 1 <= bits_stored <= bits_allocated:
        raise InvalidGeometryError(
            f"Bits Stored (0028,0101) must be between 1 and Bits Allocated ({bits_allocated}), "
            f"got {bits_stored}."
        )
    if pixel_representation not in (0, 1):
        raise InvalidGeometryError(
            f"Pixel Representation (0028,0103) must be 0 or 1, got {pixel_representation}."
        )
    if photometric is None:
        raise InvalidGeometryError("Photometric Interpretation (0028,0004) is missing.")
    photometric = photometric.upper()
    if samples != 1 or photometric in _COLOUR:
        shown = photometric if photometric in _COLOUR or photometric in _MONOCHROME else "another value"
        raise ColourImageError(
            f"Only grayscale images are accepted (Samples per Pixel 1, MONOCHROME1/2); this one has "
            f"Samples per Pixel (0028,0002) {samples} and Photometric Interpretation (0028,0004) {shown}."
        )
    if photometric not in _MONOCHROME:
        raise InvalidGeometryError("Photometric Interpretation (0028,0004) is not a defined term.")
    if "NumberOfFrames" in ds and ds["NumberOfFrames"].value not in (None, ""):
        frames = _required_int(ds, "NumberOfFrames", "(0028,0008)")
        if frames < 1:
            raise InvalidGeometryError(f"Number of Frames (0028,0008) must be at least 1, got {frames}.")
        if frames > 1:
            raise MultiFrameError(
                f"The image has {frames} frames (0028,0008); only single-frame images are accepted."
            )
    return bits_stored, pixel_representation, photometric


def _check_decodable(ds: Dataset, ts: UID) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        shown = f"'{ts.name}'" if ts.is_transfer_syntax else "a private or unknown transfer syntax"
        raise UnsupportedTransferSyntaxError(
            f"No pixel data decoder exists for Transfer Syntax UID (0002,0010) {shown}."
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"No installed plugin can decode Transfer Syntax UID (0002,0010) '{ts.name}'."
        )
    if ts.is_encapsulated:
        _check_codestream_size(ds, ts)
        return
    expected = get_expected_length(ds, unit="bytes")
    actual = len(ds.PixelData)
    if actual < expected:
        raise InvalidGeometryError(
            f"Pixel Data (7FE0,0010) holds {actual} bytes but Rows x Columns x Samples per Pixel x Bits "
            f"Allocated needs {expected}."
        )


def _check_codestream_size(ds: Dataset, ts: UID) -> None:
    """Compare the image size in a JPEG / JPEG-LS / JPEG 2000 codestream header with Rows x Columns.

    Reads the header only (with the codec libraries' own header parsers, when installed); a stream whose
    header cannot be parsed is left to the decoder, which then fails as ``unreadable``.
    """
    if ts in _JPEG_FAMILY:
        module = "libjpeg"
    elif ts in _J2K_FAMILY:
        module = "openjpeg"
    else:
        return
    try:
        codec = importlib.import_module(module)
        params = codec.get_parameters(get_frame(ds.PixelData, 0, number_of_frames=1))
        size = (int(params["rows"]), int(params["columns"]))
    except Exception:
        return
    if size != (int(ds.Rows), int(ds.Columns)):
        raise InvalidGeometryError(
            f"The compressed pixel data encodes a {size[0]}x{size[1]} image but Rows x Columns is "
            f"{int(ds.Rows)}x{int(ds.Columns)}."
        )


def _decode(ds: Dataset, rows: int, columns: int) -> np.ndarray:
    try:
        arr = pixel_array(ds)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # codecs written in Rust raise pyo3's PanicException (a BaseException)
        raise UnreadableDicomError(f"The pixel data could not be decoded ({type(exc).__name__}).") from exc
    if arr.shape != (rows, columns):
        raise InvalidGeometryError(
            f"The decoded pixel data has shape {arr.shape}, but Rows x Columns is {rows}x{columns}."
        )
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise InvalidGeometryError(f"The decoded pixel data has a non-integer type ({arr.dtype}).")
    return arr


def _decode_reduced(ds: Dataset, rows: int, columns: int, level: int) -> np.ndarray | None:
    """Decode a JPEG 2000 frame ``level`` resolution levels down, or ``None`` to fall back to a full decode.

    Pillow's JPEG 2000 plugin (OpenJPEG) returns unsigned data of more than 8 bits as ``I;16`` with the
    sample values scaled up to 16 bits (shifted left by ``16 - precision``); the shift is undone so the
    stored values are those a full decode gives, averaged by the wavelet low-pass. Any failure (a stream
    with fewer decomposition levels than ``level``, an unexpected mode) falls back to the full decode,
    which reports real errors.
    """
    try:
        import openjpeg
        from PIL import Image

        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        precision = int(openjpeg.get_parameters(frame)["precision"])
        with Image.open(io.BytesIO(frame), formats=["JPEG2000"]) as im:
            im.reduce = level
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception:  # any codec failure: decode in full instead (which types the error)
        return None
    if arr.shape != reduced_shape((rows, columns), level):
        return None
    bits_allocated = int(ds.BitsAllocated)
    if mode == "L" and bits_allocated == 8:
        return arr.astype(np.uint8, copy=False)
    if mode == "I;16" and bits_allocated == 16:
        shift = 16 - precision
        return (arr.astype(np.uint16) >> shift) if shift > 0 else arr.astype(np.uint16, copy=False)
    return None


# ------------------------------------------------------------------------------------ display pipeline


def _display(
    arr: np.ndarray, ds: Dataset, bits_stored: int, pixel_representation: int, photometric: str
) -> np.ndarray:
    _check_rescale(ds)
    modality_values = apply_modality_lut(arr, ds)
    voi = _apply_voi_lut_sequence(modality_values, ds)
    if voi is None:
        voi = _apply_window(modality_values, ds)
    if voi is None:
        values = modality_values
        low, high = _modality_output_range(ds, bits_stored, pixel_representation)
    else:
        values, low, high = voi
    if high == low:
        raise UnreadableDicomError("The pixel value transformation maps every stored value to one value.")
    # Integer values of at most 16 bits (no rescale, no VOI: the usual DX film) are exact in float32, and so
    # are their range ends: one correctly rounded float32 division, half the memory traffic of float64.
    exact32 = np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize <= 2
    out = np.array(values, dtype=np.float32 if exact32 else np.float64)  # a fresh array: updated in place
    out -= low
    out /= high - low
    np.clip(out, 0.0, 1.0, out=out)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, out, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_rescale(ds: Dataset) -> None:
    if "ModalityLUTSequence" in ds and ds.ModalityLUTSequence:
        return
    for keyword, tag in (("RescaleSlope", "(0028,1053)"), ("RescaleIntercept", "(0028,1052)")):
        if keyword in ds:
            try:
                value = float(ds[keyword].value)
            except (TypeError, ValueError) as exc:
                raise UnreadableDicomError(f"{keyword} {tag} is not a number.") from exc
            if not math.isfinite(value):
                raise UnreadableDicomError(f"{keyword} {tag} is not finite.")


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    seq = ds.get("VOILUTSequence")
    if not seq or "LUTDescriptor" not in seq[0] or "LUTData" not in seq[0]:
        return None
    try:
        n_entries, first_map, n_bits = (int(v) for v in seq[0].LUTDescriptor)
        n_entries = n_entries or 2**16
        # PS3.3 C.11.2.1.1: inputs below the first mapped value take the first entry, above the last
        # take the last; clamp (after rounding rescaled values) so pydicom's integer index cannot wrap.
        lut_input = np.clip(np.rint(values), first_map, first_map + n_entries - 1).astype(np.int64)
        out = apply_voi(lut_input, ds, index=0)
    except Exception as exc:
        logger.warning("VOI LUT Sequence (0028,3010) not applicable (%s); ignoring it", type(exc).__name__)
        return None
    return out, 0.0, float(2**n_bits - 1)


def _apply_window(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    if _optional_str(ds, "WindowCenter") is None or _optional_str(ds, "WindowWidth") is None:
        return None
    try:
        out = apply_windowing(values, ds, index=0)
        y_min, y_max = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds, index=0))
    except Exception as exc:
        logger.warning(
            "Window Center/Width (0028,1050)/(0028,1051) not applicable (%s); ignoring them",
            type(exc).__name__,
        )
        return None
    if not (math.isfinite(y_min) and math.isfinite(y_max)):
        logger.warning("Window output range is not finite; ignoring Window Center/Width")
        return None
    return out, y_min, y_max


def _modality_output_range(ds: Dataset, bits_stored: int, pixel_representation: int) -> tuple[float, float]:
    if "ModalityLUTSequence" in ds and ds.ModalityLUTSequence:
        n_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**n_bits - 1)
    if pixel_representation == 0:
        stored = np.array([0, 2**bits_stored - 1], dtype=np.int64)
    else:
        stored = np.array([-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1], dtype=np.int64)
    low, high = sorted(float(v) for v in apply_modality_lut(stored, ds))
    return low, high


# ------------------------------------------------------------------------------------------- metadata


def _optional_str(ds: Dataset, keyword: str) -> str | None:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = next(iter(value), None)
        if value is None:
            return None
    text = str(value).strip()
    return text or None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in ds:
            continue
        try:
            values = [float(v) for v in ds[keyword].value]
        except (TypeError, ValueError):
            logger.warning("%s is not numeric; ignoring it", keyword)
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return values[0], values[1]
        logger.warning("%s does not hold two positive values; ignoring it", keyword)
    return None


def _sop_hash(ds: Dataset, settings: IngestSettings) -> str | None:
    uid = _optional_str(ds, "SOPInstanceUID")
    if uid is None:
        file_meta = getattr(ds, "file_meta", None)
        meta_uid = file_meta.get("MediaStorageSOPInstanceUID") if file_meta is not None else None
        uid = str(meta_uid).strip() if meta_uid else None
    return hash_uid(uid, settings.uid_salt.get_secret_value()) if uid else None
