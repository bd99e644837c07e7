"""Reduced-resolution decoding of JPEG 2000 films (``read_dicom(min_side=...)``).

The reduced decode must feed the model what the full decode would, within a stated tolerance: the oracle is
pydicom's own full-resolution decode (pylibjpeg-openjpeg) followed by the same letterbox.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

from mimicry.dicom import read_dicom
from mimicry.dicom.read import reduced_shape, resolution_level
from mimicry.preprocess import letterbox


def _film(rows: int, columns: int, *, signed: bool = False, bits: int = 12) -> bytes:
    """A film-like 12-bit DX image (smooth anatomy, a collimation edge, noise), JPEG 2000 lossless."""
    import io

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    dy, dx = (yy - rows / 2) / (rows / 3), (xx - columns / 2) / (columns / 4)
    img = 0.3 + 0.4 * np.exp(-(dy**2 + dx**2))
    img[:, : columns // 12] = 0.05
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    top = 2**bits - 1
    stored = np.round(img * top).astype(np.int16 if signed else np.uint16)
    if signed:
        stored = (stored - 2 ** (bits - 1)).astype(np.int16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_resolution_level_keeps_the_longer_side_at_least_min_side() -> None:
    assert resolution_level((3000, 2500), 448) == 2  # 750 >= 448 > 375
    assert reduced_shape((3000, 2500), 2) == (750, 625)
    assert reduced_shape((2049, 1001), 1) == (1025, 501)  # ceil, as JPEG 2000 sub-sampling is
    assert resolution_level((300, 250), 448) == 0


@pytest.fixture(scope="module")
def film() -> bytes:
    return _film(1600, 1280)


def test_reduced_decode_feeds_the_model_what_the_full_decode_does(film: bytes) -> None:
    full = read_dicom(film)
    reduced = read_dicom(film, min_side=448)
    assert full.level == 0
    assert reduced.level == 1  # 800 >= 448 > 400
    assert reduced.pixels.shape == (800, 640)
    assert reduced.meta == full.meta  # the header is the file's, not the reduced image's
    a, box_a = letterbox(full.pixels, 224)
    b, box_b = letterbox(reduced.pixels, 224)
    assert box_a.scaled_shape == box_b.scaled_shape
    diff = np.abs(a - b)
    # Stated tolerance of the reduced path (display units [0, 1]): the 5/3 wavelet low-pass vs an exact
    # area average differ only near edges, well inside the quantisation of a 12-bit film's contrast.
    assert diff.mean() < 0.002
    assert diff.max() < 0.05


def test_signed_data_and_other_syntaxes_decode_in_full() -> None:
    signed = _film(1200, 1000, signed=True)
    assert read_dicom(signed, min_side=256).level == 0
    from pydicom.data import get_testdata_file

    native = get_testdata_file("CT_small.dcm")
    from mimicry.settings import IngestSettings

    image = read_dicom(native, settings=IngestSettings(allow_any_modality=True), min_side=16)
    assert image.level == 0


def test_min_side_larger_than_the_image_decodes_in_full(film: bytes) -> None:
    image = read_dicom(film, min_side=5000)
    assert image.level == 0
    assert image.pixels.shape == (1600, 1280)


def _htj2k_film(rows: int, columns: int) -> tuple[bytes, np.ndarray]:
    """A 16-bit DX film encoded as HTJ2K lossless (ITU-T T.814) by OpenJPH through imagecodecs."""
    import io

    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless

    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    stored = (20000 + 15000 * np.sin(yy / 97.0) * np.cos(xx / 71.0) + rng.normal(0, 50, yy.shape)).astype(
        np.uint16
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(stored, reversible=True)])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), stored


def test_htj2k_films_are_read_exactly_and_can_be_reduced() -> None:
    data, stored = _htj2k_film(1024, 900)
    full = read_dicom(data)
    assert full.meta.transfer_syntax_uid == "1.2.840.10008.1.2.4.201"
    # lossless and no VOI: the display value is stored / (2^16 - 1)
    np.testing.assert_allclose(full.pixels, stored / 65535.0, atol=1e-6)
    reduced = read_dicom(data, min_side=448)
    assert reduced.level == 1
    a, _ = letterbox(full.pixels, 224)
    b, _ = letterbox(reduced.pixels, 224)
    assert np.abs(a - b).mean() < 0.002
