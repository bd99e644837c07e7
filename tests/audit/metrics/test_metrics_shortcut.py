"""Shortcut indicators: saliency mass in a region, outside the anatomy, in the border band."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.metrics import (
    MetricInputError,
    border_band_mask,
    border_mass,
    box_mask,
    mass_in_region,
    mass_outside,
)


def test_mass_in_region_hand_value():
    # S⁺ = [1, 2, 3, 0] (the −4 does not count); region = pixel (0, 1) → 2 / 6
    s = np.array([[1.0, 2.0], [3.0, -4.0]])
    assert mass_in_region(s, np.array([[0, 1], [0, 0]])) == pytest.approx(1 / 3)
    # a site-marker box: columns 0-1 of row 1 (inclusive) → 3 / 6
    assert mass_in_region(s, box_mask((2, 2), x1=0, y1=1, x2=1, y2=1)) == pytest.approx(0.5)


def test_mass_outside_anatomy_hand_value():
    s = np.array([[1.0, 2.0], [3.0, -4.0]])
    anatomy = np.array([[1, 1], [0, 0]])  # e.g. np.logical_or.reduce of the lung masks
    assert mass_outside(s, anatomy) == pytest.approx(3 / 6)
    assert mass_outside(s, np.ones((2, 2))) == pytest.approx(0.0)


def test_border_band_mask_widths():
    band = border_band_mask((10, 10), fraction=0.1)  # 1 px on each side
    assert band.sum() == 100 - 8 * 8
    band = border_band_mask((8, 12), fraction=0.25)  # 2 rows, 3 columns
    assert band.sum() == 8 * 12 - 4 * 6
    assert band[2:6, 3:9].sum() == 0
    assert border_band_mask((224, 224), fraction=0.1)[:, 22].all()  # ⌈22.4⌉ = 23 columns: 0..22
    assert not border_band_mask((224, 224), fraction=0.1)[112, 23]
    with pytest.raises(MetricInputError):
        border_band_mask((10, 10), fraction=0.5)


def test_border_mass_is_label_free():
    assert border_mass(np.ones((10, 10)), fraction=0.1) == pytest.approx(36 / 100)
    centred = np.zeros((10, 10))
    centred[4:6, 4:6] = 1.0
    assert border_mass(centred) == 0.0
    marker = np.zeros((10, 10))
    marker[0, 0] = 5.0  # all evidence in a corner marker
    marker[5, 5] = 5.0
    assert border_mass(marker) == pytest.approx(0.5)


def test_undefined_cases_are_nan():
    s = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert math.isnan(mass_in_region(np.zeros((2, 2)), np.eye(2)))  # no positive saliency
    assert math.isnan(mass_in_region(-s, np.eye(2)))
    assert math.isnan(mass_in_region(s, np.zeros((2, 2))))  # empty region
    assert math.isnan(mass_outside(s, np.zeros((2, 2))))  # no anatomy
    assert math.isnan(border_mass(np.full((4, 4), np.nan)))


def test_batch_broadcast_and_resize():
    rng = np.random.default_rng(0)
    s = rng.random((4, 8, 8))
    region = np.zeros((8, 8))
    region[:3, :3] = 1
    np.testing.assert_allclose(mass_in_region(s, region), [mass_in_region(x, region) for x in s])
    np.testing.assert_allclose(border_mass(s), [border_mass(x) for x in s])
    # the saliency map is resized to the mask grid: a constant map gives the region's area share
    big = np.zeros((16, 16))
    big[:4, :] = 1
    assert mass_in_region(np.ones((8, 8)), big) == pytest.approx(0.25)
