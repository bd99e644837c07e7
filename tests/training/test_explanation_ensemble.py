"""Explanation ensemble (Watson et al., WACV 2023, Eq. 2): discriminator architecture, the loss and its
sign, the adversarial gradient reaching the sub-models, and D's detached, every-α-epochs updates."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimicry.models.base import DEFAULT_CLASS_NAMES
from mimicry.saliency import differentiable_gradcam
from tests.training import MODEL_SIZE, assert_states_equal, easy_bundle, make_config, state_of
from training.data import Batch
from training.discriminator import DiscriminatorError, ExplanationDiscriminator, normalise_maps
from training.loop import EpochEnd, train
from training.recipes import RecipeContext
from training.recipes.explanation_ensemble import DISCRIMINATOR, ExplanationEnsembleRecipe


def _recipe(tmp_path: Path, **settings: object) -> ExplanationEnsembleRecipe:
    cfg = make_config(
        tmp_path / "unused", recipe={"name": "explanation_ensemble", "n_members": 3, **settings}
    )
    recipe = ExplanationEnsembleRecipe(
        RecipeContext(cfg, DEFAULT_CLASS_NAMES, MODEL_SIZE, torch.device("cpu"))
    )
    recipe.setup()
    return recipe


def _batch() -> Batch:
    return easy_bundle().train.batch(slice(0, 8))


def test_discriminator_is_two_convs_each_followed_by_maxpool_and_relu() -> None:
    d = ExplanationDiscriminator(3, (8, 8), channels=(4, 6), kernel_size=3)
    layers = list(d.features)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU] * 2
    assert sum(isinstance(m, nn.Conv2d) for m in d.modules()) == 2
    for pool in (layers[1], layers[4]):
        assert (pool.kernel_size, pool.stride) == (2, 2)
    assert not layers[2].inplace
    assert not layers[5].inplace
    assert (layers[0].in_channels, layers[0].out_channels, layers[3].out_channels) == (1, 4, 6)
    assert isinstance(d.head, nn.Linear)
    assert (d.head.in_features, d.head.out_features) == (6 * 2 * 2, 3)
    assert d(torch.rand(5, 1, 8, 8)).shape == (5, 3)
    assert d(torch.rand(5, 8, 8)).shape == (5, 3)
    with pytest.raises(DiscriminatorError, match="too small"):
        ExplanationDiscriminator(3, (3, 8))
    with pytest.raises(DiscriminatorError, match="at least 2"):
        ExplanationDiscriminator(1, (8, 8))
    with pytest.raises(DiscriminatorError, match="expected maps"):
        d(torch.rand(2, 1, 16, 16))


def test_recipe_builds_members_and_a_discriminator_on_the_cam_grid(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    assert recipe.classifier_names() == ["member_0", "member_1", "member_2"]
    assert recipe.discriminator.map_shape == (MODEL_SIZE // 4, MODEL_SIZE // 4)  # toy: stride-4 cam layer
    w = [m.block1[0].weight for m in recipe.classifiers()]
    assert not torch.equal(w[0], w[1])
    assert not torch.equal(w[1], w[2])
    assert set(recipe.optimizers) == {"main", DISCRIMINATOR}
    main_params = {id(p) for g in recipe.optimizers["main"].param_groups for p in g["params"]}
    assert not main_params & {id(p) for p in recipe.discriminator.parameters()}
    resized = _recipe(tmp_path, map_size=12)
    assert resized.discriminator.map_shape == (12, 12)
    maps, _ = resized.explanations(_batch().image, _batch().label, create_graph=False)
    assert maps.shape == (3, 8, 12, 12)


def test_normalise_maps_per_sample_with_epsilon() -> None:
    maps = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    out = normalise_maps(maps, 1e-8, "max")
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-7)
    assert torch.equal(out[1], torch.zeros(2, 2))
    out.sum().backward()
    assert torch.isfinite(maps.grad).all()  # an all-zero map does not produce NaN gradients
    assert torch.allclose(normalise_maps(maps.detach(), 1e-8, "sum")[0].sum(), torch.tensor(1.0))


def test_loss_is_equation_2_with_a_minus_sign(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, beta=0.7)
    batch = _batch()
    terms = recipe.loss_terms(batch)
    # Independent computation of Σ_i CE(m_i(x), y) and Σ_i CE(D(E_i(x)), i).
    cls = adv = 0.0
    for i, model in enumerate(recipe.classifiers()):
        maps, logits = differentiable_gradcam(
            model, batch.image, batch.label, create_graph=True, return_logits=True
        )
        maps = maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-8)
        cls = cls + F.cross_entropy(logits, batch.label)
        adv = adv + F.cross_entropy(recipe.discriminator(maps[:, None]), torch.full((8,), i))
    assert torch.allclose(terms["cls"], cls, atol=1e-6)
    assert torch.allclose(terms["adv"], adv, atol=1e-6)
    assert torch.allclose(terms["loss"], cls - 0.7 * adv, atol=1e-6)
    assert float(adv.detach()) > 0


def test_minimising_the_loss_raises_the_discriminators_cross_entropy(tmp_path: Path) -> None:
    """The sub-models maximise D's CE: a gradient step on ``cls − β·adv`` (β large) increases ``adv``."""
    recipe = _recipe(tmp_path, beta=50.0)
    batch = _batch()
    params = [p for m in recipe.classifiers() for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3)
    before = recipe.loss_terms(batch)
    opt.zero_grad()
    before["loss"].backward()
    opt.step()
    after = recipe.loss_terms(batch)
    assert float(after["adv"].detach()) > float(before["adv"].detach())


