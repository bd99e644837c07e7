"""AI result objects (:mod:`mimicry.dicom.results`) checked by implementations we did not write: dciodvfy
(dicom3tools, the IOD validator) must report zero errors, and highdicom and pydicom must read every object
back with the values we put in. Sources: the phantom generator's DX, the same image relabelled as CR, both
with and without Pixel Spacing / Patient Orientation, and pydicom's bundled CT_small (Image Position and
Orientation, Frame of Reference)."""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, SecondaryCaptureImageStorage

from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.dicom import remap_uid
from mimicry.dicom.results import (
    AiAlgorithm,
    AiFindings,
    ResultsError,
    UidPolicy,
    build_secondary_capture,
    build_segmentation,
    build_sr,
    to_part10,
)

ALGO = AiAlgorithm(name="cxr-toy", version="3", sha256="ab" * 32, method="gradcam")
FINDINGS = AiFindings(("Normal", "CHF", "pneumonia"), (0.15, 0.7, 0.15), 1, abstain=False, ood=True)
POLICY = UidPolicy(secret="shared-secret")
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def phantom_dx(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("results") / "phantom"
    generate_phantom_dataset(out, PhantomConfig(n=1, size=64, seed=11))
    return pydicom.dcmread(next(out.rglob("*.dcm")))


def _variant(ds: Dataset, kind: str) -> Dataset:
    ds = copy.deepcopy(ds)
    if kind.startswith("cr"):
        ds.SOPClassUID = ComputedRadiographyImageStorage
        ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
        ds.Modality = "CR"
        for keyword in ("PresentationIntentType", "DetectorType"):
            if keyword in ds:
                delattr(ds, keyword)
    if kind == "dx-minimal":  # no Type 2 patient/study attributes at all, no Specific Character Set
        for keyword in (
            "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
            "AccessionNumber", "ReferringPhysicianName", "SpecificCharacterSet", "Manufacturer",
        ):  # fmt: skip
            delattr(ds, keyword)
    if kind.endswith("bare"):
        for keyword in ("PixelSpacing", "ImagerPixelSpacing", "PatientOrientation", "BurnedInAnnotation"):
            if keyword in ds:
                delattr(ds, keyword)
    return ds


@pytest.fixture(params=["dx", "dx-bare", "dx-minimal", "cr", "cr-bare", "ct_small"])
def source(request: pytest.FixtureRequest, phantom_dx: Dataset) -> Dataset:
    if request.param == "ct_small":
        return pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return _variant(phantom_dx, request.param)


def _saliency(ds: Dataset) -> np.ndarray:
    rows, cols = int(ds.Rows), int(ds.Columns)
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.exp(-(((yy - rows / 3) / (rows / 6)) ** 2 + ((xx - cols / 2) / (cols / 5)) ** 2)).astype(
        np.float32
    )


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    if DCIODVFY is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is missing: run scripts/system-deps.sh")
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def _content(items: pydicom.Sequence, meaning: str) -> list[Dataset]:
    """Every SR content item (at any depth) whose concept name has this meaning."""
    found = []
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeMeaning == meaning:
            found.append(item)
        if "ContentSequence" in item:
            found += _content(item.ContentSequence, meaning)
    return found


def _valid(tmp_path: Path, name: str, ds: Dataset) -> Dataset:
    """Part 10 bytes → zero dciodvfy errors → pydicom reads them back."""
    data = to_part10(ds)
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    errors, _ = _dciodvfy(path)
    assert errors == [], f"{name}: {errors}"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    return back


def test_sr_is_valid_tid1500_referencing_the_source(tmp_path: Path, source: Dataset) -> None:
    back = _valid(tmp_path, "sr", build_sr(source, FINDINGS, ALGO, POLICY))
    assert back.StudyInstanceUID == source.StudyInstanceUID  # filed beside the image
    assert back.PatientID == source.get("PatientID", "")
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    sr = hd.sr.srread(io.BytesIO(to_part10(back)))
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    got = {m.name.meaning: (m.value, m.unit.value) for m in groups[0].get_measurements()}
    assert got == {
        f"Probability of {c}": (p, "1")
        for c, p in zip(FINDINGS.class_names, FINDINGS.probabilities, strict=True)
    }
    assert groups[0].finding_type.value == "CHF"
    flags = {q.name.meaning: q.value.value for q in groups[0].get_qualitative_evaluations()}
    assert flags["Model abstains (prediction uncertain)"] == "373067005"  # SCT No
    assert flags["Input out of distribution"] == "373066001"  # SCT Yes
    (src_img,) = groups[0].source_images
    assert src_img.referenced_sop_instance_uid == source.SOPInstanceUID
    assert _content(back.ContentSequence, "Algorithm Name")[0].TextValue == "cxr-toy"
    assert _content(back.ContentSequence, "Algorithm Version")[0].TextValue == "3"
    params = [x.TextValue for x in _content(back.ContentSequence, "Algorithm Parameters")]
    assert f"sha256={ALGO.sha256}" in params
    device = _content(back.ContentSequence, "Device Observer Name")[0]
    assert device.TextValue == "cxr-toy"


def test_segmentation_overlays_the_source_grid(tmp_path: Path, source: Dataset) -> None:
    smap = _saliency(source)
    back = _valid(tmp_path, "seg", build_segmentation(source, smap, ALGO, POLICY, target="CHF"))
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert (back.Rows, back.Columns) == (source.Rows, source.Columns)
    seg = hd.seg.segread(io.BytesIO(to_part10(back)))
    assert seg.get_source_image_uids()[0][2] == source.SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], (smap >= 0.5).astype(pixels.dtype))
    measures = (
        back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0] if "PixelSpacing" in source else None
    )
    if measures is not None:
        assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    if "PatientOrientation" in source:
        assert list(back.PatientOrientation) == list(source.PatientOrientation)
    algo = back.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "cxr-toy"
    assert algo.AlgorithmVersion == "3"
    assert ALGO.sha256 in algo.AlgorithmParameters


