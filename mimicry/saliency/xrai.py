"""XRAI (Kapishnikov et al., "XRAI: Better attributions through regions", ICCV 2019,
https://arxiv.org/abs/1906.02825), through the framework-agnostic core of the PAIR ``saliency`` package
(``saliency.core.XRAI``, the authors' reference implementation) with a torch ``call_model_function``.

XRAI over-segments the image (Felzenszwalb at several scales, dilated), computes integrated gradients from
a black and a white baseline, and greedily adds the region with the highest attribution density; every
pixel gets the gain of the region that added it. Arun et al. found it the best-localising method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import saliency.core as saliency_core
import torch
from torch import Tensor

from mimicry.models.base import CamClassifier
from mimicry.saliency.base import SaliencyMethod, register_method
from mimicry.saliency.errors import SaliencyError
from mimicry.saliency.gradients import _check_positive

__all__ = ["Xrai"]


def _call_model_function(model: CamClassifier, device: torch.device, target: int) -> Any:
    """The ``call_model_function`` of ``saliency.core``: channels-last NumPy batch in, input gradients of
    the target logit out (``INPUT_OUTPUT_GRADIENTS``, same shape)."""

    def call(x_batch: np.ndarray, call_model_args: Any = None, expected_keys: Any = None) -> dict[str, Any]:
        xb = torch.from_numpy(np.asarray(x_batch, dtype=np.float32)).permute(0, 3, 1, 2).to(device)
        xb.requires_grad_(True)
        score = model(xb)[:, target].sum()
        (grad,) = torch.autograd.grad(score, xb)
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).detach().cpu().numpy()}

    return call


@register_method("xrai")
class Xrai(SaliencyMethod):
    """XRAI attribution map (region gains) for the target logit.

    Defaults are the reference implementation's (``saliency.core.XRAIParameters``): ``steps=100`` IG
    steps per baseline, baselines = the image's own minimum and maximum (black and white images),
    ``algorithm="full"`` (``"fast"`` ignores region overlap), ``area_threshold=1.0``; ``batch_size=16``
    interpolated images per pass. Samples are processed one at a time (segmentation is per image).
    Deterministic: no randomness is involved.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "steps": 100,
        "algorithm": "full",
        "area_threshold": 1.0,
        "batch_size": 16,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        steps: int,
        algorithm: str,
        area_threshold: float,
        batch_size: int,
        **_: Any,
    ) -> Tensor:
        if algorithm not in ("full", "fast"):
            raise SaliencyError(f"algorithm must be 'full' or 'fast', got {algorithm!r}")
        params = saliency_core.XRAIParameters(
            steps=_check_positive("steps", steps), area_threshold=float(area_threshold), algorithm=algorithm
        )
        xrai = saliency_core.XRAI()
        out = []
        for i in range(x.shape[0]):
            image = x[i].permute(1, 2, 0).detach().cpu().numpy().astype(np.float64)  # [H, W, C]
            mask = xrai.GetMask(
                image,
                _call_model_function(model, x.device, int(target[i])),
                batch_size=_check_positive("batch_size", batch_size),
                extra_parameters=params,
            )
            out.append(torch.from_numpy(np.asarray(mask, dtype=np.float32)))
        maps = torch.stack(out).to(x.device)  # [N, H, W]
        return maps[:, None].expand(-1, x.shape[1], -1, -1).contiguous()
