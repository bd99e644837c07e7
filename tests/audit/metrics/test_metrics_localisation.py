"""Localisation metrics: hand-computed values, the scikit-learn AUPRC route, scipy Pearson, brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage, stats
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import average_precision_score, precision_recall_curve

from audit.metrics import (
    MetricInputError,
    auprc,
    auprc_sklearn,
    box_mask,
    iou,
    pointing_game,
    relevance_mass,
    relevance_rank,
    resize_maps,
    severity_correlation,
)


# --------------------------------------------------------------------------------------- AUPRC
def test_auprc_hand_value():
    # scores .9 .8 .7 .1, labels 1 0 1 0: sklearn points (recall, precision) from the top:
    # (0, 1) → (.5, 1) [.9] → (.5, .5) [.8] → (1, 2/3) [.7] → (1, .5) [.1]
    # trapezoid: .5·(1+1)/2 + 0 + .5·(.5 + 2/3)/2 + 0 = .5 + 7/24 = 19/24
    s = np.array([[0.9, 0.8], [0.7, 0.1]])
    m = np.array([[1, 0], [1, 0]])
    assert auprc(s, m) == pytest.approx(19 / 24, abs=1e-15)
    assert auprc_sklearn(s, m) == pytest.approx(19 / 24, abs=1e-15)
    # not average precision (a step sum): AP = .5·1 + .5·(2/3) = 5/6
    assert average_precision_score(m.ravel(), s.ravel()) == pytest.approx(5 / 6)


def test_auprc_constant_map_and_undefined():
    m = np.array([[1, 0], [0, 0]])
    # one threshold: precision = prevalence 1/4 at recall 1, plus (0, 1): (1 + 1/4)/2
    assert auprc(np.full((2, 2), 0.3), m) == pytest.approx(0.625, abs=1e-15)
    assert math.isnan(auprc(np.eye(2), np.zeros((2, 2))))  # no positives
    assert math.isnan(auprc(np.array([[np.nan, 1.0], [0.0, 0.0]]), m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auprc_equals_sklearn_route_with_ties_signs_and_zeros(dtype):
    rng = np.random.default_rng(0)
    s = (rng.integers(-10, 20, size=(40, 12, 12)) / 7).astype(dtype)  # heavy ties, negatives
    s[0] = 0.0
    s[1, :6] = -0.0  # −0.0 and +0.0 tie, as in sklearn
    s[2] = rng.random((12, 12)).astype(dtype)  # no ties
    m = rng.random((40, 12, 12)) < 0.25
    m[3] = True  # every pixel positive
    m[4] = False
    m[4, 5, 5] = True  # a single positive
    got = auprc(s, m)
    ref = auprc_sklearn(s, m)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    for i in (0, 2, 3, 4):  # spot-check the reference itself against a direct sklearn call
        p, r, _ = precision_recall_curve(m[i].ravel(), s[i].ravel())
        assert ref[i] == sk_auc(r, p)


@settings(max_examples=60, deadline=None)
@given(
    s=arrays(np.float32, (6, 7), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, 3.5, 2.0**-100])),
    m=arrays(np.bool_, (6, 7)),
)
def test_auprc_property_equals_sklearn(s, m):
    if not m.any():
        assert math.isnan(auprc(s, m))
        return
    assert auprc(s, m) == pytest.approx(auprc_sklearn(s, m), abs=1e-9)


def test_auprc_resizes_the_map_to_the_mask_grid():
    rng = np.random.default_rng(1)
    s = rng.random((2, 8, 8))
    m = rng.random((2, 16, 16)) < 0.3
    np.testing.assert_allclose(auprc(s, m), auprc_sklearn(resize_maps(s, (16, 16)), m), atol=1e-12)


# ------------------------------------------------------------------------------------------ IoU
def test_iou_threshold_and_top_percent_hand_values():
    s = np.array([[0.9, 0.2], [0.6, 0.1]])
    m = np.array([[1, 1], [0, 0]])
    # S ≥ .5 → {(0,0), (1,0)}: ∩ = 1, ∪ = 3
    assert iou(s, m, threshold=0.5) == pytest.approx(1 / 3)
    # top 25 % = 1 pixel (0,0): ∩ 1, ∪ 2
    assert iou(s, m, top_percent=25) == pytest.approx(1 / 2)
    # top 50 % = 2 pixels → same region as threshold .5
    assert iou(s, m, top_percent=50) == pytest.approx(1 / 3)
    # ⌈10 % · 4⌉ = 1 pixel
    assert iou(s, m, top_percent=10) == pytest.approx(1 / 2)


def test_iou_top_percent_includes_ties_and_undefined_cases():
    s = np.array([[1.0, 1.0], [0.0, 0.0]])
    m = np.array([[1, 0], [0, 0]])
    assert iou(s, m, top_percent=25) == pytest.approx(1 / 2)  # both tied 1s are in the region
    assert math.isnan(iou(np.ones((2, 2)), m, top_percent=25))  # constant map: no top pixels
    assert math.isnan(iou(s, np.zeros((2, 2)), threshold=0.5))  # empty mask
    assert iou(np.zeros((2, 2)), m, threshold=0.5) == 0.0  # empty region, non-empty mask: defined, 0


def test_iou_argument_validation():
    s, m = np.eye(3), np.eye(3)
    with pytest.raises(MetricInputError, match="exactly one"):
        iou(s, m)
    with pytest.raises(MetricInputError, match="exactly one"):
        iou(s, m, threshold=0.5, top_percent=10)
    with pytest.raises(MetricInputError, match="top_percent"):
        iou(s, m, top_percent=0)


# -------------------------------------------------------------------------------- pointing game
def test_pointing_game_hit_miss_and_undefined():
    s = np.zeros((5, 5))
    s[1, 1] = 1.0
    m = np.zeros((5, 5))
    m[1, 1] = 1
    assert pointing_game(s, m) == 1.0
    m2 = np.zeros((5, 5))
    m2[4, 4] = 1
    assert pointing_game(s, m2) == 0.0
    assert math.isnan(pointing_game(np.ones((5, 5)), m))  # constant map
    assert math.isnan(pointing_game(s, np.zeros((5, 5))))  # empty mask
    # tied maxima: a hit if any maximum is inside (Quantus)
    s2 = s.copy()
    s2[4, 4] = 1.0
    assert pointing_game(s2, m2) == 1.0


def test_pointing_game_tolerance_is_euclidean_and_inclusive():
    s = np.zeros((8, 8))
    s[0, 0] = 1.0
    m = np.zeros((8, 8))
    m[3, 4] = 1  # distance 5 from (0, 0)
    assert pointing_game(s, m, tolerance=4.99) == 0.0
    assert pointing_game(s, m, tolerance=5.0) == 1.0
    with pytest.raises(MetricInputError):
        pointing_game(s, m, tolerance=-1)


def test_pointing_game_tolerance_matches_distance_transform():
    rng = np.random.default_rng(4)
    s = rng.random((30, 20, 20))
    s[::5] = np.round(s[::5], 1)  # some tied maxima
    m = np.zeros((30, 20, 20), dtype=bool)
    for i in range(30):
        y, x = rng.integers(0, 16, 2)
        m[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    for tol in (0.0, 1.5, 3.0, 7.0):
        got = pointing_game(s, m, tolerance=tol)
        expected = []
        for i in range(30):
            dist = ndimage.distance_transform_edt(~m[i])
            maxima = s[i] == s[i].max()
            expected.append(float((dist[maxima] <= tol).any()))
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------- relevance mass/rank
def test_relevance_mass_hand_value_and_undefined():
    # R⁺ = [1, 0, 3, 0]; inside = first row → 1 / 4
    s = np.array([[1.0, -2.0], [3.0, 0.0]])
    m = np.array([[1, 1], [0, 0]])
    assert relevance_mass(s, m) == pytest.approx(0.25)
    assert math.isnan(relevance_mass(-np.abs(s), m))  # no positive relevance
    assert math.isnan(relevance_mass(s, np.zeros((2, 2))))


def test_relevance_rank_hand_values():
    # K = |mask| = 2; top-2 pixels {4, 3}; mask holds 3 and 2 → 1/2
    s = np.array([[4.0, 3.0], [2.0, 1.0]])
    assert relevance_rank(s, np.array([[0, 1], [1, 0]])) == pytest.approx(0.5)
    assert relevance_rank(s, np.array([[1, 1], [0, 0]])) == pytest.approx(1.0)
    # ties: K = 2, K-th value 1 held by 3 pixels (1 in the mask), 0 above it → (0 + 2·1/3)/2 = 1/3
    tied = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert relevance_rank(tied, np.array([[1, 0], [0, 1]])) == pytest.approx(1 / 3)
    # constant map: chance level K/P
    assert relevance_rank(np.ones((2, 2)), np.array([[1, 0], [0, 0]])) == pytest.approx(1 / 4)
    assert math.isnan(relevance_rank(s, np.zeros((2, 2))))


def test_relevance_rank_is_the_expectation_over_random_tie_breaking():
    rng = np.random.default_rng(5)
    for _ in range(20):
        s = rng.integers(0, 3, size=(2, 3)).astype(float)
        m = rng.random((2, 3)) < 0.5
        if not m.any():
            continue
        k = int(m.sum())
        flat, mf = s.ravel(), m.ravel()
        # average of |top-K ∩ mask| / K over every ordering that sorts by value (all tie-breaks)
        values = []
        for perm in itertools.permutations(range(6)):
            order = sorted(perm, key=lambda i: -flat[i])  # stable on the permutation: one tie-break
            values.append(mf[order[:k]].sum() / k)
        assert relevance_rank(s, m) == pytest.approx(np.mean(values), abs=1e-12)


# ------------------------------------------------------------------------------------- severity
def test_severity_correlation_matches_scipy_pearson():
    rng = np.random.default_rng(6)
    s = rng.random((4, 9, 9))
    v = s + rng.random((4, 9, 9))
    got = severity_correlation(s, v)
    expected = [stats.pearsonr(a.ravel(), b.ravel()).statistic for a, b in zip(s, v, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert severity_correlation(s[0], 3 * s[0] + 1) == pytest.approx(1.0)
    assert math.isnan(severity_correlation(s[0], np.ones((9, 9))))


# ------------------------------------------------------------------------------------------ boxes
def test_box_mask_is_inclusive_and_clipped():
    b = box_mask((3, 4), x1=1, y1=0, x2=2, y2=0)
    expected = np.zeros((3, 4), dtype=bool)
    expected[0, 1:3] = True
    np.testing.assert_array_equal(b, expected)
    assert box_mask((3, 4), x1=-5, y1=-5, x2=10, y2=10).all()
    # fractional corners: every touched pixel (pixel x spans [x, x+1)): rows 0-1, column 1
    frac = box_mask((3, 4), x1=1.2, y1=0.5, x2=1.7, y2=1.2)
    np.testing.assert_array_equal(np.argwhere(frac), [[0, 1], [1, 1]])
    with pytest.raises(MetricInputError):
        box_mask((3, 4), x1=2, y1=0, x2=1, y2=0)


# ---------------------------------------------------------------------------- batch conventions
def test_batch_equals_one_by_one_and_mask_broadcast():
    rng = np.random.default_rng(8)
    s = rng.random((5, 10, 10)).astype(np.float32)
    m = rng.random((10, 10)) < 0.3
    for fn in (auprc, relevance_mass, relevance_rank, pointing_game):
        np.testing.assert_allclose(fn(s, m), [fn(a, m) for a in s], rtol=1e-12)
    np.testing.assert_allclose(iou(s, m, top_percent=20), [iou(a, m, top_percent=20) for a in s], rtol=1e-12)


def test_iou_threshold_is_exact_for_float32_maps():
    # float32(0.7) = 0.69999999 < 0.7: numpy would compare in float32 and let this pixel pass 0.7
    s = np.array([[0.7, 0.5], [0.0, 0.0]], dtype=np.float32)
    m = np.array([[1, 0], [0, 0]])
    assert float(s[0, 0]) < 0.7
    assert iou(s, m, threshold=0.7) == 0.0
    assert iou(s, m, threshold=float(s[0, 0])) == 1.0
    np.testing.assert_array_equal(iou(s, m, threshold=0.7), iou(s.astype(np.float64), m, threshold=0.7))
