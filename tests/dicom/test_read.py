"""Tests of mimicry.dicom.read_dicom on synthetic DICOM files with hand-computed expected values."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import MPEG2MPML, UID, DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

import mimicry.dicom.read as read_module
from mimicry.dicom import (
    ERROR_TYPES,
    DicomIngestError,
    SafeMetadata,
    XrayImage,
    read_dicom,
)
from mimicry.settings import IngestSettings

# Many tests feed deliberately malformed files; pydicom warns about them as it reads.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

# --------------------------------------------------------------------------------------------- errors

EXPECTED_STATUS = {
    "not_dicom": 400,
    "truncated": 400,
    "unreadable": 400,
    "invalid_geometry": 400,
    "no_pixel_data": 422,
    "unsupported_modality": 422,
    "multi_frame": 422,
    "colour_image": 422,
    "unsupported_transfer_syntax": 422,
    "image_too_large": 413,
}


def test_error_codes_are_the_documented_set_with_their_http_status():
    assert {code: cls.http_status for code, cls in ERROR_TYPES.items()} == EXPECTED_STATUS
    for code, cls in ERROR_TYPES.items():
        assert issubclass(cls, DicomIngestError)
        assert cls.code == code


def test_to_problem_is_an_rfc9457_object():
    error = ERROR_TYPES["image_too_large"]("The image is 2x2 = 4 pixels; at most 3 are accepted.")
    problem = error.to_problem()
    assert problem == {
        "type": "/problems/dicom/image_too_large",
        "title": "The DICOM image is too large",
        "status": 413,
        "detail": "The image is 2x2 = 4 pixels; at most 3 are accepted.",
        "code": "image_too_large",
    }
    assert json.loads(json.dumps(problem)) == problem
    assert error.to_problem("https://example.org/p/")["type"] == "https://example.org/p/image_too_large"


def test_error_codes_cannot_be_registered_twice():
    with pytest.raises(TypeError, match="duplicate"):
        type("Again", (DicomIngestError,), {"code": "truncated"})


# ----------------------------------------------------------------------------------- display pipeline


def test_unsigned_12_bit_without_window_maps_stored_range(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 4095, 1000], [2048, 1, 4094]], dtype=np.uint16)
    image = read_dicom(dicom_bytes(make_dataset(stored)), settings=any_modality)
    assert image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels, stored / 4095.0, rtol=0, atol=1e-7)


def test_a_dark_image_stays_dark(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 50], [100, 25]], dtype=np.uint16)
    image = read_dicom(dicom_bytes(make_dataset(stored)), settings=any_modality)
    assert image.pixels.max() == pytest.approx(100 / 4095, abs=1e-7)


def test_garbage_above_bits_stored_is_masked(make_dataset, dicom_bytes, any_modality):
    # 12 bits stored in 16 allocated; the top nibble is set to garbage (PS3.5 8.1.1: must be ignored).
    stored = np.array([[0xF000 | 100, 0xA000 | 4095], [0x5000, 0x0800]], dtype=np.uint16)
    image = read_dicom(dicom_bytes(make_dataset(stored)), settings=any_modality)
    np.testing.assert_allclose(image.pixels, [[100 / 4095, 1.0], [0.0, 2048 / 4095]], rtol=0, atol=1e-7)


def test_signed_pixel_representation_is_sign_extended_and_mapped(make_dataset, dicom_bytes, any_modality):
    # 12-bit two's complement in 16 bits with garbage above bit 11: 0xAFFF -> -1, 0x0800 -> -2048.
    raw = np.array([[0xAFFF, 0x0800], [0x07FF, 0x0000]], dtype=np.uint16)
    ds = make_dataset(raw, pixel_representation=1)
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    values = np.array([[-1, -2048], [2047, 0]], dtype=np.float64)
    np.testing.assert_allclose(image.pixels, (values + 2048) / 4095, rtol=0, atol=1e-7)


def test_rescale_slope_intercept_without_window(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[-2048, -1000], [0, 2047]], dtype=np.int16)
    ds = make_dataset(stored, RescaleSlope=2, RescaleIntercept=-100)
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    low, high = -2048 * 2 - 100, 2047 * 2 - 100
    expected = (stored * 2.0 - 100 - low) / (high - low)
    np.testing.assert_allclose(image.pixels, expected, rtol=0, atol=1e-7)


def test_negative_rescale_slope_without_window_keeps_min_black(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 4095]], dtype=np.uint16)
    ds = make_dataset(stored, RescaleSlope=-1, RescaleIntercept=0)
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_array_equal(image.pixels, [[1.0, 0.0]])  # stored 0 is the largest modality value


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) with output range [0, 1], written out by hand."""
    x = np.asarray(x, dtype=np.float64)
    out = ((x - (center - 0.5)) / (width - 1) + 0.5) * 1.0
    out = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, out)
    return np.where(x > center - 0.5 + (width - 1) / 2, 1.0, out)


