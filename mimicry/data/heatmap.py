"""Static eye-gaze (EGD) heatmaps and binary fixation maps from fixation coordinates.

Spec (docs/methods.md, "Dataset formats"; Karargyris et al., *Scientific Data* 2021): the static
heatmap is the count of fixations per pixel at the DICOM's full (native) resolution, blurred with a Gaussian
of sigma = 150 px, and here normalised to sum 1 so it is a density. The dataset's own ``heatmap.png`` files
are viridis-coloured pictures, not densities, so we regenerate the map from ``fixations.csv``.

Coordinate rules (shared by :func:`valid_fixations`, :func:`fixation_count_map`, :func:`binary_fixation_map`
and :func:`static_heatmap`):

* a fixation is ``(x, y)`` = (``X_ORIGINAL``, ``Y_ORIGINAL``) = (column, row) in the original image;
* non-integer coordinates are rounded half up, ``floor(v + 0.5)`` (2.5 -> 3, 2.49 -> 2), i.e. to the pixel
  whose centre is nearest;
* fixations whose rounded coordinates fall outside ``[0, W-1] x [0, H-1]`` are dropped. This covers the
  ``-1, -1`` rows EGD writes when the gaze left the image, and NaNs. Nothing is clamped onto the border,
  so an off-image glance never piles up mass on the edge.

Blur: ``scipy.ndimage.gaussian_filter(counts, sigma, mode="constant", cval=0, truncate=4.0)``, i.e. zero
padding (mass that spreads past the border is lost before normalisation) and a kernel radius of
``int(4 * sigma + 0.5)`` pixels. Because a native-resolution EGD image is about 3000 x 2500 px and sigma =
150 px makes that direct filter take ~7 s, :func:`static_heatmap` evaluates the *same*
separable sum sparsely when there are fewer distinct fixated pixels than kernel taps (the usual case):
``sum_i n_i k(r - r_i) k(c - c_i)`` as one matrix product, with scipy's exact 1-D kernel. The two agree to
floating-point rounding (tested against ``gaussian_filter``); ``method="scipy"`` forces the direct filter.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "DEFAULT_HEATMAP_SIGMA_PX",
    "GAUSSIAN_TRUNCATE",
    "binary_fixation_map",
    "fixation_count_map",
    "static_heatmap",
    "valid_fixations",
]

DEFAULT_HEATMAP_SIGMA_PX = 150.0
"""Gaussian sigma of the EGD static heatmap at MIMIC-CXR's native resolution (dataset paper)."""

GAUSSIAN_TRUNCATE = 4.0
"""``truncate`` passed to ``scipy.ndimage.gaussian_filter`` (its default): kernel radius 4 sigma."""


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive (H, W), got {shape}")
    return h, w


