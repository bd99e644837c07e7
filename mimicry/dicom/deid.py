"""De-identify DICOM datasets with the PS3.15 Basic Application Level Confidentiality Profile.

:func:`deidentify` returns a de-identified *copy* of a dataset following DICOM PS3.15 Annex E, Table
E.1-1 ("Application Level Confidentiality Profile Attributes", column "Basic Prof.", 2024b edition), for
the attributes listed in :data:`ACTIONS`, plus the profile's general rules: private attributes removed
(E.3.1 is the option that would keep them; we do not implement it), overlays and curves removed, UIDs
replaced consistently (E.1.1 "U": the same input UID and salt always give the same output UID, so the
study/series/instance hierarchy and references between instances survive).

What it does **not** do, deliberately:

* Pixel data are unchanged: text burned into the pixels is **not** scrubbed (that is the Clean Pixel
  Data Option, E.3.1, which needs OCR and human review). Burned In Annotation (0028,0301) is kept as
  received so that a consumer can refuse images that declare burned-in text.
* No retention options (E.3.2-E.3.10): e.g. Patient's Sex is emptied and Patient's Age removed, as the
  basic profile requires; use the EGD/phantom master sheets for subgroup attributes.

Action codes (PS3.15 Table E.1-1a): ``X`` remove; ``Z`` replace with a zero-length value; ``D`` replace
with a dummy value consistent with the VR; ``U`` replace a UID with a consistent non-identifying UID;
compound codes (``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``) let an implementation choose according
to the attribute's Type in the IOD. We resolve them without IOD knowledge, towards the least information
that keeps CR/DX objects conformant (see :data:`RESOLVED_ACTION`): ``Z/D`` -> ``Z``; ``X/Z``, ``X/D``,
``X/Z/D`` -> ``X``; ``X/Z/U*`` -> keep the sequence and replace every UID inside it (references between
de-identified instances stay valid). As a safety net, any remaining Person Name (PN) or date (DA, DT)
element not covered by the table is emptied, wherever it is nested.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable
from typing import Final

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

__all__ = ["ACTIONS", "DEIDENTIFICATION_METHOD", "RESOLVED_ACTION", "deidentify", "remap_uid"]

logger = logging.getLogger(__name__)

#: PS3.15 Table E.1-1, column "Basic Prof." (2024b), for the attributes a radiograph and its
#: study/patient/request context commonly carry. Keyword -> action code as printed in the standard.
ACTIONS: Final[dict[str, str]] = {
    # --- Patient (PS3.3 C.7.1.1) and patient context
    "PatientName": "Z",
    "PatientID": "Z/D",
    "IssuerOfPatientID": "X",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientSex": "Z",
    "PatientSexNeutered": "X/Z",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientTelecomInformation": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientBirthName": "X",
    "PatientMotherBirthName": "X",
    "MedicalRecordLocator": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "AdditionalPatientHistory": "X",
    "PatientComments": "X",
    "PatientReligiousPreference": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "PregnancyStatus": "X",
    "SmokingStatus": "X",
    "LastMenstrualDate": "X",
    "SpecialNeeds": "X",
    "PatientState": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "InsurancePlanIdentification": "X",
    "PatientPrimaryLanguageCodeSequence": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedPatientPhotoSequence": "X",
    "PatientInstitutionResidence": "X",
    "CurrentPatientLocation": "X",
    "AdmissionID": "X",
    "IssuerOfAdmissionID": "X",
    "IssuerOfAdmissionIDSequence": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "AdmittingDate": "X",
    "AdmittingTime": "X",
    "ServiceEpisodeID": "X",
    "VisitComments": "X",
    "ReasonForVisit": "X",
    # --- Study (PS3.3 C.7.2.1) and the request that ordered it
    "StudyInstanceUID": "U",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "AccessionNumber": "Z",
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "ConsultingPhysicianName": "Z",
    "StudyDescription": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "ReasonForStudy": "X",
    "StudyComments": "X",
    "StudyIDIssuer": "X",
    "ReferencedStudySequence": "X/Z",
    "RequestAttributesSequence": "X",
    "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X",
    "RequestedProcedureComments": "X",
    "RequestedProcedureLocation": "X",
    "ReasonForTheRequestedProcedure": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z",
    "FillerOrderNumberImagingServiceRequest": "Z",
    "ImagingServiceRequestComments": "X",
    "IssueDateOfImagingServiceRequest": "X",
    "IssueTimeOfImagingServiceRequest": "X",
    "OrderEnteredBy": "X",
    "OrderEntererLocation": "X",
    "OrderCallbackPhoneNumber": "X",
    # --- Series (PS3.3 C.7.3.1) and procedure steps
    "SeriesInstanceUID": "U",
    "SeriesDate": "X/D",
    "SeriesTime": "X/D",
    "SeriesDescription": "X",
    "ProtocolName": "X/D",
    "OperatorsName": "X/Z/D",
    "OperatorIdentificationSequence": "X/D",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X",
    "PerformedProcedureStepDescription": "X",
    "CommentsOnThePerformedProcedureStep": "X",
    "PerformedStationName": "X",
    "PerformedStationAETitle": "X",
    "PerformedLocation": "X",
    "ScheduledProcedureStepID": "X",
    "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepStartDate": "X",
    "ScheduledProcedureStepStartTime": "X",
    "ScheduledProcedureStepEndDate": "X",
    "ScheduledProcedureStepEndTime": "X",
    "ScheduledProcedureStepLocation": "X",
    "ScheduledPerformingPhysicianName": "X",
    "ScheduledStationName": "X",
    "ScheduledStationAETitle": "X",
    # --- Equipment (PS3.3 C.7.5.1)
    "InstitutionName": "X/Z/D",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "InstitutionCodeSequence": "X/Z/D",
    "StationName": "X/Z/D",
    "StationAETitle": "X",
    "RetrieveAETitle": "X",
    "NetworkID": "X",
    "DeviceSerialNumber": "X/Z/D",
    "DeviceUID": "U",
    "UniqueDeviceIdentifier": "X",
    "UDISequence": "X",
    "DetectorID": "X/D",
    "PlateID": "X",
    "CassetteID": "X",
    "GantryID": "X",
    "GeneratorID": "X",
    "DateOfLastCalibration": "X",
    "TimeOfLastCalibration": "X",
    "DateOfLastDetectorCalibration": "X/D",
    "TimeOfLastDetectorCalibration": "X/D",
    "AcquisitionDeviceProcessingDescription": "X/D",
    # --- Image, SOP common, references
    "SOPInstanceUID": "U",
    "MediaStorageSOPInstanceUID": "U",
    "InstanceCreatorUID": "U",
    "FrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "ReferencedFrameOfReferenceUID": "U",
    "RelatedFrameOfReferenceUID": "U",
    "SourceFrameOfReferenceUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "ReferencedSOPInstanceUIDInFile": "U",
    "IrradiationEventUID": "U",
    "ConcatenationUID": "U",
    "DimensionOrganizationUID": "U",
    "AcquisitionUID": "U",
    "PyramidUID": "U",
    "FailedSOPInstanceUIDList": "U",
    "StorageMediaFileSetUID": "U",
    "TransactionUID": "U",
    "TrackingUID": "U",
    "TargetUID": "U",
    "FiducialUID": "U",
    "SpecimenUID": "U",
    "ObservationUID": "U",
    "UID": "U",
    "PaletteColorLookupTableUID": "U",
    "LargePaletteColorLookupTableUID": "U",
    "TemplateExtensionOrganizationUID": "U",
    "TemplateExtensionCreatorUID": "U",
    "InstanceCreationDate": "X/D",
    "InstanceCreationTime": "X/Z/D",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "AcquisitionDate": "X/Z",
    "AcquisitionTime": "X/Z",
    "AcquisitionDateTime": "X/Z/D",
    "TimezoneOffsetFromUTC": "X",
    "DateOfSecondaryCapture": "X",
    "TimeOfSecondaryCapture": "X",
    "OverlayDate": "X",
    "OverlayTime": "X",
    "CurveDate": "X",
    "CurveTime": "X",
    "ContrastBolusAgent": "Z/D",
    "ContrastBolusStartTime": "X",
    "ContrastBolusStopTime": "X",
    "ImageComments": "X",
    "FrameComments": "X",
    "IdentifyingComments": "X",
    "DerivationDescription": "X",
    "AcquisitionComments": "X",
    "AcquisitionProtocolDescription": "X",
    "IconImageSequence": "X",
    "ReferencedImageSequence": "X/Z/U*",
    "SourceImageSequence": "X/Z/U*",
    "GraphicAnnotationSequence": "D",
    "TextString": "X",
    "TextComments": "X",
    # --- Structured content, signatures, audit trail
    "ContentSequence": "D",
    "PersonName": "D",
    "ContentCreatorName": "Z/D",
    "ReviewerName": "X/Z",
    "VerifyingObserverName": "D",
    "VerifyingObserverSequence": "D",
    "VerifyingOrganization": "D",
    "VerificationDateTime": "D",
    "OriginalAttributesSequence": "X",
    "ModifiedAttributesSequence": "X",
    "MAC": "X",
    "DigitalSignaturesSequence": "X",
    "DataSetTrailingPadding": "X",
}

#: How each action code of :data:`ACTIONS` is carried out (module docstring: compound codes).
RESOLVED_ACTION: Final[dict[str, str]] = {
    "X": "X",
    "Z": "Z",
    "D": "D",
    "U": "U",
    "Z/D": "Z",
    "X/Z": "X",
    "X/D": "X",
    "X/Z/D": "X",
    "X/Z/U*": "U*",
}

#: Values written to De-identification Method (0012,0063) (LO, VM 1-n, 64 characters per value).
DEIDENTIFICATION_METHOD: Final[tuple[str, ...]] = (
    "DICOM PS3.15 E.1 Basic Application Confidentiality Profile",
    "mimicry: private tags, overlays and curves removed",
    "mimicry: UIDs replaced by salted HMAC-SHA256 UIDs",
    "mimicry: pixel data unchanged; burned-in text NOT removed",
)

# (0012,0064) De-identification Method Code Sequence item, CID 7050.
_BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

# File Meta Information elements naming the sending/receiving systems, or carrying private information.
_FILE_META_REMOVE = (
    0x00020016,
    0x00020017,
    0x00020018,
    0x00020026,
    0x00020027,
    0x00020028,
    0x00020100,
    0x00020102,
)

_TAG_ACTIONS: dict[BaseTag, str] = {}
for _keyword, _code in ACTIONS.items():
    _tag = tag_for_keyword(_keyword)
    if _tag is None:  # pragma: no cover - guarded by a unit test against the installed dictionary
        raise RuntimeError(f"{_keyword} is not a DICOM keyword known to pydicom")
    _TAG_ACTIONS[Tag(_tag)] = RESOLVED_ACTION[_code]

_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
# A root leaves room for at least 20 decimal digits (~66 bits) of the hash within the 64-character limit.
_MAX_UID_ROOT_LEN = 43
_SAFETY_NET_VRS = frozenset({"PN", "DA", "DT"})
# D (dummy) values by VR; UIDs are handled by U and sequences are emptied.
_DUMMY = {
    "PN": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
}


def _salt_bytes(salt: str | bytes) -> bytes:
    key = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    if not key:
        raise ValueError("salt must not be empty: without it the UID mapping can be reversed by trial")
    return key


def _check_uid_root(uid_root: str) -> None:
    if not _UID_ROOT_RE.match(uid_root) or len(uid_root) > _MAX_UID_ROOT_LEN:
        raise ValueError(
            f"uid_root must be a valid UID prefix (PS3.5 §9.1) of at most {_MAX_UID_ROOT_LEN} characters"
        )


def remap_uid(uid: str, *, salt: str | bytes, uid_root: str = "2.25") -> str:
    """Return the de-identified replacement of ``uid`` (PS3.15 E.1-1 action ``U``).

    ``HMAC-SHA256(key=salt, msg=uid)`` is turned into a UID under ``uid_root``:

    * ``"2.25"`` (default, PS3.5 B.2): the first 128 bits, with the RFC 9562 version (8, vendor-specific)
      and variant bits set, as a decimal UUID integer: ``2.25.<at most 39 digits>``;
    * any other root: ``<root>.<the digest as an integer modulo 10**(63 - len(root))>``, so the UID fits
      in 64 characters.

    The same ``uid`` and salt always give the same output, so references between instances survive
    de-identification; without the salt the mapping can neither be inverted nor tested against known UIDs.
    A ``str`` salt is used as its UTF-8 bytes.
    """
    _check_uid_root(uid_root)
    digest = hmac.new(_salt_bytes(salt), str(uid).strip("\x00 ").encode("ascii"), hashlib.sha256).digest()
    if uid_root == "2.25":
        value = int.from_bytes(digest[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # version field = 8
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant field = 0b10
        return f"2.25.{value}"
    room = 64 - len(uid_root) - 1
    return f"{uid_root}.{int.from_bytes(digest, 'big') % 10**room}"


def deidentify(ds: Dataset, *, uid_root: str = "2.25", salt: str | bytes) -> Dataset:
    """Return a de-identified copy of ``ds`` (PS3.15 E.1 Basic Application Level Confidentiality Profile).

    Args:
        ds: The dataset (e.g. from ``pydicom.dcmread``); it is deep-copied and never modified.
        uid_root: Root of the replacement UIDs (:func:`remap_uid`); the default ``"2.25"`` makes
            UUID-derived UIDs that need no registered root.
        salt: Secret key of the UID mapping. Use one salt per de-identification project: the same UID
            and salt always map to the same replacement (consistent across files of a study and across
            runs); a different salt unlinks the outputs.

    Returns:
        The de-identified copy. In it, the attributes of :data:`ACTIONS` are removed, emptied, replaced
        by a dummy or (UIDs, including Media Storage SOP Instance UID (0002,0003) and UIDs nested in
        reference sequences) remapped, wherever they are nested; any other PN/DA/DT element is emptied;
        private attributes, overlays (60xx), curves (50xx) and group lengths are removed; the preamble is
        zeroed (a dual-format preamble can carry a TIFF header); Patient Identity Removed (0012,0062) is
        ``YES``, De-identification Method (0012,0063) and De-identification Method Code Sequence
        (0012,0064) (113100, DCM) are set (appended to any earlier ones) and Longitudinal Temporal
        Information Modified (0028,0303) is ``REMOVED``. Pixel data and Burned In Annotation (0028,0301)
        are unchanged: burned-in text is **not** scrubbed.

    Raises:
        ValueError: empty ``salt`` or invalid ``uid_root``.
    """
    key = _salt_bytes(salt)
    _check_uid_root(uid_root)
    out = copy.deepcopy(ds)

    def new_uid(value: str) -> str:
        return remap_uid(value, salt=key, uid_root=uid_root)

    counts = {"X": 0, "Z": 0, "D": 0, "U": 0, "private": 0, "safety_net": 0}
    _clean_dataset(out, new_uid, counts)

    file_meta = getattr(out, "file_meta", None)
    if file_meta is not None:
        for tag in _FILE_META_REMOVE:
            if tag in file_meta:
                del file_meta[tag]
        if file_meta.get("MediaStorageSOPInstanceUID"):
            file_meta.MediaStorageSOPInstanceUID = new_uid(str(file_meta.MediaStorageSOPInstanceUID))
    if isinstance(out, FileDataset):
        if out.preamble is not None:
            out.preamble = b"\x00" * 128
        out.filename = None  # the source path can itself identify the patient

    _mark_deidentified(out)
    logger.debug(
        "de-identified dataset: removed=%d emptied=%d dummies=%d uids=%d private=%d safety_net=%d",
        counts["X"],
        counts["Z"],
        counts["D"],
        counts["U"],
        counts["private"],
        counts["safety_net"],
    )
    return out


def _is_overlay_or_curve(tag: BaseTag) -> bool:
    # Repeating groups 50xx (curves, retired) and 60xx (overlays): even groups 0x5000-0x501E, 0x6000-0x601E.
    group = tag.group
    return group % 2 == 0 and (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E)


def _clean_dataset(ds: Dataset, new_uid: Callable[[str], str], counts: dict[str, int]) -> None:
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private:
            del ds[tag]
            counts["private"] += 1
            continue
        if _is_overlay_or_curve(tag) or (tag.element == 0 and tag.group != 0x0002):
            del ds[tag]
            counts["X"] += 1
            continue
        action = _TAG_ACTIONS.get(tag)
        if action is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    _clean_dataset(item, new_uid, counts)
            elif elem.VR in _SAFETY_NET_VRS and not elem.is_empty:
                elem.value = empty_value_for_VR(elem.VR)
                counts["safety_net"] += 1
            continue
        _apply(ds, elem, action, new_uid, counts)


def _apply(
    ds: Dataset, elem: DataElement, action: str, new_uid: Callable[[str], str], counts: dict[str, int]
) -> None:
    if action == "X":
        del ds[elem.tag]
        counts["X"] += 1
    elif action == "Z" or (action == "D" and elem.VR == "SQ"):
        elem.value = Sequence([]) if elem.VR == "SQ" else empty_value_for_VR(elem.VR)
        counts["Z" if action == "Z" else "D"] += 1
    elif action == "D":
        dummy = _DUMMY.get(elem.VR)
        elem.value = dummy if dummy is not None else empty_value_for_VR(elem.VR)
        counts["D"] += 1
    elif action == "U":
        if elem.VR == "UI" and not elem.is_empty:
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            mapped = [new_uid(str(v)) for v in values if str(v).strip("\x00 ")]
            elem.value = mapped if len(mapped) != 1 else mapped[0]
            counts["U"] += 1
    elif action == "U*":
        if elem.VR == "SQ":
            for item in elem.value:
                _clean_dataset(item, new_uid, counts)
    else:  # pragma: no cover - RESOLVED_ACTION only produces the codes above
        raise AssertionError(action)


def _mark_deidentified(ds: Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    methods = [str(v) for v in _as_list(ds.get("DeidentificationMethod"))]
    ds.DeidentificationMethod = methods + [m for m in DEIDENTIFICATION_METHOD if m not in methods]
    codes = list(ds.get("DeidentificationMethodCodeSequence", Sequence([])))
    code_value, scheme, meaning = _BASIC_PROFILE_CODE
    if not any(
        item.get("CodeValue") == code_value and item.get("CodingSchemeDesignator") == scheme for item in codes
    ):
        item = Dataset()
        item.CodeValue = code_value
        item.CodingSchemeDesignator = scheme
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return [value]
