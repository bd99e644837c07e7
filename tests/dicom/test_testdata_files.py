"""read_dicom against every file pydicom ships (``pydicom.data.get_testdata_files()``).

Each file either decodes to a sane image or raises the typed error listed in ``EXPECTED_ERRORS``; a file
that starts failing, or starts decoding when it should be refused, fails the test. A few files are
checked against expected values computed by hand from their stored values and header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from mimicry.dicom import DicomIngestError, read_dicom
from mimicry.settings import IngestSettings

# pydicom warns about its deliberately broken files as it reads them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

ROOT = Path(pydicom.data.__file__).parent / "test_files"
SETTINGS = IngestSettings(allow_any_modality=True, max_pixels=50_000_000, uid_salt="testdata")

# Every file that must NOT decode, with the code it must raise. Files not listed must decode.
EXPECTED_ERRORS: dict[str, str] = {
    # not DICOM Part 10: text/JSON/ICC/gzip files, and bare datasets without File Meta Information
    "README.txt": "not_dicom",
    "crayons.icc": "not_dicom",
    "rtplan.dump": "not_dicom",
    "rtstruct.dump": "not_dicom",
    "test1.json": "not_dicom",
    "test_PN.json": "not_dicom",
    "zipMR.gz": "not_dicom",
    "dicomdirtests/README.txt": "not_dicom",
    "dicomdirtests/TINY_ALPHA/README": "not_dicom",
    "ExplVR_BigEndNoMeta.dcm": "not_dicom",
    "ExplVR_LitEndNoMeta.dcm": "not_dicom",
    "no_meta.dcm": "not_dicom",
    "rtstruct.dcm": "not_dicom",
    # cut short
    "MR_truncated.dcm": "truncated",
    "rtplan_truncated.dcm": "truncated",
    # File Meta Information without a Transfer Syntax UID
    "meta_missing_tsyntax.dcm": "unreadable",
    # codestreams no installed plugin decodes: a JPEG with a misplaced marker (libjpeg) in 12-bit
    # precision (Pillow); a J2K fragment containing bytes equal to a Sequence Delimitation Item, at which
    # pydicom ends the Pixel Data
    "JPEG-lossy.dcm": "unreadable",
    "JPEG2000-embedded-sequence-delimiter.dcm": "unreadable",
    # Pixel Data without Rows; Number of Frames '1A'
    "nested_priv_SQ.dcm": "invalid_geometry",
    "badVR.dcm": "invalid_geometry",
    # no Pixel Data: DICOMDIRs, SR, RT plan, ECG, header-only objects
    "UN_sequence.dcm": "no_pixel_data",
    "empty_charset_LEI.dcm": "no_pixel_data",
    "no_meta_group_length.dcm": "no_pixel_data",
    "priv_SQ.dcm": "no_pixel_data",
    "reportsi.dcm": "no_pixel_data",
    "reportsi_with_empty_number_tags.dcm": "no_pixel_data",
    "rtplan.dcm": "no_pixel_data",
    "test-SR.dcm": "no_pixel_data",
    "waveform_ecg.dcm": "no_pixel_data",
    "dicomdirtests/DICOMDIR": "no_pixel_data",
    "dicomdirtests/DICOMDIR-bigEnd": "no_pixel_data",
    "dicomdirtests/DICOMDIR-empty.dcm": "no_pixel_data",
    "dicomdirtests/DICOMDIR-implicit": "no_pixel_data",
    "dicomdirtests/DICOMDIR-nooffset": "no_pixel_data",
    "dicomdirtests/DICOMDIR-nopatient": "no_pixel_data",
    "dicomdirtests/DICOMDIR-reordered": "no_pixel_data",
    "dicomdirtests/TINY_ALPHA/DICOMDIR": "no_pixel_data",
    # several frames
    "rtdose.dcm": "multi_frame",
    "rtdose_expb.dcm": "multi_frame",
    "rtdose_rle.dcm": "multi_frame",
    # colour (RGB, YBR, palette), including the two-frame colour files
    "ExplVR_BigEnd.dcm": "colour_image",
    "GDCMJ2K_TextGBR.dcm": "colour_image",
    "SC_jpeg_no_color_transform.dcm": "colour_image",
    "SC_jpeg_no_color_transform_2.dcm": "colour_image",
    "SC_rgb_dcmtk_+eb+cr.dcm": "colour_image",
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": "colour_image",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm": "colour_image",
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "colour_image",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": "colour_image",
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": "colour_image",
    "SC_rgb_gdcm_KY.dcm": "colour_image",
    "SC_rgb_jls_lossy_line.dcm": "colour_image",
    "SC_rgb_jls_lossy_sample.dcm": "colour_image",
    "SC_rgb_jpeg.dcm": "colour_image",
    "SC_rgb_jpeg_app14_dcmd.dcm": "colour_image",
    "SC_rgb_jpeg_dcmd.dcm": "colour_image",
    "SC_rgb_jpeg_dcmtk.dcm": "colour_image",
    "SC_rgb_jpeg_gdcm.dcm": "colour_image",
    "SC_rgb_jpeg_lossy_gdcm.dcm": "colour_image",
    "SC_rgb_rle.dcm": "colour_image",
    "SC_rgb_rle_16bit.dcm": "colour_image",
    "SC_rgb_rle_16bit_2frame.dcm": "colour_image",
    "SC_rgb_rle_2frame.dcm": "colour_image",
    "SC_rgb_rle_32bit.dcm": "colour_image",
    "SC_rgb_rle_32bit_2frame.dcm": "colour_image",
    "SC_rgb_small_odd.dcm": "colour_image",
    "SC_rgb_small_odd_big_endian.dcm": "colour_image",
    "SC_rgb_small_odd_jpeg.dcm": "colour_image",
    "SC_ybr_full_422_uncompressed.dcm": "colour_image",
    "examples_jpeg2k.dcm": "colour_image",
    "examples_palette.dcm": "colour_image",
    "examples_rgb_color.dcm": "colour_image",
    "examples_ybr_color.dcm": "colour_image",
}
# The TINY_ALPHA series: instances listed by its DICOMDIR, all header-only (no Pixel Data).
EXPECTED_ERROR_PREFIXES: dict[str, str] = {
    "dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM": "no_pixel_data",
}

CR_MONOCHROME1 = (
    "dicomdirtests/77654033/CR1/6154",
    "dicomdirtests/77654033/CR2/6247",
    "dicomdirtests/77654033/CR3/6278",
)
MR_SMALL_TWINS = (
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
)


def _relative(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:  # a file from an external pydicom data source
        return path.name


FILES = sorted((Path(p) for p in get_testdata_files() if Path(p).is_file()), key=_relative)


def _expected_error(name: str) -> str | None:
    if name in EXPECTED_ERRORS:
        return EXPECTED_ERRORS[name]
    return next((code for prefix, code in EXPECTED_ERROR_PREFIXES.items() if name.startswith(prefix)), None)


def _stored(name: str, dtype: str) -> tuple[pydicom.Dataset, np.ndarray]:
    """The dataset and its stored values read straight from the Pixel Data bytes (no pydicom decoding)."""
    ds = pydicom.dcmread(ROOT / name)
    stored = np.frombuffer(ds.PixelData, dtype=dtype)[: ds.Rows * ds.Columns].reshape(ds.Rows, ds.Columns)
    return ds, stored


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) with output range [0, 1], written out by hand."""
    out = (x - (center - 0.5)) / (width - 1) + 0.5
    out = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, out)
    return np.where(x > center - 0.5 + (width - 1) / 2, 1.0, out)


