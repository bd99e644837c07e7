"""The preprocessing contract: letterbox geometry, normalisation, and mapping maps back."""

from __future__ import annotations

import numpy as np
import pytest

from mimicry.preprocess import Letterbox, PreprocessSpec, letterbox, preprocess, preprocess_batch, unletterbox


def test_fit_portrait_image_pads_left_and_right() -> None:
    box = Letterbox.fit((200, 100), 50)
    assert box.scaled_shape == (50, 25)
    assert box.offset == (0, 12)


def test_square_image_at_target_size_is_unchanged() -> None:
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    out, box = letterbox(img, 32)
    np.testing.assert_array_equal(out, img)
    assert box.offset == (0, 0)


def test_letterbox_pads_with_pad_value_and_keeps_content() -> None:
    img = np.ones((40, 20), np.float32)
    out, box = letterbox(img, 20, pad_value=0.25)
    assert out.shape == (20, 20)
    assert box.scaled_shape == (20, 10)
    np.testing.assert_allclose(out[:, 5:15], 1.0)
    np.testing.assert_allclose(out[:, :5], 0.25)
    np.testing.assert_allclose(out[:, 15:], 0.25)


def test_preprocess_normalises_with_spec() -> None:
    spec = PreprocessSpec(size=8, mean=0.5, std=0.25)
    x, _ = preprocess(np.full((8, 8), 0.75, np.float32), spec)
    assert x.shape == (1, 8, 8)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0)


def test_unletterbox_restores_source_grid() -> None:
    # A map that is 1 on the left half of the *source* image must come back as exactly that.
    src = np.zeros((60, 30), np.float32)
    src[:, :15] = 1.0
    boxed, box = letterbox(src, 60)
    back = unletterbox(boxed, box, order=0)
    assert back.shape == (60, 30)
    np.testing.assert_array_equal(back, src)


def test_unletterbox_upsamples_small_cam_grid() -> None:
    box = Letterbox.fit((64, 64), 64)
    cam = np.zeros((8, 8), np.float32)
    cam[:4, :4] = 1.0
    back = unletterbox(cam, box, order=0)
    assert back.shape == (64, 64)
    assert back[:32, :32].min() == 1.0
    assert back[32:, 32:].max() == 0.0


def test_batch_shapes_and_empty_batch() -> None:
    spec = PreprocessSpec(size=16)
    x, boxes = preprocess_batch([np.zeros((10, 20), np.float32), np.zeros((30, 5), np.float32)], spec)
    assert x.shape == (2, 1, 16, 16)
    assert [b.source_shape for b in boxes] == [(10, 20), (30, 5)]
    empty, none = preprocess_batch([], spec)
    assert empty.shape == (0, 1, 16, 16)
    assert none == []


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        letterbox(np.zeros((2, 3, 4), np.float32), 8)
