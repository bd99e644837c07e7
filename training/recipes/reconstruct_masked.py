"""Reconstruct-masked (Viviano et al., ICLR 2021, §3 "Reconstruction Loss").

An autoencoder / UNet ``x̂_masked = g(f(x))`` sees the *full* input and its decoder is trained to reconstruct
the *masked* input, which indirectly keeps the encoder's features on the region of interest:

    loss = CE(m(x), y) + λ_recon · L_recon_masked,   L_recon_masked = MSE(g(f(x)), x · w)

(the paper's medical experiments use the mean squared error, λ_recon = 1; its synthetic ones BCE on binary
images, λ = 10). ``w`` is the ROI weight of :func:`training.recipes.actdiff.roi_weight` (the ROI dilated by
``roi_dilation_px``, optionally with a Gaussian halo of ``roi_blur_sigma_px``). The model must expose
``forward_multitask(x) -> (logits[N, K], decoder_output[N, 1, H, W])`` (``unet`` / ``unet_tiny``: one
encoder pass feeds the classifier and the decoder).

Choices (documented): the MSE is the mean over the pixels of each sample, averaged over the samples with a
mask (``Batch.has_mask``); samples without one contribute nothing. The images are the *normalised* model
input, so ``x · w = 0`` outside the ROI is the normalisation mean (``preprocessing.mean``), not black.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from training.config import RecipeSettings, TrainConfig
from training.data import Batch
from training.recipes import Recipe, RecipeError, register_recipe
from training.recipes.actdiff import masked_mean, roi_weight

__all__ = ["ReconstructMaskedRecipe", "ReconstructMaskedSettings", "masked_reconstruction_loss"]


def masked_reconstruction_loss(recon: Tensor, x: Tensor, weight: Tensor, has_mask: Tensor) -> Tensor:
    """``mean_{i: has_mask} mean_p (recon − x·w)²`` (exact, graph-connected zero when no sample has a mask).

    Args:
        recon: ``[N, C, H, W]`` decoder output.
        x: ``[N, C, H, W]`` the model input.
        weight: ``[N, 1, H, W]`` ROI weight in ``[0, 1]``.
        has_mask: ``bool [N]``.
    """
    if recon.shape != x.shape:
        raise RecipeError(f"decoder output {tuple(recon.shape)} != input {tuple(x.shape)}")
    target = x * weight.to(x.dtype)
    per_sample = (recon - target).pow(2).flatten(1).mean(dim=1)
    return masked_mean(per_sample, has_mask)


class ReconstructMaskedSettings(RecipeSettings):
    """Attributes: ``lambda_recon`` (paper: 1 medical), ``roi_dilation_px``, ``roi_blur_sigma_px``."""

    name: Literal["reconstruct_masked"] = "reconstruct_masked"
    lambda_recon: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    roi_dilation_px: int = Field(0, ge=0)
    roi_blur_sigma_px: float = Field(0.0, ge=0.0, allow_inf_nan=False)


@register_recipe("reconstruct_masked", ReconstructMaskedSettings)
class ReconstructMaskedRecipe(Recipe):
    """``loss = CE(m(x), y) + λ_recon · MSE(g(f(x)), x · w)`` on the samples with a mask."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        model = self.build_classifier(0)
        if not callable(getattr(model, "forward_multitask", None)):
            raise RecipeError(
                "recipe 'reconstruct_masked' needs an architecture with forward_multitask(x) -> (logits, "
                f"reconstruction); {config.model.arch!r} has none (use unet or unet_tiny)"
            )
        return {"model": model}

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        if not isinstance(batch, Batch):
            raise RecipeError("the reconstruct_masked recipe takes one batch per step")
        s = self.settings
        logits, recon = self.modules["model"].forward_multitask(batch.image)
        ce = self.classification_loss(logits, batch.label)
        weight = roi_weight(batch.roi_mask, s.roi_dilation_px, s.roi_blur_sigma_px)
        rec = masked_reconstruction_loss(recon, batch.image, weight, batch.has_mask)
        return {"loss": ce + s.lambda_recon * rec, "cls": ce.detach(), "recon_masked": rec.detach()}