def test_the_table_names_only_existing_files():
    names = {_relative(p) for p in FILES}
    assert len(names) >= 150
    assert set(EXPECTED_ERRORS) <= names
    for prefix in EXPECTED_ERROR_PREFIXES:
        assert any(name.startswith(prefix) for name in names)


@pytest.mark.parametrize("path", FILES, ids=_relative)
def test_every_pydicom_test_file(path: Path):
    name = _relative(path)
    expected = _expected_error(name)
    if expected is not None:
        with pytest.raises(DicomIngestError) as info:
            read_dicom(path, settings=SETTINGS)
        assert info.value.code == expected, info.value.detail
        return
    image = read_dicom(path, settings=SETTINGS)
    ds = pydicom.dcmread(path)
    pixels = image.pixels
    assert pixels.dtype == np.float32
    assert pixels.shape == (ds.Rows, ds.Columns) == (image.meta.rows, image.meta.columns)
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0
    assert pixels.max() <= 1.0
    assert image.meta.photometric_interpretation in ("MONOCHROME1", "MONOCHROME2")
    assert image.meta.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_the_three_cr_files_are_the_monochrome1_ones():
    monochrome1 = set()
    for path in FILES:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            monochrome1.add(_relative(path))
    assert monochrome1 == set(CR_MONOCHROME1)


