"""Localisation metrics: saliency maps scored against segmentation masks / boxes.

Conventions (Arun et al., Radiology: AI 2021; docs/methods.md, "Localisation and faithfulness metrics"):

* ``saliency``: ``H×W`` or ``N×H×W`` map(s), resized to the mask grid first when the grids differ (bilinear,
  see :func:`audit.metrics._batch.resize_maps`). The maps are scored *as given*: Arun et al. make maps
  non-negative, clip at the 99th percentile and min-max scale them to [0, 1] before scoring — that belongs
  to the saliency post-processing, so thresholds (:func:`iou`) refer to the caller's scale.
* ``mask``: ``H×W`` or ``N×H×W``; non-zero = inside (boxes: :func:`box_mask`, inclusive rasterisation).
  A single mask is broadcast over a batch of maps.
* ``float`` for one map, ``np.ndarray[N]`` for a batch, NaN where undefined (empty mask, non-finite map,
  and per metric below).

Everything is vectorised over the batch (in row chunks); :func:`auprc_sklearn` is the per-image scikit-learn
reference route that :func:`auprc` is tested against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import precision_recall_curve

from audit.metrics._batch import (
    MetricInputError,
    finalize,
    finite_rows,
    is_constant,
    pair_maps,
    pearson_rows,
    row_chunks,
    row_range,
)

__all__ = [
    "auprc",
    "auprc_sklearn",
    "box_mask",
    "iou",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "severity_correlation",
]

_NAN = float("nan")


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def _pair(saliency: Any, mask: Any, name: str = "mask") -> tuple[np.ndarray, np.ndarray, bool, tuple]:
    s, m, single = pair_maps(saliency, mask, reference_name=name, reference_as_float=False)
    return _flat(s), _flat(m), single, s.shape[1:]


def _bool(m: np.ndarray) -> np.ndarray:
    return m if m.dtype == bool else m != 0


def box_mask(shape: tuple[int, int], *, x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    """Rasterise a box to a boolean ``H×W`` mask, **inclusive** of both corners (Arun et al.).

    Pixel ``(row y, column x)`` is inside when ``x1 ≤ x ≤ x2`` and ``y1 ≤ y ≤ y2`` (integer corners); with
    fractional corners every pixel the box touches is inside (pixel ``x`` spans ``[x, x+1)``, so the
    corners are floored) and the box is clipped to the image. Keyword-only because the datasets disagree
    on column order (EGD ``bounding_boxes.csv`` is ``x1, x2, y1, y2``; RSNA gives ``x, y, width, height``
    → ``x2 = x + width − 1``). Coordinates must be on the grid of ``shape`` (scale them first when the map
    is smaller than the original image).
    """
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise MetricInputError(f"box_mask needs a positive shape, got {shape}")
    if x2 < x1 or y2 < y1:
        raise MetricInputError("box corners must satisfy x1 <= x2 and y1 <= y2")
    out = np.zeros((h, w), dtype=bool)
    c0, c1 = max(0, math.floor(x1)), min(w - 1, math.floor(x2))
    r0, r1 = max(0, math.floor(y1)), min(h - 1, math.floor(y2))
    if c0 <= c1 and r0 <= r1:
        out[r0 : r1 + 1, c0 : c1 + 1] = True
    return out


# --------------------------------------------------------------------------------------------- AUPRC
def _auprc_row(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact trapezoidal PR-curve area of one map (see :func:`auprc`).

    Args:
        pos: the map values at the positive (mask) pixels, sorted ascending (non-empty).
        neg: the map values at the other pixels, sorted ascending (may be empty).
    """
    npos, nneg = pos.size, neg.size
    # Distinct positive values u (the thresholds where recall moves) and where each run starts in pos.
    first = np.empty(npos, dtype=bool)
    first[0] = True
    np.not_equal(pos[1:], pos[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    u = pos[starts]
    # Curve point at threshold u: pixels >= u; the previous curve point: pixels > u.
    tp_ge = npos - starts  # positives >= u
    tp_gt = np.empty_like(tp_ge)  # positives > u
    tp_gt[:-1] = npos - starts[1:]
    tp_gt[-1] = 0
    lt = np.searchsorted(neg, u, side="left")  # negatives < u
    le = lt.copy()  # negatives <= u: equal to lt unless u also occurs among the negatives (a tie)
    if nneg:
        tied = (lt < nneg) & (neg[np.minimum(lt, nneg - 1)] == u)
        if tied.any():
            le[tied] = np.searchsorted(neg, u[tied], side="right")
    n_ge = tp_ge + (nneg - lt)
    n_gt = tp_gt + (nneg - le)
    p_cur = tp_ge / n_ge
    p_prev = np.ones(u.size)
    np.divide(tp_gt, n_gt, out=p_prev, where=n_gt > 0)  # nothing above u: sklearn's end point (0, 1)
    # Trapezoid: Δrecall = (positives at u)/npos; values without positives move neither recall nor area.
    return float(np.sum((tp_ge - tp_gt) / npos * (p_cur + p_prev) / 2.0))


def auprc(saliency: Any, mask: Any) -> float | np.ndarray:
    """Area under the pixel-level precision-recall curve, trapezoidal (Arun et al., Radiology: AI 2021).

    Every pixel is a sample: the scikit-learn route is ``precision_recall_curve(mask.ravel(), map.ravel())``
    followed by ``auc(recall, precision)`` (trapezoid — **not** average precision, which is a step sum).
    ``precision_recall_curve`` puts one point at every distinct map value ``v`` (threshold ``S ≥ v``,
    tied pixels enter together) plus the end point (recall 0, precision 1). Between consecutive points the
    recall only moves at values held by positive pixels, so the trapezoid sum reduces to those values::

        AUPRC = Σ_{v ∈ values at mask pixels}  (#pos = v)/#pos · ( prec(S ≥ v) + prec(S > v) ) / 2

    with ``prec(S > v) = 1`` when no pixel exceeds ``v`` (the end point). The counts come from sorting each
    map's mask and non-mask values (one sort per pixel in total) and binary searches of the distinct mask
    values among the non-mask values (``searchsorted`` ``left`` / ``right`` count ``< v`` / ``≤ v``
    exactly), so ties are handled exactly as sklearn handles them. It equals :func:`auprc_sklearn` up to
    summation order (~1e-16); the tests check ``< 1e-9``, ties included. (Measured alternatives — one
    integer sort carrying the labels then group sums, or a full-map sort — were slower with numpy.)

    A constant map has one threshold: precision = prevalence at recall 1, so AUPRC = (1 + prevalence)/2
    (sklearn's value, kept). Undefined (NaN): empty mask (no positive pixel; sklearn only warns), non-finite
    map values (sklearn raises).
    """
    s_all, m_all, single, _ = _pair(saliency, mask)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        m = _bool(m_all[sl])
        ok = finite_rows(s) & m.any(axis=1)
        for j in np.flatnonzero(ok):
            out[sl.start + j] = _auprc_row(np.sort(s[j][m[j]]), np.sort(s[j][~m[j]]))
    return finalize(out, single)


def auprc_sklearn(saliency: Any, mask: Any) -> float | np.ndarray:
    """Reference route for :func:`auprc`: scikit-learn per image, exactly as Arun et al.

    ``precision, recall, _ = precision_recall_curve(mask.ravel(), map.ravel()); auc(recall, precision)``.
    Slow (a Python loop and one sort per image); kept as the definition :func:`auprc` is tested against and
    as the per-image baseline of ``bench/bench_metrics.py``. NaN for an empty mask or non-finite values.
    """
    s_all, m_all, single, _ = _pair(saliency, mask)
    out = np.full(s_all.shape[0], _NAN)
    for i in range(s_all.shape[0]):
        y = _bool(m_all[i])
        if not y.any() or not np.isfinite(s_all[i]).all():
            continue
        precision, recall, _ = precision_recall_curve(y, s_all[i])
        out[i] = sk_auc(recall, precision)
    return finalize(out, single)


# ----------------------------------------------------------------------------------------------- IoU
def _kth_largest(s: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, the ``k``-th largest value (1-based ``k`` per row, ``1 ≤ k ≤ P``): ``np.partition`` (O(P))."""
    npix = s.shape[1]
    return np.array([np.partition(row, npix - kk)[npix - kk] for row, kk in zip(s, k, strict=True)])


def _exact_threshold(threshold: float, dtype: np.dtype) -> np.floating:
    """A threshold in the map's dtype such that ``S ≥ it`` ⟺ ``S ≥ threshold`` exactly.

    numpy compares a float32 array with a Python float in float32, rounding the threshold to nearest; when
    that rounds down, a pixel equal to the rounded value would pass a threshold it is below. Rounding up to
    the next representable value instead keeps the comparison exact.
    """
    t = dtype.type(threshold)
    if float(t) < threshold:
        t = np.nextafter(t, dtype.type(np.inf))
    return t


def _top_count(top_percent: float, npix: int) -> int:
    """``n = ⌈top_percent/100 · P⌉`` pixels (at least 1); a 1e-9 slack absorbs float error in the product."""
    return int(min(npix, max(1, np.ceil(top_percent / 100.0 * npix - 1e-9))))


def iou(
    saliency: Any, mask: Any, *, threshold: float | None = None, top_percent: float | None = None
) -> float | np.ndarray:
    """Intersection over union of the binarised saliency map and the mask.

    Give exactly one of:

    * ``threshold``: the map region is ``{S ≥ threshold}`` (on the caller's scale, e.g. a [0, 1] map);
    * ``top_percent``: the map region is the top ``top_percent`` % of pixels — ``{S ≥ v}`` with ``v`` the
      ``n``-th largest value, ``n = ⌈top_percent/100 · H·W⌉``; pixels tied with ``v`` are all included (a
      region is a level set of the map, not an arbitrary choice among equal pixels).

    ``IoU = |region ∩ mask| / |region ∪ mask|``. Undefined (NaN): empty union (threshold mode), a constant
    map (top-k mode: no top pixels exist), an empty mask, non-finite values.
    """
    if (threshold is None) == (top_percent is None):
        raise MetricInputError("iou needs exactly one of threshold= or top_percent=")
    if top_percent is not None and not 0 < top_percent <= 100:
        raise MetricInputError(f"top_percent must be in (0, 100], got {top_percent}")
    s_all, m_all, single, _ = _pair(saliency, mask)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        m = _bool(m_all[sl])
        ok = finite_rows(s) & m.any(axis=1)
        if threshold is not None:
            region = s >= _exact_threshold(threshold, s.dtype)
        else:
            assert top_percent is not None
            ok &= ~is_constant(s)
            k = np.full(s.shape[0], _top_count(top_percent, npix))
            region = s >= _kth_largest(s, k)[:, None]
        inter = np.count_nonzero(region & m, axis=1)
        union = np.count_nonzero(region | m, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where(ok & (union > 0), inter / union, _NAN)
    return finalize(out, single)


# ------------------------------------------------------------------------------------- pointing game
def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2
    return dy[keep], dx[keep]


def pointing_game(saliency: Any, mask: Any, *, tolerance: float = 0.0) -> float | np.ndarray:
    """Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018).

    A hit (1.0) when the maximum of the map lies inside the mask, else a miss (0.0). With
    ``tolerance > 0`` (Zhang et al. use 15 px) a maximum within ``tolerance`` pixels (Euclidean, inclusive)
    of a mask pixel also counts. When several pixels share the maximum value, it is a hit if any of them
    is (the Quantus ``PointingGame`` convention). The mean over images is the pointing-game accuracy.

    Undefined (NaN): a constant map (no point is indicated), an empty mask, non-finite values.
    """
    if tolerance < 0:
        raise MetricInputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    s_all, m_all, single, (h, w) = _pair(saliency, mask)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    dy, dx = _disk_offsets(tolerance)
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        m = _bool(m_all[sl])
        _, hi, finite, const = row_range(s)
        ok = finite & ~const & m.any(axis=1)
        is_max = s == hi[:, None]
        if tolerance < 1:  # the disk is the pixel itself
            hit = (is_max & m).any(axis=1)
        else:
            rows, flat = np.nonzero(is_max & ok[:, None])
            hit = np.zeros(s.shape[0], dtype=bool)
            m3 = m.reshape(-1, h, w)
            block = max(1, (1 << 22) // dy.size)
            for b in range(0, rows.size, block):  # bound the [maxima × disk] working set
                r, f = rows[b : b + block, None], flat[b : b + block, None]
                yy, xx = f // w + dy[None], f % w + dx[None]
                inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                near = m3[r, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)] & inside
                hit[np.unique(r[near.any(axis=1), 0])] = True
        out[sl] = np.where(ok, hit.astype(np.float64), _NAN)
    return finalize(out, single)


# ---------------------------------------------------------------------------- relevance mass / rank
def relevance_mass(saliency: Any, mask: Any) -> float | np.ndarray:
    """Relevance mass accuracy (Arras, Osman & Samek, "CLEVR-XAI", Information Fusion 81, 2022).

    ``mass = Σ_{i ∈ mask} R⁺_i / Σ_i R⁺_i`` with ``R⁺ = max(R, 0)``: the share of the positive relevance
    that falls inside the ground truth (Quantus ``RelevanceMassAccuracy``). In [0, 1].

    Undefined (NaN): no positive relevance (all-zero or all-negative map), an empty mask, non-finite values.
    """
    s_all, m_all, single, _ = _pair(saliency, mask)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        m = _bool(m_all[sl])
        rp = np.maximum(s, 0).astype(np.float64)
        total = rp.sum(axis=1)
        inside = rp.sum(axis=1, where=m)
        ok = finite_rows(s) & (total > 0) & m.any(axis=1)  # finite_rows also catches −inf, which R⁺ hides
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = np.where(ok, inside / total, _NAN)
    return finalize(out, single)


def relevance_rank(saliency: Any, mask: Any) -> float | np.ndarray:
    """Relevance rank accuracy (Arras, Osman & Samek, "CLEVR-XAI", Information Fusion 81, 2022).

    With ``K = |mask|`` and ``P_top-K`` the ``K`` pixels of highest relevance:
    ``rank = |P_top-K ∩ mask| / K`` (Quantus ``RelevanceRankAccuracy``). In [0, 1].

    Ties at the K-th value: Quantus takes ``argsort(R)[-K:]``, an arbitrary choice among tied pixels. We
    return the exact expectation over a uniformly random choice: with ``v`` the K-th largest value, all
    pixels ``> v`` are in, and the ``K − #{R > v}`` remaining places are shared among the ``t`` pixels equal
    to ``v``, of which ``t_in`` are in the mask: ``rank = (#{R > v, in mask} + (K − #{R > v})·t_in/t) / K``.
    Without a tie at ``v`` this is the plain definition; for a constant map it is the chance level ``K/P``.

    Undefined (NaN): an empty mask, non-finite values.
    """
    s_all, m_all, single, _ = _pair(saliency, mask)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        m = _bool(m_all[sl])
        k = np.count_nonzero(m, axis=1)
        ok = finite_rows(s) & (k > 0)
        v = _kth_largest(s, np.maximum(k, 1))[:, None]
        above = s > v
        tied = s == v
        n_above = np.count_nonzero(above, axis=1)
        in_above = np.count_nonzero(above & m, axis=1)
        t = np.count_nonzero(tied, axis=1)
        t_in = np.count_nonzero(tied & m, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            val = (in_above + (k - n_above) * t_in / t) / k
        out[sl] = np.where(ok, val, _NAN)
    return finalize(out, single)


# ---------------------------------------------------------------------------------------- severity
def severity_correlation(saliency: Any, severity: Any) -> float | np.ndarray:
    """Pearson correlation between the saliency map and a per-pixel severity map.

    ``r = Σ a·b / sqrt(Σ a² · Σ b²)``, ``a = S − mean(S)``, ``b = V − mean(V)`` over all pixels (the saliency
    map resized to the severity grid) — ``scipy.stats.pearsonr(S.ravel(), V.ravel())``, which the tests
    cross-check. Undefined (NaN): either map constant, non-finite values.
    """
    s_all, v_all, single = pair_maps(saliency, severity, reference_name="severity")
    s_all, v_all = _flat(s_all), _flat(v_all)
    out = np.full(s_all.shape[0], _NAN)
    for sl in row_chunks(*s_all.shape):
        s = s_all[sl]
        v = v_all[sl]
        val = pearson_rows(s, v)
        ok = np.isfinite(val) & ~is_constant(s) & ~is_constant(v)
        out[sl] = np.where(ok, np.clip(val, -1.0, 1.0), _NAN)
    return finalize(out, single)
