"""Encodings of saliency maps for ``/v1/explain`` (``format=json|png|overlay``).

* **PNG-16**: the map in ``[0, 1]`` quantised to ``round(m·65535)`` and written as a 16-bit grayscale PNG
  (Pillow mode ``I;16``); decode with ``value / 65535``. Lossless to 1.5e-5.
* **float16 array**: little-endian IEEE half floats, row-major, base64; ``shape`` given next to it.
* **heatmap**: an 8-bit RGB PNG through a matplotlib colormap (default ``inferno``).
* **overlay**: the heatmap alpha-blended over the radiograph's display pixels,
  ``out = (1 − α·m)·grey + α·m·colour`` — weighting by the map itself keeps low-saliency areas readable.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = [
    "decode_png16",
    "encode_float16",
    "encode_png16",
    "heatmap_png",
    "heatmap_rgb",
    "overlay_png",
    "overlay_rgb",
]


def _check_map(saliency: np.ndarray) -> np.ndarray:
    m = np.asarray(saliency, dtype=np.float32)
    if m.ndim != 2 or m.size == 0 or not np.all(np.isfinite(m)):
        raise ValueError(f"expected a finite 2-D map, got shape {m.shape}")
    return np.clip(m, 0.0, 1.0)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def encode_png16(saliency: np.ndarray) -> bytes:
    """``[H, W]`` map in ``[0, 1]`` → 16-bit grayscale PNG bytes."""
    q = np.round(_check_map(saliency) * 65535.0).astype(np.uint16)
    return _png(q)


def decode_png16(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png16`: ``float32[H, W]`` in ``[0, 1]``."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im, dtype=np.float64)
    return (arr / 65535.0).astype(np.float32)


def encode_float16(saliency: np.ndarray) -> str:
    """Base64 of the little-endian float16 bytes of the map (row-major)."""
    return base64.b64encode(_check_map(saliency).astype("<f2").tobytes()).decode("ascii")


def heatmap_rgb(saliency: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """``uint8[H, W, 3]`` colour-mapped map."""
    rgba = colormaps[cmap](_check_map(saliency))
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def heatmap_png(saliency: np.ndarray, cmap: str = "inferno") -> bytes:
    """The map as an RGB PNG."""
    return _png(heatmap_rgb(saliency, cmap))


def overlay_rgb(
    image: np.ndarray, saliency: np.ndarray, alpha: float = 0.6, cmap: str = "inferno"
) -> np.ndarray:
    """``uint8[H, W, 3]``: the colour map blended over the grayscale image (same shape, values in [0, 1])."""
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    m = _check_map(saliency)
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and map {m.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    colour = colormaps[cmap](m)[..., :3].astype(np.float32)
    w = (alpha * m)[..., None]
    out = (1.0 - w) * img[..., None] + w * colour
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay_png(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.6, cmap: str = "inferno") -> bytes:
    """The overlay as an RGB PNG."""
    return _png(overlay_rgb(image, saliency, alpha, cmap))
