"""Typed run config: unknown keys and bad values are refused; shipped configs validate; replicate key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, dump_config, load_config, parse_config
from training.recipes import list_recipes
from training.recipes.explanation_ensemble import ExplanationEnsembleSettings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RECIPES = ("baseline", "ensemble", "explanation_ensemble", "unet_egd")


def _minimal(**extra: object) -> dict:
    return {"data": {"root": "data/x"}, **extra}


def test_defaults_are_the_papers_values() -> None:
    cfg = parse_config(_minimal(recipe={"name": "explanation_ensemble"}))
    assert isinstance(cfg.recipe, ExplanationEnsembleSettings)
    assert (cfg.recipe.beta, cfg.recipe.alpha, cfg.recipe.n_members) == (0.2, 2, 10)
    assert cfg.recipe.name == "explanation_ensemble"
    assert cfg.deterministic == "strict"
    assert parse_config(_minimal()).recipe.name == "baseline"


def test_every_builtin_recipe_is_registered() -> None:
    assert set(RECIPES) <= set(list_recipes())


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (_minimal(learning_rate=0.1), "learning_rate"),
        ({"data": {"root": "x", "rot": 1}}, "data.rot"),
        (_minimal(optimizer={"name": "adam", "lr": 0.1, "momentun": 0.9}), "optimizer.momentun"),
        (_minimal(recipe={"name": "baseline", "beta": 0.2}), "recipe.beta"),
        (_minimal(recipe={"name": "explanation_ensemble", "gamma": 0.5}), "recipe.gamma"),
        (_minimal(data={"root": "x", "phantom": {"n": 4, "sizes": 64}}), "data.phantom.sizes"),
    ],
)
def test_unknown_keys_are_refused(data: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where) + ": Extra inputs are not permitted"):
        parse_config(data)


@pytest.mark.parametrize("beta", [-0.1, float("nan"), float("inf"), "strong"])
def test_bad_beta_is_refused(beta: object) -> None:
    with pytest.raises(ConfigError, match=r"recipe\.beta"):
        parse_config(_minimal(recipe={"name": "explanation_ensemble", "beta": beta}))


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ({"name": "explanation_ensemble", "alpha": 0}, "recipe.alpha"),
        ({"name": "explanation_ensemble", "n_members": 1}, "recipe.n_members"),
        ({"name": "explanation_ensemble", "disc_kernel_size": 4}, "recipe.disc_kernel_size"),
        ({"name": "explanation_ensemble", "map_eps": 0.0}, "recipe.map_eps"),
        ({"name": "ensemble", "n_members": 1}, "recipe.n_members"),
        ({"name": "unet_egd", "gamma": 1.5}, "recipe.gamma"),
        ({"name": "unet_egd", "heatmap_loss": "l2"}, "recipe.heatmap_loss"),
    ],
)
def test_bad_recipe_values_are_refused(recipe: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        parse_config(_minimal(recipe=recipe))


def test_unknown_recipe_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'actdif'.*baseline.*explanation_ensemble"):
        parse_config(_minimal(recipe={"name": "actdif"}))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_minimal(loss={"class_weights": [1.0, 2.0]}), "<root>"),
        (_minimal(loss={"class_weights": [1.0, -2.0, 1.0]}), "loss.class_weights"),
        ({"data": {"root": "x", "val_fraction": 1.0}}, "data.val_fraction"),
        ({"data": {"root": "x", "masks_available": 1.5}}, "data.masks_available"),
        ({"data": {"root": "x", "roi_anatomy": ["heart"]}}, "data.roi_anatomy"),
        ({"data": {"root": "x", "phantom": {"shortcut_corr": 2.0}}}, "data.phantom"),
        (_minimal(device="tpu"), "device"),
        (_minimal(schedule={"epochs": 0}), "schedule.epochs"),
        (_minimal(early_stopping={"metric": "val_f1"}), "early_stopping.metric"),
        ({}, "data"),
    ],
)
def test_bad_values_are_refused(data: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        parse_config(data)


def test_yaml_and_json_round_trip(tmp_path: Path) -> None:
    cfg = parse_config(_minimal(seed=7, recipe={"name": "explanation_ensemble", "beta": 0.5, "n_members": 3}))
    (tmp_path / "c.yaml").write_text(dump_config(cfg), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_json_dict()), encoding="utf-8")
    for name in ("c.yaml", "c.json"):
        again = load_config(tmp_path / name)
        assert again == cfg
        assert again.recipe.beta == 0.5


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_replicate_key_ignores_the_seed_and_location_only() -> None:
    a = parse_config({"seed": 0, "data": {"root": "a"}})
    b = parse_config(
        {"seed": 5, "data": {"root": "b", "cache_dir": "c"}, "progress": False, "device": "auto"}
    )
    c = parse_config({"seed": 0, "data": {"root": "a"}, "optimizer": {"lr": 0.01}})
    d = parse_config({"seed": 0, "data": {"root": "a", "val_fraction": 0.3}})
    assert a.replicate_key() == b.replicate_key()
    assert a.replicate_key() != c.replicate_key()
    assert a.replicate_key() != d.replicate_key()


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_shipped_configs_validate(recipe: str, scale: str) -> None:
    cfg = load_config(CONFIGS / f"{recipe}-{scale}.yaml")
    assert isinstance(cfg, TrainConfig)
    assert cfg.recipe.name == recipe
    if scale == "tiny":
        assert cfg.device == "cpu"
        assert cfg.data.phantom is not None
        assert cfg.schedule.epochs <= 3


def test_paper_configs_hold_the_papers_settings() -> None:
    """Watson et al. (WACV 2023) §4: baselines Adam lr 3e-3 (UNet batch 32, ensemble batch 4, 10 members);
    explanation ensemble Adam lr 1e-5, batch 4, S = 10, β = 0.2, α = 2."""
    base = load_config(CONFIGS / "baseline-paper.yaml")
    assert (base.model.arch, base.optimizer.name, base.optimizer.lr, base.schedule.batch_size) == (
        "unet", "adam", 3e-3, 32,
    )  # fmt: skip
    ens = load_config(CONFIGS / "ensemble-paper.yaml")
    assert (ens.recipe.n_members, ens.optimizer.lr, ens.schedule.batch_size) == (10, 3e-3, 4)
    ee = load_config(CONFIGS / "explanation_ensemble-paper.yaml")
    assert (ee.model.arch, ee.optimizer.lr, ee.schedule.batch_size) == ("unet", 1e-5, 4)
    assert (ee.recipe.n_members, ee.recipe.beta, ee.recipe.alpha) == (10, 0.2, 2)
    egd = load_config(CONFIGS / "unet_egd-paper.yaml")
    assert (egd.model.arch, egd.optimizer.lr, egd.schedule.batch_size) == ("unet_egd", 3e-3, 32)
    for cfg in (base, ens, ee, egd):
        assert cfg.data.test_fraction == 0.2  # the paper's 80/20 train-test split
