"""The phantom generator's fast kernels against reference implementations (PIL, SciPy, pydicom).

Each kernel replaced a slower library call for speed (bench/bench_phantom.py); these tests pin them to the
library results they stand in for, so a faster rewrite cannot silently change the films.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from mimicry.data.phantom import PhantomConfig, plan_cases
from mimicry.data.phantom.gaze import _first_hits, _Target
from mimicry.data.phantom.generate import _components
from mimicry.data.phantom.render import (
    _binomial_blur,
    _smoothstep,
    _unit_clip,
    _upsample,
    _upsample2,
    render_film,
)
from mimicry.data.phantom.write import build_dicom


def _pil_bilinear(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(small.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


@pytest.mark.parametrize(
    ("small", "big"),
    [
        ((6, 6), (256, 256)),
        ((10, 10), (96, 96)),
        ((4, 7), (37, 53)),
        ((5, 9), (64, 31)),
        ((64, 64), (128, 128)),
    ],
)
def test_upsample_is_pil_bilinear(small: tuple[int, int], big: tuple[int, int]) -> None:
    x = np.random.default_rng(0).standard_normal(small).astype(np.float32)
    np.testing.assert_allclose(_upsample(x, big), _pil_bilinear(x, big), atol=2e-6)


@pytest.mark.parametrize("shape", [(128, 128), (13, 7), (2, 2)])
def test_upsample2_is_exact_2x_bilinear(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    out = _upsample2(x)
    assert out.shape == (2 * shape[0], 2 * shape[1])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _pil_bilinear(x, out.shape), atol=1e-6)
    # Weights 3/4, 1/4 written out for one interior pixel pair.
    assert out[2, 0] == pytest.approx(0.75 * x[1, 0] + 0.25 * x[0, 0], abs=1e-6)


@pytest.mark.parametrize("passes", [1, 2, 5])
def test_binomial_blur_is_repeated_121_filter_with_nearest_edges(passes: int) -> None:
    x = np.random.default_rng(2).random((40, 23)).astype(np.float32)
    ref = x.astype(np.float64)
    for _ in range(passes):
        for axis in (0, 1):
            ref = ndimage.correlate1d(ref, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
    out = _binomial_blur(x, passes)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert not np.shares_memory(out, x)


def test_smoothstep_and_unit_clip_leave_their_input_alone() -> None:
    x = np.linspace(-1.0, 2.0, 31, dtype=np.float32)
    before = x.copy()
    t = np.clip(x, 0.0, 1.0)
    np.testing.assert_allclose(_smoothstep(x), t * t * (3.0 - 2.0 * t), atol=1e-6)
    np.testing.assert_array_equal(_unit_clip(x), t)
    np.testing.assert_array_equal(x, before)


def test_components_match_full_image_labelling() -> None:
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((64, 64)) > 0.6)
    mask[:5] = False  # components away from the border: labelling inside the box must agree anyway
    labels, n = ndimage.label(mask)
    comps = _components(mask)
    assert n > 3
    assert len(comps) == n
    for k, comp in enumerate(comps, start=1):
        np.testing.assert_array_equal(comp, labels == k)
    assert _components(np.zeros((8, 8), dtype=bool)) == []


def test_first_hits_lie_in_their_target() -> None:
    size = 48
    yy, xx = np.mgrid[0:size, 0:size]
    disc_mask = (xx - 20) ** 2 + (yy - 24) ** 2 <= 100
    band = np.zeros((size, size), dtype=bool)
    band[10:14, :] = True
    targets = [
        _Target(disc_mask, 5, 40, 5, 40),
        _Target(band, 0, size - 1, 0, size - 1),
        _Target(band, 0, size - 1, 0, size - 1, disc=(30.0, 12.0, 4.0)),
        _Target(np.zeros((size, size), dtype=bool), 0, size - 1, 0, size - 1),  # nothing to hit
    ] * 25
    uv = np.random.default_rng(4).random((len(targets), 2, 24))
    hits = _first_hits(targets, uv)
    assert len(hits) == len(targets)
    found = 0
    for t, hit in zip(targets, hits, strict=True):
        if not t.mask.any():
            assert hit is None
            continue
        if hit is None:
            continue
        found += 1
        x, y = int(hit[0]), int(hit[1])
        assert t.x0 <= x <= t.x1
        assert t.y0 <= y <= t.y1
        assert t.mask[y, x]
        if t.disc is not None:
            cx, cy, r = t.disc
            assert (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    assert found >= 40  # P(hit) per target: ~1, ~0.88, ~0.27 with 24 candidates (expected ~54 of 75)


def _case(view: str, size: int = 64):
    config = PhantomConfig(n=40, size=size, seed=5, compressed_share=0.0, monochrome1_share=0.0)
    plan = next(p for p in plan_cases(config) if p.view == view)
    return plan, render_film(plan, config)


def test_dicom_fixed_elements_follow_view_and_size_and_are_not_shared_between_cases() -> None:
    plan_pa, film_pa = _case("PA")
    plan_ap, film_ap = _case("AP", size=96)
    first = build_dicom(plan_pa, film_pa, 5)
    first.Rows, first.KVP, first.Manufacturer = 7, "1", "changed"  # must not leak into the next case
    for plan, film, kvp, sid, desc in (
        (plan_pa, film_pa, "120", "1800", "CHEST (PA AND LAT)"),
        (plan_ap, film_ap, "100", "1000", "CHEST (PORTABLE AP)"),
    ):
        buf = io.BytesIO()
        build_dicom(plan, film, 5).save_as(buf, enforce_file_format=True)
        ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
        size = film.pixels.shape[0]
        assert (ds.Rows, ds.Columns) == (size, size)
        assert (ds.ViewPosition, ds.SeriesDescription, ds.StudyDescription) == (plan.view, plan.view, desc)
        assert (str(ds.KVP), str(ds.DistanceSourceToDetector)) == (kvp, sid)
        assert ds.Manufacturer == "mimicry phantom generator"
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
        assert list(ds.PatientOrientation) == ["L", "F"]
        assert ds["PixelData"].VR == "OW"  # native 16-bit pixels
        np.testing.assert_array_equal(ds.pixel_array, film.pixels)


def test_compressed_pixel_data_is_encapsulated_ob() -> None:
    config = PhantomConfig(n=6, size=64, seed=6, compressed_share=1.0)
    plan = next(p for p in plan_cases(config) if pydicom.uid.UID(p.transfer_syntax).is_compressed)
    film = render_film(plan, config)
    buf = io.BytesIO()
    build_dicom(plan, film, 6).save_as(buf, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert ds.file_meta.TransferSyntaxUID == plan.transfer_syntax
    assert ds["PixelData"].VR == "OB"
    expected = film.pixels if plan.photometric == "MONOCHROME2" else 4095 - film.pixels
    np.testing.assert_array_equal(ds.pixel_array, expected)
