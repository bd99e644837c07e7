"""Tests of mimicry.dicom.deidentify (PS3.15 E.1 Basic Application Level Confidentiality Profile)."""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from mimicry.dicom import ACTIONS, deidentify, read_dicom, remap_uid
from mimicry.dicom.deid import RESOLVED_ACTION
from mimicry.settings import IngestSettings

SALT = "project-salt"


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _all_elements(ds: pydicom.Dataset):
    yield from ds.file_meta
    yield from ds.iterall()


def test_action_table_uses_known_keywords_and_codes():
    assert set(RESOLVED_ACTION) == {"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    for keyword, code in ACTIONS.items():
        assert tag_for_keyword(keyword) is not None, keyword
        assert code in RESOLVED_ACTION, keyword
        if code == "U":
            assert dictionary_VR(tag_for_keyword(keyword)) == "UI", keyword
    # spot checks against PS3.15 Table E.1-1 (Basic Prof. column)
    assert ACTIONS["PatientName"] == "Z"
    assert ACTIONS["PatientBirthDate"] == "Z"
    assert ACTIONS["OtherPatientIDs"] == "X"
    assert ACTIONS["AccessionNumber"] == "Z"
    assert ACTIONS["InstitutionName"] == "X/Z/D"
    assert ACTIONS["ContentDate"] == "Z/D"
    assert ACTIONS["SeriesDate"] == "X/D"
    assert ACTIONS["StudyInstanceUID"] == "U"
    assert ACTIONS["SourceImageSequence"] == "X/Z/U*"


def test_no_phi_survives_in_the_written_file(phi_dataset, phi_strings):
    original = _bytes(phi_dataset)
    for phi in phi_strings:  # the fixture really carries every string
        assert phi.encode() in original, phi
    out = _bytes(deidentify(phi_dataset, salt=SALT))
    for phi in phi_strings:
        assert phi.encode() not in out, phi
        assert phi.encode().upper() not in out.upper(), phi


def test_profile_actions_are_applied(phi_dataset):
    out = deidentify(phi_dataset, salt=SALT)
    # Z: present, zero length
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
    ):
        assert keyword in out, keyword
        assert out[keyword].is_empty, keyword
    for keyword in ("StudyDate", "StudyTime", "ContentDate", "ContentTime", "ReferringPhysicianName"):
        assert out[keyword].is_empty, keyword
    # X (and X/D, X/Z, X/Z/D resolved to X): removed
    for keyword in (
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientAddress",
        "PatientAge",
        "InstitutionName",
        "InstitutionAddress",
        "PerformingPhysicianName",
        "OperatorsName",
        "StationName",
        "SeriesDate",
        "SeriesTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "DeviceSerialNumber",
        "RequestAttributesSequence",
        "ImageComments",
    ):
        assert keyword not in out, keyword
    # kept: acquisition description needed downstream
    assert out.Modality == "DX"
    assert out.ViewPosition == "PA"
    assert out.BodyPartExamined == "CHEST"
    assert [float(v) for v in out.ImagerPixelSpacing] == [0.143, 0.143]
    assert out.AnatomicRegionSequence[0].CodeValue == "T-D3000"
    # safety net: PN and DA attributes the table does not list, in a sequence it does not list
    assert out.AnatomicRegionSequence[0]["HumanPerformerName"].is_empty
    assert out.AnatomicRegionSequence[0]["Date"].is_empty


def test_private_tags_are_removed_everywhere(phi_dataset):
    assert any(elem.tag.is_private for elem in phi_dataset.iterall())
    out = deidentify(phi_dataset, salt=SALT)
    assert not any(elem.tag.is_private for elem in out.iterall())


def test_deidentification_is_declared(phi_dataset):
    out = deidentify(phi_dataset, salt=SALT)
    assert out.PatientIdentityRemoved == "YES"
    assert "DICOM PS3.15 E.1 Basic Application Confidentiality Profile" in out.DeidentificationMethod
    assert all(len(value) <= 64 for value in out.DeidentificationMethod)  # LO
    (code,) = out.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    again = deidentify(out, salt=SALT)  # idempotent declarations, no duplicate code items
    assert len(again.DeidentificationMethodCodeSequence) == 1
    assert list(again.DeidentificationMethod) == list(out.DeidentificationMethod)


@pytest.mark.parametrize("flag", ["YES", "NO"])
def test_burned_in_annotation_is_kept(flag, make_phi_dataset):
    assert deidentify(make_phi_dataset(burned_in=flag), salt=SALT).BurnedInAnnotation == flag


def test_input_dataset_is_not_modified(phi_dataset):
    before = _bytes(phi_dataset)
    snapshot = copy.deepcopy(phi_dataset)
    deidentify(phi_dataset, salt=SALT)
    assert phi_dataset == snapshot
    assert phi_dataset.file_meta == snapshot.file_meta
    assert _bytes(phi_dataset) == before


