"""Baseline: one classifier trained with cross-entropy (Watson et al., WACV 2023, §4, model 1).

The paper's baseline is a UNet with an EfficientNet-b0 encoder and a classification head on the bottleneck,
Adam, lr 3e-3, batch 32 (``configs/baseline-paper.yaml``); the architecture is ``model.arch``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from training.config import RecipeSettings, TrainConfig
from training.data import Batch
from training.recipes import Recipe, RecipeError, register_recipe

__all__ = ["BaselineRecipe", "BaselineSettings"]


class BaselineSettings(RecipeSettings):
    """No knobs beyond the shared config (class weights live in ``loss.class_weights``)."""

    name: Literal["baseline"] = "baseline"


@register_recipe("baseline", BaselineSettings)
class BaselineRecipe(Recipe):
    """``loss = CE(m(x), y)`` (class-weighted when configured)."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        return {"model": self.build_classifier(0)}

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        if not isinstance(batch, Batch):
            raise RecipeError("the baseline recipe takes one batch per step")
        logits = self.modules["model"](batch.image)
        return {"loss": self.classification_loss(logits, batch.label)}