def valid_fixations(fixations: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Round fixation coordinates and keep those inside the image.

    Args:
        fixations: ``N x 2`` (x, y) or ``N x k`` (x, y, extra columns such as duration...) array; x = column,
            y = row, in pixels of the image of ``shape``.
        shape: ``(H, W)`` of the image.

    Returns:
        float64 ``M x k`` array (``M <= N``, file order kept) whose x, y columns hold the rounded integer
        pixel coordinates of the fixations inside the image; other columns are passed through unchanged.
    """
    h, w = _check_shape(shape)
    arr = np.asarray(fixations, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"fixations must be N x 2 or more (x, y, ...), got shape {arr.shape}")
    out = arr.copy()
    with np.errstate(invalid="ignore"):
        out[:, :2] = np.floor(arr[:, :2] + 0.5)  # round half up; negatives are filtered below anyway
        x, y = out[:, 0], out[:, 1]
        keep = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return out[keep]


def fixation_count_map(fixations: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Number of (valid, rounded) fixations per pixel: float64 ``H x W`` with ``counts[y, x]``."""
    h, w = _check_shape(shape)
    v = valid_fixations(fixations, shape)
    counts = np.zeros((h, w), dtype=np.float64)
    np.add.at(counts, (v[:, 1].astype(np.intp), v[:, 0].astype(np.intp)), 1.0)
    return counts


def binary_fixation_map(fixations: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool ``H x W`` map, True at every pixel holding at least one valid fixation (for NSS / AUC-Judd)."""
    return fixation_count_map(fixations, shape) > 0


def _gaussian_kernel1d(sigma: float, radius: int) -> np.ndarray:
    """scipy.ndimage's order-0 Gaussian kernel: ``exp(-x^2 / (2 sigma^2))`` on ``-radius..radius``, sum 1."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def _sparse_gaussian(counts: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """``gaussian_filter(counts, sigma, mode="constant", truncate=truncate)`` for a sparse count map.

    Separable filtering with zero padding equals ``sum_i n_i k(r - r_i) k(c - c_i)`` over the non-zero
    pixels ``(r_i, c_i)`` with count ``n_i``, which is the product ``Kr @ (Kc * n).T``.
    """
    h, w = counts.shape
    radius = int(truncate * float(sigma) + 0.5)
    kernel = _gaussian_kernel1d(float(sigma), radius)
    rows, cols = np.nonzero(counts)
    n = counts[rows, cols]

    def taps(length: int, centres: np.ndarray) -> np.ndarray:
        d = np.arange(length)[:, None] - centres[None, :]
        inside = np.abs(d) <= radius
        out = np.zeros(d.shape, dtype=np.float64)
        out[inside] = kernel[d[inside] + radius]
        return out

    return taps(h, rows) @ (taps(w, cols) * n[None, :]).T


def static_heatmap(
    fixations: np.ndarray,
    shape: tuple[int, int],
    sigma_px: float = DEFAULT_HEATMAP_SIGMA_PX,
    *,
    truncate: float = GAUSSIAN_TRUNCATE,
    method: Literal["auto", "scipy", "sparse"] = "auto",
) -> np.ndarray:
    """EGD static heatmap: fixation count map, Gaussian blur, normalised to sum 1.

    Args:
        fixations: ``N x 2+`` array of (x, y, ...) pixel coordinates (see the module docstring for rounding
            and filtering).
        shape: ``(H, W)`` of the image the coordinates refer to (native resolution for real EGD).
        sigma_px: Gaussian sigma in pixels of that image (150 at MIMIC-CXR native resolution).
        truncate: kernel radius in sigmas (scipy's ``truncate``).
        method: ``"scipy"`` = ``scipy.ndimage.gaussian_filter(mode="constant")``; ``"sparse"`` = the same sum
            evaluated from the non-zero pixels; ``"auto"`` picks the cheaper one.

    Returns:
        float32 ``H x W``, non-negative, NaN-free. Sums to 1 when at least one fixation is inside the image;
        **all zeros** (sum 0) when there is none (real EGD has images without fixations): callers detect that
        with ``heatmap.sum() == 0`` and gaze metrics then return NaN.
    """
    h, w = _check_shape(shape)
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be positive, got {sigma_px}")
    if method not in ("auto", "scipy", "sparse"):
        raise ValueError(f"unknown method {method!r}")
    counts = fixation_count_map(fixations, (h, w))
    if not counts.any():
        return np.zeros((h, w), dtype=np.float32)
    n_taps = 2 * int(truncate * float(sigma_px) + 0.5) + 1
    use_sparse = method == "sparse" or (method == "auto" and np.count_nonzero(counts) < n_taps)
    if use_sparse:
        blurred = _sparse_gaussian(counts, float(sigma_px), truncate)
    else:
        blurred = gaussian_filter(counts, sigma=float(sigma_px), mode="constant", cval=0.0, truncate=truncate)
    np.clip(blurred, 0.0, None, out=blurred)  # float error of the product can leave -1e-20s
    total = blurred.sum()
    if not total > 0:  # every tap underflowed (absurdly small sigma): fall back to the raw counts
        blurred, total = counts, counts.sum()
    return (blurred / total).astype(np.float32)
