"""PostProcess: Arun et al.'s abs → channel sum → 99th-percentile clip → min-max, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimicry.saliency import ARUN_ET_AL, PostProcess, SaliencyError

# One sample, one channel, 2×2: values 0, −1, 2, 3.
RAW = np.array([[[[0.0, -1.0], [2.0, 3.0]]]])


def test_arun_convention_abs_clip99_minmax() -> None:
    # |a| = [0, 1, 2, 3]; 99th percentile (linear) = 2 + 0.97 · (3 − 2) = 2.97 → clip → [0, 1, 2, 2.97]
    expected = np.array([[[0.0, 1.0 / 2.97], [2.0 / 2.97, 1.0]]], dtype=np.float32)
    out = ARUN_ET_AL(RAW)
    assert out.dtype == np.float32
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    assert PostProcess() == ARUN_ET_AL


def test_relu_sign_discards_negative_evidence() -> None:
    # relu → [0, 0, 2, 3] → p99 = 2.97 → [0, 0, 2, 2.97] → /2.97
    expected = np.array([[[0.0, 0.0], [2.0 / 2.97, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(PostProcess(sign="relu")(RAW), expected, rtol=0, atol=1e-7)


def test_signed_maps_without_clip_are_min_max_scaled() -> None:
    out = PostProcess(sign="none", clip_percentile=None)(RAW)
    np.testing.assert_allclose(out, [[[0.25, 0.0], [0.75, 1.0]]], rtol=0, atol=1e-7)


def test_signed_clip_is_symmetric_in_magnitude() -> None:
    raw = np.array([[[[-4.0, 0.0], [1.0, 2.0]]]])
    # |m| = [4, 0, 1, 2]; p50 = 1.5 → clip to [−1.5, 1.5] → [−1.5, 0, 1, 1.5]; no normalisation
    out = PostProcess(sign="none", clip_percentile=50.0, normalise=False)(raw)
    np.testing.assert_allclose(out, [[[-1.5, 0.0], [1.0, 1.5]]], rtol=0, atol=1e-7)


def test_channels_are_summed_after_the_sign() -> None:
    raw = np.array([[[[1.0, -2.0]], [[-3.0, 1.0]]]])  # [1, 2, 1, 2]
    out = PostProcess(clip_percentile=None, normalise=False)(raw)
    np.testing.assert_allclose(out, [[[4.0, 3.0]]])  # |1| + |−3|, |−2| + |1|


def test_each_sample_is_processed_on_its_own() -> None:
    raw = np.stack([RAW[0], 100.0 * RAW[0]])
    out = ARUN_ET_AL(raw)
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-7)


def test_constant_and_zero_maps_become_zeros_not_nan() -> None:
    raw = np.stack([np.full((1, 3, 3), 5.0), np.zeros((1, 3, 3))])
    out = ARUN_ET_AL(raw)
    assert np.array_equal(out, np.zeros((2, 3, 3), np.float32))


def test_accepts_torch_and_three_dimensional_input() -> None:
    out = ARUN_ET_AL(torch.tensor(RAW[:, 0], dtype=torch.float32))
    np.testing.assert_allclose(out, ARUN_ET_AL(RAW), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{"sign": "square"}, {"clip_percentile": 0.0}, {"clip_percentile": 101.0}])
def test_invalid_configuration_is_refused(kwargs: dict) -> None:
    with pytest.raises(SaliencyError):
        PostProcess(**kwargs)


def test_non_finite_or_misshaped_input_is_refused() -> None:
    with pytest.raises(SaliencyError, match="NaN"):
        ARUN_ET_AL(np.array([[[[np.nan, 1.0]]]]))
    with pytest.raises(SaliencyError, match="shape"):
        ARUN_ET_AL(np.zeros((2, 2)))
