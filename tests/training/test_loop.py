"""The engine: bit-identical determinism on CPU, resume == straight run, early stopping keeps the best
weights, run-directory / config / checkpoint guards, metrics.jsonl, RNG and optimiser state round trips."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from tests.training import assert_states_equal, cache_dir, easy_bundle, make_config, phantom_root, state_of
from training.checkpoint import CheckpointError, load_optimizer_state, optimizer_state
from training.config import RecipeSettings, TrainConfig, parse_config
from training.data import Batch
from training.loop import (
    ConfigMismatchError,
    EarlyStopper,
    EpochEnd,
    NonFiniteLossError,
    RunDirError,
    read_metrics,
    train,
)
from training.recipes import Recipe, register_recipe
from training.seeding import capture_rng_state, restore_rng_state

EE = {"name": "explanation_ensemble", "n_members": 2}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_root(tmp_path_factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_dir(tmp_path_factory)


def _without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


class _Crash(RuntimeError):
    pass


def _crash_after(epoch: int) -> Callable[[EpochEnd], None]:
    def callback(end: EpochEnd) -> None:
        if end.epoch == epoch:
            raise _Crash(f"simulated crash after epoch {epoch}")

    return callback


def test_same_seed_gives_bit_identical_weights(phantom: Path, cache: Path, tmp_path: Path) -> None:
    cfg = make_config(phantom, cache, recipe=EE)
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    for member in ("member_0", "member_1"):
        assert (tmp_path / "a" / "weights" / f"{member}.safetensors").read_bytes() == (
            tmp_path / "b" / "weights" / f"{member}.safetensors"
        ).read_bytes()
    assert_states_equal(state_of(a.recipe.modules), state_of(b.recipe.modules))  # incl. the discriminator
    assert _without_time(a.history) == _without_time(b.history)
    c = train(make_config(phantom, cache, recipe=EE, seed=1), tmp_path / "c")
    assert not torch.equal(
        a.recipe.modules["member_0"].block1[0].weight, c.recipe.modules["member_0"].block1[0].weight
    )
    assert a.replicate_group == c.replicate_group  # replicates: same recipe, other seed
    assert a.fingerprint == c.fingerprint
    assert len(a.fingerprint) == 64


def test_resume_after_a_crash_equals_a_straight_run(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path / "unused", recipe=EE, schedule={"epochs": 4},
        early_stopping={"enabled": True, "patience": 10, "metric": "val_loss", "mode": "min"},
    )  # fmt: skip
    straight = train(cfg, tmp_path / "straight", data=easy_bundle())
    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        train(cfg, run, data=easy_bundle(), callbacks=[_crash_after(1)])
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as fh:  # a line written after the checkpoint
        fh.write(json.dumps({"epoch": 2, "train_loss": 123.0}) + "\n")
    resumed = train(cfg, run, resume=True, data=easy_bundle())
    assert_states_equal(state_of(resumed.recipe.modules), state_of(straight.recipe.modules))
    for name, opt in straight.recipe.optimizers.items():
        a, _ = optimizer_state(opt, name)
        b, _ = optimizer_state(resumed.recipe.optimizers[name], name)
        assert_states_equal(a, b)
    assert _without_time(read_metrics(run)) == _without_time(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.test_metrics == straight.test_metrics


def test_resume_can_extend_the_number_of_epochs(tmp_path: Path) -> None:
    four = make_config(tmp_path / "unused", schedule={"epochs": 4})
    two = make_config(tmp_path / "unused", schedule={"epochs": 2})
    straight = train(four, tmp_path / "straight", data=easy_bundle())
    train(two, tmp_path / "run", data=easy_bundle())
    resumed = train(four, tmp_path / "run", resume=True, data=easy_bundle())
    assert_states_equal(state_of(resumed.recipe.modules), state_of(straight.recipe.modules))
    assert len(resumed.history) == 4
    saved = parse_config(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")))
    assert saved == four


def test_resume_refuses_another_config_and_a_fresh_run_refuses_an_old_dir(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", schedule={"epochs": 1})
    train(cfg, tmp_path / "run", data=easy_bundle())
    with pytest.raises(RunDirError, match="already holds a run"):
        train(cfg, tmp_path / "run", data=easy_bundle())
    other = make_config(tmp_path / "unused", schedule={"epochs": 1}, optimizer={"lr": 0.5})
    with pytest.raises(ConfigMismatchError, match="optimizer"):
        train(other, tmp_path / "run", resume=True, data=easy_bundle())


def test_checkpoint_is_safetensors_plus_json_and_verified(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", recipe=EE, schedule={"epochs": 2})
    run = tmp_path / "run"
    with pytest.raises(_Crash):
        train(cfg, run, data=easy_bundle(), callbacks=[_crash_after(0)])
    ckpt = run / "checkpoint"
    index = json.loads((ckpt / "checkpoint.json").read_text(encoding="utf-8"))
    assert index["epoch"] == 1
    assert index["tensors"] == "state-e0001.safetensors"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.json", "state-e0001.safetensors"]
    tensors = load_file(ckpt / index["tensors"])
    assert any(k.startswith("model.discriminator.") for k in tensors)
    assert any(k.startswith("optim.discriminator.state.") for k in tensors)
    assert "rng.torch_cpu" in tensors
    assert set(index["scalars"]["rng"]) == {"python", "numpy"}
    data = bytearray((ckpt / index["tensors"]).read_bytes())
    data[-1] ^= 0xFF
    (ckpt / index["tensors"]).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        train(cfg, run, resume=True, data=easy_bundle())


def test_early_stopping_stops_and_keeps_the_best_weights(tmp_path: Path) -> None:
    # Monitoring val_loss in "max" mode makes the best epoch an early one on an improving run.
    es = {"enabled": True, "metric": "val_loss", "mode": "max", "patience": 1, "restore_best": True}
    cfg = make_config(tmp_path / "unused", schedule={"epochs": 6}, early_stopping=es)
    snapshots: dict[int, dict[str, Tensor]] = {}

    def _grab(end: EpochEnd) -> None:
        snapshots[end.epoch] = state_of(end.recipe.modules)

    result = train(cfg, tmp_path / "run", data=easy_bundle(), callbacks=[_grab])
    losses = [r["val_loss"] for r in result.history]
    best = int(np.argmax(losses))
    assert result.stopped_early
    assert result.restored_best
    assert result.best_epoch == best
    assert len(result.history) == best + 1 + 1 < 6
    assert result.best_metric == pytest.approx(losses[best])
    assert_states_equal(state_of(result.recipe.modules), snapshots[best])
    saved = load_file(tmp_path / "run" / "weights" / "model.safetensors")
    assert_states_equal(saved, state_of(result.recipe.modules["model"]))
    summary = json.loads((tmp_path / "run" / "result.json").read_text(encoding="utf-8"))
    assert (summary["best_epoch"], summary["stopped_early"], summary["epochs_completed"]) == (
        best,
        True,
        best + 2,
    )

    keep_last = make_config(
        tmp_path / "unused", schedule={"epochs": 6}, early_stopping={**es, "restore_best": False}
    )
    last = train(keep_last, tmp_path / "run-last", data=easy_bundle(), callbacks=[_grab])
    assert_states_equal(state_of(last.recipe.modules), snapshots[len(last.history) - 1])


def test_early_stopper() -> None:
    stopper = EarlyStopper("max", patience=2, min_delta=0.005)
    flags = [stopper.update(v, e) for e, v in enumerate([0.5, 0.6, 0.603, 0.61, math.nan])]
    assert flags == [True, True, False, True, False]
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs, stopper.should_stop) == (0.61, 3, 1, False)
    stopper.update(0.2, 5)
    assert stopper.should_stop
    low = EarlyStopper("min", patience=1)
    assert [low.update(v, e) for e, v in enumerate([1.0, 0.5, 0.7])] == [True, True, False]
    again = EarlyStopper("min", patience=1)
    again.load_state_dict(low.state_dict())
    assert again.state_dict() == {"best": 0.5, "best_epoch": 1, "bad_epochs": 1}


def test_metrics_jsonl_and_run_files(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", schedule={"epochs": 2})
    result = train(cfg, tmp_path / "run", data=easy_bundle())
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0, 1]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_auroc", "lr", "best_epoch", "seconds"):
        assert all(key in r for r in records)
    assert records == result.history
    summary = json.loads((tmp_path / "run" / "result.json").read_text(encoding="utf-8"))
    assert summary["test_metrics"] == result.test_metrics
    assert set(result.test_metrics) == {"test_loss", "test_accuracy", "test_auroc"}
    assert summary["split_sizes"] == {"train": 24, "val": 12, "test": 12}
    held = load_file(tmp_path / "run" / "held_batch.safetensors")["image"]
    assert held.shape == (8, 1, 32, 32)
    saved = parse_config(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")))
    assert saved == cfg


class _NanSettings(RecipeSettings):
    name: Literal["test_nan_loss"] = "test_nan_loss"


@register_recipe("test_nan_loss", _NanSettings)
class _NanRecipe(Recipe):
    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        return {"model": self.build_classifier(0)}

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        assert isinstance(batch, Batch)
        return {"loss": self.modules["model"](batch.image).sum() * math.nan}


def test_a_non_finite_loss_stops_training(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", recipe={"name": "test_nan_loss"})
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        train(cfg, tmp_path / "run", data=easy_bundle())


def test_rng_state_round_trip() -> None:
    tensors, scalars = capture_rng_state()
    json.dumps(scalars)  # JSON-ready
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    restore_rng_state(tensors, scalars)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first  # noqa: NPY002


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_optimizer_state_round_trip(kind: str) -> None:
    model = nn.Linear(3, 2)
    make = (
        (lambda p: torch.optim.Adam(p, lr=0.1))
        if kind == "adam"
        else (lambda p: torch.optim.SGD(p, 0.1, 0.9))
    )
    opt = make(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    tensors, scalars = optimizer_state(opt, "optim.main")
    json.dumps(scalars)
    fresh = make(model.parameters())
    load_optimizer_state(fresh, tensors, scalars, "optim.main")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][key]))


class _NoisySettings(RecipeSettings):
    name: Literal["test_noisy_inputs"] = "test_noisy_inputs"


@register_recipe("test_noisy_inputs", _NoisySettings)
class _NoisyRecipe(Recipe):
    """Draws from the *global* torch RNG every step (like dropout / drop-connect) — a resumed run matches a
    straight one only if the checkpoint restored the global RNG state."""

    def build(self, config: TrainConfig) -> dict[str, nn.Module]:
        return {"model": self.build_classifier(0)}

    def training_step(self, batch: Batch | tuple[Batch, ...]) -> dict[str, Tensor]:
        assert isinstance(batch, Batch)
        noisy = batch.image + 0.5 * torch.randn_like(batch.image)
        return {"loss": self.classification_loss(self.modules["model"](noisy), batch.label)}


def test_resume_restores_the_global_rng(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "unused", recipe={"name": "test_noisy_inputs"}, schedule={"epochs": 3})
    straight = train(cfg, tmp_path / "straight", data=easy_bundle())
    with pytest.raises(_Crash):
        train(cfg, tmp_path / "run", data=easy_bundle(), callbacks=[_crash_after(0)])
    torch.rand(100)  # a process that has drawn other numbers meanwhile
    resumed = train(cfg, tmp_path / "run", resume=True, data=easy_bundle())
    assert_states_equal(state_of(resumed.recipe.modules), state_of(straight.recipe.modules))
