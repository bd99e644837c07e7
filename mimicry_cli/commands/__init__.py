"""CLI sub-command groups (Typer apps) attached by :mod:`mimicry_cli.main`."""