def test_linear_window(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 1000, 1500, 1999], [2000, 2500, 2999, 4095]], dtype=np.uint16)
    ds = make_dataset(stored, WindowCenter=2000, WindowWidth=1000)
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_allclose(image.pixels, _linear_window(stored, 2000, 1000), rtol=0, atol=1e-6)
    assert image.pixels[0, 0] == 0.0
    assert image.pixels[1, 3] == 1.0
    assert image.pixels[1, 0] == pytest.approx(0.5 + 0.5 / 999, abs=1e-6)  # (2000 - 1999.5)/999 + 0.5


def test_window_applies_after_rescale(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 1000, 1024, 1074, 2000]], dtype=np.int16)
    ds = make_dataset(
        stored, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=100
    )
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_allclose(image.pixels, _linear_window(stored - 1024.0, 40, 100), rtol=0, atol=1e-6)


def test_multi_valued_window_uses_the_first_value(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[100, 1000, 2000, 3000]], dtype=np.uint16)
    ds = make_dataset(stored, WindowCenter=[1000, 3000], WindowWidth=[500, 200])
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_allclose(image.pixels, _linear_window(stored, 1000, 500), rtol=0, atol=1e-6)
    assert not np.allclose(image.pixels, _linear_window(stored, 3000, 200))


def test_sigmoid_window(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 900, 1000, 1100, 4095]], dtype=np.uint16)
    ds = make_dataset(stored, WindowCenter=1000, WindowWidth=200, VOILUTFunction="SIGMOID")
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - 1000.0) / 200.0))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(image.pixels, expected, rtol=0, atol=1e-6)


def test_invalid_window_falls_back_to_stored_range(make_dataset, dicom_bytes, any_modality, caplog):
    stored = np.array([[0, 4095, 2000]], dtype=np.uint16)
    ds = make_dataset(stored, WindowCenter=100, WindowWidth=0)  # LINEAR needs width >= 1
    with caplog.at_level(logging.WARNING, logger="mimicry.dicom"):
        image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_allclose(image.pixels, stored / 4095.0, rtol=0, atol=1e-7)
    assert "Window Center/Width" in caplog.text


def _voi_lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    return item


def test_voi_lut_sequence_maps_through_the_lut_and_its_output_bits(make_dataset, dicom_bytes, any_modality):
    # 8-bit LUT of 256 entries starting at input 100: entry k = 255 - k (an inverting ramp).
    lut = [255 - k for k in range(256)]
    stored = np.array([[0, 100, 101, 200], [355, 356, 4095, 228]], dtype=np.uint16)
    ds = make_dataset(stored, VOILUTSequence=Sequence([_voi_lut_item([256, 100, 8], lut)]))
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    index = np.clip(stored.astype(np.int64) - 100, 0, 255)
    np.testing.assert_allclose(image.pixels, (255 - index) / 255.0, rtol=0, atol=1e-7)


def test_voi_lut_sequence_is_preferred_to_a_window(make_dataset, dicom_bytes, any_modality):
    lut = list(range(0, 4096, 16))  # 256 entries, 12-bit output
    stored = np.array([[0, 128, 255, 300]], dtype=np.uint16)
    ds = make_dataset(
        stored, WindowCenter=50, WindowWidth=10, VOILUTSequence=Sequence([_voi_lut_item([256, 0, 12], lut)])
    )
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    expected = np.array([0, 128 * 16, 255 * 16, 255 * 16]) / 4095.0
    np.testing.assert_allclose(image.pixels[0], expected, rtol=0, atol=1e-7)


