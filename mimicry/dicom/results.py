"""AI results as DICOM objects that a PACS files beside the source radiograph (docs/serving.md, "PACS
integration").

Three objects, built with highdicom (Structured Report and Segmentation) and pydicom (Secondary Capture), all
pure functions of the source dataset, the model's output and a :class:`UidPolicy`:

* :func:`build_sr`: a Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34) holding a TID 1500 *Imaging
  Measurement Report*, the pattern of the IHE AI Results (AIR) profile: a device observer (the model), one TID
  1501 measurement group with TID 4019 *Algorithm Identification* (model name, version and, as an algorithm
  parameter, the sha256 of the served ONNX graph), the class probabilities as numeric measurements (UCUM
  ``1``), the predicted class as the group's *Finding* (121071, DCM) and the abstain / out-of-distribution
  flags as Yes/No qualitative evaluations, with the source image referenced both as the group's source image
  and in the evidence sequence.
* :func:`build_segmentation`: the saliency map as a Segmentation (1.2.840.10008.5.1.4.1.1.66.4) on the
  source's own pixel grid: ``BINARY`` (the map thresholded, default) or ``FRACTIONAL``/``PROBABILITY`` (the
  map itself at 8 bits). highdicom builds it from the source image, copying Pixel Spacing; Patient Orientation
  is copied too (the General Image module requires it of images without a patient frame of reference). A
  Segmentation is what viewers overlay on the referenced image (OHIF, 3D Slicer, Weasis), highdicom both
  writes and reads it, and it needs no Image Position/Orientation for a projection radiograph: it references
  the source instance. A Parametric Map would keep the float values but is rarely displayed by viewers; a GSPS
  carries only graphics (outlines, text), not a map.
* :func:`build_secondary_capture`: the "burned picture" (an RGB overlay) as a Secondary Capture, for viewers
  that show nothing else. Its pixels are the source's, so Burned In Annotation is the source's.

UIDs (:class:`UidPolicy`). ``study="original"`` (default): the objects join the source's study (same Study
Instance UID, Patient and Study modules copied) so the PACS files them beside the image;
``study="deidentified"``: the source is first de-identified (:func:`mimicry.dicom.deidentify`, PS3.15 basic
profile, the policy's secret as UID key) and the objects join that de-identified copy of the study. Every new
UID (series, instance, tracking, device) is :func:`derive_uid` of the source's UIDs, the model's sha256, the
object kind and the secret: the same source and model give the same objects from every worker and replica
(a resend replaces, never duplicates), and without the secret the UIDs say nothing about the source.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from mimicry.dicom.deid import deidentify, remap_uid

__all__ = [
    "CODING_SCHEME",
    "MANUFACTURER",
    "AiAlgorithm",
    "AiFindings",
    "ResultsError",
    "UidPolicy",
    "build_secondary_capture",
    "build_segmentation",
    "build_sr",
    "derive_uid",
    "read_source",
    "to_part10",
]

#: Private coding scheme (PS3.16 8.2: designators starting with ``99`` are local) of the class concepts.
CODING_SCHEME = "99MIMICRY"
#: Manufacturer (0008,0070) of every object.
MANUFACTURER = "mimicry"
#: Series Numbers of the derived series.
SERIES_NUMBER = {"sc": 9901, "sr": 9902, "seg": 9903}

_PROCEDURE = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
_UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")
_FINDING_CATEGORY = hd.sr.CodedConcept("404684003", "SCT", "Clinical finding")
_SALIENCY = hd.sr.CodedConcept("saliency", CODING_SCHEME, "Model saliency region")
_ABSTAIN = hd.sr.CodedConcept("abstain", CODING_SCHEME, "Model abstains (prediction uncertain)")
_OOD = hd.sr.CodedConcept("ood", CODING_SCHEME, "Input out of distribution")
_COPIED_SC = (
    "SpecificCharacterSet",
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
    "PatientOrientation",
    "Laterality",
    "ImageLaterality",
    "BodyPartExamined",
    "BurnedInAnnotation",
)


class ResultsError(ValueError):
    """The source dataset or the model output cannot make a result object (missing UID, shape mismatch)."""


@dataclass(frozen=True)
class AiAlgorithm:
    """The model that produced a result (TID 4019 Algorithm Identification).

    Attributes:
        name: Model name (registry name).
        version: Model version (registry version, as text).
        sha256: sha256 of the served graph (``model.onnx``), recorded as an algorithm parameter.
        method: Saliency method of the map (``gradcam``, ...).
    """

    name: str
    version: str
    sha256: str
    method: str = "gradcam"

    def identification(self) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            parameters=[f"sha256={self.sha256}", f"saliency={self.method}"],
        )


@dataclass(frozen=True)
class AiFindings:
    """One classification: probabilities in the model's class order, the predicted class, the flags.

    ``abstain`` / ``ood`` are ``None`` when the model has no threshold / reference statistics (undecided: no
    evaluation is written).
    """

    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    predicted_index: int
    abstain: bool | None = None
    ood: bool | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.probabilities) or not self.class_names:
            raise ResultsError("class_names and probabilities must be non-empty and of equal length")
        if not 0 <= self.predicted_index < len(self.class_names):
            raise ResultsError("predicted_index is not a class index")

    @property
    def predicted(self) -> str:
        return self.class_names[self.predicted_index]


def derive_uid(secret: str | bytes, *parts: str) -> str:
    """A UID (``2.25.<uuid>``) that is a keyed hash of ``parts``: HMAC-SHA256 with ``secret``
    (:func:`mimicry.dicom.remap_uid` of the joined parts). Deterministic across processes and hosts."""
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    return remap_uid("|".join(parts), salt=secret)


@dataclass(frozen=True)
class UidPolicy:
    """Where result objects go and how their UIDs are made (module docstring).

    Attributes:
        secret: Key of every derived UID (and of the de-identification UID mapping); the same value on every
            worker and replica.
        study: ``original`` (the source's study) or ``deidentified`` (the de-identified copy of the study).
    """

    secret: str
    study: Literal["original", "deidentified"] = "original"

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("UidPolicy.secret must not be empty")
        if self.study not in ("original", "deidentified"):
            raise ValueError("UidPolicy.study must be 'original' or 'deidentified'")

    def context(self, source: Dataset) -> Dataset:
        """The dataset whose patient, study and instance identity the results carry (the source itself,
        or its de-identified copy)."""
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not str(source.get(keyword, "") or "").strip():
                raise ResultsError(f"the source has no {keyword}: results cannot reference it")
        if self.study == "original":
            return source
        return deidentify(source, salt=self.secret)

    def uid(self, source: Dataset, kind: str, algorithm: AiAlgorithm, *extra: str) -> str:
        """The UID of ``kind`` (``sr-series``, ``sr``, ...) for the result of ``algorithm`` on ``source``."""
        scope = str(source.SeriesInstanceUID) if kind.endswith("-series") else str(source.SOPInstanceUID)
        return derive_uid(self.secret, "mimicry", kind, self.study, scope, algorithm.sha256, *extra)


#: Type 2 attributes of the Patient and General Study modules: written empty when the source lacks them.
_TYPE2_CONTEXT = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _header(source: Dataset) -> Dataset:
    """The source without its pixels (highdicom copies patient/study attributes from it), with the Type 2
    patient/study attributes it lacks present and empty."""
    ds = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:
            ds.add(elem)
    for keyword in _TYPE2_CONTEXT:
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.file_meta = getattr(source, "file_meta", FileMetaDataset())
    return ds


def _coding_scheme() -> DicomSequence:
    """SOP Common Coding Scheme Identification Sequence declaring :data:`CODING_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = "mimicry model classes and flags"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return DicomSequence([item])


def _series_description(text: str) -> str:
    return text[:64]


def build_sr(
    source: Dataset, findings: AiFindings, algorithm: AiAlgorithm, policy: UidPolicy
) -> hd.sr.Comprehensive3DSR:
    """The classification as a TID 1500 Imaging Measurement Report in a Comprehensive 3D SR.

    Args:
        source: The source image's dataset (pixel data not needed).
        findings: Probabilities, predicted class, flags.
        algorithm: The model.
        policy: Study placement and UID derivation.

    Raises:
        ResultsError: the source lacks a UID it must be referenced by.
    """
    ctx = policy.context(_header(source))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid(policy.secret, "mimicry", "device", algorithm.sha256),
            name=algorithm.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{algorithm.name}:{algorithm.version}"[:64],
        ),
    )
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"p:{name}", CODING_SCHEME, f"Probability of {name}"),
            value=float(p),
            unit=_UNIT_ONE,
        )
        for name, p in zip(findings.class_names, findings.probabilities, strict=True)
    ]
    evaluations = []
    for concept, flag in ((_ABSTAIN, findings.abstain), (_OOD, findings.ood)):
        if flag is not None:
            evaluations.append(
                hd.sr.QualitativeEvaluation(name=concept, value=codes.SCT.Yes if flag else codes.SCT.No)
            )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=policy.uid(ctx, "tracking", algorithm), identifier="mimicry classification"
        ),
        algorithm_id=algorithm.identification(),
        finding_category=_FINDING_CATEGORY,
        finding_type=hd.sr.CodedConcept(findings.predicted, CODING_SCHEME, findings.predicted),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ctx)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_PROCEDURE,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[ctx],
        content=report[0],
        series_instance_uid=policy.uid(ctx, "sr-series", algorithm),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=policy.uid(ctx, "sr", algorithm),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=_series_description(f"AI result {algorithm.name}:{algorithm.version}"),
    )
    sr.CodingSchemeIdentificationSequence = _coding_scheme()
    return sr


def build_segmentation(
    source: Dataset,
    saliency: np.ndarray,
    algorithm: AiAlgorithm,
    policy: UidPolicy,
    *,
    target: str,
    threshold: float = 0.5,
    fractional: bool = False,
) -> hd.seg.Segmentation:
    """The saliency map (``float[Rows, Columns]`` in ``[0, 1]`` on the source grid) as a Segmentation.

    Args:
        source: The source image's dataset (pixel data not needed).
        saliency: The map on the source's pixel grid.
        algorithm: The model and saliency method.
        policy: Study placement and UID derivation.
        target: The class the map explains (segment label).
        threshold: ``BINARY``: pixels with ``saliency >= threshold`` form the segment.
        fractional: Write the map itself (``FRACTIONAL``, ``PROBABILITY``, 8 bits) instead of the threshold.

    Raises:
        ResultsError: the map's shape is not the source's ``(Rows, Columns)``, or a UID is missing.
    """
    ctx = policy.context(_header(source))
    smap = np.asarray(saliency, dtype=np.float32)
    shape = (int(ctx.get("Rows", 0) or 0), int(ctx.get("Columns", 0) or 0))
    if smap.shape != shape:
        raise ResultsError(f"the saliency map has shape {smap.shape}, the source is {shape}")
    if not np.isfinite(smap).all():
        raise ResultsError("the saliency map has non-finite values")
    smap = np.clip(smap, 0.0, 1.0)
    pixels = smap if fractional else (smap >= threshold)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"{algorithm.method} {target}"[:64],
        segmented_property_category=_FINDING_CATEGORY,
        segmented_property_type=_SALIENCY,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64],
            version=algorithm.version[:64],
            family=codes.cid7162.ArtificialIntelligence,
            parameters={"sha256": algorithm.sha256, "saliency": algorithm.method, "target": target},
        ),
        tracking_uid=policy.uid(ctx, "seg-tracking", algorithm, algorithm.method, target),
        tracking_id=f"mimicry saliency {target}"[:64],
    )
    pixel_measures = None
    if "FrameOfReferenceUID" not in ctx and "PixelSpacing" in ctx:
        # A projection image has no slice: PS3.3 C.7.6.16.2.1 requires Slice Thickness only with a Frame of
        # Reference, but highdicom's reader insists on it, so a nominal 1 mm is written (never used for a
        # single-frame 2-D map).
        pixel_measures = hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in ctx.PixelSpacing], slice_thickness=1.0
        )
    seg = hd.seg.Segmentation(
        source_images=[ctx],
        pixel_measures=pixel_measures,
        pixel_array=pixels,
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=[description],
        series_instance_uid=policy.uid(ctx, "seg-series", algorithm),
        series_number=SERIES_NUMBER["seg"],
        sop_instance_uid=policy.uid(
            ctx, "seg", algorithm, algorithm.method, target, str(threshold), str(fractional)
        ),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{algorithm.name}:{algorithm.version}"[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.sha256[:64] or "unknown",
        content_label="SALIENCY",
        content_description=f"{algorithm.method} saliency of {target}"[:64],
        series_description=_series_description(f"AI saliency {algorithm.name}:{algorithm.version}"),
        omit_empty_frames=False,
    )
    seg.CodingSchemeIdentificationSequence = _coding_scheme()
    # General Image: Patient Orientation is Type 2C for images without Image Orientation (Patient)
    seg.PatientOrientation = ctx.get("PatientOrientation", "") or ""
    return seg


def build_secondary_capture(
    source: Dataset,
    overlay: np.ndarray,
    algorithm: AiAlgorithm,
    policy: UidPolicy,
    *,
    description: str,
    target: str = "",
) -> Dataset:
    """An RGB overlay (``uint8[Rows, Columns, 3]``, the source's pixels tinted by the map) as a Secondary
    Capture (PS3.3 A.8.1) in the source's (or the de-identified) study.

    Source Image Sequence and Referenced Series Sequence name the source; Image Type ``DERIVED\\SECONDARY``,
    Conversion Type ``WSD``, Modality ``OT``; Patient Orientation, Laterality, Body Part Examined and Burned
    In Annotation are the source's (the overlay shows the source's pixels, burned-in text included; an absent
    Burned In Annotation is written as ``YES``: nothing says the source is free of it).

    Raises:
        ResultsError: the overlay is not ``uint8[Rows, Columns, 3]`` of the source, or a UID is missing.
    """
    ctx = policy.context(_header(source))
    rgb = np.ascontiguousarray(overlay)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ResultsError(f"overlay must be uint8[H, W, 3], got {rgb.dtype}{list(rgb.shape)}")
    if "Rows" in ctx and (int(ctx.Rows), int(ctx.Columns)) != rgb.shape[:2]:
        raise ResultsError("the overlay is not on the source's pixel grid")
    ds = Dataset()
    for keyword in _COPIED_SC:
        if keyword in ctx:
            ds.add(ctx[keyword])
    ds.PatientName = ctx.get("PatientName", "")
    ds.PatientID = ctx.get("PatientID", "")
    ds.PatientBirthDate = ctx.get("PatientBirthDate", "")
    ds.PatientSex = ctx.get("PatientSex", "")
    ds.StudyDate = ctx.get("StudyDate", "")
    ds.StudyTime = ctx.get("StudyTime", "")
    ds.ReferringPhysicianName = ctx.get("ReferringPhysicianName", "")
    ds.StudyID = ctx.get("StudyID", "")
    ds.AccessionNumber = ctx.get("AccessionNumber", "")
    ds.PatientOrientation = ctx.get("PatientOrientation", "") or ""
    burned = str(ctx.get("BurnedInAnnotation", "") or "").upper()
    ds.BurnedInAnnotation = burned if burned in ("YES", "NO") else "YES"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = policy.uid(ctx, "sc", algorithm, algorithm.method, target)
    ds.SeriesInstanceUID = policy.uid(ctx, "sc-series", algorithm)
    ds.SeriesNumber = SERIES_NUMBER["sc"]
    ds.InstanceNumber = 1
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Manufacturer = MANUFACTURER
    ds.DerivationDescription = description[:1024]
    ds.SeriesDescription = _series_description(f"AI saliency overlay {algorithm.name}:{algorithm.version}")

    def reference() -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ctx.SOPClassUID
        ref.ReferencedSOPInstanceUID = ctx.SOPInstanceUID
        return ref

    ds.SourceImageSequence = DicomSequence([reference()])
    series = Dataset()
    series.SeriesInstanceUID = ctx.SeriesInstanceUID
    series.ReferencedInstanceSequence = DicomSequence([reference()])
    ds.ReferencedSeriesSequence = DicomSequence([series])
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in ctx:
            ds.add(ctx[keyword])
    h, w, _ = rgb.shape
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if "PixelSpacing" in ctx:  # SC Image module: Pixel Spacing (Type 3) of the source grid
        ds.PixelSpacing = ctx.PixelSpacing
    ds.PixelData = rgb.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def to_part10(ds: Dataset) -> bytes:
    """DICOM Part 10 bytes of a result object."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_source(data: bytes | Sequence[int]) -> Dataset:
    """The source dataset without pixels (the builders need only its header)."""
    return pydicom.dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True, force=True)
