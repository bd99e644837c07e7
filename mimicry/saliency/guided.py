"""Guided backpropagation and guided Grad-CAM, through captum (which hooks the model's ``nn.ReLU``
modules — hence the contract's ``nn.ReLU(inplace=False)`` modules)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from captum.attr import GuidedBackprop, GuidedGradCam
from torch import Tensor

from mimicry.models.base import CamClassifier
from mimicry.saliency.base import SaliencyMethod, cam_members, grad_input, iter_chunks, register_method
from mimicry.saliency.gradients import _check_positive

__all__ = ["GuidedBackpropMethod", "GuidedGradCamMethod"]


@register_method("guided_backprop")
class GuidedBackpropMethod(SaliencyMethod):
    """Guided backpropagation (Springenberg et al. 2015, "Striving for simplicity: the all convolutional
    net", §3.4, Fig. 1): the input gradient of the target logit where every ReLU passes back only positive
    gradients at positive inputs; captum ``GuidedBackprop``. Arun et al.'s GBP. Defaults: ``batch_size=16``.
    """

    defaults: ClassVar[Mapping[str, Any]] = {"batch_size": 16}

    def attribute(
        self, model: CamClassifier, x: Tensor, target: Tensor, *, batch_size: int, **_: Any
    ) -> Tensor:
        gbp = GuidedBackprop(model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            return torch.cat(
                [
                    gbp.attribute(grad_input(x[sl]), target=target[sl]).detach()
                    for sl in iter_chunks(x.shape[0], _check_positive("batch_size", batch_size))
                ]
            )


@register_method("guided_gradcam")
class GuidedGradCamMethod(SaliencyMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017, §3.1): guided backpropagation multiplied element-wise by the
    Grad-CAM map of the ``cam_layer`` upsampled to the input; captum ``GuidedGradCam``. Arun et al.'s GGCAM.

    Defaults: ``interpolate_mode="bilinear"`` (the paper's bilinear upsampling; captum's own default is
    ``"nearest"``), ``batch_size=16``.
    """

    defaults: ClassVar[Mapping[str, Any]] = {"interpolate_mode": "bilinear", "batch_size": 16}

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        interpolate_mode: str,
        batch_size: int,
        **_: Any,
    ) -> Tensor:
        members = cam_members(model)  # an ensemble: the mean of its members' maps
        chunks = list(iter_chunks(x.shape[0], _check_positive("batch_size", batch_size)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            per_member = [
                torch.cat(
                    [
                        GuidedGradCam(m, m.cam_layer)
                        .attribute(grad_input(x[sl]), target=target[sl], interpolate_mode=interpolate_mode)
                        .detach()
                        for sl in chunks
                    ]
                )
                for m in members
            ]
        return torch.stack(per_member).mean(dim=0)
