"""``/v1/explain?format=dicom``: a Secondary Capture of the overlay placed like every result object
(:func:`serving.results.results_policy`): in the source's study by default, with UIDs keyed by
``MIMICRY_SERVE_UID_SECRET`` and the served model (docs/serving.md, "PACS integration";
:mod:`serving.secondary_capture`)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from mimicry.dicom import remap_uid
from tests.serving.conftest import make_client

DICOM = {"content-type": "application/dicom"}


def _sc(client, data: bytes) -> pydicom.Dataset:
    r = client.post("/v1/explain?format=dicom&target=CHF", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    return pydicom.dcmread(io.BytesIO(r.content))


def test_explain_as_secondary_capture_in_the_source_study(serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_UID_SECRET", "secret-a")
    data = phantom_files[3].read_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    with make_client() as client:
        sc = _sc(client, data)
        again = _sc(client, data)
        png = client.post("/v1/explain?format=overlay&target=CHF", content=data, headers=DICOM)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
    # joins the source's study (a new series), referencing the source instance and series as they are
    assert sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.PatientID == src.PatientID
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    ref = sc.SourceImageSequence[0]
    assert ref.ReferencedSOPClassUID == src.SOPClassUID
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    series = sc.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.DerivationDescription.startswith("gradcam saliency of class CHF by cxr-toy:1")
    # deterministic: the same request gives the same series and instance
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (sc.SeriesInstanceUID, sc.SOPInstanceUID)
    # the pixels are the overlay PNG's
    want = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert sc.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(sc.pixel_array, want)
    assert want.shape == (int(src.Rows), int(src.Columns), 3)
    # another secret: other UIDs (they are keyed by MIMICRY_SERVE_UID_SECRET, not random per process)
    serve_env.setenv("MIMICRY_SERVE_UID_SECRET", "secret-b")
    with make_client() as client:
        other = _sc(client, data)
    assert other.StudyInstanceUID == src.StudyInstanceUID
    assert other.SOPInstanceUID != sc.SOPInstanceUID
    # the same secret in a fresh service instance: the same UIDs
    serve_env.setenv("MIMICRY_SERVE_UID_SECRET", "secret-a")
    with make_client() as client:
        fresh = _sc(client, data)
    assert (fresh.SeriesInstanceUID, fresh.SOPInstanceUID) == (sc.SeriesInstanceUID, sc.SOPInstanceUID)


def test_explain_as_secondary_capture_deidentified(serve_env, phantom_files) -> None:
    serve_env.setenv("MIMICRY_SERVE_UID_SECRET", "secret-a")
    serve_env.setenv("MIMICRY_SERVE_RESULTS_STUDY", "deidentified")
    data = phantom_files[3].read_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    with make_client() as client:
        r = client.post("/v1/explain?format=dicom&target=CHF", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    sc = pydicom.dcmread(io.BytesIO(r.content))
    # the de-identified copy of the source study, keyed by the secret
    assert sc.StudyInstanceUID == remap_uid(str(src.StudyInstanceUID), salt="secret-a")
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == remap_uid(
        str(src.SOPInstanceUID), salt="secret-a"
    )
    assert sc.PatientIdentityRemoved == "YES"
    for value in map(str, (src.PatientName, src.PatientID, src.StudyInstanceUID, src.SOPInstanceUID)):
        assert value.encode() not in r.content
