"""The one preprocessing contract shared by training, export, serving and audit.

A radiograph of any size (float32 HxW in [0, 1], as :func:`mimicry.dicom.read_dicom` returns it) is
*letterboxed* to the model's square input: scaled so its longer side equals ``size`` (aspect ratio kept,
area-averaging anti-aliasing when shrinking), centred, and padded with ``pad_value``. It is then normalised
``(x - mean) / std``. The spec is stored in every model card so that serving reproduces training exactly.

:class:`Letterbox` records the geometry so that maps computed at model resolution (saliency) can be
mapped back
onto the original image grid (:func:`unletterbox`), which is where gaze heatmaps and masks live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field
from skimage.transform import resize


class PreprocessSpec(BaseModel):
    """How an image becomes a model input. Serialised into the model card."""

    size: int = Field(224, gt=0, description="Side of the square model input, pixels.")
    pad_value: float = Field(0.0, description="Fill for the letterbox bands, in display units [0, 1].")
    mean: float = Field(0.5, description="Normalisation mean (display units).")
    std: float = Field(0.25, gt=0.0, description="Normalisation standard deviation (display units).")


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterbox operation (source shape → square target)."""

    source_shape: tuple[int, int]
    size: int
    scaled_shape: tuple[int, int]
    offset: tuple[int, int]  # (top, left) of the scaled image inside the square

    @classmethod
    def fit(cls, source_shape: tuple[int, int], size: int) -> Letterbox:
        h, w = int(source_shape[0]), int(source_shape[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"invalid image shape {source_shape}")
        scale = size / max(h, w)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        return cls((h, w), size, (sh, sw), ((size - sh) // 2, (size - sw) // 2))


def letterbox(image: np.ndarray, size: int, pad_value: float = 0.0) -> tuple[np.ndarray, Letterbox]:
    """Scale ``image`` (HxW) to fit a ``size``x``size`` square, centred, padded with ``pad_value``."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    box = Letterbox.fit(image.shape, size)
    if box.scaled_shape == image.shape:
        scaled = image.astype(np.float32, copy=False)
    else:
        shrinking = box.scaled_shape[0] < image.shape[0]
        scaled = resize(
            image, box.scaled_shape, order=1, mode="edge", anti_aliasing=shrinking, preserve_range=True
        ).astype(np.float32)
    out = np.full((size, size), pad_value, dtype=np.float32)
    top, left = box.offset
    out[top : top + box.scaled_shape[0], left : left + box.scaled_shape[1]] = scaled
    return out, box


def unletterbox(map_: np.ndarray, box: Letterbox, order: int = 1) -> np.ndarray:
    """Map a model-resolution map (any square size, e.g. a Grad-CAM grid) back onto the source image grid.

    The map is first resized to the letterbox square (if it is smaller, e.g. a feature-map-resolution CAM),
    the padding bands are cropped, and the remainder is resized to ``box.source_shape``.
    """
    if map_.ndim != 2 or map_.shape[0] != map_.shape[1]:
        raise ValueError(f"expected a square 2-D map, got shape {map_.shape}")
    full = map_.astype(np.float32, copy=False)
    if full.shape[0] != box.size:
        full = resize(full, (box.size, box.size), order=order, mode="edge", preserve_range=True)
    top, left = box.offset
    crop = full[top : top + box.scaled_shape[0], left : left + box.scaled_shape[1]]
    return resize(crop, box.source_shape, order=order, mode="edge", preserve_range=True).astype(np.float32)


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    """Image (HxW, [0, 1]) → model input ``float32[1, size, size]`` and its letterbox geometry."""
    boxed, box = letterbox(image, spec.size, spec.pad_value)
    x = (boxed - np.float32(spec.mean)) / np.float32(spec.std)
    return x[None].astype(np.float32, copy=False), box


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> tuple[np.ndarray, list[Letterbox]]:
    """Several images → ``float32[N, 1, size, size]`` and their geometries."""
    outs = [preprocess(im, spec) for im in images]
    if not outs:
        return np.zeros((0, 1, spec.size, spec.size), np.float32), []
    return np.stack([o[0] for o in outs]), [o[1] for o in outs]