def test_voi_lut_after_rescale_rounds_modality_values(make_dataset, dicom_bytes, any_modality):
    lut = list(range(256))
    stored = np.array([[0, 10, 11, 600]], dtype=np.uint16)
    ds = make_dataset(
        stored,
        RescaleSlope=0.5,
        RescaleIntercept=-2,
        VOILUTSequence=Sequence([_voi_lut_item([256, 0, 8], lut)]),
    )
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    modality = stored * 0.5 - 2  # -2, 3, 3.5, 298
    expected = np.clip(np.rint(modality), 0, 255) / 255.0  # rint: 3.5 -> 4 (half to even)
    np.testing.assert_allclose(image.pixels[0], expected[0], rtol=0, atol=1e-7)


def test_modality_lut_sequence_without_window_uses_its_output_bits(make_dataset, dicom_bytes, any_modality):
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # PS3.3 C.11.1.1.1: 8 or 16 bits per entry
    item.LUTData = [k * 16 for k in range(4096)]
    item.ModalityLUTType = "OD"
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    stored = np.array([[0, 400, 4095]], dtype=np.uint16)
    ds = make_dataset(stored, ModalityLUTSequence=Sequence([item]))
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_allclose(image.pixels[0], np.array([0, 6400, 65520]) / 65535.0, rtol=0, atol=1e-7)


def test_monochrome1_is_inverted(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 4095, 1000]], dtype=np.uint16)
    image = read_dicom(dicom_bytes(make_dataset(stored, photometric="MONOCHROME1")), settings=any_modality)
    np.testing.assert_allclose(image.pixels, 1.0 - stored / 4095.0, rtol=0, atol=1e-7)


def test_8_bit_and_bit_packed_images(make_dataset, dicom_bytes, any_modality):
    stored = np.array([[0, 255], [128, 7]], dtype=np.uint8)
    ds = make_dataset(stored, bits_stored=8, bits_allocated=8)
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_allclose(image.pixels, stored / 255.0, rtol=0, atol=1e-7)

    bits = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=np.uint8)
    packed = np.packbits(bits.ravel(), bitorder="little").tobytes() + b"\x00"  # even length
    ds = make_dataset(bits, bits_stored=1, bits_allocated=1, pixel_data=packed)
    image = read_dicom(dicom_bytes(ds), settings=any_modality)
    np.testing.assert_array_equal(image.pixels, bits.astype(np.float32))


def test_compressed_file_matches_its_native_twin(make_dataset, dicom_bytes, any_modality):
    rng = np.random.default_rng(7)
    stored = rng.integers(0, 4096, size=(64, 48), dtype=np.uint16)
    native = make_dataset(stored, WindowCenter=2000, WindowWidth=3000)
    expected = read_dicom(dicom_bytes(native), settings=any_modality).pixels
    for syntax in (RLELossless, JPEG2000Lossless):
        ds = make_dataset(stored, WindowCenter=2000, WindowWidth=3000)
        ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")
        image = read_dicom(dicom_bytes(ds), settings=any_modality)
        assert image.meta.transfer_syntax_uid == syntax
        np.testing.assert_array_equal(image.pixels, expected)


# ------------------------------------------------------------------------------------------ metadata


