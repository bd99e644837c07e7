"""CLI sub-command groups (Typer apps) attached by :mod:`mimicry.cli`."""
