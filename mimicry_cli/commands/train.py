"""``mimicry train --config FILE [--out RUN_DIR] [--resume] [--publish REGISTRY --name NAME]``.

Trains one run of :mod:`training` (the recipe named in the config) into ``RUN_DIR`` (default
``runs/<config file stem>``), prints its test metrics, and with ``--publish`` exports the trained model into
the registry (:func:`training.publish.publish_run`: ONNX + safetensors twin + card with the training config,
seed, replicate group, dataset fingerprint and test metrics).

The composition root registers :func:`train_command` as a top-level command
(``app.command("train")(train_command)``); :data:`app` is a stand-alone Typer app with the same command.

Exit codes: 0 success; 1 training, data, checkpoint or registry failure; 2 usage or config error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

__all__ = ["app", "train_command"]


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def train_command(
    config: Path = typer.Option(
        ..., "--config", "-c", dir_okay=False, help="Training config (YAML or JSON, see training/config.py)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", file_okay=False, help="Run directory (default: runs/<config stem>)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    publish: Path | None = typer.Option(
        None, "--publish", file_okay=False, help="Registry directory to publish the trained model into."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name in the registry (with --publish)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="ONNX exporter: dynamo or torchscript."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Train a model from a config; optionally publish it into a registry."""
    from mimicry.registry import RegistryError
    from training.checkpoint import CheckpointError
    from training.config import ConfigError, load_config
    from training.data import DataError
    from training.loop import TrainingError, train
    from training.publish import publish_run
    from training.recipes import RecipeError

    if (publish is None) != (name is None):
        _fail("--publish and --name go together", 2)
    if exporter not in ("dynamo", "torchscript"):
        _fail("--exporter must be 'dynamo' or 'torchscript'", 2)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc), 2)
    run_dir = out if out is not None else Path("runs") / config.stem
    try:
        result = train(cfg, run_dir, resume=resume)
    except (TrainingError, DataError, RecipeError, CheckpointError) as exc:
        _fail(str(exc), 1)
    refs: list[str] = []
    if publish is not None and name is not None:
        try:
            cards = publish_run(run_dir, publish, name, exporter=exporter)  # type: ignore[arg-type]
        except RegistryError as exc:
            _fail(f"publishing failed: {exc}", 1)
        refs = [card.ref for card in cards]
    summary = {
        "run_dir": str(run_dir),
        "recipe": cfg.recipe.name,
        "epochs_completed": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "test_metrics": result.test_metrics,
        "replicate_group": result.replicate_group,
        "published": refs,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"run: {run_dir} ({cfg.recipe.name}, {len(result.history)} epoch(s))")
    for key, value in result.test_metrics.items():
        typer.echo(f"  {key}: {'n/a' if value is None else f'{value:.4f}'}")
    for ref in refs:
        typer.echo(f"published: {ref}")


app = typer.Typer(help="Train models (training/ recipes).", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """Train models (``train`` is the command, as under ``mimicry``)."""


app.command("train")(train_command)