@pytest.mark.parametrize("name", CR_MONOCHROME1)
def test_monochrome1_cr_exact_values(name: str):
    # 12 bits stored in 16, unsigned, Rescale Slope 0.684 / Intercept 200, Window 1600 / 2800, MONOCHROME1.
    ds, stored = _stored(name, "<u2")
    assert (ds.BitsStored, ds.PixelRepresentation, ds.WindowCenter, ds.WindowWidth) == (12, 0, 1600, 2800)
    modality = (stored & 0x0FFF) * 0.684 + 200
    expected = 1.0 - _linear_window(modality, 1600, 2800)
    pixels = read_dicom(ROOT / name, settings=SETTINGS).pixels
    np.testing.assert_allclose(pixels, expected, rtol=0, atol=1e-6)


def test_monochrome1_cr_literal_values():
    # CR1 (0,0): stored 1994 -> 1994 * 0.684 + 200 = 1563.896 -> (1563.896 - 1599.5) / 2799 + 0.5
    # = 0.4872797 -> inverted 0.5127203.
    pixels = read_dicom(ROOT / CR_MONOCHROME1[0], settings=SETTINGS).pixels
    assert pixels[0, 0] == pytest.approx(0.5127203, abs=1e-6)
    assert pixels[8, 8] == pytest.approx(1 - ((2515 * 0.684 + 200 - 1599.5) / 2799 + 0.5), abs=1e-6)


def test_ct_with_rescale_and_no_window():
    # CT_small: signed 16-bit, Rescale -1024, no VOI: range [-32768 - 1024, 32767 - 1024].
    ds, stored = _stored("CT_small.dcm", "<i2")
    assert ("WindowCenter" in ds, ds.RescaleIntercept, ds.PixelRepresentation) == (False, -1024, 1)
    expected = (stored.astype(np.float64) - 1024 - (-32768 - 1024)) / 65535
    np.testing.assert_allclose(
        read_dicom(ROOT / "CT_small.dcm", settings=SETTINGS).pixels, expected, atol=1e-6
    )


def test_ct_with_rescale_and_window():
    name = "dicomdirtests/77654033/CT2/17106"
    ds, stored = _stored(name, "<i2")
    assert (ds.WindowCenter, ds.WindowWidth, ds.RescaleIntercept) == (30, 100, -1024)
    expected = _linear_window(stored.astype(np.float64) - 1024, 30, 100)
    np.testing.assert_allclose(read_dicom(ROOT / name, settings=SETTINGS).pixels, expected, rtol=0, atol=1e-6)


def test_mr_small_window_and_compressed_twins_are_identical():
    ds, stored = _stored("MR_small.dcm", "<i2")
    assert (ds.WindowCenter, ds.WindowWidth, ds.PixelRepresentation, "RescaleSlope" in ds) == (
        600,
        1600,
        1,
        False,
    )
    expected = _linear_window(stored.astype(np.float64), 600, 1600)
    reference = read_dicom(ROOT / "MR_small.dcm", settings=SETTINGS).pixels
    np.testing.assert_allclose(reference, expected, rtol=0, atol=1e-6)
    for twin in MR_SMALL_TWINS:
        image = read_dicom(ROOT / twin, settings=SETTINGS)
        np.testing.assert_array_equal(image.pixels, reference, err_msg=twin)


def test_deflated_file_decodes():
    ds = pydicom.dcmread(ROOT / "image_dfl.dcm")  # pydicom inflates the dataset while reading
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    stored = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    image = read_dicom(ROOT / "image_dfl.dcm", settings=SETTINGS)
    np.testing.assert_allclose(image.pixels, stored / 255.0, rtol=0, atol=1e-7)


def test_default_settings_refuse_ct():
    with pytest.raises(DicomIngestError) as info:
        read_dicom(ROOT / "CT_small.dcm", settings=IngestSettings())
    assert info.value.code == "unsupported_modality"
    assert "'CT'" in info.value.detail
