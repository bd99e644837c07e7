"""Gaze-alignment metrics: saliency maps scored against radiologists' eye-gaze (MIT saliency benchmark).

Definitions follow the MIT saliency benchmark MATLAB code (``cvzoya/saliency``, ``code_forMetrics/``) and
Bylinskii et al., "What do different evaluation metrics tell us about saliency models?", IEEE TPAMI 41(3),
2019 (arXiv:1604.03605); where they differ from pysaliency see docs/audit.md, "Conventions vs reference
implementations". Conventions shared by every function:

* ``eps = 2.220446049250313e-16`` (MATLAB ``eps``, :data:`EPS`); all arithmetic in float64 (``im2double``).
* The saliency map is first resized to the ground-truth grid (:func:`audit.metrics._batch.resize_maps`:
  bilinear ``skimage.transform.resize(order=1)``, anti-aliased when shrinking; MATLAB's ``imresize`` default
  is bicubic — see that function for why we use bilinear).
* Continuous ground truth (``gaze``: a fixation density / static heatmap) for KLD, CC, SIM; binary ground
  truth (``fixations``: fixated pixels are the non-zero entries, negative entries are an input error) for
  NSS, AUC-Judd, AUC-Borji and information gain. Repeated fixations on one pixel count once, as in the
  benchmark.
* One map ``H×W`` → ``float``; a batch ``N×H×W`` → ``np.ndarray[N]``; a single reference ``H×W`` is
  broadcast over a batch. Undefined values are ``NaN`` (no fixations, a constant map where the metric
  normalises by its range or standard deviation, a map that is not a distribution for KLD, non-finite
  values). The few places where this deliberately departs from the MATLAB code are listed per function.

The per-pixel work is vectorised over the batch (in chunks of :data:`audit.metrics._batch.CHUNK_ELEMENTS`
values); only the sorting-based AUCs loop over maps for their small per-map curve.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
from scipy.integrate import trapezoid

from audit.metrics._batch import (
    MetricInputError,
    as_maps,
    finalize,
    finite_rows,
    is_constant,
    pair_maps,
    pearson_rows,
    resize_maps,
    row_chunks,
    row_range,
    to_numpy,
)

__all__ = [
    "EPS",
    "auc_borji",
    "auc_judd",
    "cc",
    "center_prior",
    "info_gain",
    "kld",
    "nss",
    "sauc",
    "shuffled_fixation_map",
    "sim",
]

#: MATLAB ``eps`` (``np.finfo(np.float64).eps``), the regulariser of the MIT benchmark code.
EPS = 2.220446049250313e-16

_NAN = float("nan")


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def _fixated(f: np.ndarray) -> np.ndarray:
    """Binary fixation map chunk ``[n, P]`` → bool; negative entries are an input error."""
    if f.dtype == bool:
        return f
    if (f < 0).any():
        raise MetricInputError("fixations must be a binary (or count) map with no negative entries")
    return f != 0


@overload
def _minmax(x: np.ndarray, *, with_constant: Literal[False] = False) -> np.ndarray: ...
@overload
def _minmax(x: np.ndarray, *, with_constant: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
def _minmax(x: np.ndarray, *, with_constant: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Row-wise ``(x − min)/(max − min)`` in float64 (MATLAB ``(map−min(map(:)))/(max(map(:))−min(map(:)))``).

    Constant rows give NaN (0/0, as in MATLAB); callers mark them undefined (``with_constant=True`` also
    returns the per-row ``max == min`` flags, computed from the same min/max).
    """
    lo = x.min(axis=1, keepdims=True).astype(np.float64)
    hi = x.max(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = x - lo  # float64 result (lo is float64); min/max of the input dtype are exact
        out /= hi - lo
    if with_constant:
        return out, (hi == lo)[:, 0]
    return out


def kld(saliency: Any, gaze: Any) -> float | np.ndarray:
    """Kullback-Leibler divergence KL(G‖S) of the gaze density from the saliency map (lower is better).

    MIT benchmark ``KLdiv.m`` (Bylinskii et al. 2019, KL section; the equation as coded)::

        P = S / ΣS ;  Q = G / ΣG ;  KLD = Σ_i Q_i · log(eps + Q_i / (P_i + eps))      (natural log)

    with ``S`` the saliency map resized to the gaze grid, both in float64. Invariant to positive scaling of
    either map; ≥ 0 up to the eps regulariser (identical maps → ≈ 0).

    Undefined (NaN): a map with a negative value or a zero sum (not a distribution) — for an all-zero map the
    MATLAB code would silently keep P = 0 and return a large finite number — and non-finite values.

    Args:
        saliency: ``H×W`` or ``N×H×W`` non-negative saliency map(s) (any grid; resized to ``gaze``'s).
        gaze: ``H×W`` or ``N×H×W`` non-negative gaze density / heatmap (a single map is broadcast).

    Returns:
        ``float`` for one map, ``np.ndarray[N]`` for a batch.
    """
    s_all, g_all, single = pair_maps(saliency, gaze, reference_name="gaze")
    s_all, g_all = _flat(s_all), _flat(g_all)
    out = np.full(s_all.shape[0], _NAN)
    for sl in row_chunks(*s_all.shape):
        # a distribution needs no negative mass (checked on the input dtype: same answer, half the bytes)
        ok = (s_all[sl].min(axis=1) >= 0) & (g_all[sl].min(axis=1) >= 0)
        p = s_all[sl].astype(np.float64)  # fresh float64 working copies, then in-place (cache-resident)
        q = g_all[sl].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ss = p.sum(axis=1)
            gs = q.sum(axis=1)
            # finite sums <=> finite maps (see finite_rows)
            ok &= np.isfinite(ss) & np.isfinite(gs) & (ss > 0) & (gs > 0)
            p /= np.where(ss > 0, ss, 1.0)[:, None]  # P = S / ΣS
            q /= np.where(gs > 0, gs, 1.0)[:, None]  # Q = G / ΣG
            p += EPS
            np.divide(q, p, out=p)  # Q / (P + eps)
            p += EPS
            np.log(p, out=p)  # log(eps + Q / (P + eps))
            val = np.einsum("ij,ij->i", q, p)  # Σ Q · log(...)
        out[sl] = np.where(ok, val, _NAN)
    return finalize(out, single)


def nss(saliency: Any, fixations: Any) -> float | np.ndarray:
    """Normalized Scanpath Saliency: mean z-scored saliency at fixated pixels (higher is better).

    MIT benchmark ``NSS.m`` (Peters et al. 2005; Bylinskii et al. 2019, NSS section)::

        Z = (S − mean(S)) / std(S)          std with the N−1 denominator (MATLAB ``std``)
        NSS = mean_{i : F_i ≠ 0} Z_i

    with ``S`` resized to the fixation grid. Invariant to positive scaling and shifting of ``S``.

    Undefined (NaN): no fixated pixel, a constant map (std 0; detected exactly as ``max == min``), a map of
    one pixel, non-finite values.

    Args:
        saliency: ``H×W`` or ``N×H×W`` saliency map(s).
        fixations: ``H×W`` or ``N×H×W`` binary fixation map(s) (non-zero = fixated).
    """
    s_all, f_all, single = pair_maps(
        saliency, fixations, reference_name="fixations", reference_as_float=False
    )
    s_all, f_all = _flat(s_all), _flat(f_all)
    out = np.full(s_all.shape[0], _NAN)
    npix = s_all.shape[1]
    for sl in row_chunks(*s_all.shape):
        _, _, finite, const = row_range(s_all[sl])
        rows, cols = np.nonzero(_fixated(f_all[sl]))
        nfix = np.bincount(rows, minlength=finite.size)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            d = s_all[sl].astype(np.float64)
            d -= d.mean(axis=1, keepdims=True)  # S − mean(S)
            std = np.sqrt(np.einsum("ij,ij->i", d, d) / (npix - 1))  # N−1 denominator
            # mean over fixated pixels of Z = (S − μ)/σ, evaluated at the fixated pixels only
            z = d[rows, cols] / std[rows]
            val = np.bincount(rows, weights=z, minlength=finite.size) / nfix
        ok = finite & ~const & (nfix > 0) & (npix > 1)
        out[sl] = np.where(ok, val, _NAN)
    return finalize(out, single)


def cc(saliency: Any, gaze: Any) -> float | np.ndarray:
    """Pearson's linear correlation coefficient between the saliency map and the gaze density.

    MIT benchmark ``CC.m`` (Bylinskii et al. 2019, CC section): both maps z-scored (N−1 std), then
    ``corr2``; equivalently ``Σ a·b / sqrt(Σ a² · Σ b²)`` with ``a = S − mean(S)``, ``b = G − mean(G)``,
    ``S`` resized to the gaze grid. In [−1, 1]; identical maps → 1; invariant to positive scaling.

    Undefined (NaN): either map constant (``max == min``), non-finite values.
    """
    s_all, g_all, single = pair_maps(saliency, gaze, reference_name="gaze")
    s_all, g_all = _flat(s_all), _flat(g_all)
    out = np.full(s_all.shape[0], _NAN)
    for sl in row_chunks(*s_all.shape):
        s = s_all[sl]
        g = g_all[sl]
        val = pearson_rows(s, g)
        ok = np.isfinite(val) & ~is_constant(s) & ~is_constant(g)
        out[sl] = np.where(ok, val, _NAN)
    return finalize(out, single)


def sim(saliency: Any, gaze: Any) -> float | np.ndarray:
    """Similarity (histogram intersection) of the saliency map and the gaze density (higher is better).

    MIT benchmark ``similarity.m`` (Judd et al. 2012; Bylinskii et al. 2019, SIM section)::

        P = minmax(S); P = P / ΣP ;  Q = minmax(G); Q = Q / ΣQ ;  SIM = Σ_i min(P_i, Q_i)

    with ``minmax(x) = (x − min x)/(max x − min x)`` and ``S`` resized to the gaze grid. In [0, 1];
    identical maps → 1; invariant to positive scaling (and shifting) of either map.

    Undefined (NaN): either map constant. MATLAB returns NaN for a constant non-zero map but leaves an
    all-zero map as zeros and returns 0; we return NaN for every constant map (a map with no variation
    is not a distribution to compare), per the project rule "undefined → NaN, never 0".
    """
    s_all, g_all, single = pair_maps(saliency, gaze, reference_name="gaze")
    s_all, g_all = _flat(s_all), _flat(g_all)
    out = np.full(s_all.shape[0], _NAN)
    for sl in row_chunks(*s_all.shape):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            p, s_const = _minmax(s_all[sl], with_constant=True)
            p /= p.sum(axis=1, keepdims=True)
            q, g_const = _minmax(g_all[sl], with_constant=True)
            q /= q.sum(axis=1, keepdims=True)
            np.minimum(p, q, out=p)
            val = p.sum(axis=1)
        ok = np.isfinite(val) & ~s_const & ~g_const
        out[sl] = np.where(ok, val, _NAN)
    return finalize(out, single)


def auc_judd(
    saliency: Any, fixations: Any, *, jitter: bool = False, seed: int | None = 0
) -> float | np.ndarray:
    """AUC-Judd: area under the ROC curve of the saliency map as a classifier of fixated pixels.

    MIT benchmark ``AUC_Judd.m`` (Judd et al. 2009; Bylinskii et al. 2019, AUC section). ``S`` is resized to
    the fixation grid and min-max normalised; the thresholds are the map values at the ``Nf`` fixated
    pixels, sorted descending; for each threshold ``t``::

        tp(t) = #{fixated i : S_i ≥ t} / Nf
        fp(t) = (#{all i : S_i ≥ t} − #{fixated i : S_i ≥ t}) / (Npixels − Nf)

    the points (0, 0) and (1, 1) are added and the area is the trapezoid rule (``trapz(fp, tp)``).

    Ties: ``AUC_Judd.m`` writes ``tp = i/Nf`` for the i-th sorted threshold, which equals the count above
    only when the fixated values are distinct — the situation its default ``jitter`` (``rand/1e7`` added to
    the map) exists to create. We count ``#{fixated ≥ t}`` instead, which is identical for distinct values
    and deterministic otherwise (tied pixels enter the curve together: the exact ROC). ``jitter=True``
    reproduces the MATLAB default (uniform noise ``U(0,1)/1e7`` added to the resized map before the
    normalisation, from ``numpy.random.default_rng(seed)``); it is off by default because it makes the
    score random and breaks invariance to positive scaling of ``S`` (the noise has a fixed magnitude).

    Undefined (NaN): no fixations, every pixel fixated, a constant map, non-finite values.

    Args:
        saliency: ``H×W`` or ``N×H×W`` saliency map(s).
        fixations: ``H×W`` or ``N×H×W`` binary fixation map(s) (non-zero = fixated).
        jitter: add MATLAB's tie-breaking noise (see above).
        seed: seed of the jitter generator (ignored without jitter).
    """
    s_all, f_all, single = pair_maps(
        saliency, fixations, reference_name="fixations", reference_as_float=False
    )
    s_all, f_all = _flat(s_all), _flat(f_all)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    rng = np.random.default_rng(seed) if jitter else None
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        f = _fixated(f_all[sl])
        if rng is not None:
            s = s.astype(np.float64) + rng.random(s.shape) / 1e7
        # Sort keys: the min-max-normalised float64 map (as MATLAB). For float32 input the raw values have
        # exactly the same order and ties (normalising distinct float32 values in float64 cannot merge
        # them), so we sort those instead: float32 sorting is about twice as fast.
        if s.dtype == np.float32:
            _, _, finite, const = row_range(s)
            keys, ok = s, finite & ~const
        else:
            keys, const = _minmax(s, with_constant=True)
            ok = finite_rows(s) & ~const
        srt = np.sort(keys, axis=1)
        for j in np.flatnonzero(ok):
            th = np.sort(keys[j][f[j]])  # fixated values, ascending
            nf = th.size
            if nf == 0 or nf == npix:
                continue
            t = th[::-1]
            above_all = npix - np.searchsorted(srt[j], t, side="left")
            above_fix = nf - np.searchsorted(th, t, side="left")
            tp = np.concatenate(([0.0], above_fix / nf, [1.0]))
            fp = np.concatenate(([0.0], (above_all - above_fix) / (npix - nf), [1.0]))
            out[sl.start + j] = trapezoid(tp, fp)
    return finalize(out, single)


def sauc(saliency: Any, fixations: Any, other: Any) -> float | np.ndarray:
    """Shuffled AUC (sAUC): ROC area of the map separating this image's fixations from other images'.

    MIT saliency benchmark ``AUC_shuffled.m`` (Borji et al., ICCV 2013; Bylinskii et al. 2019, AUC
    section). ``S`` is resized to the fixation grid; the positives are its values at the fixated pixels of
    this image, the negatives its values at the fixated pixels of *other* images (``other``: their binary
    union, the benchmark's ``otherMap``; :func:`shuffled_fixation_map` builds it from other images of any
    size). Because the negatives share the observers' centre bias, a pure centre prior scores ≈ 0.5 here
    while it scores high on AUC-Judd.

    Convention (deliberate departure from the MATLAB code; pysaliency's
    ``AUC_per_image(nonfixations="shuffled", thresholds="all")`` does the same, except that it keeps an other
    image's fixation once per occurrence where the binary ``otherMap`` keeps each pixel once): the exact ROC
    over all thresholds, with *all* negatives — ``P(S_pos > S_neg) + ½·P(S_pos = S_neg)`` (ties enter the
    curve together, the trapezoid then counts them half), which equals scikit-learn ``roc_auc_score`` on the
    pooled values. ``AUC_shuffled.m`` instead draws ``min(Nf, Nother)`` negatives per split (100 random
    splits) and sweeps thresholds ``0:0.1:max`` on the min-max normalised map: a random, quantised estimate
    of the same area. The exact value is deterministic and invariant to any increasing transform of ``S``
    (the normalisation is therefore not needed).

    Undefined (NaN): no fixation, no negative location in ``other``, non-finite values.

    Args:
        saliency: ``H×W`` or ``N×H×W`` saliency map(s) (any grid; resized to ``fixations``').
        fixations: ``H×W`` or ``N×H×W`` binary fixation map(s) (non-zero = fixated).
        other: binary map(s) of the other images' fixations on the same grid as ``fixations`` (``H×W`` is
            broadcast over a batch).
    """
    s_all, f_all, single = pair_maps(
        saliency, fixations, reference_name="fixations", reference_as_float=False
    )
    n = s_all.shape[0]
    o_all, o_single = as_maps(other, "other", as_float=False)
    if o_all.shape[1:] != f_all.shape[1:]:
        raise MetricInputError(f"other must be on the fixation grid {f_all.shape[1:]}, got {o_all.shape[1:]}")
    if o_all.shape[0] not in (1, n) or (not o_single and o_all.shape[0] != n):
        raise MetricInputError(f"batch sizes differ: saliency has {n} maps, other has {o_all.shape[0]}")
    if o_all.shape[0] != n:
        o_all = np.broadcast_to(o_all, (n, *o_all.shape[1:]))
    s_all, f_all, o_all = _flat(s_all), _flat(f_all), _flat(o_all)
    out = np.full(n, _NAN)
    for sl in row_chunks(*s_all.shape):
        s = s_all[sl]
        f = _fixated(f_all[sl])
        o = _fixated(o_all[sl])
        ok = finite_rows(s)
        for j in np.flatnonzero(ok):
            pos = s[j][f[j]].astype(np.float64)
            neg = np.sort(s[j][o[j]].astype(np.float64))
            if pos.size == 0 or neg.size == 0:
                continue
            below = np.searchsorted(neg, pos, side="left")  # negatives < each positive
            tied = np.searchsorted(neg, pos, side="right") - below  # negatives == each positive
            out[sl.start + j] = (below.sum() + 0.5 * tied.sum()) / (pos.size * neg.size)
    return finalize(out, single)


def shuffled_fixation_map(shape: tuple[int, int], others: Any) -> np.ndarray:
    """The ``other`` map of :func:`sauc`: other images' fixated pixels carried onto a grid of ``shape``.

    ``others`` is an iterable whose items are binary fixation maps of other images (any sizes) or
    ``(rows, cols, (H_j, W_j))`` tuples of integer pixel coordinates with their image's shape. A fixation
    at column ``x`` of an image ``W_j`` wide goes to column ``⌊x · W / W_j⌋`` (rows alike) — the rescaling of
    pysaliency's ``FullShuffledNonfixationProvider`` (the MIT benchmark resizes the other fixation maps to
    the image's size). Returns a bool ``H×W`` map, True where at least one other fixation lands.
    """
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise MetricInputError(f"shuffled_fixation_map needs a positive shape, got {shape}")
    out = np.zeros((h, w), dtype=bool)
    for item in others:
        if isinstance(item, tuple):
            rows, cols, (hj, wj) = item
            rows = np.asarray(rows, dtype=np.float64)
            cols = np.asarray(cols, dtype=np.float64)
        else:
            fm = to_numpy(item)
            if fm.ndim != 2:
                raise MetricInputError(f"each other fixation map must be H×W, got shape {fm.shape}")
            hj, wj = fm.shape
            r, c = np.nonzero(_fixated(fm))
            rows, cols = r.astype(np.float64), c.astype(np.float64)
        if rows.size == 0:
            continue
        if hj < 1 or wj < 1:
            raise MetricInputError(f"an other image has an empty shape ({hj}, {wj})")
        rr = np.clip((rows * (h / hj)).astype(np.int64), 0, h - 1)
        cc_ = np.clip((cols * (w / wj)).astype(np.int64), 0, w - 1)
        out[rr, cc_] = True
    return out


def _borji_thresholds(step_size: float) -> np.ndarray:
    """Descending thresholds ``k·stepSize``, k = ⌊1/stepSize⌋ … 0 (MATLAB ``fliplr(0:stepSize:max)``)."""
    k = int(np.floor(1.0 / step_size + 1e-9))
    return np.round(step_size * np.arange(k, -1, -1), 12)


def auc_borji(
    saliency: Any,
    fixations: Any,
    *,
    n_splits: int = 100,
    step_size: float = 0.1,
    seed: int | None = 0,
    index_offset: int = 0,
) -> float | np.ndarray:
    """AUC-Borji: ROC area against uniformly sampled pixels, averaged over random splits.

    MIT benchmark ``AUC_Borji.m`` (Borji et al. 2013; Bylinskii et al. 2019, AUC section). ``S`` is resized
    to the fixation grid and min-max normalised; ``Sth`` are its values at the ``Nf`` fixated pixels. For
    each of ``Nsplits`` splits, ``Nf`` pixel indices are drawn uniformly **with replacement from all image
    pixels** (``randi([1 Npixels], [Nf, Nsplits])``); for thresholds ``t = fliplr(0:stepSize:max)``::

        tp(t) = #{Sth ≥ t} / Nf ;  fp(t) = #{random values ≥ t} / Nf

    with (0, 0) and (1, 1) added, area by the trapezoid rule, and the score is the mean over splits.
    Thresholds above a split's maximum only repeat the (0, 0) point, so one grid ``0:stepSize:1`` serves
    all splits with identical areas (threshold values rounded to 12 decimals, i.e. the doubles MATLAB's
    colon operator produces for decimal steps).

    Randomness: map ``i`` of a batch draws from its own stream,
    ``default_rng(SeedSequence(seed, spawn_key=(index_offset + i,)))`` (= ``SeedSequence(seed).spawn(N)[i]``
    for ``index_offset=0``), so a map's score depends only on the seed and its position in the run — not
    on the other maps — and a data set scored in chunks (``index_offset`` = the chunk's first position)
    or one image at a time gets the same numbers as in one batch. MATLAB's own random stream cannot be
    reproduced; scores agree with MATLAB in distribution, and exactly for a given seed here.

    Undefined (NaN): no fixations, a constant map, non-finite values.

    Args:
        n_splits: ``Nsplits`` (MATLAB default 100).
        step_size: ``stepSize`` (MATLAB default 0.1).
        seed: seed of the sampling (``None`` = fresh entropy).
        index_offset: position of the first map in a larger run (see Randomness).
    """
    if n_splits < 1:
        raise MetricInputError(f"n_splits must be >= 1, got {n_splits}")
    if not 0 < step_size <= 1:
        raise MetricInputError(f"step_size must be in (0, 1], got {step_size}")
    if index_offset < 0:
        raise MetricInputError(f"index_offset must be >= 0, got {index_offset}")
    s_all, f_all, single = pair_maps(
        saliency, fixations, reference_name="fixations", reference_as_float=False
    )
    s_all, f_all = _flat(s_all), _flat(f_all)
    n, npix = s_all.shape
    out = np.full(n, _NAN)
    entropy = np.random.SeedSequence(seed).entropy
    thresholds = _borji_thresholds(step_size)
    for sl in row_chunks(n, npix):
        s = s_all[sl]
        f = _fixated(f_all[sl])
        lo, hi, finite, const = row_range(s)
        lo = lo.astype(np.float64)
        rng_ = hi.astype(np.float64) - lo
        ok = finite & ~const
        for j in np.flatnonzero(ok):
            # min-max normalisation applied to the values used only (the same numbers, elementwise)
            sth = (s[j][f[j]].astype(np.float64) - lo[j]) / rng_[j]
            nf = sth.size
            if nf == 0:
                continue
            stream = np.random.SeedSequence(entropy, spawn_key=(index_offset + sl.start + j,))
            rng = np.random.default_rng(stream)
            randfix = (s[j][rng.integers(0, npix, size=(nf, n_splits))].astype(np.float64) - lo[j]) / rng_[j]
            tp = (sth[None, :] >= thresholds[:, None]).sum(axis=1) / nf  # [T]
            fp = (randfix[None, :, :] >= thresholds[:, None, None]).sum(axis=1) / nf  # [T, splits]
            tp = np.concatenate(([0.0], tp, [1.0]))[:, None]
            fp = np.concatenate((np.zeros((1, n_splits)), fp, np.ones((1, n_splits))), axis=0)
            out[sl.start + j] = trapezoid(np.broadcast_to(tp, fp.shape), fp, axis=0).mean()
    return finalize(out, single)


def info_gain(saliency: Any, fixations: Any, baseline: Any) -> float | np.ndarray:
    """Information gain (bits per fixation) of the saliency map over a baseline map.

    MIT benchmark ``InfoGain.m`` (Kümmerer et al., PNAS 2015; Bylinskii et al. 2019, IG section): both maps
    are resized to the fixation grid, min-max normalised and divided by their sums, then::

        IG = mean_{i : F_i ≠ 0} [ log2(eps + P_i) − log2(eps + B_i) ]

    Positive when the saliency map puts more probability on fixated pixels than the baseline (e.g.
    :func:`center_prior`, or the average gaze map of other images).

    Undefined (NaN): no fixations, a constant saliency or baseline map, non-finite values.

    Args:
        saliency: ``H×W`` or ``N×H×W`` saliency map(s).
        fixations: ``H×W`` or ``N×H×W`` binary fixation map(s).
        baseline: ``H×W`` (shared by the batch) or ``N×H×W`` baseline map(s), any grid.
    """
    s_all, f_all, single = pair_maps(
        saliency, fixations, reference_name="fixations", reference_as_float=False
    )
    n = s_all.shape[0]
    b_all, b_single = as_maps(baseline, "baseline")
    if b_all.shape[0] not in (1, n) or (not b_single and b_all.shape[0] != n):
        raise MetricInputError(f"batch sizes differ: saliency has {n} maps, baseline has {b_all.shape[0]}")
    b_all = resize_maps(b_all, f_all.shape[1:])
    b_shared = b_all.shape[0] == 1 and n != 1
    s_all, f_all, b_all = _flat(s_all), _flat(f_all), _flat(b_all)
    pb: np.ndarray | None = None
    b_ok: np.ndarray | None = None
    if b_shared:  # one baseline for the whole batch: normalise it once
        with np.errstate(invalid="ignore", divide="ignore"):
            pb = _minmax(b_all)
            pb /= pb.sum(axis=1, keepdims=True)
        b_ok = finite_rows(b_all) & ~is_constant(b_all)
    out = np.full(n, _NAN)
    for sl in row_chunks(*s_all.shape):
        s = s_all[sl]
        f = _fixated(f_all[sl])
        with np.errstate(invalid="ignore", divide="ignore"):
            p = _minmax(s)
            p /= p.sum(axis=1, keepdims=True)
            if pb is not None and b_ok is not None:
                bb, bok = np.broadcast_to(pb, p.shape), np.broadcast_to(b_ok, p.shape[:1])
            else:
                b = b_all[sl]
                bb = _minmax(b)
                bb /= bb.sum(axis=1, keepdims=True)
                bok = finite_rows(b) & ~is_constant(b)
            rows, cols = np.nonzero(f)
            gain = np.log2(EPS + p[rows, cols]) - np.log2(EPS + bb[rows, cols])
            nfix = np.bincount(rows, minlength=p.shape[0])
            val = np.bincount(rows, weights=gain, minlength=p.shape[0]) / nfix
        ok = finite_rows(s) & ~is_constant(s) & bok & (nfix > 0)
        out[sl] = np.where(ok, val, _NAN)
    return finalize(out, single)


def center_prior(shape: tuple[int, int], *, sigma_fraction: float = 0.25) -> np.ndarray:
    """A centre-bias baseline for :func:`info_gain`: an axis-aligned Gaussian at the image centre.

    ``B(y, x) = exp(−½((y − cy)²/σy² + (x − cx)²/σx²))`` with ``σy = sigma_fraction·H``,
    ``σx = sigma_fraction·W`` (the MIT benchmark's centre baseline is likewise a Gaussian stretched to the
    image's aspect ratio). Returns a float64 ``H×W`` map with maximum 1.
    """
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1 or sigma_fraction <= 0:
        raise MetricInputError(f"center_prior needs a positive shape and sigma_fraction, got {shape}")
    y = (np.arange(h) - (h - 1) / 2.0) / (sigma_fraction * h)
    x = (np.arange(w) - (w - 1) / 2.0) / (sigma_fraction * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