def test_safe_metadata(make_dataset, dicom_bytes):
    stored = np.zeros((20, 10), dtype=np.uint16)
    ds = make_dataset(stored, ViewPosition="PA", PixelSpacing=[0.2, 0.25], ImagerPixelSpacing=[0.1, 0.1])
    settings = IngestSettings(uid_salt="pepper")
    meta = read_dicom(dicom_bytes(ds), settings=settings).meta
    expected_hash = hashlib.sha256(("pepper" + ds.SOPInstanceUID).encode()).hexdigest()[:32]
    assert meta == SafeMetadata(
        modality="DX",
        view_position="PA",
        photometric_interpretation="MONOCHROME2",
        rows=20,
        columns=10,
        pixel_spacing=(0.2, 0.25),
        bits_stored=12,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        transfer_syntax_name="Explicit VR Little Endian",
        sop_instance_uid_hash=expected_hash,
    )
    as_dict = meta.to_dict()
    assert as_dict["pixel_spacing"] == [0.2, 0.25]
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_pixel_spacing_falls_back_to_imager_pixel_spacing_then_none(make_dataset, dicom_bytes, any_modality):
    stored = np.zeros((4, 4), dtype=np.uint16)
    meta = read_dicom(
        dicom_bytes(make_dataset(stored, ImagerPixelSpacing=[0.15, 0.16])), settings=any_modality
    ).meta
    assert meta.pixel_spacing == (0.15, 0.16)
    meta = read_dicom(dicom_bytes(make_dataset(stored)), settings=any_modality).meta
    assert meta.pixel_spacing is None
    assert meta.view_position is None


def test_uid_hash_depends_on_the_salt_and_is_none_without_uid(make_dataset, dicom_bytes):
    data = dicom_bytes(make_dataset(np.zeros((2, 2), dtype=np.uint16)))
    a1 = read_dicom(data, settings=IngestSettings(uid_salt="a")).meta.sop_instance_uid_hash
    a2 = read_dicom(data, settings=IngestSettings(uid_salt="a")).meta.sop_instance_uid_hash
    b = read_dicom(data, settings=IngestSettings(uid_salt="b")).meta.sop_instance_uid_hash
    assert a1 == a2 != b
    assert len(a1) == 32
    # default settings: one random salt per process, so two reads agree
    assert read_dicom(data).meta.sop_instance_uid_hash == read_dicom(data).meta.sop_instance_uid_hash


def test_xray_image_is_frozen_and_validated(make_dataset, dicom_bytes, any_modality):
    image = read_dicom(dicom_bytes(make_dataset(np.zeros((3, 2), dtype=np.uint16))), settings=any_modality)
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.pixels = np.zeros((3, 2), dtype=np.float32)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.meta.rows = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="float32"):
        XrayImage(pixels=np.zeros((3, 2)), meta=image.meta)
    with pytest.raises(ValueError, match="shape"):
        XrayImage(pixels=np.zeros((2, 3), dtype=np.float32), meta=image.meta)


def test_no_phi_in_metadata_or_logs(phi_dataset, dicom_bytes, phi_strings, caplog):
    settings = IngestSettings(uid_salt="s")
    with caplog.at_level(logging.DEBUG, logger="mimicry"):
        image = read_dicom(dicom_bytes(phi_dataset), settings=settings)
        for bad in (IngestSettings(allowed_modalities=["CR"]), IngestSettings(max_pixels=10)):
            with pytest.raises(DicomIngestError) as info:
                read_dicom(dicom_bytes(phi_dataset), settings=bad)
            for phi in phi_strings:
                assert phi not in info.value.detail
                assert phi not in json.dumps(info.value.to_problem())
    rendered = json.dumps(image.meta.to_dict()) + repr(image)
    mimicry_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("mimicry"))
    assert "DICOM image read" in mimicry_logs
    assert "refused" in mimicry_logs
    for phi in phi_strings:
        assert phi not in rendered
        assert phi not in mimicry_logs


# -------------------------------------------------------------------------------------- input forms


