"""Gaze metrics against pysaliency (Kümmerer et al.'s implementation of the MIT / Tübingen saliency
benchmark metrics) and scikit-learn, on the same maps and fixations. Where our convention differs on purpose
(docs/audit.md, "Conventions vs reference implementations") the test asserts the difference itself."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audit.metrics import auc_judd, cc, kld, nss, sauc, shuffled_fixation_map, sim
from tests.audit.metrics.oracles import PysaliencyMaps, pysaliency, stimuli_and_fixations

SHAPE = (12, 10)


@pytest.fixture(scope="module")
def ps():
    return pysaliency()


@pytest.fixture(scope="module")
def data():
    """Four maps (two with ties), density maps and binary fixation maps on one grid; every map has min 0."""
    rng = np.random.default_rng(7)
    n = 4
    s = rng.random((n, *SHAPE))
    s[1] = np.round(s[1] * 4) / 4  # ties
    s[3] = np.round(s[3] * 3) / 3
    s -= s.min(axis=(1, 2), keepdims=True)
    g = rng.random((n, *SHAPE)) ** 3
    g -= g.min(axis=(1, 2), keepdims=True)
    f = np.zeros((n, *SHAPE), bool)
    for i in range(n):
        f[i].flat[rng.choice(f[i].size, 5 + 3 * i, replace=False)] = True
    return s, g, f


def test_kld_equals_pysaliency_mit_kldiv(ps, data):
    s, g, _ = data
    s, g = s + 0.01, g + 0.001  # no zero pixel: the regulariser is negligible
    ref = np.array([ps.metrics.MIT_KLDiv(si, gi) for si, gi in zip(s, g, strict=True)])
    np.testing.assert_allclose(kld(s, g), ref, rtol=1e-12, atol=0)


def test_kld_with_zero_saliency_pixels_differs_only_by_the_rounded_eps(ps, data):
    """Where the saliency is 0 the term is ``Q·log(eps + Q/eps)``: pysaliency's regulariser is the rounded
    2.2204e-16, ours MATLAB's eps 2.220446049250313e-16 (relative difference 2.1e-6), so the values agree to
    about 1e-6 relative and not to rounding error."""
    s, g, _ = data
    with np.errstate(divide="ignore"):
        ref = np.array([ps.metrics.MIT_KLDiv(si, gi) for si, gi in zip(s, g, strict=True)])
    ours = kld(s, g)
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=0)
    assert np.max(np.abs(ours - ref)) > 1e-9


def test_cc_equals_pysaliency(ps, data):
    s, g, _ = data
    ref = np.array([ps.metrics.CC(si, gi) for si, gi in zip(s, g, strict=True)])
    np.testing.assert_allclose(cc(s, g), ref, rtol=0, atol=1e-12)


def test_cc_of_a_constant_map_is_nan_where_pysaliency_says_zero(ps, data):
    _, g, _ = data
    const = np.full(SHAPE, 0.3)
    assert ps.metrics.CC(const, g[0]) == 0.0
    assert np.isnan(cc(const, g[0]))


def test_sim_equals_pysaliency_on_maps_with_minimum_zero(ps, data):
    s, g, _ = data
    ref = np.array([ps.metrics.SIM(si, gi) for si, gi in zip(s, g, strict=True)])
    np.testing.assert_allclose(sim(s, g), ref, rtol=0, atol=1e-12)


def test_sim_min_max_normalises_where_pysaliency_only_divides_by_the_sum(ps, data):
    """MIT ``similarity.m`` min-max scales both maps first; pysaliency only shifts a map with negative
    values. For a positive offset the two differ, and ours equals pysaliency on the min-max scaled maps."""
    s, g, _ = data
    s1, g1 = s[0] + 0.5, g[0] + 0.2
    mm = [(m - m.min()) / (m.max() - m.min()) for m in (s1, g1)]
    assert sim(s1, g1) == pytest.approx(ps.metrics.SIM(*mm), abs=1e-12)
    assert abs(sim(s1, g1) - ps.metrics.SIM(s1, g1)) > 0.05


def test_nss_is_pysaliency_times_the_n_minus_1_std_factor(ps, data):
    """MIT ``NSS.m`` z-scores with MATLAB ``std`` (N−1); pysaliency uses numpy's N. Hence
    NSS_ours = NSS_pysaliency · sqrt((N−1)/N), N = number of pixels."""
    s, _, f = data
    npix = SHAPE[0] * SHAPE[1]
    ref = np.array([ps.metrics.NSS(si, *np.nonzero(fi)[::-1]).mean() for si, fi in zip(s, f, strict=True)])
    ours = nss(s, f)
    np.testing.assert_allclose(ours, ref * np.sqrt((npix - 1) / npix), rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(ours - ref) > 1e-4)  # the factor is visible: the convention is really N−1


def test_auc_judd_equals_pysaliency_fixation_thresholds_against_unfixated_pixels(ps, data):
    """pysaliency ``AUC_per_image(nonfixations='unfixated', thresholds='fixations')`` is AUC-Judd: thresholds
    at the fixated values, negatives every non-fixated pixel, ties entering together (as ours)."""
    s, _, f = data
    stimuli, fix = stimuli_and_fixations([SHAPE] * len(s), list(f))
    model = PysaliencyMaps(list(s))
    ref = np.array(model.AUC_per_image(stimuli, fix, nonfixations="unfixated", thresholds="fixations"))
    np.testing.assert_allclose(auc_judd(s, f), ref, rtol=0, atol=1e-12)


def _others(fixmaps: list[np.ndarray], shapes: list[tuple[int, int]], i: int) -> np.ndarray:
    return shuffled_fixation_map(shapes[i], [fm for j, fm in enumerate(fixmaps) if j != i])


def test_sauc_equals_pysaliency_shuffled_auc_and_sklearn(ps):
    """pysaliency ``AUC_per_image(nonfixations='shuffled', thresholds='all')``: negatives are the fixations of
    every other image, exact ROC. Fixations are placed on distinct pixels across images so that the binary
    union (the benchmark's ``otherMap``) holds the same locations as pysaliency's list."""
    rng = np.random.default_rng(3)
    n = 5
    cells = rng.choice(SHAPE[0] * SHAPE[1], n * 6, replace=False)
    fixmaps = [np.zeros(SHAPE, bool) for _ in range(n)]
    for i in range(n):
        fixmaps[i].flat[cells[6 * i : 6 * i + 6]] = True
    maps = [np.round(rng.random(SHAPE) * 5) / 5 for _ in range(n)]  # heavy ties
    stimuli, fix = stimuli_and_fixations([SHAPE] * n, fixmaps)
    ref = np.array(
        PysaliencyMaps(maps).AUC_per_image(stimuli, fix, nonfixations="shuffled", thresholds="all")
    )
    ours = np.array([sauc(maps[i], fixmaps[i], _others(fixmaps, [SHAPE] * n, i)) for i in range(n)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    for i in range(n):
        other = _others(fixmaps, [SHAPE] * n, i)
        y = np.r_[np.ones(fixmaps[i].sum()), np.zeros(other.sum())]
        v = np.r_[maps[i][fixmaps[i]], maps[i][other]]
        assert ours[i] == pytest.approx(roc_auc_score(y, v), abs=1e-12)
    # the batch form with a per-image `other` stack gives the same numbers
    others = np.stack([_others(fixmaps, [SHAPE] * n, i) for i in range(n)])
    np.testing.assert_allclose(sauc(np.stack(maps), np.stack(fixmaps), others), ours, rtol=0, atol=0)


def test_shuffled_fixation_map_rescales_like_pysaliency_across_image_sizes(ps):
    """Other images of different sizes: their fixations land on the pixels pysaliency's
    ``FullShuffledNonfixationProvider`` computes (x · W/W_j, floored)."""
    rng = np.random.default_rng(5)
    shapes = [(12, 10), (20, 16), (7, 9), (12, 10)]
    fixmaps = []
    for h, w in shapes:
        fm = np.zeros((h, w), bool)
        fm.flat[rng.choice(h * w, 6, replace=False)] = True
        fixmaps.append(fm)
    stimuli, fix = stimuli_and_fixations(shapes, fixmaps)
    provider = ps.saliency_map_models.FullShuffledNonfixationProvider(stimuli, fix)
    for i in range(len(shapes)):
        xs, ys = provider(stimuli, fix, int(np.flatnonzero(fix.n == i)[0]))
        ref = np.zeros(shapes[i], bool)
        ref[ys, xs] = True
        np.testing.assert_array_equal(_others(fixmaps, shapes, i), ref)
    # the coordinate form gives the same map as the map form
    coords = [(*np.nonzero(fm), fm.shape) for fm in fixmaps[1:]]
    np.testing.assert_array_equal(shuffled_fixation_map(shapes[0], coords), _others(fixmaps, shapes, 0))


def test_sauc_discounts_centre_bias_that_auc_judd_rewards():
    """A centre prior scores well on AUC-Judd when fixations are central, but ≈ 0.5 on sAUC when the other
    images' fixations share the same centre bias (the reason the benchmark has sAUC)."""
    from audit.metrics import center_prior

    rng = np.random.default_rng(11)
    shape = (32, 32)
    prior = center_prior(shape, sigma_fraction=0.2)
    fixmaps = []
    for _ in range(12):
        fm = np.zeros(shape, bool)
        yx = np.clip(np.round(rng.normal(15.5, 4.0, (15, 2))).astype(int), 0, 31)
        fm[yx[:, 0], yx[:, 1]] = True
        fixmaps.append(fm)
    judd = np.array([auc_judd(prior, fm) for fm in fixmaps])
    shuffled = np.array([sauc(prior, fixmaps[i], _others(fixmaps, [shape] * 12, i)) for i in range(12)])
    assert judd.mean() > 0.8
    assert abs(shuffled.mean() - 0.5) < 0.08


def test_sauc_undefined_and_errors():
    f = np.zeros(SHAPE, bool)
    f[2, 3] = True
    other = np.zeros(SHAPE, bool)
    assert np.isnan(sauc(np.random.default_rng(0).random(SHAPE), f, other))  # no negative location
    other[5, 5] = True
    assert np.isnan(sauc(np.random.default_rng(0).random(SHAPE), np.zeros(SHAPE), other))  # no fixation
    bad = np.random.default_rng(0).random(SHAPE)
    bad[0, 0] = np.nan
    assert np.isnan(sauc(bad, f, other))
    from audit.metrics import MetricInputError

    with pytest.raises(MetricInputError):
        sauc(bad, f, np.zeros((5, 5), bool))
    with pytest.raises(MetricInputError):
        sauc(bad, f, -other.astype(int))
