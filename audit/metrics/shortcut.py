"""Shortcut indicators: where does the saliency mass go?

A model that learned a shortcut (the phantom benchmark plants a burned-in site marker; real radiographs have
laterality markers, text and borders) puts its evidence outside the anatomy. These indicators measure the
share of the positive saliency mass in a region — the relevance-mass idea of Arras et al. (CLEVR-XAI,
Information Fusion 2022) applied to regions that should *not* matter::

    mass(region) = Σ_{i ∈ region} S⁺_i / Σ_i S⁺_i,        S⁺ = max(S, 0)

* :func:`mass_in_region` — inside a box / mask (e.g. the site marker's box, :func:`box_mask`);
* :func:`mass_outside` — outside the anatomy (pass the union of the anatomy masks, e.g.
  ``np.logical_or.reduce([left_lung, right_lung, mediastinum, aortic_knob])``);
* :func:`border_mass` — in the image border band; label-free, so usable on live traffic.

Saliency maps are resized to the mask grid first (bilinear, :func:`audit.metrics._batch.resize_maps`).
One map → ``float``, ``N×H×W`` → ``np.ndarray[N]``; a single mask is broadcast. Undefined (NaN): no
positive saliency (all-zero or all-negative map), non-finite values, and for :func:`mass_in_region` /
:func:`mass_outside` an empty mask / an empty anatomy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from audit.metrics._batch import (
    MetricInputError,
    as_maps,
    finalize,
    finite_rows,
    pair_maps,
    row_chunks,
)
from audit.metrics.localisation import box_mask

__all__ = ["border_band_mask", "border_mass", "box_mask", "mass_in_region", "mass_outside"]

_NAN = float("nan")


def _mass(saliency: Any, region: Any, *, invert: bool, name: str) -> float | np.ndarray:
    s_all, r_all, single = pair_maps(saliency, region, reference_name=name, reference_as_float=False)
    n = s_all.shape[0]
    s_all, r_all = s_all.reshape(n, -1), r_all.reshape(n, -1)
    out = np.full(n, _NAN)
    for sl in row_chunks(*s_all.shape):
        s = s_all[sl]
        r = r_all[sl] if r_all.dtype == bool else r_all[sl] != 0
        sp = np.maximum(s, 0).astype(np.float64)
        total = sp.sum(axis=1)
        inside = sp.sum(axis=1, where=r)
        ok = finite_rows(s) & (total > 0) & r.any(axis=1)  # finite_rows also catches −inf, which S⁺ hides
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = inside / total
            out[sl] = np.where(ok, 1.0 - frac if invert else frac, _NAN)
    return finalize(out, single)


def mass_in_region(saliency: Any, region: Any) -> float | np.ndarray:
    """Share of the positive saliency mass inside ``region`` (a mask ``H×W`` / ``N×H×W``; non-zero = in).

    For a box use ``box_mask(shape, x1=…, y1=…, x2=…, y2=…)`` (inclusive). In [0, 1]; the share expected
    from a map unrelated to the region is the region's area fraction.
    """
    return _mass(saliency, region, invert=False, name="region")


def mass_outside(saliency: Any, anatomy: Any) -> float | np.ndarray:
    """Share of the positive saliency mass **outside** the anatomy mask (the union of the anatomy masks).

    ``1 − mass_in_region(saliency, anatomy)``. High values flag evidence taken from outside the body /
    lungs (markers, devices, text, borders).
    """
    return _mass(saliency, anatomy, invert=True, name="anatomy")


def border_band_mask(shape: tuple[int, int], *, fraction: float = 0.1) -> np.ndarray:
    """Boolean ``H×W`` mask of the border band: ``⌈fraction·H⌉`` rows at top and bottom and
    ``⌈fraction·W⌉`` columns at left and right (width as a fraction of each side; at least 1 pixel)."""
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise MetricInputError(f"border_band_mask needs a positive shape, got {shape}")
    if not 0 < fraction < 0.5:
        raise MetricInputError(f"fraction must be in (0, 0.5), got {fraction}")
    bh = max(1, math.ceil(fraction * h - 1e-9))
    bw = max(1, math.ceil(fraction * w - 1e-9))
    band = np.zeros((h, w), dtype=bool)
    band[:bh, :] = band[-bh:, :] = True
    band[:, :bw] = band[:, -bw:] = True
    return band


def border_mass(saliency: Any, *, fraction: float = 0.1) -> float | np.ndarray:
    """Share of the positive saliency mass in the image border band (:func:`border_band_mask`).

    Needs no annotation (label-free), so it can be computed on live traffic. The band is built on the
    saliency map's own grid (the map is assumed to cover the whole image).
    """
    s, _ = as_maps(saliency, "saliency")
    return _mass(saliency, border_band_mask(s.shape[1:], fraction=fraction), invert=False, name="band")
