"""Builders of small synthetic DICOM files for the ingest and de-identification tests.

Everything is written with pydicom as real DICOM Part 10 files, so the reader under test sees exactly
what a PACS export would give it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from mimicry.settings import IngestSettings

# Synthetic PHI planted in `phi_dataset`; none of it may survive de-identification or reach a log line,
# an error message or SafeMetadata.
PHI = {
    "patient_name": "DOE^JANE^Q",
    "patient_id": "MRN-0042-PHI",
    "birth_date": "19610314",
    "other_id": "OTHERID-77-PHI",
    "other_name": "ROE^RICHARD",
    "address": "12 Elm Street Springfield",
    "accession": "ACC-99812-PHI",
    "study_id": "STUDY-PHI-5",
    "institution": "St Example General Hospital",
    "institution_address": "1 Hospital Road Springfield",
    "referring": "HOUSE^GREGORY",
    "performing": "QUINN^MICHAELA",
    "operator": "RATCHED^MILDRED",
    "station": "XRAY-ROOM-PHI-3",
    "study_date": "20240315",
    "series_date": "20240316",
    "acquisition_date": "20240317",
    "content_date": "20240318",
    "study_time": "101112",
    "series_time": "101213",
    "acquisition_time": "101314",
    "content_time": "101415",
    "serial": "SN-PHI-123456",
    "requested_procedure": "REQPROC-PHI-1",
    "scheduled_step": "SPS-PHI-2",
    "private_value": "PRIVATE-PHI-NOTE",
    "nested_private_value": "NESTED-PRIVATE-PHI",
    "nested_person": "NESTED^PERSON^PHI",
    "nested_date": "20231224",
    "image_comment": "patient jane doe left arm",
}
STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000002"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000003"
SOP_UID_A = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000011"
SOP_UID_B = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000012"

BuildDataset = Callable[..., FileDataset]


def build_dataset(
    stored: np.ndarray,
    *,
    bits_stored: int = 12,
    bits_allocated: int = 16,
    pixel_representation: int | None = None,
    photometric: str = "MONOCHROME2",
    modality: str | None = "DX",
    sop_instance_uid: str | None = SOP_UID_A,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    **attributes: Any,
) -> FileDataset:
    """A single-frame grayscale image whose Pixel Data holds exactly ``stored`` (any bit pattern).

    ``stored`` is written verbatim (``stored.tobytes()``, little endian), so callers control every bit,
    including garbage above Bits Stored; ``pixel_data`` overrides the bytes written. Extra keyword
    arguments are set as DICOM attributes by keyword.
    """
    rows, columns = stored.shape
    if pixel_representation is None:
        pixel_representation = 1 if np.issubdtype(stored.dtype, np.signedinteger) else 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or SOP_UID_A
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    if sop_instance_uid is not None:
        ds.SOPInstanceUID = sop_instance_uid
    if modality is not None:
        ds.Modality = modality
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = (
        pixel_data if pixel_data is not None else stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    )
    return ds


def to_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Write ``ds`` as a DICOM Part 10 file (optionally without the 128-byte preamble and 'DICM')."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]


def build_phi_dataset(
    sop_instance_uid: str = SOP_UID_A, *, referenced_sop_uid: str | None = None, burned_in: str = "YES"
) -> FileDataset:
    """A 12-bit DX chest radiograph header full of synthetic PHI: names, IDs, dates, an institution,
    private tags (also nested), a request sequence and a referenced-image sequence."""
    stored = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4096
    ds = build_dataset(
        stored,
        sop_instance_uid=sop_instance_uid,
        ViewPosition="PA",
        ImagerPixelSpacing=[0.143, 0.143],
        PatientName=PHI["patient_name"],
        PatientID=PHI["patient_id"],
        PatientBirthDate=PHI["birth_date"],
        PatientSex="F",
        PatientAge="063Y",
        OtherPatientIDs=PHI["other_id"],
        OtherPatientNames=PHI["other_name"],
        PatientAddress=PHI["address"],
        AccessionNumber=PHI["accession"],
        StudyID=PHI["study_id"],
        InstitutionName=PHI["institution"],
        InstitutionAddress=PHI["institution_address"],
        ReferringPhysicianName=PHI["referring"],
        PerformingPhysicianName=PHI["performing"],
        OperatorsName=PHI["operator"],
        StationName=PHI["station"],
        StudyDate=PHI["study_date"],
        StudyTime=PHI["study_time"],
        SeriesDate=PHI["series_date"],
        SeriesTime=PHI["series_time"],
        AcquisitionDate=PHI["acquisition_date"],
        AcquisitionTime=PHI["acquisition_time"],
        ContentDate=PHI["content_date"],
        ContentTime=PHI["content_time"],
        DeviceSerialNumber=PHI["serial"],
        ImageComments=PHI["image_comment"],
        StudyInstanceUID=STUDY_UID,
        SeriesInstanceUID=SERIES_UID,
        FrameOfReferenceUID=FRAME_OF_REFERENCE_UID,
        BurnedInAnnotation=burned_in,
        BodyPartExamined="CHEST",
        WindowCenter=2048,
        WindowWidth=4096,
    )
    request = Dataset()
    request.RequestedProcedureID = PHI["requested_procedure"]
    request.ScheduledProcedureStepID = PHI["scheduled_step"]
    ds.RequestAttributesSequence = Sequence([request])

    block = ds.private_block(0x0009, "ACME PHI VENDOR", create=True)
    block.add_new(0x01, "LO", PHI["private_value"])
    nested = Dataset()
    nested_block = nested.private_block(0x0011, "ACME NESTED", create=True)
    nested_block.add_new(0x02, "LO", PHI["nested_private_value"])
    # PN and DA attributes that ACTIONS does not list, nested in a sequence it does not list: the safety net
    nested.HumanPerformerName = PHI["nested_person"]
    nested.Date = PHI["nested_date"]
    nested.CodeValue = "T-D3000"
    ds.AnatomicRegionSequence = Sequence([nested])

    if referenced_sop_uid is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = DigitalXRayImageStorageForPresentation
        ref.ReferencedSOPInstanceUID = referenced_sop_uid
        ds.ReferencedImageSequence = Sequence([ref])
    return ds


@pytest.fixture
def make_dataset() -> BuildDataset:
    """Factory of synthetic single-frame images (see :func:`build_dataset`)."""
    return build_dataset


@pytest.fixture
def dicom_bytes() -> Callable[..., bytes]:
    """Serialiser of datasets to DICOM Part 10 bytes (see :func:`to_bytes`)."""
    return to_bytes


@pytest.fixture
def phi_dataset() -> FileDataset:
    """A fresh synthetic DX full of PHI, referencing image B (see :func:`build_phi_dataset`)."""
    return build_phi_dataset(referenced_sop_uid=SOP_UID_B)


@pytest.fixture
def make_phi_dataset() -> Callable[..., FileDataset]:
    """Factory of PHI-bearing datasets of one study (see :func:`build_phi_dataset`)."""
    return build_phi_dataset


@pytest.fixture
def phi_strings() -> list[str]:
    """Every PHI string planted by :func:`build_phi_dataset`, plus its original UIDs."""
    return [*PHI.values(), STUDY_UID, SERIES_UID, FRAME_OF_REFERENCE_UID, SOP_UID_A, SOP_UID_B]


@pytest.fixture
def uids() -> dict[str, str]:
    """The original UIDs used by :func:`build_phi_dataset`."""
    return {
        "study": STUDY_UID,
        "series": SERIES_UID,
        "frame_of_reference": FRAME_OF_REFERENCE_UID,
        "sop_a": SOP_UID_A,
        "sop_b": SOP_UID_B,
    }


@pytest.fixture
def any_modality() -> IngestSettings:
    """Settings accepting any modality and a generous pixel budget, with a fixed salt."""
    return IngestSettings(allow_any_modality=True, max_pixels=50_000_000, uid_salt="test-salt")
