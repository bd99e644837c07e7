"""Static EGD heatmap and binary fixation map (mimicry.data.heatmap) against hand-built count maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mimicry.data.heatmap import (
    DEFAULT_HEATMAP_SIGMA_PX,
    binary_fixation_map,
    fixation_count_map,
    static_heatmap,
    valid_fixations,
)

# (x = column, y = row, duration) on an 8 x 10 image (H = 8, W = 10).
SHAPE = (8, 10)
FIX = np.array(
    [
        [2, 1, 0.2],
        [-1, -1, 0.3],  # EGD's off-image marker: dropped
        [2.4, 0.6, 0.1],  # rounds to (2, 1): that pixel counts 2
        [9, 7, 0.5],  # last column / last row: kept
        [10, 3, 0.1],  # x == W: dropped
        [4, 8, 0.1],  # y == H: dropped
        [5.5, 3.5, 0.4],  # half up -> (6, 4)
        [np.nan, 2, 0.1],  # NaN: dropped
        [-0.4, 0.2, 0.1],  # rounds to (0, 0): kept
    ]
)


def hand_counts() -> np.ndarray:
    counts = np.zeros(SHAPE)
    counts[1, 2] = 2  # rows 0 and 2
    counts[7, 9] = 1
    counts[4, 6] = 1
    counts[0, 0] = 1
    return counts


def test_valid_fixations_rounds_filters_and_keeps_file_order() -> None:
    expected = np.array([[2, 1, 0.2], [2, 1, 0.1], [9, 7, 0.5], [6, 4, 0.4], [0, 0, 0.1]])
    np.testing.assert_array_equal(valid_fixations(FIX, SHAPE), expected)


def test_count_map_and_binary_map_exact() -> None:
    np.testing.assert_array_equal(fixation_count_map(FIX, SHAPE), hand_counts())
    np.testing.assert_array_equal(binary_fixation_map(FIX, SHAPE), hand_counts() > 0)
    assert binary_fixation_map(FIX, SHAPE).dtype == bool


@pytest.mark.parametrize("method", ["auto", "scipy", "sparse"])
def test_static_heatmap_equals_scipy_gaussian_of_hand_counts(method: str) -> None:
    ref = gaussian_filter(hand_counts(), sigma=1.5, mode="constant", cval=0.0, truncate=4.0)
    ref /= ref.sum()
    hm = static_heatmap(FIX, SHAPE, 1.5, method=method)
    assert hm.dtype == np.float32
    assert hm.shape == SHAPE
    np.testing.assert_allclose(hm, ref, rtol=1e-5, atol=1e-9)
    assert hm.sum() == pytest.approx(1.0, abs=1e-5)


def test_static_heatmap_uses_zero_padding_not_reflection() -> None:
    # One fixation in the corner: with mode="constant" the kernel mass outside the image is lost before
    # normalisation, so the map is the normalised truncated 2-D Gaussian; mode="reflect" would fold it back.
    fix = np.array([[0.0, 0.0]])
    x = np.arange(6.0)
    g = np.exp(-0.5 * (x / 2.0) ** 2)
    expected = np.outer(g[:4], g) / np.outer(g[:4], g).sum()
    hm = static_heatmap(fix, (4, 6), 2.0)
    np.testing.assert_allclose(hm, expected, rtol=1e-5)
    reflect = gaussian_filter(fixation_count_map(fix, (4, 6)), 2.0, mode="reflect")
    assert not np.allclose(hm, reflect / reflect.sum(), rtol=1e-3)


def test_sparse_and_direct_filter_agree_on_a_larger_map() -> None:
    rng = np.random.default_rng(0)
    fix = np.column_stack([rng.uniform(-5, 105, 60), rng.uniform(-5, 125, 60)])
    a = static_heatmap(fix, (120, 100), 9.0, method="scipy")
    b = static_heatmap(fix, (120, 100), 9.0, method="sparse")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)
    assert a.sum() == pytest.approx(1.0, abs=1e-5)


def test_no_fixation_on_image_gives_all_zero_map_without_nans() -> None:
    fix = np.array([[-1, -1, 0.2], [-1, -1, 0.4], [30, 2, 0.1]])
    hm = static_heatmap(fix, SHAPE, 1.5)
    assert hm.dtype == np.float32
    np.testing.assert_array_equal(hm, np.zeros(SHAPE, dtype=np.float32))
    assert not binary_fixation_map(fix, SHAPE).any()
    assert valid_fixations(fix, SHAPE).shape == (0, 3)
    assert static_heatmap(np.zeros((0, 2)), SHAPE, 1.5).sum() == 0


def test_default_sigma_is_the_egd_papers_150_px() -> None:
    assert DEFAULT_HEATMAP_SIGMA_PX == 150.0


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_bad_sigma_is_refused(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        static_heatmap(FIX, SHAPE, sigma)


def test_bad_fixation_array_is_refused() -> None:
    with pytest.raises(ValueError, match="N x 2"):
        static_heatmap(np.array([1.0, 2.0]), SHAPE, 1.0)
