"""Map-to-map similarity: SSIM, Spearman rank correlation, top-k overlap.

Used by the randomisation sanity checks and the repeatability / reproducibility checks (Arun et al.,
Radiology: AI 2021; docs/methods.md, "Sanity checks").
Both arguments are saliency maps of the **same** grid (no
resizing: comparing maps from two models or two stages of randomisation); ``H×W`` pairs give a ``float``,
``N×H×W`` batches an ``np.ndarray[N]`` (a single ``H×W`` second argument is broadcast).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats
from skimage.metrics import structural_similarity

from audit.metrics._batch import MetricInputError, finalize, finite_rows, is_constant, pair_maps

__all__ = ["spearman", "ssim", "topk_overlap"]

_NAN = float("nan")


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    return pair_maps(a, b, saliency_name="map_a", reference_name="map_b", resize_saliency=False)


def ssim(map_a: Any, map_b: Any, *, data_range: float) -> float | np.ndarray:
    """Structural similarity index (Wang et al., IEEE TIP 2004), scikit-image semantics, per pair.

    Calls ``skimage.metrics.structural_similarity(a, b, data_range=data_range, win_size=7,
    gaussian_weights=False, use_sample_covariance=True, K1=0.01, K2=0.03)`` — the library defaults, spelled
    out: 7×7 uniform window, sample (N−1) covariance, mean SSIM over the valid interior. Arun et al. used
    these defaults; their old scikit-image inferred ``data_range = 2`` for float maps in [0, 1] (the dtype's
    range −1..1), so ``data_range`` is **required** here: pass ``1.0`` for min-max-scaled maps (``2.0``
    reproduces the paper's numbers; ``C1, C2`` grow 4×).

    Identical maps give 1. Maps smaller than 7×7 raise (scikit-image's window constraint). NaN only for
    non-finite values.
    """
    if not np.isfinite(data_range) or data_range <= 0:
        raise MetricInputError(f"data_range must be a positive finite number, got {data_range}")
    a_all, b_all, single = _pair(map_a, map_b)
    if min(a_all.shape[1:]) < 7:
        raise MetricInputError(f"ssim needs maps of at least 7×7 (the 7×7 window), got {a_all.shape[1:]}")
    out = np.full(a_all.shape[0], _NAN)
    for i in range(a_all.shape[0]):
        a = a_all[i].astype(np.float64)
        b = b_all[i].astype(np.float64)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        out[i] = structural_similarity(
            a,
            b,
            data_range=data_range,
            win_size=7,
            gaussian_weights=False,
            use_sample_covariance=True,
            K1=0.01,
            K2=0.03,
        )
    return finalize(out, single)


def spearman(map_a: Any, map_b: Any) -> float | np.ndarray:
    """Spearman rank correlation of the two maps' pixels: ``scipy.stats.spearmanr(a.ravel(), b.ravel())``.

    Ties get average ranks (scipy). Used by Adebayo et al. (2018) / Arun et al. as a randomisation
    similarity. Undefined (NaN): either map constant, non-finite values.
    """
    a_all, b_all, single = _pair(map_a, map_b)
    n = a_all.shape[0]
    a2, b2 = a_all.reshape(n, -1), b_all.reshape(n, -1)
    ok = finite_rows(a2, b2) & ~is_constant(a2) & ~is_constant(b2)
    out = np.full(n, _NAN)
    for i in np.flatnonzero(ok):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            out[i] = stats.spearmanr(a2[i], b2[i]).statistic
    return finalize(out, single)


def _top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of 1-D ``x``; ties broken by lower raster index (stable sort)."""
    return np.argsort(-x.astype(np.float64), kind="stable")[:k]


def topk_overlap(map_a: Any, map_b: Any, *, top_percent: float = 10.0) -> float | np.ndarray:
    """Fraction of shared top-k % pixels: ``|top_k(A) ∩ top_k(B)| / k`` (Ghorbani et al., AAAI 2019).

    ``k = ⌈top_percent/100 · H·W⌉``; each set holds exactly ``k`` pixels, ties at the boundary broken by the
    lower raster index (deterministic). In [0, 1]; identical maps → 1.
    Undefined (NaN): either map constant (its top-k set would be arbitrary), non-finite values.
    """
    if not 0 < top_percent <= 100:
        raise MetricInputError(f"top_percent must be in (0, 100], got {top_percent}")
    a_all, b_all, single = _pair(map_a, map_b)
    n = a_all.shape[0]
    a2, b2 = a_all.reshape(n, -1), b_all.reshape(n, -1)
    npix = a2.shape[1]
    k = int(min(npix, max(1, np.ceil(top_percent / 100.0 * npix - 1e-9))))
    ok = finite_rows(a2, b2) & ~is_constant(a2) & ~is_constant(b2)
    out = np.full(n, _NAN)
    for i in np.flatnonzero(ok):
        shared = np.intersect1d(_top_indices(a2[i], k), _top_indices(b2[i], k), assume_unique=True)
        out[i] = shared.size / k
    return finalize(out, single)
