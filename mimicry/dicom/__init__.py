"""DICOM ingest: read and validate chest radiographs, de-identify datasets.

Public API (the rest of mimicry imports exactly these)::

    from mimicry.dicom import read_dicom, XrayImage, SafeMetadata, DicomIngestError, deidentify
"""

from mimicry.dicom.deid import ACTIONS, deidentify, remap_uid
from mimicry.dicom.errors import (
    ERROR_TYPES,
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
from mimicry.dicom.read import DicomSource, SafeMetadata, XrayImage, hash_uid, read_dicom

__all__ = [
    "ACTIONS",
    "ERROR_TYPES",
    "ColourImageError",
    "DicomIngestError",
    "DicomSource",
    "ImageTooLargeError",
    "InvalidGeometryError",
    "MultiFrameError",
    "NoPixelDataError",
    "NotDicomError",
    "SafeMetadata",
    "TruncatedDicomError",
    "UnreadableDicomError",
    "UnsupportedModalityError",
    "UnsupportedTransferSyntaxError",
    "XrayImage",
    "deidentify",
    "hash_uid",
    "read_dicom",
    "remap_uid",
]
