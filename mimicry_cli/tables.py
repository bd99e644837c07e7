"""Plain-text tables of the CLI (``registry list``, ``stack status``), rendered by rich."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["print_table"]


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``header`` to stdout: no box, no colour, cells never wrapped or cut (one line per
    row, columns separated by spaces, so the output greps and splits)."""
    table = Table(box=None, show_edge=False, pad_edge=False, header_style=None)
    for name in header:
        table.add_column(name, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(no_color=True, highlight=False, width=10_000, soft_wrap=True).print(table)
