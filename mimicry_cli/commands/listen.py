"""``mimicry listen``: the DICOM (DIMSE) listener, a Storage SCP for CR/DX with C-ECHO (:mod:`serving.dimse`).

Every received image runs through the serving pipeline in this process, and its AI results (SR and
Segmentation, docs/serving.md "PACS integration") go to the configured push destination. Settings are the
service's (``MIMICRY_SERVE_*``, ``MIMICRY_SERVE_DIMSE__*``, ``MIMICRY_SERVE_PUSH__*`` or ``--config``); the
options below override the listener's address and the registry. The registry's artifacts are verified first:
a tampered registry ends the command with exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

__all__ = ["listen_command"]


def listen_command(
    registry: Path | None = typer.Option(None, "--registry", help="Registry root (MIMICRY_SERVE_REGISTRY)."),
    model: list[str] = typer.Option([], "--model", "-m", help="NAME, NAME:VERSION or NAME@ALIAS."),
    host: str | None = typer.Option(None, "--host", help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="DICOM port (default 11112)."),
    ae_title: str | None = typer.Option(None, "--ae-title", help="Our AE title (default MIMICRY)."),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file (MIMICRY_SERVE_CONFIG)."),
) -> None:
    """Receive CR/DX images over DICOM (C-STORE), predict, and push the AI results to the PACS."""
    env = {"MIMICRY_SERVE_DEVICE": os.environ.get("MIMICRY_SERVE_DEVICE", "auto")}
    if registry is not None:
        env["MIMICRY_SERVE_REGISTRY"] = str(registry)
    if model:
        env["MIMICRY_SERVE_MODELS"] = ",".join(model)
    if host is not None:
        env["MIMICRY_SERVE_DIMSE__HOST"] = host
    if port is not None:
        env["MIMICRY_SERVE_DIMSE__PORT"] = str(port)
    if ae_title is not None:
        env["MIMICRY_SERVE_DIMSE__AE_TITLE"] = ae_title
    if config is not None:
        env["MIMICRY_SERVE_CONFIG"] = str(config)
    os.environ.update(env)

    from mimicry.registry import RegistryError
    from serving.backends.protocol import BackendError
    from serving.dimse import serve_dimse
    from serving.health import preflight
    from serving.settings import load_serve_settings

    try:
        settings = load_serve_settings()
        preflight(settings)
    except (RegistryError, BackendError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None
    d = settings.dimse
    typer.echo(f"DICOM listener {d.ae_title} on {d.host}:{d.port}")
    typer.echo(f"(try: echoscu -aec {d.ae_title} {d.host} {d.port})")
    serve_dimse(settings, block=True)
