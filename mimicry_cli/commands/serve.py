"""``mimicry serve``: become the BentoML server (``bentoml serve serving.service:MimicryService``).

The options are exported as ``MIMICRY_SERVE_*`` environment variables (see :mod:`serving.settings`) so that
every BentoML worker process builds the same settings; the API token is read from ``MIMICRY_SERVE_API_TOKEN``
only (never a command-line argument, which would show in ``ps``).

The process **replaces itself** with the server (:func:`os.execvpe` of the invocation built by
:func:`serving.launch.build_serve_invocation`): no wrapper is left holding memory, and the PID that a
supervisor (systemd, a container runtime, a shell) signals is the server's own, so SIGTERM stops it.

Before that, every configured model's artifacts are verified against their cards
(:func:`serving.health.preflight_env`, with exactly the settings the server will build): a tampered or
incomplete registry ends the command with exit code 2 and the error, instead of a server whose workers fail
their start-up over and over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

__all__ = ["serve_command"]


def serve_command(
    registry: Path = typer.Option(Path("registry"), "--registry", help="Registry root."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="NAME, NAME:VERSION or NAME@ALIAS (repeatable)."
    ),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime or triton."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (default: loopback only)."),
    port: int = typer.Option(3000, "--port", help="TCP port."),
    workers: int = typer.Option(
        2, "--workers", min=1, help="Worker processes (2: one crashing worker leaves the service answering)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file (MIMICRY_SERVE_CONFIG)."),
) -> None:
    """Serve registry models over HTTP (predict, explain, STOW-RS, metrics)."""
    from serving.launch import build_serve_invocation

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
    from mimicry.registry import RegistryError
    from serving.backends.protocol import BackendError
    from serving.health import preflight_env

    try:
        preflight_env(extra)
    except (RegistryError, BackendError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving on http://{host}:{port}  (try: curl -s http://{host}:{port}/readyz)")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, {**os.environ, **extra})
    except OSError as exc:  # only reached when the exec itself failed
        typer.echo(f"error: cannot start {argv[0]} ({exc.strerror or exc})", err=True)
        raise typer.Exit(1) from None
