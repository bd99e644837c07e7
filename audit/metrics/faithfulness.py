"""Faithfulness metrics: does the model's output depend on the pixels the map calls important?

Insertion / deletion (Petsiuk et al., "RISE", BMVC 2018, its causal metrics; used by Khakzar et al. and
Schulz et al. for IBA; MICCAI 2021 / ICLR 2020) and Sensitivity-n (Ancona et al., "Towards better
understanding of gradient-based attribution methods for deep neural networks", ICLR 2018).

The model is a plain forward callable ``forward(batch: np.ndarray[B, C, H, W] float32) -> np.ndarray[B, K]``
(class probabilities), numpy in and numpy out, so it can wrap ONNX Runtime, a Triton client or a torch
module alike. Perturbed images are built and scored in batches of at most ``batch_size`` images (working
memory beyond the inputs is O(``batch_size``) images, whatever the number of steps or images; baselines
are built one image at a time), and every perturbed image is a fresh array (the IBA release appended one
mutable tensor repeatedly, so all its "steps" were the last one).

Arguments: ``saliency`` ``H×W`` / ``N×H×W`` (same grid as the images; no resizing here), ``images``
``C×H×W`` / ``N×C×H×W``, ``target`` an int or one int per image. One image → ``float``, a batch →
``np.ndarray[N]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from scipy.integrate import trapezoid
from scipy.ndimage import gaussian_filter

from audit.metrics._batch import MetricInputError, as_maps, finalize, to_numpy

__all__ = [
    "Forward",
    "blurred_baseline",
    "deletion_auc",
    "insertion_auc",
    "perturbation_curve",
    "sensitivity_n",
]

#: ``forward(batch[B, C, H, W] float32) -> probabilities[B, K]``.
Forward = Callable[[np.ndarray], np.ndarray]

_NAN = float("nan")


def blurred_baseline(images: Any, *, sigma: float = 5.0) -> np.ndarray:
    """The blurred-image baseline: each channel smoothed by a Gaussian of ``sigma`` pixels (default 5).

    ``scipy.ndimage.gaussian_filter`` over the two spatial axes only (sigma 0 on batch/channel axes),
    ``mode="reflect"``, ``truncate=4`` (kernel radius 4σ = 20 px). RISE used an 11-tap, σ = 5 kernel with
    zero padding (a kernel truncated at 1σ that also darkens the border); the full Gaussian is the
    documented blur, without the border artefact. Returns float32 of the input's shape (``C×H×W`` or
    ``N×C×H×W``).
    """
    x = to_numpy(images).astype(np.float32)
    if x.ndim not in (3, 4):
        raise MetricInputError(f"images must be C×H×W or N×C×H×W, got shape {x.shape}")
    sig = (0.0,) * (x.ndim - 2) + (float(sigma), float(sigma))
    return gaussian_filter(x, sigma=sig, mode="reflect", truncate=4.0).astype(np.float32)


def _prepare(
    saliency: Any, images: Any, target: int | Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    s, single = as_maps(saliency, "saliency")
    x = to_numpy(images).astype(np.float32)
    if x.ndim != (3 if single else 4):
        want = "C×H×W" if single else "N×C×H×W"
        raise MetricInputError(f"images must be {want} to match saliency {s.shape[1:]}, got shape {x.shape}")
    if single:
        x = x[None]
    if x.shape[0] != s.shape[0]:
        raise MetricInputError(f"batch sizes differ: saliency has {s.shape[0]} maps, images {x.shape[0]}")
    if x.shape[2:] != s.shape[1:]:
        raise MetricInputError(f"saliency maps are {s.shape[1:]} but images are {x.shape[2:]}; resize first")
    t = np.asarray(to_numpy(target))
    if t.ndim == 0:
        t = np.full(s.shape[0], int(t))
    if t.shape != (s.shape[0],) or t.dtype.kind not in "iu":
        raise MetricInputError(f"target must be an int or {s.shape[0]} ints, got shape {t.shape}")
    return s, x, t.astype(np.int64), single


def _check_baseline(baseline: Any, x: np.ndarray) -> np.ndarray | None:
    """Validate ``baseline`` (None = blurred image, a scalar, ``C×H×W`` or ``N×C×H×W``) against the images."""
    if baseline is None:
        return None
    b = to_numpy(baseline).astype(np.float32)
    if b.ndim == 0 or b.shape in (x.shape[1:], x.shape):
        return b
    raise MetricInputError(f"baseline must be a scalar, C×H×W or N×C×H×W like the images {x.shape}")


def _baseline_for(b: np.ndarray | None, x: np.ndarray, i: int, blur_sigma: float) -> np.ndarray:
    """Baseline image ``C×H×W`` for image ``i`` (built on demand: memory stays per image)."""
    if b is None:
        return blurred_baseline(x[i], sigma=blur_sigma)
    if b.ndim == 0:
        return np.full_like(x[i], b)
    return b if b.shape == x.shape[1:] else b[i]


def _scores(forward: Forward, batch: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Run ``forward`` on one batch and pick each row's target-class score."""
    out = np.asarray(to_numpy(forward(batch)), dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != batch.shape[0]:
        raise MetricInputError(f"forward must return [B, K] for B={batch.shape[0]} images, got {out.shape}")
    if targets.max(initial=0) >= out.shape[1] or targets.min(initial=0) < 0:
        raise MetricInputError(f"target class out of range for K={out.shape[1]} outputs")
    return out[np.arange(out.shape[0]), targets]


def _ranks(s: np.ndarray) -> np.ndarray:
    """Rank of every pixel in the importance order (0 = most important); ties by raster index (stable)."""
    flat = s.reshape(-1).astype(np.float64)
    order = np.argsort(-flat, kind="stable")
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(s.shape)


def _batched(items: Iterator[tuple[int, np.ndarray]], batch_size: int) -> Iterator[tuple[np.ndarray, list]]:
    buf: list[np.ndarray] = []
    idx: list[int] = []
    for i, img in items:
        buf.append(img)
        idx.append(i)
        if len(buf) == batch_size:
            yield np.stack(buf), idx
            buf, idx = [], []
    if buf:
        yield np.stack(buf), idx


def perturbation_curve(
    saliency: Any,
    images: Any,
    forward: Forward,
    target: int | Sequence[int] | np.ndarray,
    *,
    mode: Literal["insertion", "deletion"],
    step: int = 224,
    batch_size: int = 64,
    baseline: Any = None,
    blur_sigma: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Target-class score as pixels are deleted from / inserted into the image, most important first.

    Pixels are ordered by descending saliency (ties: lower raster index first). Step ``k`` (k = 0…K,
    ``K = ⌈H·W/step⌉``) changes the first ``c_k = min(k·step, H·W)`` pixels (all channels):

    * ``deletion``: start from the image; changed pixels take the baseline's values;
    * ``insertion``: start from the baseline; changed pixels take the image's values.

    The baseline defaults to the blurred image (:func:`blurred_baseline`, σ = ``blur_sigma`` = 5); a scalar
    or an explicit array may be given instead (e.g. ``0.0`` for RISE's black deletion substrate).

    Returns:
        ``(fractions[K+1], scores[N, K+1])`` with ``fractions = c_k / (H·W)`` (0 … 1) and ``scores`` the
        target-class output of ``forward`` (``N = 1`` rows for a single image).
    """
    if mode not in ("insertion", "deletion"):
        raise MetricInputError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    if step < 1 or batch_size < 1:
        raise MetricInputError("step and batch_size must be >= 1")
    s, x, t, _ = _prepare(saliency, images, target)
    base = _check_baseline(baseline, x)
    n, (h, w) = s.shape[0], s.shape[1:]
    npix = h * w
    counts = np.minimum(np.arange(int(np.ceil(npix / step)) + 1) * step, npix)

    def items() -> Iterator[tuple[int, np.ndarray]]:
        for i in range(n):
            ranks = _ranks(s[i])  # one image at a time: memory stays O(batch_size images)
            b = _baseline_for(base, x, i, blur_sigma)
            start, fill = (x[i], b) if mode == "deletion" else (b, x[i])
            for j, c in enumerate(counts):
                # np.where allocates a new array: every step is its own image (no shared mutable buffer).
                yield i * counts.size + j, np.where((ranks < c)[None], fill, start).astype(np.float32)

    scores = np.empty(n * counts.size)
    for batch, idx in _batched(items(), batch_size):
        ids = np.asarray(idx)
        scores[ids] = _scores(forward, batch, t[ids // counts.size])
    return counts / npix, scores.reshape(n, counts.size)


def _auc(
    mode: Literal["insertion", "deletion"],
    saliency: Any,
    images: Any,
    forward: Forward,
    target: Any,
    **kwargs: Any,
) -> float | np.ndarray:
    single = to_numpy(saliency).ndim == 2
    frac, scores = perturbation_curve(saliency, images, forward, target, mode=mode, **kwargs)
    return finalize(trapezoid(scores, frac, axis=1), single)


def deletion_auc(
    saliency: Any,
    images: Any,
    forward: Forward,
    target: int | Sequence[int] | np.ndarray,
    *,
    step: int = 224,
    batch_size: int = 64,
    baseline: Any = None,
    blur_sigma: float = 5.0,
) -> float | np.ndarray:
    """Deletion AUC (Petsiuk et al. 2018): area under the target score as the most important pixels are
    replaced by the baseline (blurred image, σ = 5, by default) — **lower** is more faithful.

    ``AUC = trapezoid(score_k, c_k/(H·W))`` over the fraction of deleted pixels in [0, 1], with the steps of
    :func:`perturbation_curve` (``step`` pixels per step; RISE uses 224 for 224×224 images). The exact
    trapezoid over the true fractions also handles a last, shorter step.
    """
    return _auc(
        "deletion",
        saliency,
        images,
        forward,
        target,
        step=step,
        batch_size=batch_size,
        baseline=baseline,
        blur_sigma=blur_sigma,
    )


def insertion_auc(
    saliency: Any,
    images: Any,
    forward: Forward,
    target: int | Sequence[int] | np.ndarray,
    *,
    step: int = 224,
    batch_size: int = 64,
    baseline: Any = None,
    blur_sigma: float = 5.0,
) -> float | np.ndarray:
    """Insertion AUC (Petsiuk et al. 2018): area under the target score as the most important pixels are
    restored into the baseline (blurred image, σ = 5, by default) — **higher** is more faithful.

    ``AUC = trapezoid(score_k, c_k/(H·W))`` over the fraction of inserted pixels in [0, 1]
    (see :func:`perturbation_curve`).
    """
    return _auc(
        "insertion",
        saliency,
        images,
        forward,
        target,
        step=step,
        batch_size=batch_size,
        baseline=baseline,
        blur_sigma=blur_sigma,
    )


def sensitivity_n(
    saliency: Any,
    images: Any,
    forward: Forward,
    target: int | Sequence[int] | np.ndarray,
    *,
    n: int,
    n_samples: int = 100,
    batch_size: int = 64,
    baseline: Any = None,
    blur_sigma: float = 5.0,
    seed: int | None = 0,
) -> float | np.ndarray:
    """Sensitivity-n (Ancona et al., ICLR 2018: the Sensitivity-n property of attribution methods).

    For ``n_samples`` random subsets ``T`` of ``n`` pixels (uniform, without replacement; all channels of a
    pixel together), set ``x_T`` to the baseline and record the output change
    ``Δ_T = f_c(x) − f_c(x with x_T = baseline)`` and the attribution mass ``Σ_{i∈T} R_i``. The score is the
    Pearson correlation of the two over the subsets (1 = the map's sums predict the output changes
    exactly, as for a linear model with gradient×input). Ancona et al. use 100 subsets per ``n`` and a zero
    baseline on logits; here the baseline defaults to the blurred image (as insertion/deletion; pass
    ``baseline=0.0`` for theirs) and ``f_c`` is whatever ``forward`` returns (probabilities per the spec).

    Randomness: image ``i`` uses ``SeedSequence(seed).spawn(N)[i]``. Undefined (NaN): no variation in the
    attribution sums or in the output changes (e.g. a constant map, or a model that ignores the pixels).
    """
    s, x, t, single = _prepare(saliency, images, target)
    npix = s.shape[1] * s.shape[2]
    if not 1 <= n <= npix:
        raise MetricInputError(f"n must be in [1, H·W={npix}], got {n}")
    if n_samples < 2 or batch_size < 1:
        raise MetricInputError("n_samples must be >= 2 and batch_size >= 1")
    base = _check_baseline(baseline, x)
    children = np.random.SeedSequence(seed).spawn(s.shape[0])
    out = np.full(s.shape[0], _NAN)
    for i in range(s.shape[0]):
        rng = np.random.default_rng(children[i])
        subsets = np.stack([rng.choice(npix, size=n, replace=False) for _ in range(n_samples)])
        mass = s[i].reshape(-1).astype(np.float64)[subsets].sum(axis=1)
        ref = _scores(forward, x[i : i + 1], t[i : i + 1])[0]
        xi = x[i].reshape(x.shape[1], -1)
        bi = _baseline_for(base, x, i, blur_sigma).reshape(x.shape[1], -1)

        def items(xi: np.ndarray = xi, bi: np.ndarray = bi, subsets: np.ndarray = subsets) -> Iterator:
            for j, sub in enumerate(subsets):
                img = xi.copy()  # a fresh image per subset
                img[:, sub] = bi[:, sub]
                yield j, img.reshape(x.shape[1:])

        delta = np.empty(n_samples)
        for batch, idx in _batched(items(), batch_size):
            delta[idx] = ref - _scores(forward, batch, np.full(len(idx), t[i]))
        if np.ptp(mass) > 0 and np.ptp(delta) > 0 and np.isfinite(mass).all() and np.isfinite(delta).all():
            out[i] = np.corrcoef(mass, delta)[0, 1]
    return finalize(out, single)
