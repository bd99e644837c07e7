"""Shared input handling of audit.metrics: shapes, batching, torch input, resizing, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import resize

from audit.metrics import MetricInputError, kld, nss, resize_maps
from audit.metrics._batch import finite_rows, is_constant, pair_maps, pearson_rows, row_chunks, to_numpy


def test_metric_input_error_is_a_value_error():
    assert issubclass(MetricInputError, ValueError)


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2, 2), (0, 3), (3, 0)])
def test_rejects_wrong_dimensions_naming_the_argument(shape):
    with pytest.raises(MetricInputError, match="saliency"):
        pair_maps(np.ones(shape), np.ones((3, 3)))


def test_batch_size_mismatch_is_reported_with_both_sizes():
    with pytest.raises(MetricInputError, match=r"3 maps.*2"):
        pair_maps(np.ones((3, 4, 4)), np.ones((2, 4, 4)))


def test_single_saliency_against_batch_reference_is_rejected():
    with pytest.raises(MetricInputError, match="batch"):
        pair_maps(np.ones((4, 4)), np.ones((2, 4, 4)))


def test_same_grid_required_when_resizing_is_off():
    with pytest.raises(MetricInputError, match="same height and width"):
        pair_maps(np.ones((4, 4)), np.ones((5, 5)), resize_saliency=False)


def test_single_reference_is_broadcast_over_a_batch():
    _, r, single = pair_maps(np.ones((3, 4, 4)), np.arange(16.0).reshape(4, 4))
    assert not single
    assert r.shape == (3, 4, 4)
    np.testing.assert_array_equal(r[2], np.arange(16.0).reshape(4, 4))


def test_single_map_gives_float_and_batch_gives_array():
    s = np.array([[0.0, 1.0], [2.0, 3.0]])
    f = np.array([[0, 0], [0, 1]])
    one = nss(s, f)
    many = nss(np.stack([s, s]), np.stack([f, f]))
    assert isinstance(one, float)
    assert isinstance(many, np.ndarray)
    assert many.shape == (2,)
    assert many.dtype == np.float64
    np.testing.assert_allclose(many, [one, one], rtol=0, atol=0)


def test_torch_tensors_are_accepted_and_match_numpy():
    rng = np.random.default_rng(0)
    s = rng.random((3, 8, 8))
    g = rng.random((3, 8, 8))
    expected = kld(s, g)
    got = kld(torch.from_numpy(s).requires_grad_(True), torch.from_numpy(g))
    np.testing.assert_array_equal(got, expected)
    assert isinstance(to_numpy(torch.zeros(2)), np.ndarray)


def test_resize_uses_skimage_bilinear_with_antialiasing_per_map():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 12))
    # downsampling: anti-aliased bilinear; upsampling: plain bilinear — batch equals map-by-map skimage calls
    for shape in [(8, 6), (32, 24), (16, 12)]:
        got = resize_maps(maps, shape)
        expected = np.stack(
            [
                resize(
                    m,
                    shape,
                    order=1,
                    mode="reflect",
                    anti_aliasing=m.shape[0] > shape[0] or m.shape[1] > shape[1],
                    preserve_range=True,
                )
                for m in maps
            ]
        )
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_resize_keeps_non_negative_maps_non_negative():
    # bilinear never overshoots (bicubic would): KLD/SIM need a non-negative map
    m = np.zeros((1, 8, 8))
    m[0, 3, 3] = 1.0
    assert resize_maps(m, (29, 29)).min() >= 0.0


def test_metrics_resize_saliency_to_the_reference_grid():
    rng = np.random.default_rng(2)
    s = rng.random((2, 8, 8))
    g = rng.random((2, 16, 16))
    np.testing.assert_allclose(kld(s, g), kld(resize_maps(s, (16, 16)), g), rtol=0, atol=0)


def test_row_chunks_cover_all_rows_within_budget():
    slices = list(row_chunks(10, 7, budget=20))
    assert [(s.start, s.stop) for s in slices] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert [(s.start, s.stop) for s in row_chunks(3, 100, budget=10)] == [(0, 1), (1, 2), (2, 3)]


def test_chunked_results_equal_unchunked(monkeypatch):
    rng = np.random.default_rng(3)
    s = rng.random((7, 6, 6))
    g = rng.random((7, 6, 6))
    whole = kld(s, g)
    import audit.metrics.gaze as gaze_module

    monkeypatch.setattr(gaze_module, "row_chunks", lambda n, p: row_chunks(n, p, budget=2 * p))
    np.testing.assert_allclose(kld(s, g), whole, rtol=0, atol=1e-15)


def test_is_constant_is_exact_and_finite_rows_flags_nan_and_inf():
    # np.full(3, 0.1).std() is 1.4e-17, not 0 (the mean rounds to 0.10000000000000002): max == min is exact
    x = np.array([[0.1] * 3, [0.1, 0.1, np.nextafter(0.1, 1.0)], [0.0, 1.0, 2.0]])
    assert x[0].std() != 0.0
    np.testing.assert_array_equal(is_constant(x), [True, False, False])
    y = np.array([[1.0, np.nan], [1.0, np.inf], [1.0, 2.0]])
    np.testing.assert_array_equal(finite_rows(y), [False, False, True])


def test_pearson_rows_hand_value():
    # a = [-1.5, -0.5, 0.5, 1.5], b = [0.75, -0.25, -0.25, -0.25]: Σab = -1.5, Σa² = 5, Σb² = 0.75
    r = pearson_rows(np.array([[0.0, 1, 2, 3]]), np.array([[1.0, 0, 0, 0]]))
    assert r[0] == pytest.approx(-1.5 / np.sqrt(5 * 0.75), abs=1e-15)


def _all_metrics():
    from audit import metrics as m

    fix = np.zeros((8, 8))
    fix[2, 3] = fix[5, 5] = 1
    mask = np.zeros((8, 8))
    mask[1:4, 1:4] = 1
    gaze = np.arange(64.0).reshape(8, 8)
    return {
        "kld": lambda s: m.kld(s, gaze),
        "nss": lambda s: m.nss(s, fix),
        "cc": lambda s: m.cc(s, gaze),
        "sim": lambda s: m.sim(s, gaze),
        "auc_judd": lambda s: m.auc_judd(s, fix),
        "auc_borji": lambda s: m.auc_borji(s, fix, n_splits=3),
        "info_gain": lambda s: m.info_gain(s, fix, gaze),
        "auprc": lambda s: m.auprc(s, mask),
        "iou_threshold": lambda s: m.iou(s, mask, threshold=0.5),
        "iou_top": lambda s: m.iou(s, mask, top_percent=10),
        "pointing_game": lambda s: m.pointing_game(s, mask),
        "pointing_game_tol": lambda s: m.pointing_game(s, mask, tolerance=2),
        "relevance_mass": lambda s: m.relevance_mass(s, mask),
        "relevance_rank": lambda s: m.relevance_rank(s, mask),
        "severity_correlation": lambda s: m.severity_correlation(s, gaze),
        "mass_in_region": lambda s: m.mass_in_region(s, mask),
        "mass_outside": lambda s: m.mass_outside(s, mask),
        "border_mass": lambda s: m.border_mass(s),
        "ssim": lambda s: m.ssim(s, gaze / 64, data_range=1.0),
        "spearman": lambda s: m.spearman(s, gaze),
        "topk_overlap": lambda s: m.topk_overlap(s, gaze),
    }


@pytest.mark.parametrize("name", sorted(_all_metrics()))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_maps_score_nan_without_raising(name, bad):
    fn = _all_metrics()[name]
    s = np.random.default_rng(0).random((8, 8))
    assert np.isfinite(fn(s))  # the clean map is defined
    s[4, 4] = bad
    assert np.isnan(fn(s))
    # in a batch only the bad map is NaN, in both float32 and float64
    for dtype in (np.float32, np.float64):
        batch = np.stack([np.random.default_rng(1).random((8, 8)), s]).astype(dtype)
        out = fn(batch)
        assert np.isfinite(out[0])
        assert np.isnan(out[1])
