"""ActDiff (Viviano et al., "Saliency is a possible red herring...", ICLR 2021, §3, Eq. 1).

ActDiff regularises the encoder to ignore whatever lies outside the region of interest (ROI): for every
training image with a mask (``Batch.has_mask``; ``data.masks_available`` of the training cases) it builds
``x_masked`` by *randomly permuting the pixels outside the dilated ROI* — the intensity distribution is kept,
the spatial information destroyed (docs/methods.md, "Mask-guided training") — and penalises

    L_act = (1/n) Σ_l ‖o_l(x_masked) − o_l(x)‖₂                                            (Eq. 1)

where ``o_l`` are the pre-activation outputs of encoder layer ``l``. The model is only trained (classified)
on the unmasked ``x``. Loss: ``CE(m(x), y) + λ_act · L_act`` (+ ``λ_recon · MSE(decode(encode(x)), x)``
when ``lambda_recon > 0``: the paper's UNet / Conv-AE ActDiff models also reconstruct their input, which it
found necessary for those architectures, §4).

Choices (documented, not in the paper):

* **Layers.** ``layer: preactivation`` (default) uses ``model.encoder_preactivation(x)`` — for
  :class:`mimicry.models.unet.UNetClassifier` the linear-bottleneck output of the last encoder stage, so
  ``n = 1``. ``layer: features`` uses ``model.features(x)`` instead (any :class:`CamClassifier`; for ReLU
  networks this is *post*-activation, a deviation from Eq. 1 to be stated when reporting).
* **Distance.** ``‖·‖₂`` is the Euclidean norm of each sample's flattened activation difference; the penalty
  is the mean over layers and over the samples with a mask (samples without one contribute nothing; a batch
  with none gives an exact, graph-connected zero).
* **Dilation.** The ROI (``Batch.roi_mask``) is dilated by ``roi_dilation_px`` pixels with a disk
  structuring element (Euclidean distance ≤ r) before the permutation: the paper "always dilate[s] the mask
  by a set number of pixels" to keep context around it.
* **Randomness.** The permutation draws from the global torch RNG (seeded and checkpointed by the engine,
  so runs stay reproducible) unless a ``generator`` is passed.

λ_act: 10 on the synthetic task, 1 on the medical ones (paper §4–5); ``lambda_act`` defaults to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from training.config import RecipeSettings, TrainConfig
from training.data import Batch
from training.recipes import Recipe, RecipeError, register_recipe

__all__ = [
    "ActDiffRecipe",
    "ActDiffSettings",
    "actdiff_penalty",
    "dilate_roi",
    "masked_mean",
    "permute_outside_roi",
    "roi_weight",
]


# --------------------------------------------------------------------------------------------- mask helpers
# (shared by the gradmask and reconstruct_masked recipes)


def _check_mask(roi_mask: Tensor) -> None:
    if roi_mask.dim() != 4 or roi_mask.shape[1] != 1:
        raise RecipeError(f"roi_mask must be [N, 1, H, W], got {tuple(roi_mask.shape)}")


def dilate_roi(roi_mask: Tensor, pixels: int) -> Tensor:
    """Binary dilation of ``roi_mask`` (``bool [N, 1, H, W]``) by a disk of radius ``pixels``.

    A pixel is in the result when some ROI pixel lies within Euclidean distance ``pixels`` of it (the paper
    dilates the mask "by a set number of pixels", §3). ``pixels = 0`` returns the mask unchanged (as bool).
    """
    _check_mask(roi_mask)
    if pixels < 0:
        raise RecipeError(f"roi dilation must be >= 0 pixels, got {pixels}")
    mask = roi_mask.bool()
    if pixels == 0:
        return mask
    r = int(pixels)
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = ((yy**2 + xx**2) <= r * r).to(torch.float32).to(mask.device)
    hits = F.conv2d(mask.to(torch.float32), disk[None, None], padding=r)
    return hits > 0.5


def roi_weight(roi_mask: Tensor, dilation_px: int = 0, blur_sigma_px: float = 0.0) -> Tensor:
    """Soft ROI weight ``w ∈ [0, 1]`` (``float32 [N, 1, H, W]``): the dilated ROI, optionally with a Gaussian
    halo.

    ``blur_sigma_px > 0`` blurs the dilated mask (zero padding, kernel truncated at 3σ) and keeps the maximum
    of the blurred and the dilated mask, so the ROI itself keeps weight 1 and the surroundings fade out (the
    paper blurs its masks to "include some context around the masked area", §4). GradMask weighs its penalty
    by ``1 − w``, reconstruct-masked reconstructs ``x · w``.
    """
    if blur_sigma_px < 0 or not math.isfinite(blur_sigma_px):
        raise RecipeError(f"roi blur sigma must be finite and >= 0, got {blur_sigma_px}")
    dilated = dilate_roi(roi_mask, dilation_px).to(torch.float32)
    if blur_sigma_px == 0:
        return dilated
    radius = max(1, math.ceil(3.0 * blur_sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=dilated.device)
    g = torch.exp(-0.5 * (t / blur_sigma_px) ** 2)
    g = g / g.sum()
    blurred = F.conv2d(dilated, g.view(1, 1, 1, -1), padding=(0, radius))
    blurred = F.conv2d(blurred, g.view(1, 1, -1, 1), padding=(radius, 0))
    return torch.maximum(dilated, blurred.clamp(0.0, 1.0))


def permute_outside_roi(x: Tensor, inside: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x_masked`` of ActDiff: each sample's pixels outside ``inside`` randomly permuted among themselves.

    Pixels inside the ROI are kept exactly; the outside pixels keep their multiset of values (the intensity
    distribution) but lose their positions. All channels of a pixel move together.

    Args:
        x: ``[N, C, H, W]`` images.
        inside: ``bool [N, 1, H, W]`` (the dilated ROI); a sample whose mask is all true is returned as is.
        generator: RNG of the permutation (``None``: the global RNG of ``x``'s device).

    Implementation: one stable sort puts each sample's outside positions first in a random order, a second
    puts them first in position order; mapping the ``k``-th of the latter to the ``k``-th of the former is a
    uniformly random permutation of the outside positions and the identity on the inside ones (both sorts
    list the inside positions last in position order). Sort + gather only: deterministic on every device.
    """
    _check_mask(inside)
    if inside.shape[0] != x.shape[0] or inside.shape[-2:] != x.shape[-2:]:
        raise RecipeError(f"mask {tuple(inside.shape)} does not fit the images {tuple(x.shape)}")
    n, c = x.shape[:2]
    outside = ~inside.bool().reshape(n, -1)
    keys = torch.rand(outside.shape, generator=generator, device=x.device)
    keys = torch.where(outside, keys, torch.full_like(keys, 2.0))
    src_order = torch.argsort(keys, dim=1, stable=True)
    dst_order = torch.argsort((~outside).to(torch.int8), dim=1, stable=True)
    src = torch.gather(src_order, 1, torch.argsort(dst_order, dim=1))
    flat = x.reshape(n, c, -1)
    return torch.gather(flat, 2, src[:, None, :].expand(n, c, -1)).reshape(x.shape)


