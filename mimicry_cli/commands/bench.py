"""``mimicry bench science --preset quick|smoke [--out DIR] [--registry DIR] [--seeds N] [--jobs N]``.

The science benchmark (docs/benchmarks.md): trains the six recipes on a
phantom with a planted, test-reversed shortcut and writes ``DIR/results.md`` and ``DIR/results.json``
(:func:`training.science.run_science` documents every column). The composition root adds :data:`app` as the
``bench`` sub-command group (``app.add_typer(bench.app, name="bench")``).

``mimicry bench arun2021`` / ``mimicry bench khakzar2021 --preset quick|smoke|gpu [--out DIR]``: the seed
papers' tables on a shortcut-free phantom (:mod:`training.papers` trains and publishes the models,
:mod:`audit.papers` audits them and reads the table back from the audit's history).

Exit codes: 0 success; 1 a training / data / registry failure; 2 usage error (unknown preset or recipe,
``--out`` already holds results).
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["app", "arun2021_command", "khakzar2021_command", "science_command"]

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
    from audit.science import SCORED_CHECKS, paired_pvalue, score_explanations
    from training.science import ScienceError, render_markdown, run_science

    try:
        table = run_science(
            preset,
            out,
            registry=registry,
            seeds=seeds,
            jobs=jobs,
            recipes=recipe or None,
            score_explanations=score_explanations,
            paired_pvalue=paired_pvalue,
            scored_checks=SCORED_CHECKS,
        )
    except ScienceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except Exception as exc:  # training, data or registry failure: short message, exit 1
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(render_markdown(table))
    typer.echo(f"results: {out / 'results.md'} and {out / 'results.json'}")


def _paper_table(which: str, preset: str, out: Path, jobs: int) -> None:
    """Train the paper's models (training.papers), then audit them into the table (audit.papers)."""
    from audit.papers import AUDIT_PRESETS, arun_table, khakzar_table, render_arun, render_khakzar
    from training.papers import TRAIN_PRESETS, train_paper_models

    if preset not in TRAIN_PRESETS or preset not in AUDIT_PRESETS:
        typer.echo(f"error: unknown preset {preset!r}; use one of {', '.join(TRAIN_PRESETS)}", err=True)
        raise typer.Exit(code=2)
    if (out / "results.json").exists():
        typer.echo(f"error: {out} already holds results: choose another --out", err=True)
        raise typer.Exit(code=2)
    arun = which == "arun2021"
    try:
        models = train_paper_models(
            preset,
            out,
            replicates=2 if arun else 1,
            other_arch=arun,
            device="cuda" if preset == "gpu" else "cpu",
            jobs=jobs,
        )
        meta = {"training": models.to_dict()}
        make = arun_table if arun else khakzar_table
        table = make(models.registry, models.main, models.reference, out, preset=preset, meta=meta)
    except Exception as exc:  # training, data, registry or audit failure: short message, exit 1
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo((render_arun if arun else render_khakzar)(table))
    typer.echo(f"results: {out / 'results.md'} and {out / 'results.json'}")


_PRESET_HELP = "smoke (tests, seconds), quick (one CPU core, minutes) or gpu (larger, CUDA)."


@app.command("arun2021")
def arun2021_command(
    preset: str = typer.Option("quick", "--preset", help=_PRESET_HELP),
    out: Path = typer.Option(Path("runs/arun2021"), "--out", "-o", file_okay=False, help="Output directory."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Models trained in parallel (one thread each)."),
) -> None:
    """Arun et al. 2021, Table 2: eight saliency methods x utility, randomisation, repeatability,
    reproducibility."""
    _paper_table("arun2021", preset, out, jobs)


@app.command("khakzar2021")
def khakzar2021_command(
    preset: str = typer.Option("quick", "--preset", help=_PRESET_HELP),
    out: Path = typer.Option(
        Path("runs/khakzar2021"), "--out", "-o", file_okay=False, help="Output directory."
    ),
) -> None:
    """Khakzar et al. 2021: IBA, Inverse IBA, multi-layer IBA vs Grad-CAM and IG (localisation,
    faithfulness)."""
    _paper_table("khakzar2021", preset, out, 1)