def test_adversarial_term_alone_reaches_every_sub_model(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    terms = recipe.loss_terms(_batch())
    terms["adv"].backward()  # the adversarial term only, no classification loss
    for model in recipe.classifiers():
        weights = [
            model.block1[0].weight,
            model.block2[0].weight,
            model.block3[0].weight,
            model.classifier.weight,
        ]
        # Every weight, down to the first conv layer and the head (through the Grad-CAM channel weights);
        # only the head's bias has no path to the maps.
        assert all(w.grad is not None and float(w.grad.abs().sum()) > 0 for w in weights)
    assert all(p.grad is None for p in recipe.discriminator.parameters())  # D is frozen for this loss


def test_discriminator_update_uses_detached_maps_and_leaves_sub_models_alone(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    batch = _batch()
    recipe.loss_terms(batch)["loss"].backward()
    members = {n: state_of(recipe.modules[n]) for n in recipe.classifier_names()}
    member_grads = [p.grad.clone() for m in recipe.classifiers() for p in m.parameters()]
    d_before = state_of(recipe.discriminator)
    maps, _ = recipe.explanations(batch.image, batch.label, create_graph=True)
    assert maps.requires_grad  # the graph is there: update_discriminator must cut it
    out = recipe.update_discriminator(maps)
    assert out["disc_loss"] > 0
    assert 0.0 <= out["disc_update_acc"] <= 1.0
    for name, state in members.items():
        assert_states_equal(state_of(recipe.modules[name]), state)
    after_grads = [p.grad for m in recipe.classifiers() for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after_grads, member_grads, strict=True))
    d_after = state_of(recipe.discriminator)
    assert any(not torch.equal(d_before[k], d_after[k]) for k in d_before)


def test_discriminator_learns_only_every_alpha_epochs(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path / "unused",
        recipe={"name": "explanation_ensemble", "n_members": 2, "alpha": 2},
        schedule={"epochs": 3, "batch_size": 8},
    )
    bundle = easy_bundle()
    fresh = ExplanationEnsembleRecipe(
        RecipeContext(cfg, DEFAULT_CLASS_NAMES, MODEL_SIZE, torch.device("cpu"))
    )
    fresh.setup()
    snapshots = [state_of(fresh.discriminator)]  # the seeded initial D (same seed → same D as the run's)

    def _grab(end: EpochEnd) -> None:
        snapshots.append(state_of(end.recipe.modules[DISCRIMINATOR]))

    result = train(cfg, tmp_path / "run", data=bundle, callbacks=[_grab])
    steps = len(bundle.train) // 8
    assert [r["disc_updates"] for r in result.history] == [steps, 0, steps]
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in itertools.pairwise(snapshots)]
    assert changed == [True, False, True]
    assert all("val_disc_acc" in r and "train_adv" in r and "train_disc_acc" in r for r in result.history)
    assert "train_disc_loss" in result.history[0]
    assert "train_disc_loss" not in result.history[1]
