"""SSIM (scikit-image semantics), Spearman (scipy) and top-k overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from skimage.metrics import structural_similarity

from audit.metrics import MetricInputError, spearman, ssim, topk_overlap


def test_ssim_equals_scikit_image_per_pair():
    rng = np.random.default_rng(0)
    a = rng.random((4, 16, 16))
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    for data_range in (1.0, 2.0):
        expected = [structural_similarity(x, y, data_range=data_range) for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ssim(a, b, data_range=data_range), expected, rtol=1e-12)
    # a larger data_range inflates C1, C2 and so the score (Arun et al.'s old default of 2 for floats)
    assert np.all(ssim(a, b, data_range=2.0) > ssim(a, b, data_range=1.0))


def test_ssim_hand_computation_on_one_7x7_window():
    # A 7×7 image has exactly one 7×7 window:
    #   SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))
    # with sample (N−1) variances/covariance, C1 = (0.01·L)², C2 = (0.03·L)², L = data_range.
    rng = np.random.default_rng(1)
    x, y = rng.random((7, 7)), rng.random((7, 7))
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cxy = np.sum((x - mx) * (y - my)) / 48
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y, data_range=1.0) == pytest.approx(expected, rel=1e-12)


def test_ssim_identical_maps_is_one_even_when_constant():
    rng = np.random.default_rng(2)
    a = rng.random((9, 9))
    assert ssim(a, a, data_range=1.0) == pytest.approx(1.0, abs=1e-12)
    assert ssim(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1.0) == pytest.approx(1.0)


def test_ssim_requires_data_range_and_valid_shapes():
    a = np.zeros((9, 9))
    with pytest.raises(TypeError):
        ssim(a, a)  # data_range is required (keyword-only, no default)
    with pytest.raises(MetricInputError, match="data_range"):
        ssim(a, a, data_range=0.0)
    with pytest.raises(MetricInputError, match="7"):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)), data_range=1.0)
    with pytest.raises(MetricInputError, match="same height and width"):
        ssim(np.zeros((9, 9)), np.zeros((8, 8)), data_range=1.0)
    assert math.isnan(ssim(np.full((9, 9), np.nan), a, data_range=1.0))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=(3, 6, 6)).astype(float)
    b = a + rng.integers(0, 3, size=(3, 6, 6))
    expected = [stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(spearman(a, b), expected, rtol=1e-12)
    # monotone transform → 1; reversed → −1
    s = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(s, np.exp(s)) == pytest.approx(1.0)
    assert spearman(s, -s) == pytest.approx(-1.0)
    assert math.isnan(spearman(s, np.ones((2, 2))))


def test_topk_overlap_hand_values():
    a = np.array([[4.0, 3.0], [2.0, 1.0]])
    b = np.array([[4.0, 1.0], [2.0, 3.0]])
    # top 50 % = 2 pixels: A {0, 1}, B {0, 3}: one shared → 1/2
    assert topk_overlap(a, b, top_percent=50) == pytest.approx(0.5)
    assert topk_overlap(a, b, top_percent=25) == pytest.approx(1.0)  # both tops are pixel 0
    assert topk_overlap(a, a, top_percent=75) == pytest.approx(1.0)
    # ties at the boundary: the lower raster index wins, deterministically: A' = [2 2; 2 1] top-1 = pixel 0
    assert topk_overlap(np.array([[2.0, 2.0], [2.0, 1.0]]), a, top_percent=25) == pytest.approx(1.0)
    assert math.isnan(topk_overlap(np.ones((2, 2)), a, top_percent=50))
    with pytest.raises(MetricInputError):
        topk_overlap(a, b, top_percent=0)


@settings(max_examples=40, deadline=None)
@given(a=arrays(np.float64, (8, 8), elements=st.integers(0, 50).map(lambda v: v / 50)), c=st.floats(0.1, 10))
def test_identical_and_rescaled_maps(a, c):
    if a.max() == a.min():
        assert math.isnan(spearman(a, a))
        return
    assert ssim(a, a, data_range=1.0) == pytest.approx(1.0, abs=1e-9)
    assert spearman(a, c * a) == pytest.approx(1.0, abs=1e-12)
    assert topk_overlap(a, a, top_percent=10) == 1.0


def test_batches_and_broadcast():
    rng = np.random.default_rng(4)
    a = rng.random((3, 8, 8))
    b = rng.random((8, 8))
    np.testing.assert_allclose(ssim(a, b, data_range=1.0), [ssim(x, b, data_range=1.0) for x in a])
    np.testing.assert_allclose(spearman(a, b), [spearman(x, b) for x in a])
    np.testing.assert_allclose(topk_overlap(a, b), [topk_overlap(x, b) for x in a])