def masked_mean(values: Tensor, has_mask: Tensor) -> Tensor:
    """Mean of the per-sample ``values[N]`` over the samples with ``has_mask``; an exact zero that keeps the
    graph when no sample has a mask."""
    sel = has_mask.bool()
    if not bool(sel.any()):
        return values.sum() * 0.0
    return values[sel].mean()


def actdiff_penalty(acts_masked: Sequence[Tensor], acts: Sequence[Tensor]) -> Tensor:
    """Per-sample ActDiff distance ``[N]``: ``(1/n) Σ_l ‖o_l(x_masked) − o_l(x)‖₂`` (Eq. 1).

    Each layer's ``[N, ...]`` activations are flattened per sample; ``‖·‖₂`` is the Euclidean norm of the
    difference (its gradient at zero difference is 0, never NaN).
    """
    if len(acts_masked) != len(acts) or not acts:
        raise RecipeError("actdiff needs the same, non-zero number of layers for x and x_masked")
    per_layer = []
    for a_m, a in zip(acts_masked, acts, strict=True):
        if a_m.shape != a.shape:
            raise RecipeError(f"activation shapes differ: {tuple(a_m.shape)} vs {tuple(a.shape)}")
        per_layer.append(torch.linalg.vector_norm((a_m - a).reshape(a.shape[0], -1), ord=2, dim=1))
    return torch.stack(per_layer).mean(dim=0)


