"""Writers of the MIMIC-CXR-EGD layout: DICOM files, mask PNGs and the CSV rows of one case.

DICOM (brief, "DICOM details"): Digital X-Ray Image Storage - For Presentation (SOP Class
1.2.840.10008.5.1.4.1.1.1.1), Modality DX, BitsAllocated 16 / BitsStored 12 / HighBit 11, unsigned,
PixelSpacing and ImagerPixelSpacing for a 35-43 cm film, RescaleSlope / RescaleIntercept (modality LUT) and a
WindowCenter / WindowWidth (VOI LUT) in modality units that display the film well. MONOCHROME1 films store
``4095 - value`` and mirror the window centre: the DICOM LINEAR window (PS3.3 C.11.2.1.2.1) maps ``x`` by
``(x - (C - 0.5)) / (W - 1) + 0.5``, so with ``K = slope * 4095 + 2 * intercept`` (the modality value of the
inverted stored value is ``K - x``) the centre ``C' = K - C + 1`` gives ``1 - y``; after the modality LUT, the
VOI LUT and the MONOCHROME1 inversion the film *displays* exactly like its MONOCHROME2 twin.
All UIDs are ``2.25.<uuid>`` derived deterministically from (seed, case). The patient module carries
synthetic PHI (``PHANTOM^...`` names, birth date, IDs, institution, referring physician and a private tag with
a name) so that de-identification can be tested.

CSV rows are returned as lists of strings so that files are byte-identical for a seed; the generator joins
them in case order.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from mimicry import __version__
from mimicry.data import egd as egd_format
from mimicry.data.phantom.anatomy import Box
from mimicry.data.phantom.config import CLASS_NAMES, NUISANCE_CUES
from mimicry.data.phantom.plan import CHX_COLUMNS, LABEL_COLUMNS, CasePlan
from mimicry.data.phantom.render import STORED_MAX, RenderedFilm
from mimicry.data.siim import rle_encode  # the reader's encoder (inverse of its decoder)

__all__ = [
    "BOUNDING_BOX_COLUMNS",
    "EGD_MASTER_COLUMNS",
    "MASTER_SHEET_COLUMNS",
    "PHANTOM_EXTRA_COLUMNS",
    "PRIVATE_CREATOR",
    "RSNA_COLUMNS",
    "SIIM_HEADER",
    "bounding_box_rows",
    "build_dicom",
    "csv_line",
    "master_sheet_row",
    "rle_encode",
    "rsna_rows",
    "siim_rows",
    "write_png",
]

# The dataset format is defined once, by the reader (one code path for real data and phantoms).
EGD_MASTER_COLUMNS: tuple[str, ...] = egd_format.MASTER_SHEET_COLUMNS
"""The MIMIC-CXR-EGD ``master_sheet.csv`` columns, exactly and in order."""
PHANTOM_EXTRA_COLUMNS: tuple[str, ...] = egd_format.PHANTOM_EXTRA_COLUMNS
"""Phantom-only columns appended after the EGD ones (readers treat them as optional)."""
MASTER_SHEET_COLUMNS: tuple[str, ...] = EGD_MASTER_COLUMNS + PHANTOM_EXTRA_COLUMNS
BOUNDING_BOX_COLUMNS: tuple[str, ...] = egd_format.BOUNDING_BOX_COLUMNS
RSNA_COLUMNS: tuple[str, ...] = ("patientId", "x", "y", "width", "height", "Target")
SIIM_HEADER = "ImageId, EncodedPixels"
"""SIIM-ACR header, with its leading space before ``EncodedPixels`` (rows are written ``id, rle`` too)."""

PRIVATE_CREATOR = "MIMICRY PHANTOM"
"""Private creator of the block (group 0x0029) that holds a synthetic name (PHI in a private tag)."""

_DX_FOR_PRESENTATION = DigitalXRayImageStorageForPresentation
_SPECIFIC_CHARACTER_SET = "ISO_IR 100"
_CHARSET = convert_encodings(_SPECIFIC_CHARACTER_SET)
_CODEC_LOGGERS = ("openjpeg", "pylibjpeg", "jpeg_ls", "pyjpegls", "libjpeg")


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def csv_line(values: Sequence[str]) -> str:
    """One CSV line (RFC 4180 quoting: fields with a comma, quote or newline are quoted)."""
    line = ",".join(values)
    if line.count(",") == len(values) - 1 and _NEEDS_QUOTES.search(line.replace(",", "")) is None:
        return line + "\n"
    out = [('"' + v.replace('"', '""') + '"') if _NEEDS_QUOTES.search(v) else v for v in values]
    return ",".join(out) + "\n"


def _uid(seed: int, index: int, kind: str) -> UID:
    # ``generate_uid(prefix=None, ...)`` ignores its entropy sources (it returns a random UUID4), so the
    # UUID-derived ``2.25.<int>`` UID is built from a hash of (seed, case, kind): same seed, same UIDs.
    digest = hashlib.sha256(f"mimicry-phantom/{seed}/{index}/{kind}".encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


@contextmanager
def _quiet_codec_logs() -> Iterator[None]:
    """Silence the codecs' per-tile INFO records (``openjpeg.encode: tile number 1 / 1``) while encoding."""
    loggers = [logging.getLogger(name) for name in _CODEC_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@functools.lru_cache(maxsize=16)
def _fixed_elements(size: int, view: str) -> Mapping[BaseTag, RawDataElement]:
    """The elements every film of this size and view shares, encoded once by pydicom (Explicit VR LE).

    :func:`build_dicom` starts each dataset from a copy of this (read-only, cached) mapping, and pydicom
    writes raw elements as they are, so the files are byte-identical to setting the ~30 attributes one by one
    (building and writing a film's DICOM fell from 2.3 to 1.9 ms).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = _SPECIFIC_CHARACTER_SET
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = _DX_FOR_PRESENTATION
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "mimicry phantom generator"
    ds.ManufacturerModelName = "PHANTOM-DX"
    ds.SoftwareVersions = __version__
    ds.StudyDescription = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
    ds.SeriesDescription = view
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet
    ds.KVP = "120" if view == "PA" else "100"
    ds.DistanceSourceToDetector = "1800" if view == "PA" else "1000"
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.DetectorType = "SCINTILLATOR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.RescaleType = "US"
    ds.VOILUTFunction = "LINEAR"
    ds.WindowCenterWidthExplanation = "PHANTOM FULL RANGE"
    ds.LossyImageCompression = "00"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = read_dataset(BytesIO(buf.getvalue()), is_implicit_VR=False, is_little_endian=True)
    # keys(), not iteration (which decodes every element); get_item returns the undecoded raw element.
    return MappingProxyType({tag: raw.get_item(tag) for tag in raw.keys()})  # noqa: SIM118


def build_dicom(plan: CasePlan, film: RenderedFilm, seed: int) -> Dataset:
    """The DICOM dataset of one case (file meta included), for ``dcmwrite(..., enforce_file_format=True)``.

    Pixel data are encoded with ``plan.transfer_syntax`` (RLE / JPEG-LS / JPEG 2000 lossless through
    ``Dataset.compress``; deflate is applied by pydicom when the file is written).
    """
    size = film.pixels.shape[0]
    pixels = film.pixels
    slope, intercept = plan.rescale_slope, plan.rescale_intercept
    center, width = film.window  # stored MONOCHROME2 units
    wc = round(slope * center + intercept, 1)  # rounded before mirroring: both twins agree exactly
    ww = round(slope * width, 1)
    if plan.photometric == "MONOCHROME1":
        pixels = (STORED_MAX - pixels.astype(np.int32)).astype(np.uint16)
        wc = slope * STORED_MAX + 2.0 * intercept - wc + 1.0
    imager_spacing = plan.film_width_mm / size
    pixel_spacing = imager_spacing / plan.magnification

    sop_uid = _uid(seed, plan.index, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MIMICRY_{__version__}"[:16]

    ds = Dataset(dict(_fixed_elements(size, plan.view)))  # a copy: the case's own elements go in it
    # The raw elements were encoded as Explicit VR Little Endian in this character set, which is how every
    # transfer syntax used here encodes the dataset: pydicom then writes them without decoding them.
    ds.set_original_encoding(False, True, _CHARSET)
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = plan.study_date
    ds.SeriesDate = plan.study_date
    ds.ContentDate = plan.study_date
    ds.StudyTime = plan.study_time
    ds.SeriesTime = plan.study_time
    ds.ContentTime = plan.study_time
    ds.AccessionNumber = plan.accession
    ds.InstitutionName = plan.institution
    ds.ReferringPhysicianName = plan.referring_physician
    ds.StationName = plan.site.upper().replace("_", "-")
    # Patient module: synthetic PHI on purpose (de-identification tests).
    ds.PatientName = plan.patient_name
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = plan.birth_date
    ds.PatientSex = plan.gender
    ds.PatientAge = f"{min(plan.age, 999):03d}Y"
    ds.OtherPatientIDs = f"MRN{plan.patient_id[::-1]}"
    # Acquisition.
    ds.ImagerPixelSpacing = [f"{imager_spacing:.6f}", f"{imager_spacing:.6f}"]
    ds.PixelSpacing = [f"{pixel_spacing:.6f}", f"{pixel_spacing:.6f}"]
    ds.EstimatedRadiographicMagnificationFactor = f"{plan.magnification:.4f}"
    ds.StudyInstanceUID = _uid(seed, plan.index, "study")
    ds.SeriesInstanceUID = _uid(seed, plan.index, "series")
    ds.StudyID = plan.study_id[-8:]
    # Image pixel module (the fixed part is in the template).
    ds.PhotometricInterpretation = plan.photometric
    ds.PixelIntensityRelationshipSign = -1 if plan.photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.WindowCenter = f"{wc:.1f}"
    ds.WindowWidth = f"{ww:.1f}"
    block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "PN", plan.patient_name.replace("PHANTOM^", "PHANTOM^ALIAS-"))
    block.add_new(0x11, "LO", f"phantom site {plan.site}")
    ds.add_new(0x7FE00010, "OW", pixels.tobytes())  # Pixel Data: OW for 16-bit native pixels (PS3.5 8.2)
    syntax = UID(plan.transfer_syntax)
    if syntax.is_compressed:
        with _quiet_codec_logs():
            ds.compress(syntax, pixels, generate_instance_uid=False)
    elif syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def write_png(path: Path, mask: np.ndarray) -> None:
    """Write a bool mask as a 1-bit greyscale PNG (black 0 / white 1, which 8-bit readers see as 0 / 255).

    Bilevel PNGs are the natural file of a binary mask and several times cheaper to encode than 8-bit ones
    (PIL filters 8-bit rows adaptively); :func:`mimicry.data.masks.read_mask_png` reads both (any non-zero
    value is foreground), as it reads the real dataset's 8-bit 0 / 255 masks.
    """
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=bool))  # mode "1"
    img.save(path, format="PNG", compress_level=3)


def _box_str(v: int) -> str:
    return f"{float(v):.1f}"


def master_sheet_row(plan: CasePlan, film: RenderedFilm) -> list[str]:
    """One ``master_sheet.csv`` row (:data:`MASTER_SHEET_COLUMNS` order)."""
    top, bottom, left, right = plan.pads
    dx_cells: list[str] = []
    for i in range(9):
        if i < len(plan.dx):
            dx_cells.extend(plan.dx[i])
        else:
            dx_cells.extend(("", ""))
    onehot = [str(int(plan.label == name)) for name in CLASS_NAMES]
    x1, x2, y1, y2 = film.marker_box
    return [
        plan.dicom_id,
        plan.path,
        plan.study_id,
        plan.patient_id,
        plan.stay_id,
        plan.gender,
        plan.anchor_age,
        str(top),
        str(bottom),
        str(left),
        str(right),
        *dx_cells,
        str(int(plan.label == "Normal")),
        *onehot,
        *(str(plan.label_columns[c]) for c in LABEL_COLUMNS),
        *(plan.chx_columns[c] for c in CHX_COLUMNS),
        plan.indication,
        plan.split,
        plan.site,
        str(x1),
        str(x2),
        str(y1),
        str(y2),
        f"{plan.rates['shortcut_corr']:.6g}",
        plan.shortcut_mode,
        *(f"{plan.rates[f'nuisance_{c}_corr']:.6g}" for c in NUISANCE_CUES),
        *(str(int(plan.nuisance[c])) for c in NUISANCE_CUES),
    ]


def bounding_box_rows(plan: CasePlan, boxes: dict[str, Box]) -> list[list[str]]:
    """``bounding_boxes.csv`` rows: ``dicom_id, bbox_name, x1, x2, y1, y2`` (floats like ``1007.0``)."""
    return [[plan.dicom_id, name, *(_box_str(v) for v in box)] for name, box in boxes.items()]


def siim_rows(plan: CasePlan, components: list[np.ndarray]) -> list[str]:
    """``train-rle.csv`` lines (``id, rle``): one per connected finding component, or one ``-1`` line."""
    if not components:
        return [f"{plan.dicom_id}, -1\n"]
    return [f"{plan.dicom_id}, {rle_encode(c)}\n" for c in components]


def rsna_rows(plan: CasePlan, boxes: list[Box]) -> list[list[str]]:
    """``stage_2_train_labels.csv`` rows: one per opacity box (Target 1), or one empty Target-0 row."""
    if not boxes:
        return [[plan.dicom_id, "", "", "", "", "0"]]
    return [
        [plan.dicom_id, _box_str(x1), _box_str(y1), _box_str(x2 - x1 + 1), _box_str(y2 - y1 + 1), "1"]
        for x1, x2, y1, y2 in boxes
    ]