def test_fractional_segmentation_keeps_the_map(tmp_path: Path, phantom_dx: Dataset) -> None:
    smap = _saliency(phantom_dx)
    back = _valid(
        tmp_path, "segf", build_segmentation(phantom_dx, smap, ALGO, POLICY, target="CHF", fractional=True)
    )
    seg = hd.seg.segread(io.BytesIO(to_part10(back)))
    assert seg.segmentation_type.value == "FRACTIONAL"
    pixels = seg.get_pixels_by_source_instance(
        [phantom_dx.SOPInstanceUID], segment_numbers=[1], rescale_fractional=True
    )
    np.testing.assert_allclose(pixels[0, :, :, 0], smap, atol=1 / 255 + 1e-6)


def test_secondary_capture_is_valid_and_propagates_burned_in_annotation(
    tmp_path: Path, source: Dataset
) -> None:
    rgb = np.zeros((int(source.Rows), int(source.Columns), 3), np.uint8)
    rgb[..., 0] = 200
    sc = build_secondary_capture(
        source, rgb, ALGO, POLICY, description="gradcam of CHF by cxr-toy:3", target="CHF"
    )
    back = _valid(tmp_path, "sc", sc)
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # the overlay shows the source's pixels: its burned-in text too; unknown → YES
    assert back.BurnedInAnnotation == source.get("BurnedInAnnotation", "YES")
    assert list(back.get("PatientOrientation", []) or []) == list(source.get("PatientOrientation", []) or [])
    np.testing.assert_array_equal(back.pixel_array, rgb)
    image = hd.imread(io.BytesIO(to_part10(back)))  # highdicom's generic image reader
    np.testing.assert_array_equal(image.get_frame(1), rgb)


def test_burned_in_yes_is_kept(phantom_dx: Dataset) -> None:
    src = copy.deepcopy(phantom_dx)
    src.BurnedInAnnotation = "YES"
    rgb = np.zeros((int(src.Rows), int(src.Columns), 3), np.uint8)
    assert build_secondary_capture(src, rgb, ALGO, POLICY, description="d").BurnedInAnnotation == "YES"


def test_uids_are_deterministic_keyed_and_distinct(phantom_dx: Dataset) -> None:
    smap = _saliency(phantom_dx)
    a = build_sr(phantom_dx, FINDINGS, ALGO, POLICY)
    b = build_sr(phantom_dx, FINDINGS, ALGO, UidPolicy(secret="shared-secret"))  # another worker
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    other = build_sr(phantom_dx, FINDINGS, ALGO, UidPolicy(secret="another-secret"))
    assert other.SOPInstanceUID != a.SOPInstanceUID
    newer = build_sr(phantom_dx, FINDINGS, AiAlgorithm("cxr-toy", "4", "cd" * 32), POLICY)
    assert newer.SOPInstanceUID != a.SOPInstanceUID  # another model version never overwrites
    seg = build_segmentation(phantom_dx, smap, ALGO, POLICY, target="CHF")
    uids = {a.SOPInstanceUID, seg.SOPInstanceUID, phantom_dx.SOPInstanceUID}
    assert len(uids) == 3
    assert len({a.SeriesInstanceUID, seg.SeriesInstanceUID, phantom_dx.SeriesInstanceUID}) == 3
    for uid in (a.SOPInstanceUID, a.SeriesInstanceUID, seg.SOPInstanceUID):
        assert len(uid) <= 64
        assert uid.startswith("2.25.")


def test_deidentified_study_mode(tmp_path: Path, phantom_dx: Dataset) -> None:
    policy = UidPolicy(secret="shared-secret", study="deidentified")
    back = _valid(tmp_path, "sr-deid", build_sr(phantom_dx, FINDINGS, ALGO, policy))
    assert back.StudyInstanceUID == remap_uid(str(phantom_dx.StudyInstanceUID), salt="shared-secret")
    assert back.PatientIdentityRemoved == "YES"
    data = to_part10(back)
    for phi in (
        phantom_dx.PatientName,
        phantom_dx.PatientID,
        phantom_dx.StudyInstanceUID,
        phantom_dx.SOPInstanceUID,
    ):
        assert str(phi).encode() not in data


def test_bad_inputs_are_typed_errors(phantom_dx: Dataset) -> None:
    with pytest.raises(ResultsError, match="shape"):
        build_segmentation(phantom_dx, np.zeros((3, 3), np.float32), ALGO, POLICY, target="CHF")
    no_uid = copy.deepcopy(phantom_dx)
    del no_uid.SOPInstanceUID
    with pytest.raises(ResultsError, match="SOPInstanceUID"):
        build_sr(no_uid, FINDINGS, ALGO, POLICY)
    with pytest.raises(ResultsError):
        AiFindings(("a", "b"), (1.0,), 0)
    with pytest.raises(ResultsError, match="overlay"):
        build_secondary_capture(phantom_dx, np.zeros((2, 2), np.uint8), ALGO, POLICY, description="d")