def test_every_input_form_gives_the_same_image(make_dataset, dicom_bytes, any_modality, tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    data = dicom_bytes(make_dataset(stored))
    path = tmp_path / "image.dcm"
    path.write_bytes(data)
    expected = read_dicom(data, settings=any_modality).pixels
    for src in (bytearray(data), memoryview(data), str(path), path, io.BytesIO(data)):
        np.testing.assert_array_equal(read_dicom(src, settings=any_modality).pixels, expected)
    with path.open("rb") as handle:
        np.testing.assert_array_equal(read_dicom(handle, settings=any_modality).pixels, expected)


def test_files_without_preamble_are_accepted(make_dataset, dicom_bytes, any_modality):
    stored = np.arange(6, dtype=np.uint16).reshape(2, 3) * 500
    data = dicom_bytes(make_dataset(stored))
    expected = read_dicom(data, settings=any_modality).pixels
    no_preamble = data[132:]  # starts with the File Meta group (0002,0000)
    assert no_preamble[:2] == b"\x02\x00"
    np.testing.assert_array_equal(read_dicom(no_preamble, settings=any_modality).pixels, expected)
    np.testing.assert_array_equal(read_dicom(data[128:], settings=any_modality).pixels, expected)  # "DICM..."


# Fixtures here are stateless factories, so reusing them across generated examples is safe.
FUZZ = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _code(src, settings: IngestSettings | None = None) -> str:
    with pytest.raises(DicomIngestError) as info:
        read_dicom(src, settings=settings)
    assert type(info.value) is ERROR_TYPES[info.value.code]
    return info.value.code


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(np.random.default_rng(0).bytes(4096), id="random"),
        pytest.param(_png_bytes(), id="png"),
        pytest.param(b"%PDF-1.7\n" + b"0" * 300, id="pdf"),
        pytest.param(b"\x00" * 200, id="zeros"),
    ],
)
def test_non_dicom_input_is_not_dicom(payload, any_modality):
    assert _code(payload, any_modality) == "not_dicom"


def test_bare_dataset_without_file_meta_is_not_dicom(make_dataset, any_modality):
    ds = make_dataset(np.zeros((2, 2), dtype=np.uint16))
    buffer = io.BytesIO()
    dcmwrite(buffer, Dataset(ds), implicit_vr=False, little_endian=True)  # no preamble, no File Meta
    assert buffer.getvalue()[:2] == b"\x08\x00"
    assert _code(buffer.getvalue(), any_modality) == "not_dicom"


def test_path_errors_are_typed_and_do_not_echo_the_path(tmp_path, any_modality):
    missing = tmp_path / "secret-dir" / "nope.dcm"
    with pytest.raises(DicomIngestError) as info:
        read_dicom(missing, settings=any_modality)
    assert info.value.code == "unreadable"
    assert "secret-dir" not in info.value.detail
    assert "nope" not in info.value.detail
    assert _code(tmp_path, any_modality) == "unreadable"  # a directory
    assert _code(12345, any_modality) == "unreadable"  # type: ignore[arg-type]
    assert _code(io.StringIO("text"), any_modality) == "unreadable"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ refusals


def test_default_settings_accept_only_cr_and_dx(make_dataset, dicom_bytes):
    stored = np.zeros((2, 2), dtype=np.uint16)
    for modality in ("CR", "DX", "dx"):
        assert (
            read_dicom(dicom_bytes(make_dataset(stored, modality=modality))).meta.modality == modality.upper()
        )
    for modality in ("CT", "MR", None):
        assert _code(dicom_bytes(make_dataset(stored, modality=modality))) == "unsupported_modality"
    ct = dicom_bytes(make_dataset(stored, modality="CT"))
    assert read_dicom(ct, settings=IngestSettings(allowed_modalities=["ct"])).meta.modality == "CT"


def test_unlisted_modality_values_are_not_echoed(make_dataset, dicom_bytes):
    data = dicom_bytes(make_dataset(np.zeros((2, 2), dtype=np.uint16), modality="DOEJANE"))
    with pytest.raises(DicomIngestError) as info:
        read_dicom(data)
    assert "DOEJANE" not in info.value.detail
    data = dicom_bytes(make_dataset(np.zeros((2, 2), dtype=np.uint16), modality="CT"))
    with pytest.raises(DicomIngestError, match="'CT'"):
        read_dicom(data)


