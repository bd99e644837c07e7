"""``mimicry export RUN_DIR --registry DIR --name NAME``: publish a finished training run into a registry.

The library call is :func:`training.publish.publish_run` (ONNX export with parity checks, safetensors twin,
sealed card with the training config, seed, replicate group, dataset fingerprint, metrics, ``reference_stats``
and ``uncertainty``). Use it for runs trained without ``mimicry train --publish`` (e.g. under ``torchrun``).

The composition root registers :func:`export_command` (``app.command("export")(export_command)``).

Exit codes: 0 success; 1 the run is unfinished / its files do not verify, or the registry refused it;
2 usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

__all__ = ["export_command"]


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def export_command(
    run_dir: Path = typer.Argument(..., file_okay=False, help="Run directory written by `mimicry train`."),
    registry: Path = typer.Option(..., "--registry", "-r", file_okay=False, help="Registry directory."),
    name: str = typer.Option(..., "--name", "-n", help="Model name in the registry."),
    exporter: str = typer.Option("dynamo", "--exporter", help="ONNX exporter: dynamo or torchscript."),
    ensemble: bool | None = typer.Option(
        None,
        "--ensemble/--members",
        help="Multi-member runs: one 'ensemble' model, or one model per member (default: ensemble when "
        "the architecture is registered).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the published references as JSON."),
) -> None:
    """Publish a finished training run (weights, ONNX, card) into a model registry."""
    from mimicry.registry import RegistryError
    from training.publish import publish_run

    if exporter not in ("dynamo", "torchscript"):
        _fail("--exporter must be 'dynamo' or 'torchscript'", 2)
    if not run_dir.is_dir():
        _fail(f"run directory {run_dir} does not exist", 1)
    try:
        cards = publish_run(
            run_dir,
            registry,
            name,
            exporter=exporter,  # type: ignore[arg-type]
            ensemble_architecture=ensemble,
        )
    except RegistryError as exc:  # RunNotFinishedError and PublishError are RegistryErrors
        _fail(f"export failed: {exc}", 1)
    refs = [card.ref for card in cards]
    if as_json:
        typer.echo(json.dumps({"run_dir": str(run_dir), "published": refs}, indent=2))
        return
    for ref in refs:
        typer.echo(f"published: {ref}")