def test_pixel_data_is_unchanged(phi_dataset):
    out = deidentify(phi_dataset, salt=SALT)
    assert out.PixelData == phi_dataset.PixelData
    settings = IngestSettings(uid_salt="x")
    np.testing.assert_array_equal(
        read_dicom(_bytes(out), settings=settings).pixels,
        read_dicom(_bytes(phi_dataset), settings=settings).pixels,
    )


def test_uids_are_remapped_consistently_across_a_study(make_phi_dataset, uids):
    first = deidentify(make_phi_dataset(uids["sop_a"]), salt=SALT)
    second = deidentify(make_phi_dataset(uids["sop_b"], referenced_sop_uid=uids["sop_a"]), salt=SALT)
    assert first.StudyInstanceUID == second.StudyInstanceUID == remap_uid(uids["study"], salt=SALT)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == remap_uid(uids["series"], salt=SALT)
    frame_of_reference = remap_uid(uids["frame_of_reference"], salt=SALT)
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID == frame_of_reference
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    # the reference from the second image to the first survives
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    # class UIDs and the transfer syntax are not instance identifiers: untouched
    assert second.ReferencedImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID
    assert first.SOPClassUID == make_phi_dataset().SOPClassUID
    assert first.file_meta.TransferSyntaxUID == make_phi_dataset().file_meta.TransferSyntaxUID
    # another salt unlinks
    assert deidentify(make_phi_dataset(), salt="other").StudyInstanceUID != first.StudyInstanceUID


def test_remapped_uids_are_valid_uuid_derived_uids(uids):
    uid = remap_uid(uids["study"], salt=SALT)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)
    assert UID(uid).is_valid
    value = int(uid.split(".")[2])
    assert value < 2**128
    assert (value >> 76) & 0xF == 8  # RFC 9562 version 8
    assert (value >> 62) & 0x3 == 0b10  # RFC 9562 variant
    assert remap_uid(uids["study"], salt=SALT) == uid
    assert remap_uid(uids["study"], salt=SALT.encode()) == uid
    assert remap_uid(uids["series"], salt=SALT) != uid


def test_custom_uid_root(phi_dataset):
    root = "1.2.826.0.1.3680043.10.1234"
    out = deidentify(phi_dataset, salt=SALT, uid_root=root)
    for uid in (out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID):
        assert uid.startswith(root + ".")
        assert len(uid) <= 64
        assert UID(uid).is_valid
    with pytest.raises(ValueError, match="uid_root"):
        deidentify(phi_dataset, salt=SALT, uid_root="1.2.03")
    with pytest.raises(ValueError, match="uid_root"):
        deidentify(phi_dataset, salt=SALT, uid_root="1." + "2" * 60)


def test_empty_salt_is_refused(phi_dataset):
    with pytest.raises(ValueError, match="salt"):
        deidentify(phi_dataset, salt="")
    with pytest.raises(ValueError, match="salt"):
        deidentify(phi_dataset, salt=b"")


def test_overlays_and_group_lengths_are_removed(phi_dataset):
    phi_dataset.add_new(0x60000010, "US", 4)  # Overlay Rows
    phi_dataset.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # Overlay Data
    phi_dataset.add_new(0x60004000, "LT", "overlay comment DOE")  # Overlay Comments
    phi_dataset.add_new(0x00080000, "UL", 1234)  # retired group length
    out = deidentify(phi_dataset, salt=SALT)
    assert not [elem.tag for elem in out if 0x6000 <= elem.tag.group <= 0x601E]
    assert 0x00080000 not in out


def test_preamble_and_file_meta_senders_are_cleared(phi_dataset):
    phi_dataset.preamble = b"II*\x00" + b"PHI" * 41 + b"\x00"  # a dual-format TIFF preamble
    phi_dataset.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    out = deidentify(phi_dataset, salt=SALT)
    assert out.preamble == b"\x00" * 128
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert b"HOSPITAL_PACS" not in _bytes(out)


def test_a_pydicom_file_is_deidentified_and_still_readable():
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    name, study_uid = str(ds.PatientName), ds.StudyInstanceUID
    assert name
    out = deidentify(ds, salt=SALT)
    data = _bytes(out)
    assert name.encode() not in data
    assert study_uid.encode() not in data
    image = read_dicom(data, settings=IngestSettings(allowed_modalities=["CT"]))
    assert image.pixels.shape == (128, 128)
    for elem in _all_elements(out):
        if elem.VR == "UI" and elem.keyword in ACTIONS:
            assert str(elem.value).startswith("2.25."), elem.keyword
