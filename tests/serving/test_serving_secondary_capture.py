"""``/v1/explain?format=dicom``: a de-identified Secondary Capture of the overlay in the source's study
(docs/serving.md, "Endpoints"; :mod:`serving.secondary_capture`)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from mimicry.dicom import remap_uid

DICOM = {"content-type": "application/dicom"}
SALT = "test-salt"  # conftest's MIMICRY_SERVE_INGEST__UID_SALT


def test_explain_as_secondary_capture(client, phantom_files) -> None:
    data = phantom_files[3].read_bytes()
    src = pydicom.dcmread(io.BytesIO(data))
    r = client.post("/v1/explain?format=dicom&target=CHF", content=data, headers=DICOM)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    sc = pydicom.dcmread(io.BytesIO(r.content))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
    # in the de-identified copy of the source study, referencing the (remapped) source instance and series
    assert sc.StudyInstanceUID == remap_uid(str(src.StudyInstanceUID), salt=SALT)
    assert sc.StudyInstanceUID != src.StudyInstanceUID
    assert sc.SeriesInstanceUID != remap_uid(str(src.SeriesInstanceUID), salt=SALT)
    ref = sc.SourceImageSequence[0]
    assert ref.ReferencedSOPClassUID == src.SOPClassUID
    assert ref.ReferencedSOPInstanceUID == remap_uid(str(src.SOPInstanceUID), salt=SALT)
    series = sc.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == remap_uid(str(src.SeriesInstanceUID), salt=SALT)
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ref.ReferencedSOPInstanceUID
    assert sc.PatientIdentityRemoved == "YES"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.DerivationDescription.startswith("gradcam saliency of class CHF by cxr-toy:1")
    # no PHI anywhere in the bytes
    phi = (src.PatientName, src.PatientID, src.StudyInstanceUID, src.SOPInstanceUID)
    for value in map(str, phi):
        assert value.encode() not in r.content
    # the pixels are the overlay PNG's
    png = client.post("/v1/explain?format=overlay&target=CHF", content=data, headers=DICOM)
    want = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert sc.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(sc.pixel_array, want)
    assert want.shape == (int(src.Rows), int(src.Columns), 3)
