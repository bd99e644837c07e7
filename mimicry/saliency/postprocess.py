"""Shared, explicit post-processing of raw attributions into saliency maps.

Arun et al. ("Assessing the trustworthiness of saliency maps…", Radiology: AI 2021), Methods:
every map is made non-negative (absolute value), summed over the colour channels, clipped at its 99th
percentile and min-max scaled to [0, 1] before it is scored (AUPRC, SSIM). :class:`PostProcess` performs
exactly these steps, per sample, and makes each one configurable so that a caller can, for instance, keep
signed maps (``sign="none"``) or skip the clip (``clip_percentile=None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mimicry.saliency.errors import SaliencyError

__all__ = ["ARUN_ET_AL", "PostProcess"]

Sign = Literal["abs", "relu", "none"]


@dataclass(frozen=True)
class PostProcess:
    """Raw attributions ``[N, C, H, W]`` (or ``[N, H, W]``) → maps ``float32[N, H, W]``, per sample.

    Steps, in order (defaults = Arun et al.'s convention):

    1. ``sign``: ``"abs"`` → ``|a|``; ``"relu"`` → ``max(a, 0)`` (keep evidence *for* the class only);
       ``"none"`` → ``a`` unchanged.
    2. Sum over the channel axis (one channel for mimicry's grey-scale models).
    3. ``clip_percentile`` (``99.0`` or ``None``): with ``p = percentile(|m|, clip_percentile)`` (NumPy's
       default linear interpolation), clip ``m`` to ``[−p, p]``; for non-negative maps that is
       ``min(m, p)``, Arun et al.'s 99th-percentile clip.
    4. ``normalise``: min-max scale to ``[0, 1]``, ``(m − min) / (max − min)``. A constant map (including an
       all-zero one) becomes all zeros, never NaN.

    Raises:
        SaliencyError: on an invalid configuration, a wrongly shaped input or non-finite attributions.
    """

    sign: Sign = "abs"
    clip_percentile: float | None = 99.0
    normalise: bool = True

    def __post_init__(self) -> None:
        if self.sign not in ("abs", "relu", "none"):
            raise SaliencyError(f"sign must be 'abs', 'relu' or 'none', got {self.sign!r}")
        if self.clip_percentile is not None and not 0.0 < float(self.clip_percentile) <= 100.0:
            raise SaliencyError(f"clip_percentile must be in (0, 100] or None, got {self.clip_percentile}")

    def __call__(self, attributions: np.ndarray | torch.Tensor) -> np.ndarray:
        """Apply the steps above; returns ``float32[N, H, W]``."""
        if isinstance(attributions, torch.Tensor):
            a = attributions.detach().to("cpu", torch.float64).numpy()
        else:
            a = np.asarray(attributions, dtype=np.float64)
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4:
            raise SaliencyError(f"expected attributions [N, C, H, W] or [N, H, W], got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise SaliencyError("attributions contain NaN or infinite values")
        if self.sign == "abs":
            a = np.abs(a)
        elif self.sign == "relu":
            a = np.maximum(a, 0.0)
        maps = a.sum(axis=1)
        out = np.empty(maps.shape, dtype=np.float32)
        for i, m in enumerate(maps):
            if self.clip_percentile is not None:
                p = float(np.percentile(np.abs(m), self.clip_percentile))
                m = np.clip(m, -p, p)
            if self.normalise:
                lo, hi = float(m.min()), float(m.max())
                m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            out[i] = m
        return out


#: The convention of Arun et al. (abs, channel sum, 99th-percentile clip, min-max to [0, 1]).
ARUN_ET_AL = PostProcess()
