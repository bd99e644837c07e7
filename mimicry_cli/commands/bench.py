"""``mimicry bench science --preset quick|smoke [--out DIR] [--registry DIR] [--seeds N] [--jobs N]``.

The science benchmark (docs/benchmarks.md): trains the six recipes on a
phantom with a planted, test-reversed shortcut and writes ``DIR/results.md`` and ``DIR/results.json``
(:func:`training.science.run_science` documents every column). The composition root adds :data:`app` as the
``bench`` sub-command group (``app.add_typer(bench.app, name="bench")``).

Exit codes: 0 success; 1 a training / data / registry failure; 2 usage error (unknown preset or recipe,
``--out`` already holds results).
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["app", "science_command"]

app = typer.Typer(help="Benchmarks.", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Benchmarks (a group even with one command, so ``bench science`` keeps its name)."""


@app.command("science")
def science_command(
    preset: str = typer.Option("quick", "--preset", help="quick (3 seeds, 128²) or smoke (1 seed, tiny)."),
    out: Path = typer.Option(Path("runs/science"), "--out", "-o", file_okay=False, help="Output directory."),
    registry: Path | None = typer.Option(
        None,
        "--registry",
        file_okay=False,
        help="Publish every run to this registry (default: OUT/registry); the table is scored from it.",
    ),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="Seeds per recipe (default: preset's)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Runs trained in parallel (one thread each)."),
    recipe: list[str] | None = typer.Option(None, "--recipe", help="Only these recipes (+ baseline)."),
) -> None:
    """Train the benchmark's recipes on the shortcut phantom and write the results table."""
    from training.science import ScienceError, render_markdown, run_science

    try:
        table = run_science(preset, out, registry=registry, seeds=seeds, jobs=jobs, recipes=recipe or None)
    except ScienceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except Exception as exc:  # training, data or registry failure: short message, exit 1
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(render_markdown(table))
    typer.echo(f"results: {out / 'results.md'} and {out / 'results.json'}")
