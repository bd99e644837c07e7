"""The one preprocessing contract shared by training, export, serving and audit.

A radiograph of any size (float32 HxW in [0, 1], as :func:`mimicry.dicom.read_dicom` returns it) is
*letterboxed* to the model's square input: scaled so its longer side equals ``size`` (aspect ratio kept),
centred, and padded with ``pad_value``. It is then normalised ``(x - mean) / std``. The spec is stored in
every model card so that serving reproduces training exactly.

**Resampling.** Shrinking (every real radiograph: 2000-3000 px to a few hundred) is an exact *area average*:
OpenCV's ``INTER_AREA`` on the float32 image, each output pixel the mean of the source pixels it covers, with
fractional weights at the edges (the tests check it against that definition). It costs about 1/15 of scikit-
image's anti-aliased ``resize`` (Gaussian pre-filter + bilinear), which earlier versions used; on a film-like
2500x2048 image the two differ by 0.001 on average and 0.007 at the 99th percentile, up to 0.11 on hard edges
(display units [0, 1]; divide by the spec's ``std`` for model units), which is the stated tolerance of this
contract change (``tests/core/test_preprocess.py``). Pillow's ``BOX`` filter is not used: for non-integer
ratios it rounds each output pixel's support to whole source pixels (0.03-0.16 from the exact average).
Enlarging (small test images) stays bilinear (scikit-image ``order=1``, edge mode).

:class:`Letterbox` records the geometry so that maps computed at model resolution (saliency) can be mapped
back onto the original image grid (:func:`unletterbox`), which is where gaze heatmaps and masks live.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
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
    elif box.scaled_shape[0] <= image.shape[0] and box.scaled_shape[1] <= image.shape[1]:
        scaled = area_downscale(image, box.scaled_shape)
    else:
        scaled = resize(image, box.scaled_shape, order=1, mode="edge", preserve_range=True).astype(np.float32)
    out = np.full((size, size), pad_value, dtype=np.float32)
    top, left = box.offset
    out[top : top + box.scaled_shape[0], left : left + box.scaled_shape[1]] = scaled
    return out, box


def area_downscale(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average ``image`` (HxW) down to ``shape`` = (rows, columns): OpenCV ``INTER_AREA`` on float32."""
    src = np.ascontiguousarray(image, dtype=np.float32)
    return cv2.resize(src, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_AREA)


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
    return normalise(boxed, spec)[None], box


def normalise(boxed: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A letterboxed image (display units) → ``(x - mean) / std`` as float32, same shape."""
    return ((boxed - np.float32(spec.mean)) / np.float32(spec.std)).astype(np.float32, copy=False)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> tuple[np.ndarray, list[Letterbox]]:
    """Several images → ``float32[N, 1, size, size]`` and their geometries."""
    outs = [preprocess(im, spec) for im in images]
    if not outs:
        return np.zeros((0, 1, spec.size, spec.size), np.float32), []
    return np.stack([o[0] for o in outs]), [o[1] for o in outs]
