"""``mimicry data …``: phantom generation, dataset summaries, contact sheets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Datasets: phantom generator, summaries, contact sheets.", no_args_is_help=True)
