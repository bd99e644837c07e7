"""``mimicry train`` end to end (CliRunner): phantom generation, the run directory, ``--publish`` into a
registry with the card fields filled, ``Registry.load_twin`` back; ensemble publication; exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from mimicry.models.zoo import list_architectures
from mimicry.registry import PublishError, Registry
from mimicry_cli.commands.train import train_command
from tests.training import easy_bundle, make_config
from training.data import dataset_fingerprint
from training.loop import train
from training.publish import ENSEMBLE_ARCHITECTURE, RunNotFinishedError, publish_run
from training.recipes import ensure_architectures


def _app() -> typer.Typer:
    """The composition root's wiring: ``app.command("train")(train_command)`` next to a callback."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """mimicry (test root)."""

    app.command("train")(train_command)
    return app


def _write_config(path: Path, root: Path, **extra: object) -> Path:
    data = {
        "seed": 3,
        "num_threads": 1,
        "progress": False,
        "data": {
            "root": str(root),
            "phantom": {"n": 24, "size": 32, "seed": 1},
            "cache_dir": str(path.parent / "cache"),
        },
        "preprocessing": {"size": 32},
        "model": {"arch": "toy", "arch_kwargs": {"width": 8}},
        "schedule": {"epochs": 1, "batch_size": 8},
        "recipe": {"name": "baseline"},
        **extra,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_train_and_publish_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "phantom"  # does not exist: generated from data.phantom
    config = _write_config(tmp_path / "run.yaml", root)
    run, registry = tmp_path / "run", tmp_path / "registry"
    args = [
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        "--publish",
        str(registry),
        "--name",
        "cxr-base",
    ]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "published: cxr-base:1" in result.output
    assert "test_accuracy" in result.output
    assert (root / "phantom.json").is_file()
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "result.json",
        "weights/model.safetensors",
        "checkpoint/checkpoint.json",
    ):
        assert (run / name).is_file(), name

    reg = Registry(registry)
    card = reg.card("cxr-base:1")
    summary = json.loads((run / "result.json").read_text(encoding="utf-8"))
    assert card.seed == 3
    assert card.dataset_fingerprint == dataset_fingerprint(root) == summary["dataset_fingerprint"]
    assert card.replicate_group == summary["replicate_group"]
    assert card.replicate_group.startswith("baseline-toy-" + card.dataset_fingerprint[:12])
    assert card.training_config == yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert card.training_config["seed"] == 3
    for key in ("test_loss", "test_accuracy", "test_auroc", "val_accuracy"):
        assert card.metrics[key] == pytest.approx(
            summary["test_metrics" if key.startswith("test") else "val_metrics"][key]
        )
    assert (card.architecture, card.arch_kwargs) == ("toy", {"width": 8})
    assert card.preprocessing.size == 32
    assert card.extra["recipe"] == "baseline"

    twin = reg.load_twin("cxr-base:1")
    weights = load_file(run / "weights" / "model.safetensors")
    assert all(torch.equal(twin.state_dict()[k], v) for k, v in weights.items())
    held = load_file(run / "held_batch.safetensors")["image"]
    from mimicry.models.zoo import build_model

    model = build_model("toy", width=8).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        assert torch.equal(twin(held), model(held))

    again = CliRunner().invoke(_app(), ["train", "--config", str(config), "--out", str(run)])
    assert again.exit_code == 1
    assert "already holds a run" in again.output
    resumed = CliRunner().invoke(
        _app(), ["train", "--config", str(config), "--out", str(run), "--resume", "--json"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["epochs_completed"] == 1


def test_usage_and_config_errors_exit_2(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "run.yaml", tmp_path / "phantom", learning_rate=0.1)
    bad = CliRunner().invoke(_app(), ["train", "--config", str(config), "--out", str(tmp_path / "run")])
    assert bad.exit_code == 2
    assert "learning_rate: Extra inputs are not permitted" in bad.output
    alone = CliRunner().invoke(_app(), ["train", "--config", str(config), "--publish", str(tmp_path / "reg")])
    assert alone.exit_code == 2
    assert "--publish and --name go together" in alone.output
    missing = CliRunner().invoke(_app(), ["train", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "not found" in missing.output
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ensemble") / "run"
    cfg = make_config(
        run.parent / "unused", recipe={"name": "ensemble", "n_members": 2}, schedule={"epochs": 1}
    )
    train(cfg, run, data=easy_bundle())
    return run


def test_ensemble_members_are_published_with_one_replicate_group(ensemble_run: Path, tmp_path: Path) -> None:
    cards = publish_run(
        ensemble_run, tmp_path / "reg", "cxr-ens", exporter="torchscript", ensemble_architecture=False
    )
    assert [c.ref for c in cards] == ["cxr-ens-member0:1", "cxr-ens-member1:1"]
    summary = json.loads((ensemble_run / "result.json").read_text(encoding="utf-8"))
    assert {c.replicate_group for c in cards} == {summary["replicate_group"]}
    assert [c.extra["ensemble_member"] for c in cards] == [0, 1]
    reg = Registry(tmp_path / "reg")
    for i, card in enumerate(cards):
        weights = load_file(ensemble_run / "weights" / f"member_{i}.safetensors")
        twin = reg.load_twin(card.ref)
        assert all(torch.equal(twin.state_dict()[k], v) for k, v in weights.items())
    lines = (ensemble_run / "published.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["ref"] for line in lines][-2:] == ["cxr-ens-member0:1", "cxr-ens-member1:1"]


def test_ensemble_is_one_model_when_the_architecture_is_registered(
    ensemble_run: Path, tmp_path: Path
) -> None:
    ensure_architectures(ENSEMBLE_ARCHITECTURE)  # imports mimicry.models.ensemble when it exists
    if ENSEMBLE_ARCHITECTURE not in list_architectures():
        # mimicry.models.ensemble has not landed: asking for it must fail loudly, not fall back silently.
        with pytest.raises(PublishError, match="'ensemble' architecture is not registered"):
            publish_run(ensemble_run, tmp_path / "reg", "cxr-ens", ensemble_architecture=True)
        assert not (tmp_path / "reg" / "cxr-ens").exists()
        return
    (card,) = publish_run(ensemble_run, tmp_path / "reg", "cxr-ens", exporter="torchscript")
    assert card.architecture == ENSEMBLE_ARCHITECTURE
    assert card.arch_kwargs["n_members"] == 2
    twin = Registry(tmp_path / "reg").load_twin(card.ref)
    held = load_file(ensemble_run / "held_batch.safetensors")["image"]
    from mimicry.models.zoo import build_model

    probs = []
    for i in range(2):
        member = build_model("toy", width=8).eval()
        member.load_state_dict(load_file(ensemble_run / "weights" / f"member_{i}.safetensors"))
        probs.append(torch.softmax(member(held), dim=1))
    with torch.no_grad():
        assert torch.allclose(torch.softmax(twin(held), dim=1), torch.stack(probs).mean(0), atol=1e-6)


def test_publishing_an_unfinished_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunNotFinishedError, match="did not finish"):
        publish_run(tmp_path, tmp_path / "reg", "x")


@pytest.mark.parametrize("recipe", ["baseline", "ensemble", "explanation_ensemble", "unet_egd"])
def test_shipped_tiny_configs_run_end_to_end(
    recipe: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``configs/<recipe>-tiny.yaml`` as shipped (tiny UNets on the 40-case 64-px phantom), with only the data
    location moved to the session's phantom (same generator settings, so ``data.phantom`` still matches)."""
    from tests.training import cache_dir, phantom_root
    from training.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{recipe}-tiny.yaml")
    data = cfg.data.model_copy(
        update={"root": phantom_root(tmp_path_factory), "cache_dir": cache_dir(tmp_path_factory)}
    )
    result = train(cfg.model_copy(update={"data": data}), tmp_path / "run")
    assert len(result.history) == cfg.schedule.epochs
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert (tmp_path / "run" / "result.json").is_file()
