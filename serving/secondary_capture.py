"""``/v1/explain?format=dicom``: the saliency overlay as a DICOM Secondary Capture that references its source.

The object (SOP Class Secondary Capture Image Storage, 1.2.840.10008.5.1.4.1.1.7; PS3.3 A.8.1) is built in the
source's study, in a new series, with

* the source's Patient and General Study modules copied, then the whole object passed through
  :func:`mimicry.dicom.deidentify` (PS3.15 E.1 basic profile) with the ingest UID salt: names, IDs and dates
  are removed and every UID — Study Instance UID, the references below, the new series/instance — is
  remapped consistently, so the result sits in the *de-identified* copy of the source study
  (``remap_uid(source StudyInstanceUID, salt)``), exactly where a de-identified source would be;
* Source Image Sequence (0008,2112) and Referenced Series Sequence (0008,1115, PS3.3 C.12.2 Common Instance
  Reference) naming the source instance and series;
* Image Type ``DERIVED\\SECONDARY``, Conversion Type ``WSD``, Modality ``OT``, Burned In Annotation ``NO``,
  and — set after de-identification, which removes them — Derivation Description naming model, method and
  target and a Series Description (our text, no PHI);
* the overlay as 8-bit RGB (Photometric Interpretation ``RGB``, Planar Configuration 0), Explicit VR Little
  Endian.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from mimicry.dicom import deidentify

__all__ = ["DICOM_MEDIA_TYPE", "secondary_capture"]

DICOM_MEDIA_TYPE = "application/dicom"

_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def secondary_capture(
    source: bytes, overlay: np.ndarray, *, salt: str, description: str, series_number: int = 9901
) -> bytes:
    """Encode ``overlay`` (``uint8[H, W, 3]``) as a de-identified Secondary Capture in the source's study.

    Args:
        source: The request's DICOM bytes (already accepted by :func:`mimicry.dicom.read_dicom`).
        overlay: The RGB overlay on the source grid.
        salt: UID-remapping key (the service's ingest ``uid_salt``).
        description: Derivation Description (model, method, target; must not contain PHI).
        series_number: Series Number of the derived series.

    Returns:
        DICOM Part 10 bytes.
    """
    rgb = np.ascontiguousarray(overlay, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"overlay must be uint8[H, W, 3], got {rgb.shape}")
    src = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True, force=True)
    ds = Dataset()
    for keyword in _COPIED:
        if keyword in src:
            setattr(ds, keyword, src[keyword].value)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    src_class = str(src.get("SOPClassUID", "")) or None
    src_inst = str(src.get("SOPInstanceUID", "")) or None
    if src_class and src_inst:

        def reference() -> Dataset:  # one item object per sequence: de-identification remaps each once
            ref = Dataset()
            ref.ReferencedSOPClassUID = src_class
            ref.ReferencedSOPInstanceUID = src_inst
            return ref

        ds.SourceImageSequence = Sequence([reference()])
        if "SeriesInstanceUID" in src:
            series = Dataset()
            series.SeriesInstanceUID = str(src.SeriesInstanceUID)
            series.ReferencedInstanceSequence = Sequence([reference()])
            ds.ReferencedSeriesSequence = Sequence([series])
    h, w, _ = rgb.shape
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = deidentify(ds, salt=salt)
    # set after de-identification (the basic profile removes both): our own text, free of PHI
    out.DerivationDescription = description[:1024]
    out.SeriesDescription = "mimicry saliency overlay"
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