def test_max_pixels_is_checked_before_decoding(make_dataset, dicom_bytes, monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("pixel data decoded before the size check")

    monkeypatch.setattr(read_module, "pixel_array", must_not_decode)
    data = dicom_bytes(make_dataset(np.zeros((64, 64), dtype=np.uint16)))
    with pytest.raises(DicomIngestError) as info:
        read_dicom(data, settings=IngestSettings(max_pixels=64 * 64 - 1))
    assert info.value.code == "image_too_large"
    assert info.value.http_status == 413
    # a header claiming 60000 x 60000 pixels over 8 bytes of data: refused on size, nothing allocated
    huge = make_dataset(np.zeros((2, 2), dtype=np.uint16), Rows=60000, Columns=60000)
    assert _code(dicom_bytes(huge), IngestSettings()) == "image_too_large"


def test_exactly_max_pixels_is_accepted(make_dataset, dicom_bytes):
    data = dicom_bytes(make_dataset(np.zeros((8, 8), dtype=np.uint16)))
    assert read_dicom(data, settings=IngestSettings(max_pixels=64)).pixels.shape == (8, 8)


def test_truncated_inside_pixel_data(make_dataset, dicom_bytes, any_modality):
    data = dicom_bytes(make_dataset(np.arange(400, dtype=np.uint16).reshape(20, 20)))
    for cut in (len(data) - 1, len(data) - 400, len(data) - 799):
        assert _code(data[:cut], any_modality) == "truncated"


def test_truncated_inside_encapsulated_pixel_data(make_dataset, dicom_bytes, any_modality):
    ds = make_dataset(np.arange(400, dtype=np.uint16).reshape(20, 20) * 9)
    ds.compress(RLELossless)
    data = dicom_bytes(ds)
    start = data.index(b"\xe0\x7f\x10\x00")
    for cut in (start + 20, (start + len(data)) // 2, len(data) - 3):
        assert _code(data[:cut], any_modality) == "truncated"


def test_every_cut_of_a_file_is_refused_with_a_typed_error(make_dataset, dicom_bytes, any_modality):
    data = dicom_bytes(make_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), ViewPosition="PA"))
    pixel_value_start = data.index(b"\xe0\x7f\x10\x00") + 12
    for cut in range(len(data)):
        code = _code(data[:cut], any_modality)  # never an untyped exception
        if cut >= 132:
            assert code in {"truncated", "no_pixel_data"}, cut
        if cut > pixel_value_start - 12:
            assert code == "truncated", cut


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(min_size=1, max_size=400))
def test_random_bytes_after_a_valid_prefix_raise_only_typed_errors(payload, any_modality):
    for data in (b"\x00" * 128 + b"DICM" + payload, payload):
        with pytest.raises(DicomIngestError):
            read_dicom(data, settings=any_modality)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupted_files_raise_only_typed_errors_or_decode_sanely(
    data, make_dataset, dicom_bytes, any_modality
):
    ds = make_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8) * 60, WindowCenter=2000, WindowWidth=3000)
    raw = bytearray(dicom_bytes(ds))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(132, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        image = read_dicom(bytes(raw), settings=any_modality)
    except DicomIngestError:
        return
    assert image.pixels.shape == (image.meta.rows, image.meta.columns)
    assert np.isfinite(image.pixels).all()
    assert image.pixels.min() >= 0
    assert image.pixels.max() <= 1


def test_no_pixel_data(make_dataset, dicom_bytes, any_modality):
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    del ds.PixelData
    assert _code(dicom_bytes(ds), any_modality) == "no_pixel_data"


def test_multi_frame_and_colour_refusals(make_dataset, dicom_bytes, any_modality):
    two_frames = make_dataset(np.zeros((4, 4), dtype=np.uint16), NumberOfFrames=2, pixel_data=bytes(64))
    assert _code(dicom_bytes(two_frames), any_modality) == "multi_frame"
    one_frame = make_dataset(np.zeros((4, 4), dtype=np.uint16), NumberOfFrames=1)
    assert read_dicom(dicom_bytes(one_frame), settings=any_modality).pixels.shape == (4, 4)

    rgb = make_dataset(np.zeros((4, 4), dtype=np.uint8), bits_stored=8, bits_allocated=8, photometric="RGB")
    rgb.SamplesPerPixel = 3
    rgb.PlanarConfiguration = 0
    rgb.PixelData = bytes(48)
    assert _code(dicom_bytes(rgb), any_modality) == "colour_image"
    palette = make_dataset(
        np.zeros((4, 4), dtype=np.uint8), bits_stored=8, bits_allocated=8, photometric="PALETTE COLOR"
    )
    assert _code(dicom_bytes(palette), any_modality) == "colour_image"


@pytest.mark.parametrize(
    ("attributes", "pixel_data"),
    [
        pytest.param({"BitsStored": 17}, None, id="bits-stored-above-allocated"),
        pytest.param({"BitsAllocated": 12}, None, id="bits-allocated-12"),
        pytest.param({"Rows": 0}, None, id="zero-rows"),
        pytest.param({"PixelRepresentation": 2}, None, id="pixel-representation-2"),
        pytest.param({"PhotometricInterpretation": "FOO"}, None, id="unknown-photometric"),
        pytest.param({}, bytes(30), id="pixel-data-shorter-than-geometry"),
        pytest.param({"NumberOfFrames": 0}, None, id="zero-frames"),
    ],
)
def test_invalid_geometry(attributes, pixel_data, make_dataset, dicom_bytes, any_modality):
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16), pixel_data=pixel_data)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert _code(dicom_bytes(ds), any_modality) == "invalid_geometry"


