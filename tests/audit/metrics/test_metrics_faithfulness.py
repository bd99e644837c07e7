"""Insertion / deletion AUC and Sensitivity-n with toy forward callables whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from audit.metrics import (
    MetricInputError,
    blurred_baseline,
    deletion_auc,
    insertion_auc,
    perturbation_curve,
    sensitivity_n,
)

REGION = (slice(0, 2), slice(0, 2))  # the top-left 2×2 block of a 4×4 image


def region_mean(batch: np.ndarray) -> np.ndarray:
    """Toy model: class 0 score = mean of the region in channel 0; class 1 = 1 − that. [B, 2]."""
    assert batch.dtype == np.float32
    assert batch.ndim == 4
    p = batch[:, 0][:, REGION[0], REGION[1]].mean(axis=(1, 2)).astype(np.float64)
    return np.stack([p, 1.0 - p], axis=1)


def on_region() -> np.ndarray:
    s = np.zeros((4, 4))
    s[REGION] = [[4.0, 3.0], [2.0, 1.0]]  # region pixels first, in this order
    return s


def off_region() -> np.ndarray:
    s = np.ones((4, 4))
    s[REGION] = 0.0  # the region is deleted / inserted last
    return s


IMAGE = np.ones((1, 4, 4), dtype=np.float32)


def test_deletion_auc_exact_hand_values():
    # step 1 pixel, black baseline: deleting the region first gives scores 1, .75, .5, .25, 0, 0, …, 0 at
    # fractions 0, 1/16, …, 1: area = (1/16)·[(1+.75)/2 + (.75+.5)/2 + (.5+.25)/2 + (.25+0)/2] = 2/16
    good = deletion_auc(on_region(), IMAGE, region_mean, 0, step=1, baseline=0.0)
    assert good == pytest.approx(2 / 16, abs=1e-15)
    # region last: 12 deletions keep the score at 1, then the same ramp: (12 + 2)/16
    bad = deletion_auc(off_region(), IMAGE, region_mean, 0, step=1, baseline=0.0)
    assert bad == pytest.approx(14 / 16, abs=1e-15)
    assert good < bad  # the faithful map causes the faster drop


def test_insertion_auc_exact_hand_values():
    # insertion from black: region first → 0, .25, .5, .75, 1, …, 1: (2 + 12)/16; region last → 2/16
    good = insertion_auc(on_region(), IMAGE, region_mean, 0, step=1, baseline=0.0)
    bad = insertion_auc(off_region(), IMAGE, region_mean, 0, step=1, baseline=0.0)
    assert good == pytest.approx(14 / 16, abs=1e-15)
    assert bad == pytest.approx(2 / 16, abs=1e-15)


def test_uneven_last_step_uses_the_true_fractions():
    # step 3 on 16 pixels: counts 0, 3, 6, 9, 12, 15, 16; deleting the region first: scores 1, .25, 0, …
    # area = (3/16)·(1 + .25)/2 + (3/16)·(.25 + 0)/2 = (3/16)·0.75
    fractions, scores = perturbation_curve(
        on_region(), IMAGE, region_mean, 0, mode="deletion", step=3, baseline=0.0
    )
    np.testing.assert_array_equal(fractions, np.array([0, 3, 6, 9, 12, 15, 16]) / 16)
    np.testing.assert_allclose(scores[0], [1, 0.25, 0, 0, 0, 0, 0])
    assert deletion_auc(on_region(), IMAGE, region_mean, 0, step=3, baseline=0.0) == pytest.approx(
        3 / 16 * 0.75, abs=1e-15
    )


def test_linear_model_exact_auc_by_hand():
    # f = Σ w·x with w = [1, 2, 3, 4] on a 1×2×2 image of ones; saliency = w: deletion (black) removes 4, 3,
    # 2, 1: scores 10, 6, 3, 1, 0 at fractions 0, .25, .5, .75, 1 → .25·(8 + 4.5 + 2 + .5) = 3.75
    w = np.array([[1.0, 2.0], [3.0, 4.0]])

    def linear(batch):
        score = (batch[:, 0] * w).sum(axis=(1, 2))
        return np.stack([score, -score], axis=1)

    img = np.ones((1, 2, 2), dtype=np.float32)
    assert deletion_auc(w, img, linear, 0, step=1, baseline=0.0) == pytest.approx(3.75)
    # insertion of 4, 3, 2, 1: 0, 4, 7, 9, 10 → .25·(2 + 5.5 + 8 + 9.5) = 6.25
    assert insertion_auc(w, img, linear, 0, step=1, baseline=0.0) == pytest.approx(6.25)


def test_blurred_baseline_is_the_default_and_is_a_sigma_5_gaussian():
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 24, 24)).astype(np.float32)
    blurred = blurred_baseline(img)
    expected = gaussian_filter(img, sigma=(0, 0, 5, 5), mode="reflect", truncate=4.0)
    np.testing.assert_allclose(blurred, expected, rtol=1e-6)
    assert blurred.dtype == np.float32

    def mean_score(batch):
        m = batch.mean(axis=(1, 2, 3)).astype(np.float64)
        return np.stack([m, m], axis=1)

    s = rng.random((2, 24, 24))
    _, ins = perturbation_curve(s, img, mean_score, 0, mode="insertion", step=100)
    _, dele = perturbation_curve(s, img, mean_score, 0, mode="deletion", step=100)
    np.testing.assert_allclose(ins[:, 0], blurred.mean(axis=(1, 2, 3)), rtol=1e-6)  # starts from the blur
    np.testing.assert_allclose(ins[:, -1], img.mean(axis=(1, 2, 3)), rtol=1e-6)  # ends at the image
    np.testing.assert_allclose(dele[:, -1], blurred.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_every_step_is_a_fresh_image_even_if_forward_mutates_its_input():
    seen: list[np.ndarray] = []

    def recording(batch):
        seen.extend(batch.copy())  # what the model was shown, step by step
        out = region_mean(batch)
        batch[:] = -99.0  # a hostile forward that scribbles over its input
        return out

    s = on_region()
    _, scores = perturbation_curve(
        s, IMAGE, recording, 0, mode="deletion", step=1, batch_size=3, baseline=0.0
    )
    _, clean = perturbation_curve(s, IMAGE, region_mean, 0, mode="deletion", step=1, baseline=0.0)
    np.testing.assert_array_equal(scores, clean)
    # 17 distinct images: step k has exactly k pixels deleted (a shared, mutated buffer would repeat one)
    assert [int((img == 0).sum()) for img in seen] == list(range(17))


def test_batching_is_bounded_and_does_not_change_results():
    sizes: list[int] = []

    def sized(batch):
        sizes.append(batch.shape[0])
        return region_mean(batch)

    rng = np.random.default_rng(1)
    s = rng.random((3, 4, 4))
    imgs = rng.random((3, 1, 4, 4)).astype(np.float32)
    a = deletion_auc(s, imgs, sized, [0, 1, 0], step=2, batch_size=5)
    assert max(sizes) <= 5
    assert sum(sizes) == 3 * 9  # 3 images × (16/2 + 1) steps
    b = deletion_auc(s, imgs, region_mean, [0, 1, 0], step=2, batch_size=64)
    np.testing.assert_array_equal(a, b)
    one = [deletion_auc(s[i], imgs[i], region_mean, t, step=2) for i, t in enumerate([0, 1, 0])]
    np.testing.assert_allclose(a, one)
    assert isinstance(one[0], float)


def test_sensitivity_n_linear_model_gradient_times_input_is_perfect():
    # f_c(x) = Σ w·x; attribution R = w ⊙ (x − baseline): removing any subset T changes f by exactly Σ_T R
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 6))
    img = rng.random((1, 6, 6)).astype(np.float32)

    def linear(batch):
        score = (batch[:, 0].astype(np.float64) * w).sum(axis=(1, 2))
        return np.stack([score, -score], axis=1)

    attribution = w * (img[0].astype(np.float64) - 0.0)
    r = sensitivity_n(attribution, img, linear, 0, n=5, n_samples=30, baseline=0.0, seed=0)
    assert r == pytest.approx(1.0, abs=1e-6)
    noise = sensitivity_n(rng.random((6, 6)), img, linear, 0, n=5, n_samples=30, baseline=0.0, seed=0)
    assert noise < 0.9
    # seeded: the same seed draws the same subsets, another seed other subsets
    m = rng.random((6, 6))
    first = sensitivity_n(m, img, linear, 0, n=5, n_samples=20, seed=4)
    assert first == sensitivity_n(m, img, linear, 0, n=5, n_samples=20, seed=4)
    assert first != sensitivity_n(m, img, linear, 0, n=5, n_samples=20, seed=5)


def test_sensitivity_n_undefined_and_invalid():
    img = np.ones((1, 4, 4), dtype=np.float32)
    # a constant map gives the same attribution sum for every subset of n pixels: no correlation defined
    assert math.isnan(sensitivity_n(np.ones((4, 4)), img, region_mean, 0, n=3, baseline=0.0))
    with pytest.raises(MetricInputError, match="n must be"):
        sensitivity_n(np.ones((4, 4)), img, region_mean, 0, n=0)


def test_input_validation():
    s = np.ones((4, 4))
    with pytest.raises(MetricInputError, match="C×H×W"):
        deletion_auc(s, np.ones((4, 4)), region_mean, 0)
    with pytest.raises(MetricInputError, match="resize"):
        deletion_auc(s, np.ones((1, 5, 5)), region_mean, 0)
    with pytest.raises(MetricInputError, match="target"):
        deletion_auc(np.ones((2, 4, 4)), np.ones((2, 1, 4, 4)), region_mean, [0, 1, 1])
    with pytest.raises(MetricInputError, match=r"\[B, K\]"):
        deletion_auc(s, IMAGE, lambda b: np.zeros(b.shape[0]), 0)
    with pytest.raises(MetricInputError, match="out of range"):
        deletion_auc(s, IMAGE, region_mean, 5)
    with pytest.raises(MetricInputError, match="mode"):
        perturbation_curve(s, IMAGE, region_mean, 0, mode="sideways")  # type: ignore[arg-type]


def test_explicit_baselines_scalar_shared_and_per_image():
    rng = np.random.default_rng(3)
    s = rng.random((2, 4, 4))
    imgs = np.ones((2, 1, 4, 4), dtype=np.float32)
    zero = deletion_auc(s, imgs, region_mean, 0, step=4, baseline=0.0)
    shared = deletion_auc(s, imgs, region_mean, 0, step=4, baseline=np.zeros((1, 4, 4)))
    per_image = deletion_auc(s, imgs, region_mean, 0, step=4, baseline=np.zeros((2, 1, 4, 4)))
    np.testing.assert_array_equal(zero, shared)
    np.testing.assert_array_equal(zero, per_image)
    # a per-image baseline is used for its own image only: image 1 "deleted" into 0.5 ends at score 0.5
    b = np.stack([np.zeros((1, 4, 4)), np.full((1, 4, 4), 0.5)])
    _, scores = perturbation_curve(s, imgs, region_mean, 0, mode="deletion", step=4, baseline=b)
    np.testing.assert_allclose(scores[:, -1], [0.0, 0.5])
    with pytest.raises(MetricInputError, match="baseline"):
        deletion_auc(s, imgs, region_mean, 0, baseline=np.zeros((3, 3)))
