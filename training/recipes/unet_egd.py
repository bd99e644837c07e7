"""The "Improved UNet" of Karargyris et al. (2021): classify and reconstruct the static EGD heatmap.

A baseline of Watson et al. (WACV 2023, §4, model 2; docs/methods.md, "Explanation ensemble"): the loss is
``γ·BCE(cls) + (1−γ)·BCE-or-Dice(heatmap)``. The architecture exposes ``forward_multitask(x) -> (logits[N, K],
heatmap_logits[N, 1, H, W])`` (``unet_egd`` / ``unet_egd_tiny`` in :mod:`mimicry.models.unet`).

* Classification term: ``binary_cross_entropy_with_logits`` against the one-hot label (``cls_loss: bce``, the
  paper's), or cross-entropy (``cls_loss: ce``); class weights weight each sample by its class.
* Heatmap term: the batch's static EGD heatmap (sum 1, at model resolution) scaled to ``[0, 1]`` by its
  per-sample maximum is the target; ``bce``: mean pixel-wise ``binary_cross_entropy_with_logits``; ``dice``:
  soft Dice ``1 − (2Σpt + s) / (Σp + Σt + s)`` on ``p = sigmoid(heatmap_logits)`` (``s = dice_smooth``).
  Images without fixations (``has_heatmap`` false; the real EGD has a few) do not enter the heatmap term.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from training.config import RecipeSettings, TrainConfig
from training.data import Batch
from training.recipes import Recipe, RecipeError, register_recipe

__all__ = ["UnetEgdRecipe", "UnetEgdSettings", "heatmap_loss"]


class UnetEgdSettings(RecipeSettings):
    """``gamma`` weights classification against heatmap reconstruction (``γ ∈ [0, 1]``)."""

    name: Literal["unet_egd"] = "unet_egd"
    gamma: float = Field(0.5, ge=0.0, le=1.0)
    heatmap_loss: Literal["bce", "dice"] = "bce"
    cls_loss: Literal["bce", "ce"] = "bce"
    dice_smooth: float = Field(1.0, gt=0.0, allow_inf_nan=False)


def heatmap_loss(
    heatmap_logits: Tensor, heatmap: Tensor, valid: Tensor, kind: str, dice_smooth: float = 1.0
) -> Tensor:
    """Mean heatmap-reconstruction loss over the ``valid`` samples (module docstring); 0 when none is valid.

    Args:
        heatmap_logits: ``[N, 1, H, W]`` decoder output.
        heatmap: ``[N, 1, H, W]`` target heatmap (any non-negative scale; scaled to max 1 per sample).
        valid: ``bool [N]``.
        kind: ``"bce"`` or ``"dice"``.
    """
    if heatmap_logits.shape != heatmap.shape:
        raise RecipeError(
            f"heatmap head output {tuple(heatmap_logits.shape)} != target {tuple(heatmap.shape)}"
        )
    if not bool(valid.any()):
        return heatmap_logits.sum() * 0.0
    logits, target = heatmap_logits[valid], heatmap[valid]
    peak = target.amax(dim=(1, 2, 3), keepdim=True)
    target = target / peak.clamp_min(torch.finfo(target.dtype).tiny)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "dice":
        p = torch.sigmoid(logits)
        inter = (p * target).sum(dim=(1, 2, 3))
        denom = p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
        return (1.0 - (2.0 * inter + dice_smooth) / (denom + dice_smooth)).mean()
    raise RecipeError(f"unknown heatmap loss {kind!r}")


@register_recipe("unet_egd", UnetEgdSettings)
class UnetEgdRecipe(Recipe):
    """``loss = γ·cls + (1−γ)·heatmap`` on a model with ``forward_multitask``."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        model = self.build_classifier(0)
        if not callable(getattr(model, "forward_multitask", None)):
            raise RecipeError(
                "recipe 'unet_egd' needs an architecture with forward_multitask(x) -> (logits, "
                f"heatmap_logits); {config.model.arch!r} has none (use unet_egd or unet_egd_tiny)"
            )
        return {"model": model}

    def _cls_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.settings.cls_loss == "ce":
            return self.classification_loss(logits, labels)
        onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        per_sample = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(dim=1)
        weights = self.context.class_weights
        if weights is None:
            return per_sample.mean()
        w = weights[labels]
        return (per_sample * w).sum() / w.sum()

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        if not isinstance(batch, Batch):
            raise RecipeError("the unet_egd recipe takes one batch per step")
        logits, heatmap_logits = self.modules["model"].forward_multitask(batch.image)
        cls = self._cls_loss(logits, batch.label)
        heat = heatmap_loss(
            heatmap_logits,
            batch.heatmap,
            batch.has_heatmap,
            self.settings.heatmap_loss,
            self.settings.dice_smooth,
        )
        gamma = float(self.settings.gamma)
        return {"loss": gamma * cls + (1.0 - gamma) * heat, "cls": cls.detach(), "heatmap": heat.detach()}
