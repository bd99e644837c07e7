"""Shared input handling for :mod:`audit.metrics`.

Every metric follows one convention:

* first argument: saliency map(s), then the reference (gaze map, fixation map, mask, ...);
* a single map ``H×W`` or a batch ``N×H×W``; torch tensors are converted to numpy (detached, on CPU);
* a single map gives a ``float``, a batch an ``np.ndarray[N]`` of ``float64``;
* a metric that is undefined for a map (constant map, empty mask, no fixations, non-finite values) gives
  ``NaN`` for that map, never ``0`` and never an exception;
* malformed inputs (wrong number of dimensions, mismatched batch sizes) raise :class:`MetricInputError`, a
  :class:`ValueError`, with a message naming the argument and the shapes (never any data values).

Large batches are processed in row chunks (:func:`row_chunks`) so the float64 working copies stay bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from skimage.transform import resize

__all__ = [
    "CHUNK_ELEMENTS",
    "MetricInputError",
    "as_maps",
    "finalize",
    "finite_rows",
    "is_constant",
    "pair_maps",
    "pearson_rows",
    "resize_maps",
    "row_chunks",
    "row_range",
    "to_numpy",
]

#: Elements (pixels x maps) per processing chunk: 2**17 float64 values = 1 MiB per working array, small
#: enough to stay in the CPU's L2 cache across the several element-wise passes of a metric (measured: 2-4x
#: faster than 32 MiB chunks on 1000 maps of 224², see bench/bench_metrics.py).
CHUNK_ELEMENTS = 1 << 17


class MetricInputError(ValueError):
    """Raised for malformed metric inputs (shapes, dimensions, arguments); a :class:`ValueError`."""


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU first.

    torch is not imported here (duck typing on the type's module), so the metrics stay importable and fast
    to import without it.
    """
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _float_array(x: np.ndarray) -> np.ndarray:
    """Keep float32/float64 as they are (no precision change); everything else becomes float64."""
    if x.dtype in (np.float32, np.float64):
        return x
    return x.astype(np.float64)


def as_maps(x: Any, name: str, *, as_float: bool = True) -> tuple[np.ndarray, bool]:
    """Validate one argument holding a map ``H×W`` or a batch ``N×H×W``.

    Returns:
        ``(maps[N, H, W], single)`` where ``single`` says the input was one ``H×W`` map.

    Raises:
        MetricInputError: when ``x`` is not 2-D or 3-D or has an empty spatial axis.
    """
    a = to_numpy(x)
    if a.ndim not in (2, 3):
        raise MetricInputError(f"{name} must be a map H×W or a batch N×H×W, got an array of shape {a.shape}")
    if a.shape[-1] == 0 or a.shape[-2] == 0:
        raise MetricInputError(f"{name} has an empty spatial axis: shape {a.shape}")
    single = a.ndim == 2
    if single:
        a = a[None]
    if as_float:
        a = _float_array(a)
    return a, single


