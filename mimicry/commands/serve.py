"""``mimicry serve``: run the BentoML service (``bentoml serve serving.service:MimicryService``).

The options are exported as ``MIMICRY_SERVE_*`` environment variables (see :mod:`serving.settings`) so that
every BentoML worker process builds the same settings; the API token is read from ``MIMICRY_SERVE_API_TOKEN``
only (never a command-line argument, which would show in ``ps``). The lead registers :func:`serve_command`
in ``mimicry/cli.py`` (``app.command("serve")(serve_command)``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer

from serving.launch import build_serve_invocation

__all__ = ["build_serve_invocation", "serve_command"]


def serve_command(
    registry: Path = typer.Option(Path("registry"), "--registry", help="Registry root."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="NAME, NAME:VERSION or NAME@ALIAS (repeatable)."
    ),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime or triton."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (default: loopback only)."),
    port: int = typer.Option(3000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes."),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file (MIMICRY_SERVE_CONFIG)."),
) -> None:
    """Serve registry models over HTTP (predict, explain, STOW-RS, metrics)."""
    argv, extra = build_serve_invocation(
        host=host,
        port=port,
        workers=workers,
        registry=registry,
        models=model,
        backend=backend,
        device=device,
        config=config,
    )
    typer.echo(f"serving on http://{host}:{port}  (try: curl -s http://{host}:{port}/readyz)")
    proc = subprocess.run(argv, env={**os.environ, **extra}, check=False)
    raise typer.Exit(proc.returncode)
