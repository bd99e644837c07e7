"""Recipes: each trains on an easy problem; ensemble seeds / data orders; the Improved-UNet loss; class
weights; and a new (mask-guided style) recipe plugging into the same engine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.utils.class_weight import compute_class_weight
from torch import Tensor, nn

from mimicry.models.base import DEFAULT_CLASS_NAMES
from tests.training import MODEL_SIZE, MULTITASK_ARCH, easy_bundle, make_config
from training.config import ConfigError, LossConfig, RecipeSettings, TrainConfig, parse_config
from training.data import Batch
from training.loop import compute_class_weights, train
from training.recipes import Recipe, RecipeContext, RecipeError, get_recipe, register_recipe
from training.recipes.ensemble import EnsembleRecipe
from training.recipes.unet_egd import UnetEgdRecipe, heatmap_loss


def _context(cfg: TrainConfig, weights: Tensor | None = None) -> RecipeContext:
    return RecipeContext(cfg, DEFAULT_CLASS_NAMES, MODEL_SIZE, torch.device("cpu"), weights)


@pytest.mark.parametrize(
    ("recipe", "arch", "term"),
    [
        ({"name": "baseline"}, "toy", "train_loss"),
        ({"name": "ensemble", "n_members": 3}, "toy", "train_loss"),
        ({"name": "explanation_ensemble", "n_members": 2}, "toy", "train_cls"),
        ({"name": "unet_egd", "gamma": 0.5}, MULTITASK_ARCH, "train_loss"),
    ],
    ids=["baseline", "ensemble", "explanation_ensemble", "unet_egd"],
)
def test_each_recipe_reduces_the_training_loss_on_an_easy_problem(
    tmp_path: Path, recipe: dict, arch: str, term: str
) -> None:
    cfg = make_config(tmp_path / "unused", recipe=recipe, model={"arch": arch}, schedule={"epochs": 3})
    result = train(cfg, tmp_path / "run", data=easy_bundle())
    losses = [r[term] for r in result.history]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.95 * losses[0]
    assert result.test_metrics["test_accuracy"] is not None
    assert (tmp_path / "run" / "result.json").is_file()


def test_ensemble_members_have_their_own_seed_and_data_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    original = EnsembleRecipe.training_step

    def _spy(self: EnsembleRecipe, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        seen.append(batch)
        return original(self, batch)

    monkeypatch.setattr(EnsembleRecipe, "training_step", _spy)
    cfg = make_config(
        tmp_path / "unused", recipe={"name": "ensemble", "n_members": 3}, schedule={"epochs": 1}
    )
    result = train(cfg, tmp_path / "run", data=easy_bundle())
    assert all(isinstance(b, tuple) and len(b) == 3 for b in seen)
    first = [b.index.tolist() for b in seen[0]]  # type: ignore[union-attr]
    assert first[0] != first[1]
    assert first[1] != first[2]
    for s in range(3):  # every member still sees every training case once per epoch
        assert sorted(i for step in seen for i in step[s].index.tolist()) == list(range(24))  # type: ignore[index]
    w = [m.block1[0].weight for m in result.recipe.classifiers()]
    assert not torch.equal(w[0], w[1])

    seen.clear()
    shared = make_config(
        tmp_path / "unused", recipe={"name": "ensemble", "n_members": 3, "shared_data_order": True},
        schedule={"epochs": 1},
    )  # fmt: skip
    train(shared, tmp_path / "run-shared", data=easy_bundle())
    assert all(isinstance(b, Batch) for b in seen)


def test_ensemble_prediction_is_the_mean_of_member_probabilities(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", recipe={"name": "ensemble", "n_members": 3})
    recipe = EnsembleRecipe(_context(cfg))
    recipe.setup()
    x = easy_bundle().val.image[:5]
    expected = torch.stack([torch.softmax(m(x), dim=1) for m in recipe.classifiers()]).mean(dim=0)
    assert torch.allclose(recipe.predict_proba(x), expected, atol=1e-7)


def test_class_weights() -> None:
    counts = np.array([10, 5, 1])
    labels = np.repeat([0, 1, 2], counts)
    balanced = compute_class_weights(LossConfig(class_weights="balanced"), counts)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert torch.allclose(balanced, torch.tensor(expected, dtype=torch.float32))
    assert compute_class_weights(LossConfig(), counts) is None
    assert compute_class_weights(LossConfig(class_weights=[1.0, 2.0, 3.0]), counts).tolist() == [
        1.0,
        2.0,
        3.0,
    ]


def test_class_weighted_cross_entropy(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused")
    weights = torch.tensor([1.0, 2.0, 4.0])
    recipe = get_recipe("baseline")(_context(cfg, weights))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    labels = torch.tensor([0, 1, 2])
    per_sample = -torch.log_softmax(logits, dim=1)[torch.arange(3), labels]
    expected = (per_sample * weights).sum() / weights.sum()
    assert torch.allclose(recipe.classification_loss(logits, labels), expected)


def _egd_recipe(tmp_path: Path, **settings: object) -> UnetEgdRecipe:
    cfg = make_config(
        tmp_path / "unused", recipe={"name": "unet_egd", **settings}, model={"arch": MULTITASK_ARCH}
    )
    recipe = UnetEgdRecipe(_context(cfg))
    recipe.setup()
    return recipe


def test_unet_egd_loss_is_gamma_weighted_classification_plus_heatmap(tmp_path: Path) -> None:
    recipe = _egd_recipe(tmp_path, gamma=0.3, heatmap_loss="bce", cls_loss="bce")
    batch = easy_bundle().train.batch(slice(0, 6))
    terms = recipe.training_step(batch)
    logits, heat_logits = recipe.modules["model"].forward_multitask(batch.image)
    cls = F.binary_cross_entropy_with_logits(logits, F.one_hot(batch.label, 3).float())
    target = batch.heatmap / batch.heatmap.amax(dim=(1, 2, 3), keepdim=True)
    heat = F.binary_cross_entropy_with_logits(heat_logits, target)
    assert torch.allclose(terms["cls"], cls, atol=1e-6)
    assert torch.allclose(terms["heatmap"], heat, atol=1e-6)
    assert torch.allclose(terms["loss"], 0.3 * cls + 0.7 * heat, atol=1e-6)
    ce = _egd_recipe(tmp_path, cls_loss="ce").training_step(batch)
    ce_logits, _ = _egd_recipe(tmp_path, cls_loss="ce").modules["model"].forward_multitask(batch.image)
    assert torch.allclose(ce["cls"], F.cross_entropy(ce_logits, batch.label), atol=1e-6)


def test_heatmap_losses_by_hand() -> None:
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]], [[[9.0, 9.0], [9.0, 9.0]]]])
    valid = torch.tensor([True, False])  # the second sample (garbage target) must not count
    # BCE(0.5, t) = log 2 for every pixel and any t.
    assert torch.allclose(
        heatmap_loss(logits, target, valid, "bce"), torch.tensor(np.log(2.0), dtype=torch.float32)
    )
    # Dice, sample 0: Σpt = 1, Σp = 2, Σt = 2, s = 1 → 1 − (2 + 1) / (4 + 1) = 0.4.
    assert torch.allclose(heatmap_loss(logits, target, valid, "dice", 1.0), torch.tensor(0.4))
    zero = heatmap_loss(logits, target, torch.tensor([False, False]), "bce")
    assert float(zero) == 0.0
    with pytest.raises(RecipeError, match="heatmap head output"):
        heatmap_loss(torch.zeros(2, 1, 4, 4), target, valid, "bce")


def test_unet_egd_needs_a_multitask_architecture(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", recipe={"name": "unet_egd"}, model={"arch": "toy"})
    with pytest.raises(RecipeError, match="forward_multitask"):
        UnetEgdRecipe(_context(cfg)).setup()


# ------------------------------------------------------------------ a new recipe plugs in


class _MaskPenaltySettings(RecipeSettings):
    name: Literal["test_mask_penalty"] = "test_mask_penalty"
    lam: float = Field(1.0, ge=0.0)


@register_recipe("test_mask_penalty", _MaskPenaltySettings)
class _MaskPenaltyRecipe(Recipe):
    """GradMask-like: CE + λ·mean |∂ score / ∂x| outside ``roi_mask`` for the samples with ``has_mask``."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        return {"model": self.build_classifier(0)}

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        assert isinstance(batch, Batch)
        x = batch.image.clone().requires_grad_(True)
        logits = self.modules["model"](x)
        (grad,) = torch.autograd.grad(logits.gather(1, batch.label[:, None]).sum(), x, create_graph=True)
        outside = (~batch.roi_mask).float() * batch.has_mask[:, None, None, None].float()
        penalty = (grad.abs() * outside).mean()
        ce = self.classification_loss(logits, batch.label)
        return {"loss": ce + self.settings.lam * penalty, "penalty": penalty.detach()}


def test_a_new_recipe_plugs_into_config_and_engine(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"recipe\.lambda"):
        parse_config({"data": {"root": "x"}, "recipe": {"name": "test_mask_penalty", "lambda": 2.0}})
    cfg = make_config(tmp_path / "unused", recipe={"name": "test_mask_penalty", "lam": 2.0})
    assert cfg.recipe.lam == 2.0
    result = train(cfg, tmp_path / "run", data=easy_bundle())
    assert all(r["train_penalty"] > 0 for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
