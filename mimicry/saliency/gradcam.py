"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual explanations from deep networks via gradient-based
localization", ICCV 2017, https://arxiv.org/abs/1610.02391), three equal ways.

For the class score ``y^c`` (the logit, before softmax) and the feature maps ``A^k`` of the final conv
layer (the model's ``cam_layer``), Eq. 1: ``α_k^c = (1 / (h·w)) Σ_ij ∂y^c / ∂A^k_ij``; Eq. 2:
``L^c = ReLU(Σ_k α_k^c A^k)``, upsampled bilinearly to the input.

* :class:`GradCam` (registry name ``gradcam``) — captum ``LayerGradCam(relu_attributions=True)`` +
  ``LayerAttribution.interpolate(…, "bilinear")``; ``variant="in_graph"`` uses the model's forward op
  instead (no backward pass).
* :meth:`CamClassifier.forward_with_cam <mimicry.models.base.CamClassifier.forward_with_cam>` — the
  in-graph Grad-CAM exported to ONNX: for a GAP → linear head ``α_k^c = W_ck / (h·w)`` exactly.
* :func:`differentiable_gradcam` — Eq. 1–2 computed with ``torch.autograd.grad(score, A,
  create_graph=True)`` so a loss on the maps trains the model (explanation ensemble, Watson et al. 2023;
  docs/methods.md, "Explanation ensemble": the adversarial term must reach the sub-models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor

from mimicry.models.base import CamClassifier
from mimicry.saliency.base import (
    SaliencyMethod,
    Target,
    cam_members,
    iter_chunks,
    register_method,
    resolve_target,
)
from mimicry.saliency.errors import SaliencyError

__all__ = ["GradCam", "differentiable_gradcam"]


@register_method("gradcam")
class GradCam(SaliencyMethod):
    """Grad-CAM for the target logit at the model's ``cam_layer``, upsampled to the input.

    Defaults (Selvaraju et al. 2017): ``variant="captum"`` (captum ``LayerGradCam``; ``"in_graph"`` →
    ``model.forward_with_cam``, identical values), ``interpolate_mode="bilinear"`` (the paper's bilinear
    upsampling), ``batch_size=16`` images per pass.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "variant": "captum",
        "interpolate_mode": "bilinear",
        "batch_size": 16,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        variant: str,
        interpolate_mode: str,
        batch_size: int,
        **_: Any,
    ) -> Tensor:
        if variant not in ("captum", "in_graph"):
            raise SaliencyError(f"gradcam variant must be 'captum' or 'in_graph', got {variant!r}")
        size = (x.shape[-2], x.shape[-1])
        out = []
        for sl in iter_chunks(x.shape[0], batch_size):
            if variant == "captum":
                # An ensemble's Grad-CAM is the mean of its members' (cam_members).
                cam = torch.stack(
                    [
                        LayerGradCam(m, m.cam_layer).attribute(
                            x[sl], target=target[sl], relu_attributions=True
                        )
                        for m in cam_members(model)
                    ]
                ).mean(dim=0)
            else:
                with torch.no_grad():
                    _, _, cams = model.forward_with_cam(x[sl])
                cam = cams[torch.arange(cams.shape[0], device=cams.device), target[sl]][:, None]
            out.append(LayerAttribution.interpolate(cam.detach(), size, interpolate_mode))
        return torch.cat(out).expand(-1, x.shape[1], -1, -1).contiguous()


def differentiable_gradcam(
    model: CamClassifier,
    x: Tensor,
    target: Target = None,
    *,
    create_graph: bool = True,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Grad-CAM maps ``[N, h, w]`` at feature resolution that stay in the autograd graph.

    Runs ``model(x)`` once with a forward hook on ``model.cam_layer`` capturing ``A``, takes
    ``torch.autograd.grad(Σ_n y^{c_n}_n, A, create_graph=create_graph)`` (samples do not interact after the
    cam layer — GAP → linear — so the sum gives each sample its own gradient), and returns
    ``ReLU(Σ_k mean_ij(∂y^c/∂A^k) · A^k)`` (Selvaraju et al. 2017, Eq. 1–2). With ``create_graph=True`` a
    loss on the maps back-propagates into the model's weights (second-order terms included).

    Unlike :func:`~mimicry.saliency.explain`, the model's train/eval mode is left as the caller set it (the
    explanation-ensemble trainer calls this in train mode). The hook is removed before returning, also on
    errors.

    Args:
        model: A :class:`~mimicry.models.base.CamClassifier`.
        x: ``[N, 1, H, W]``.
        target: As in :func:`~mimicry.saliency.explain`; ``None`` = predicted class.
        create_graph: Keep the graph of the gradient (needed to train through the maps).
        return_logits: Also return the logits of the same forward pass (saves the trainer a second pass).

    Returns:
        ``maps[N, h, w]``, or ``(maps, logits[N, K])`` with ``return_logits=True``.
    """
    captured: list[Tensor] = []

    def _hook(_module: torch.nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        if not output.requires_grad:  # frozen model and plain input: make A a leaf we can differentiate
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    handle = model.cam_layer.register_forward_hook(_hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise SaliencyError(f"cam_layer ran {len(captured)} times in one forward pass; expected once")
    a = captured[0]
    t = resolve_target(model, x, target) if target is not None else logits.detach().argmax(dim=1)
    score = logits.gather(1, t[:, None]).sum()
    (grads,) = torch.autograd.grad(score, a, create_graph=create_graph)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    maps = torch.clamp((weights * a).sum(dim=1), min=0.0)
    return (maps, logits) if return_logits else maps
