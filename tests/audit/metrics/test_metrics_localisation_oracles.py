"""Localisation metrics against Quantus (``PointingGame``, ``RelevanceMassAccuracy``,
``RelevanceRankAccuracy``) on the same maps and masks. Deliberate differences (docs/audit.md, "Conventions vs
reference implementations") are asserted as such: NaN for a constant map in the pointing game, positive
relevance only in relevance mass, the expectation over tie-breaking in relevance rank."""

from __future__ import annotations

import numpy as np
import pytest

from audit.metrics import pointing_game, relevance_mass, relevance_rank
from tests.audit.metrics.oracles import quantus

SHAPE = (9, 7)


@pytest.fixture(scope="module")
def q():
    return quantus()


def _quantus(q, metric_cls, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Quantus on precomputed explanations (no model needed): a_batch / s_batch are ``N×1×H×W``."""
    n = a.shape[0]
    metric = metric_cls(disable_warnings=True)
    out = metric(
        model=None,
        x_batch=np.zeros((n, 1, *a.shape[1:])),
        y_batch=np.zeros(n, int),
        a_batch=a[:, None].astype(np.float64),
        s_batch=s[:, None].astype(np.float64),
    )
    return np.asarray(out, dtype=np.float64)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(21)
    n = 16
    a = rng.random((n, *SHAPE))
    s = np.zeros((n, *SHAPE), bool)
    for i in range(n):  # boxes of random size and place
        h, w = rng.integers(1, 5, 2)
        y, x = rng.integers(0, SHAPE[0] - h), rng.integers(0, SHAPE[1] - w)
        s[i, y : y + h, x : x + w] = True
    # put the maximum inside the mask for half the maps, so that hits and misses both occur
    for i in range(0, n, 2):
        a[i][s[i]] += 1.0
    return a, s


def test_pointing_game_equals_quantus(q, data):
    a, s = data
    ref = _quantus(q, q.PointingGame, a, s)
    ours = pointing_game(a, s)
    np.testing.assert_array_equal(ours, ref)
    assert 0 < ours.mean() < 1


def test_pointing_game_ties_at_the_maximum_count_as_a_hit_like_quantus(q, data):
    a, s = data
    a = a.copy()
    a[1] = np.round(a[1] * 2) / 2  # several pixels share the maximum
    a[1][s[1]] = a[1].max()  # one of them (at least) in the mask
    a[1].flat[np.flatnonzero(~s[1])[0]] = a[1].max()  # and one outside
    assert _quantus(q, q.PointingGame, a[1:2], s[1:2])[0] == 1.0
    assert pointing_game(a[1], s[1]) == 1.0


def test_pointing_game_of_a_constant_map_is_nan_where_quantus_refuses_it(q, data):
    """A constant map points nowhere: Quantus refuses it (an assertion), we return NaN (undefined)."""
    _, s = data
    const = np.full((1, *SHAPE), 0.5)
    with pytest.raises(AssertionError, match="uniformly distributed"):
        _quantus(q, q.PointingGame, const, s[:1])
    assert np.isnan(pointing_game(const[0], s[0]))


def test_relevance_mass_equals_quantus_on_non_negative_maps(q, data):
    a, s = data
    np.testing.assert_allclose(
        relevance_mass(a, s), _quantus(q, q.RelevanceMassAccuracy, a, s), rtol=0, atol=1e-12
    )


def test_relevance_mass_counts_positive_relevance_only(q, data):
    """Quantus divides the signed sums; we use R⁺ = max(R, 0) (Arras et al. define the mass on positive
    relevance). On a signed map ours equals Quantus on max(R, 0) and differs from Quantus on R."""
    a, s = data
    signed = a - 0.6
    ours = relevance_mass(signed, s)
    np.testing.assert_allclose(
        ours, _quantus(q, q.RelevanceMassAccuracy, np.maximum(signed, 0), s), atol=1e-12
    )
    assert np.max(np.abs(ours - _quantus(q, q.RelevanceMassAccuracy, signed, s))) > 0.05


def test_relevance_rank_equals_quantus_without_ties(q, data):
    a, s = data
    np.testing.assert_allclose(
        relevance_rank(a, s), _quantus(q, q.RelevanceRankAccuracy, a, s), rtol=0, atol=1e-12
    )


def test_relevance_rank_with_ties_is_quantus_averaged_over_tie_breaking(q, data):
    """Quantus breaks ties at the K-th value by sort order; ours is the expectation over a uniformly random
    choice. Averaging Quantus over random pixel orders (the same permutation applied to map and mask)
    converges to ours."""
    a, s = data
    tied = np.round(a[3:5] * 2) / 2
    ours = relevance_rank(tied, s[3:5])
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(300):
        p = rng.permutation(tied[0].size)
        at = tied.reshape(2, -1)[:, p].reshape(tied.shape)
        st = s[3:5].reshape(2, -1)[:, p].reshape(tied.shape)
        runs.append(_quantus(q, q.RelevanceRankAccuracy, at, st))
    runs = np.array(runs)
    assert np.any(runs.std(axis=0) > 0)  # Quantus' value does depend on the tie-breaking here
    np.testing.assert_allclose(runs.mean(axis=0), ours, atol=0.03)


def test_iou_equals_sklearn_jaccard_of_the_binarised_map(data):
    """IoU = scikit-learn ``jaccard_score`` of (mask, region); the region is ``S ≥ t`` (threshold mode) or
    ``S ≥`` the n-th largest value, n = ⌈10 % · H·W⌉ (top-10 % mode, ties included)."""
    from sklearn.metrics import jaccard_score

    from audit.metrics import iou

    a, s = data
    a = np.round(a * 8) / 8  # ties at the boundary
    n = int(np.ceil(0.1 * a[0].size))
    for i in range(a.shape[0]):
        kth = np.sort(a[i].ravel())[::-1][n - 1]
        assert iou(a[i], s[i], top_percent=10) == pytest.approx(
            jaccard_score(s[i].ravel(), (a[i] >= kth).ravel()), abs=1e-12
        )
        assert iou(a[i], s[i], threshold=0.5) == pytest.approx(
            jaccard_score(s[i].ravel(), (a[i] >= 0.5).ravel()), abs=1e-12
        )


def test_topk_overlap_equals_quantus_top_k_intersection_with_the_other_maps_top_k_as_mask(q, data):
    """``topk_overlap(A, B)`` = Quantus ``TopKIntersection(k)`` of A against the mask of B's top-k pixels
    (distinct values, so no tie-breaking convention enters)."""
    from audit.metrics import topk_overlap

    a, _ = data
    b = np.random.default_rng(4).random(a.shape)
    k = int(np.ceil(0.1 * a[0].size))
    mask_b = np.zeros(b.shape, bool)
    for i in range(b.shape[0]):
        mask_b[i].flat[np.argsort(-b[i].ravel())[:k]] = True
    metric = q.TopKIntersection(k=k, disable_warnings=True)
    ref = np.asarray(
        metric(
            model=None,
            x_batch=np.zeros((a.shape[0], 1, *a.shape[1:])),
            y_batch=np.zeros(a.shape[0], int),
            a_batch=a[:, None],
            s_batch=mask_b[:, None].astype(np.float64),
        ),
        dtype=np.float64,
    )
    ours = topk_overlap(a, b, top_percent=10)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert 0 <= ours.min() < ours.max()
