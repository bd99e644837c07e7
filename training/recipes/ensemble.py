"""Normal ensemble: ``S`` classifiers of one architecture, each with its own seed and data order.

Watson et al. (WACV 2023), §3 and §4 model 3: sub-models ``m_i`` differ only by their random seed / training
data order, architecture and hyper-parameters are shared; the ensemble's output is the mean of the
sub-models' outputs (Eq. 1; here the mean of their softmax probabilities, as :class:`mimicry.models`'
``Ensemble`` serves it). Paper: 10 UNets, Adam, lr 3e-3, batch 4 (``configs/ensemble-paper.yaml``).

Member ``i`` is initialised from ``derive_seed(seed, "member", i)`` and, unless ``shared_data_order``, draws
its batches from its own shuffle stream ``derive_seed(seed, "data", i, epoch)``. The members do not interact,
so summing their losses under one Adam optimiser (per-parameter state) trains each exactly as it would be
trained alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from training.config import RecipeSettings, TrainConfig
from training.data import Batch
from training.recipes import Recipe, register_recipe

__all__ = ["EnsembleRecipe", "EnsembleSettings", "member_name"]


def member_name(index: int) -> str:
    """Module name of ensemble member ``index`` (``member_0`` …): the order of the exported ensemble."""
    return f"member_{index}"


class EnsembleSettings(RecipeSettings):
    """``n_members``: ``S`` (paper: 10); ``shared_data_order``: every member sees the same batches."""

    name: Literal["ensemble"] = "ensemble"
    n_members: int = Field(10, ge=2)
    shared_data_order: bool = False


@register_recipe("ensemble", EnsembleSettings)
class EnsembleRecipe(Recipe):
    """``loss = Σ_i CE(m_i(x_i), y_i)``, ``x_i`` from member ``i``'s own data order."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        return {member_name(i): self.build_classifier(i) for i in range(self.settings.n_members)}

    def data_streams(self) -> int:
        return 1 if self.settings.shared_data_order else int(self.settings.n_members)

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        members = self.classifiers()
        batches = [batch] * len(members) if isinstance(batch, Batch) else list(batch)
        losses = [
            self.classification_loss(model(b.image), b.label)
            for model, b in zip(members, batches, strict=True)
        ]
        total = sum(losses[1:], losses[0])
        return {"loss": total, "member_loss_mean": total.detach() / len(losses)}