# --------------------------------------------------------------------------------------------- recipe


class ActDiffSettings(RecipeSettings):
    """ActDiff knobs (module docstring).

    Attributes:
        lambda_act: Weight of ``L_act`` (paper: 10 synthetic, 1 medical).
        roi_dilation_px: Disk dilation of the ROI before permuting the outside, in model-input pixels.
        layer: ``preactivation`` (``encoder_preactivation``, Eq. 1) or ``features`` (any CamClassifier).
        lambda_recon: Weight of an input-reconstruction MSE (needs ``forward_multitask``; 0: none).
    """

    name: Literal["actdiff"] = "actdiff"
    lambda_act: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    roi_dilation_px: int = Field(0, ge=0)
    layer: Literal["preactivation", "features"] = "preactivation"
    lambda_recon: float = Field(0.0, ge=0.0, allow_inf_nan=False)


@register_recipe("actdiff", ActDiffSettings)
class ActDiffRecipe(Recipe):
    """``loss = CE(m(x), y) + λ_act · L_act(x, x_masked) [+ λ_recon · MSE(x̂, x)]`` (Eq. 1)."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        model = self.build_classifier(0)
        if self.settings.layer == "preactivation" and not callable(
            getattr(model, "encoder_preactivation", None)
        ):
            raise RecipeError(
                f"recipe 'actdiff' with layer 'preactivation' needs encoder_preactivation(x); "
                f"{config.model.arch!r} has none (use unet / unet_tiny, or recipe.layer: features)"
            )
        if self.settings.lambda_recon > 0 and not callable(getattr(model, "forward_multitask", None)):
            raise RecipeError(
                f"actdiff with lambda_recon > 0 needs forward_multitask(x); {config.model.arch!r} has none"
            )
        return {"model": model}

    def _acts(self, x: Tensor) -> Tensor:
        model = self.modules["model"]
        if self.settings.layer == "preactivation":
            return model.encoder_preactivation(x)
        return model.features(x)

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        if not isinstance(batch, Batch):
            raise RecipeError("the actdiff recipe takes one batch per step")
        model = self.modules["model"]
        s = self.settings
        x = batch.image
        terms: dict[str, Tensor] = {}
        if s.lambda_recon > 0:
            logits, recon = model.forward_multitask(x)
            recon_loss = F.mse_loss(recon, x)
            terms["recon"] = recon_loss.detach()
        else:
            logits = model(x)
            recon_loss = logits.sum() * 0.0
        ce = self.classification_loss(logits, batch.label)
        sel = batch.has_mask.bool()
        if bool(sel.any()):
            inside = dilate_roi(batch.roi_mask[sel], s.roi_dilation_px)
            x_sel = x[sel]
            x_masked = permute_outside_roi(x_sel, inside)
            penalty = actdiff_penalty([self._acts(x_masked)], [self._acts(x_sel)]).mean()
        else:
            penalty = logits.sum() * 0.0
        loss = ce + s.lambda_act * penalty + s.lambda_recon * recon_loss
        return {"loss": loss, "cls": ce.detach(), "actdiff": penalty.detach(), **terms}
