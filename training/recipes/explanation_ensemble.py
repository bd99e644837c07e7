"""Explanation ensemble (Watson et al., "Learning how to MIMIC", WACV 2023, §3, Eq. 1–2).

``S`` sub-models ``m_i`` of one architecture (distinct initial seeds, ``derive_seed(seed, "member", i)``; one
shared data order, so that every sub-model explains the same ``x``) and a discriminator ``D``
(:class:`training.discriminator.ExplanationDiscriminator`: two conv layers, each followed by 2×2 max-pool and
ReLU) that guesses which sub-model produced an explanation. Per batch:

* ``E_i(x)``: Grad-CAM of ``m_i`` on its final conv layer (``cam_layer``), computed *differentiably* with
  :func:`mimicry.saliency.differentiable_gradcam` (``torch.autograd.grad(score, A, create_graph=True)``),
  for the label (``cam_target: label``) or the predicted class, optionally resized to ``map_size``, then
  normalised per sample with an epsilon (``map_norm``, ``map_eps``).
* Sub-model loss, Eq. 2: ``loss = Σ_i CE(m_i(x), y) − β · Σ_i CE(D(E_i(x)), i)`` with ``F.cross_entropy``
  (log-softmax) for both terms. The minus sign makes the sub-models *maximise* D's cross-entropy ("fool"
  D); the adversarial term back-propagates through the maps into every sub-model. D's parameters are frozen
  (``requires_grad_(False)``) while this loss is formed, so the engine's backward pass never touches D.
* Every ``α`` epochs (epochs with ``epoch % α == 0``, 0-based: D learns from the first epoch on) D takes one
  optimiser step per batch on ``Σ_i CE(D(E_i(x)), i)`` using the batch's maps *detached* ("without
  back-propagating through the sub-models"), after the sub-models' step.

β = 0.2 and α = 2 are the paper's values (``configs/explanation_ensemble-paper.yaml``: S = 10, Adam lr 1e-5,
batch 4). Not copied from the released code (docs/methods.md, "Explanation ensemble"): it fed detached
GradientSHAP maps to an MLP (no adversarial gradient at all) and applied NLLLoss to raw logits.

Logged terms: ``cls`` (Σ_i CE_i), ``adv`` (Σ_i CE(D(E_i), i)), ``disc_acc`` (D's accuracy on the current
maps), and on update epochs ``disc_loss`` / ``disc_update_acc``; per epoch ``disc_updates`` (number of D
steps) and ``val_disc_acc`` (D's accuracy on the validation maps).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from mimicry.saliency import differentiable_gradcam
from training.config import RecipeSettings, TrainConfig
from training.data import Batch, SplitTensors
from training.discriminator import ExplanationDiscriminator, normalise_maps
from training.recipes import Recipe, RecipeContext, RecipeError, register_recipe
from training.recipes.ensemble import member_name
from training.seeding import derive_seed

__all__ = ["DISCRIMINATOR", "ExplanationEnsembleRecipe", "ExplanationEnsembleSettings"]

DISCRIMINATOR = "discriminator"
"""Module / optimiser name of D."""


class ExplanationEnsembleSettings(RecipeSettings):
    """Knobs of Eq. 2 and of the discriminator (paper values as defaults)."""

    name: Literal["explanation_ensemble"] = "explanation_ensemble"
    n_members: int = Field(10, ge=2, description="S, the number of sub-models (paper: 10).")
    beta: float = Field(0.2, ge=0.0, allow_inf_nan=False, description="β of Eq. 2 (paper: 0.2).")
    alpha: int = Field(2, ge=1, description="D is updated in epochs with epoch % α == 0 (paper: α = 2).")
    map_eps: float = Field(1e-8, gt=0.0, allow_inf_nan=False, description="Epsilon of the map normalisation.")
    map_norm: Literal["max", "sum"] = "max"
    map_size: int | None = Field(None, ge=4, description="Resize maps to this side (None: feature grid).")
    cam_target: Literal["label", "predicted"] = "label"
    disc_channels: tuple[int, int] = (8, 16)
    disc_kernel_size: int = Field(3, ge=1)
    disc_lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False, description="Adam learning rate of D.")

    @field_validator("disc_channels")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("disc_channels must be positive")
        return value

    @field_validator("disc_kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("disc_kernel_size must be odd")
        return value


@register_recipe("explanation_ensemble", ExplanationEnsembleSettings)
class ExplanationEnsembleRecipe(Recipe):
    """Sub-models trained on Eq. 2 against a discriminator of their Grad-CAM maps (module docstring)."""

    def __init__(self, context: RecipeContext) -> None:
        super().__init__(context)
        self._pending_maps: Tensor | None = None
        self.disc_updates = 0

    # ------------------------------------------------------------------ building

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        s = self.settings
        members = {member_name(i): self.build_classifier(i) for i in range(s.n_members)}
        shape = self._map_shape(members[member_name(0)])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "discriminator"))
            disc = ExplanationDiscriminator(s.n_members, shape, tuple(s.disc_channels), s.disc_kernel_size)
        return {**members, DISCRIMINATOR: disc}

    def _map_shape(self, model: nn.Module) -> tuple[int, int]:
        if self.settings.map_size is not None:
            return (int(self.settings.map_size), int(self.settings.map_size))
        size = self.context.input_size
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                a = model.features(torch.zeros(1, 1, size, size))  # type: ignore[operator]
        finally:
            model.train(was_training)
        return (int(a.shape[-2]), int(a.shape[-1]))

    @property
    def discriminator(self) -> ExplanationDiscriminator:
        return self.modules[DISCRIMINATOR]  # type: ignore[return-value]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = super().configure_optimizers()
        opts[DISCRIMINATOR] = torch.optim.Adam(self.discriminator.parameters(), lr=self.settings.disc_lr)
        return opts

    # ------------------------------------------------------------------ explanations and loss

    def explanations(
        self, x: Tensor, labels: Tensor | None, *, create_graph: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """Normalised Grad-CAM maps ``E_i(x)`` of every sub-model, ``[S, N, h, w]``, and their logits.

        With ``create_graph=True`` the maps stay in the autograd graph of the sub-models' weights.
        """
        maps, logits = [], []
        target = labels if self.settings.cam_target == "label" else None
        with torch.enable_grad():
            for model in self.classifiers():
                m, out = differentiable_gradcam(
                    model, x, target, create_graph=create_graph, return_logits=True
                )
                if self.settings.map_size is not None and tuple(m.shape[-2:]) != self.discriminator.map_shape:
                    m = F.interpolate(
                        m[:, None], size=self.discriminator.map_shape, mode="bilinear", align_corners=False
                    )[:, 0]
                maps.append(normalise_maps(m, self.settings.map_eps, self.settings.map_norm))
                logits.append(out)
        return torch.stack(maps), logits

    def discriminator_terms(self, maps: Tensor) -> tuple[list[Tensor], Tensor]:
        """``[CE(D(E_i), i) for i]`` (batch means, ``F.cross_entropy``) and D's accuracy over all maps."""
        disc = self.discriminator
        n = maps.shape[1]
        terms, correct = [], 0
        for i in range(maps.shape[0]):
            out = disc(maps[i][:, None])
            target = torch.full((n,), i, dtype=torch.long, device=maps.device)
            terms.append(F.cross_entropy(out, target))
            correct += int((out.detach().argmax(dim=1) == i).sum())
        return terms, torch.tensor(correct / max(1, maps.shape[0] * n))

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Eq. 2 for one batch: ``cls`` = Σ_i CE(m_i(x), y), ``adv`` = Σ_i CE(D(E_i(x)), i),
        ``loss = cls − β·adv``; D's parameters are frozen while it is formed."""
        maps, logits = self.explanations(batch.image, batch.label, create_graph=True)
        self.discriminator.requires_grad_(False)
        cls_terms = [self.classification_loss(out, batch.label) for out in logits]
        adv_terms, disc_acc = self.discriminator_terms(maps)
        cls = sum(cls_terms[1:], cls_terms[0])
        adv = sum(adv_terms[1:], adv_terms[0])
        self._pending_maps = maps.detach()
        return {"loss": cls - self.settings.beta * adv, "cls": cls, "adv": adv, "disc_acc": disc_acc}

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        if not isinstance(batch, Batch):
            raise RecipeError("the explanation ensemble takes one batch per step (a shared data order)")
        terms = self.loss_terms(batch)
        return {
            "loss": terms["loss"],
            "cls": terms["cls"].detach(),
            "adv": terms["adv"].detach(),
            "disc_acc": terms["disc_acc"],
        }

    # ------------------------------------------------------------------ discriminator updates

    def is_discriminator_epoch(self, epoch: int) -> bool:
        """Whether D is updated in (0-based) ``epoch``: every α epochs, starting with the first."""
        return epoch % int(self.settings.alpha) == 0

    def update_discriminator(self, maps: Tensor) -> dict[str, float]:
        """One optimiser step of D on ``Σ_i CE(D(E_i), i)`` with the maps *detached* (no gradient can reach
        the sub-models, whatever graph ``maps`` carries)."""
        disc = self.discriminator
        opt = self.optimizers[DISCRIMINATOR]
        disc.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        terms, acc = self.discriminator_terms(maps.detach())
        loss = sum(terms[1:], terms[0])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.disc_updates += 1
        return {"disc_loss": float(loss.detach()), "disc_update_acc": float(acc)}

    def after_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, float]:
        maps, self._pending_maps = self._pending_maps, None
        if maps is None or not self.is_discriminator_epoch(self.epoch):
            return {}
        return self.update_discriminator(maps)

    def epoch_start(self, epoch: int) -> None:
        self.disc_updates = 0

    def epoch_end(self, epoch: int) -> dict[str, float]:
        return {"disc_updates": float(self.disc_updates)}

    def validation_metrics(self, split: SplitTensors, prefix: str) -> dict[str, float]:
        """D's accuracy on the sub-models' maps of ``split`` (how separable their explanations are)."""
        size = self.config.schedule.eval_batch_size
        device = self.context.device
        correct = total = 0
        for start in range(0, len(split), size):
            b = split.batch(slice(start, start + size)).to(device)
            maps, _ = self.explanations(b.image, b.label, create_graph=False)
            with torch.no_grad():
                for i in range(maps.shape[0]):
                    correct += int((self.discriminator(maps[i].detach()[:, None]).argmax(dim=1) == i).sum())
                    total += maps.shape[1]
        return {f"{prefix}_disc_acc": correct / total if total else float("nan")}