def resize_maps(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a batch ``N×h×w`` to ``N×H×W`` (the reference grid) — the gaze benchmark's first step.

    Interpolation: ``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=<when downsampling>,
    preserve_range=True)``, i.e. bilinear with a Gaussian anti-aliasing pre-filter when shrinking (as MATLAB
    ``imresize`` anti-aliases when shrinking). The MIT benchmark calls ``imresize(map, size(fixationMap))``,
    whose default kernel is bicubic; we use bilinear because it never overshoots (a non-negative map stays
    non-negative, which KLD/SIM need; docs/methods.md, "Gaze metrics"). The batch axis is left untouched
    (zoom 1, no smoothing across maps). Maps already on the grid are returned unchanged (no copy).
    """
    if maps.shape[1:] == tuple(shape):
        return maps
    out = resize(
        maps.astype(np.float64, copy=False),
        (maps.shape[0], *shape),
        order=1,
        mode="reflect",
        anti_aliasing=maps.shape[1] > shape[0] or maps.shape[2] > shape[1],
        preserve_range=True,
    )
    return out


def pair_maps(
    saliency: Any,
    reference: Any,
    *,
    saliency_name: str = "saliency",
    reference_name: str = "reference",
    resize_saliency: bool = True,
    reference_as_float: bool = True,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a (saliency, reference) pair and bring the saliency onto the reference grid.

    A single reference ``H×W`` is broadcast against a batch of saliency maps (e.g. one centre prior or one
    anatomy template for every image); otherwise the batch sizes must match. With ``resize_saliency=False``
    the spatial shapes must already be equal.

    Returns:
        ``(saliency[N, H, W], reference[N, H, W] (possibly a broadcast view), single)``.
    """
    s, single = as_maps(saliency, saliency_name)
    r, r_single = as_maps(reference, reference_name, as_float=reference_as_float)
    if single and not r_single:
        raise MetricInputError(
            f"{saliency_name} is one map {s.shape[1:]} but {reference_name} is a batch {r.shape}; "
            f"pass a batch of {saliency_name} maps"
        )
    n = s.shape[0]
    if r.shape[0] not in (1, n) or (r.shape[0] == 1 and not r_single and n != 1):
        raise MetricInputError(
            f"batch sizes differ: {saliency_name} has {n} maps, {reference_name} has {r.shape[0]}"
        )
    if s.shape[1:] != r.shape[1:]:
        if not resize_saliency:
            raise MetricInputError(
                f"{saliency_name} maps are {s.shape[1:]} but {reference_name} maps are {r.shape[1:]}; "
                "they must have the same height and width"
            )
        s = resize_maps(s, r.shape[1:])
    if r.shape[0] != n:
        r = np.broadcast_to(r, (n, *r.shape[1:]))
    return s, r, single


def row_chunks(n: int, row_size: int, budget: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    """Slices over ``n`` rows of ``row_size`` elements, each chunk holding at most ``budget`` elements."""
    step = max(1, budget // max(1, row_size))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def row_range(x2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``x2d[N, P]``: ``(min, max, finite, constant)`` from one min and one max pass.

    ``finite``: every value finite — exact, because a NaN propagates into both ``min`` and ``max`` and an
    infinity is the ``min`` or the ``max``. ``constant``: ``max == min`` exactly (and finite).
    """
    lo = x2d.min(axis=1)
    hi = x2d.max(axis=1)
    finite = np.isfinite(lo) & np.isfinite(hi)
    return lo, hi, finite, finite & (hi == lo)


def is_constant(x2d: np.ndarray) -> np.ndarray:
    """Per row of ``x2d[N, P]``: ``max == min`` exactly (robust, unlike ``std == 0`` after rounding)."""
    return x2d.max(axis=1) == x2d.min(axis=1)


def finite_rows(*arrays2d: np.ndarray) -> np.ndarray:
    """Per row: every value of every given ``[N, P]`` array is finite (NaN/inf rows score NaN).

    Tested through the row sums (one pass, no boolean temporary): a sum is finite exactly when every term
    is, except for overflow of huge finite values, which is treated as non-finite as well.
    """
    ok = np.ones(arrays2d[0].shape[0], dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        for a in arrays2d:
            if a.dtype.kind == "f":
                ok &= np.isfinite(a.sum(axis=1))
    return ok


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson ``Σ a·b / sqrt(Σ a² · Σ b²)`` of the centred rows ``a``, ``b`` (NaN for constants)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = x - x.mean(axis=1, keepdims=True, dtype=np.float64)
        b = y - y.mean(axis=1, keepdims=True, dtype=np.float64)
        num = np.einsum("ij,ij->i", a, b)
        return num / np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))


def finalize(values: np.ndarray, single: bool) -> float | np.ndarray:
    """Return ``float(values[0])`` for a single map, else the ``float64`` array."""
    values = np.asarray(values, dtype=np.float64)
    if single:
        return float(values[0])
    return values