def test_missing_required_attributes_are_invalid_geometry(make_dataset, dicom_bytes, any_modality):
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "PixelRepresentation",
        "SamplesPerPixel",
    ):
        ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
        delattr(ds, keyword)
        assert _code(dicom_bytes(ds), any_modality) == "invalid_geometry", keyword


def test_compressed_stream_size_must_match_rows_and_columns(
    make_dataset, dicom_bytes, any_modality, monkeypatch
):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded a stream whose header disagrees with Rows/Columns")

    ds = make_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.Rows, ds.Columns = 16, 16  # header now claims 16 x 16 over a 64 x 64 codestream
    monkeypatch.setattr(read_module, "pixel_array", must_not_decode)
    assert _code(dicom_bytes(ds), any_modality) == "invalid_geometry"


def test_transfer_syntax_problems(make_dataset, dicom_bytes, any_modality):
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16), transfer_syntax=MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds["PixelData"].VR = "OB"
    assert _code(dicom_bytes(ds), any_modality) == "unsupported_transfer_syntax"


def test_missing_transfer_syntax_uid_is_unreadable(make_dataset, any_modality):
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    del ds.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    ds.save_as(
        buffer, implicit_vr=False, little_endian=True
    )  # as-is: preamble, File Meta without (0002,0010)
    assert buffer.getvalue()[128:132] == b"DICM"
    assert _code(buffer.getvalue(), any_modality) == "unreadable"


def test_unexpected_failures_are_wrapped_as_unreadable_with_the_cause(
    make_dataset, dicom_bytes, monkeypatch, any_modality
):
    def boom(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(read_module, "apply_modality_lut", boom)
    with pytest.raises(DicomIngestError) as info:
        read_dicom(dicom_bytes(make_dataset(np.zeros((2, 2), dtype=np.uint16))), settings=any_modality)
    assert info.value.code == "unreadable"
    assert isinstance(info.value.__cause__, KeyError)


def test_decoder_failure_is_unreadable(make_dataset, dicom_bytes, any_modality):
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16), transfer_syntax=UID(JPEG2000Lossless))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # a J2K SOC + broken SIZ
    ds["PixelData"].VR = "OB"
    assert _code(dicom_bytes(ds), any_modality) == "unreadable"


def test_deflate_bomb_is_refused_before_inflating(make_dataset, dicom_bytes):
    ds = make_dataset(np.zeros((2, 2), dtype=np.uint16), transfer_syntax=DeflatedExplicitVRLittleEndian)
    ds.EncapsulatedDocument = bytes(70 * 2**20)  # deflates to ~70 kB, inflates to 70 MiB
    data = dicom_bytes(ds)
    assert len(data) < 2**20
    settings = IngestSettings(allow_any_modality=True, max_pixels=4)
    assert _code(data, settings) == "image_too_large"
    del ds.EncapsulatedDocument
    assert (
        read_dicom(dicom_bytes(ds), settings=settings).meta.transfer_syntax_uid
        == DeflatedExplicitVRLittleEndian
    )
