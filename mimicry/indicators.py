"""Label-free indicators of a saliency map, cheap enough to compute on every served explanation.

They need no ground truth (no gaze, no mask), so the serving layer can export their distribution to
Prometheus and an operator can watch for drift (a model that starts looking at the film border, or whose
maps spread out):

* :func:`border_mass` — share of the map's mass inside the outer band of the image (the "shortcut mass"
  of docs/methods.md, "Localisation and faithfulness metrics": burned-in markers and collimation edges live
  at the border);
* :func:`map_entropy` — normalised Shannon entropy of the map seen as a distribution over pixels
  (0 = all mass on one pixel, 1 = uniform).

Pure NumPy; the audit package has its own, richer metrics (serving and audit stay independent).
"""

from __future__ import annotations

import numpy as np

__all__ = ["border_mass", "map_entropy"]


def _as_mass(saliency: np.ndarray) -> np.ndarray:
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty 2-D map, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("the map contains NaN or infinite values")
    return np.abs(m)


def border_mass(saliency: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the (absolute) map mass within the border band.

    Args:
        saliency: ``[H, W]`` map.
        fraction: Band width as a fraction of each side: ``ceil(fraction·H)`` rows at the top and bottom,
            ``ceil(fraction·W)`` columns left and right (``0 < fraction < 0.5``).

    Returns:
        ``Σ_border |m| / Σ |m|`` in ``[0, 1]``; ``0.0`` for an all-zero map. A uniform map scores the band's
        area share, e.g. ``1 − 0.8² = 0.36`` for ``fraction=0.1`` on a 10×10 map.
    """
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"fraction must be in (0, 0.5), got {fraction}")
    m = _as_mass(saliency)
    total = float(m.sum())
    if total == 0.0:
        return 0.0
    h, w = m.shape
    bh, bw = int(np.ceil(fraction * h)), int(np.ceil(fraction * w))
    inner = float(m[bh : h - bh, bw : w - bw].sum()) if h > 2 * bh and w > 2 * bw else 0.0
    return float(np.clip((total - inner) / total, 0.0, 1.0))


def map_entropy(saliency: np.ndarray) -> float:
    """Normalised Shannon entropy ``−Σ p log p / log(H·W)`` of ``p = |m| / Σ|m|``.

    Returns:
        A value in ``[0, 1]``: ``1`` for a uniform map, ``0`` for a single-pixel map; ``0.0`` for an all-zero
        map (no evidence anywhere) and for a 1-pixel map.
    """
    m = _as_mass(saliency)
    total = float(m.sum())
    if total == 0.0 or m.size == 1:
        return 0.0
    p = m.ravel() / total
    p = p[p > 0]
    return float(np.clip(-(p * np.log(p)).sum() / np.log(m.size), 0.0, 1.0))
