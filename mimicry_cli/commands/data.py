"""``mimicry data …``: phantom generation, dataset summaries, contact sheets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Datasets: phantom generator, summaries, contact sheets.", no_args_is_help=True)


def _emit(summary: dict[str, Any], as_json: bool) -> None:
    from mimicry.data.phantom import format_summary

    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        typer.echo(format_summary(summary))


@app.command("phantom")
def phantom(
    out: Path = typer.Option(..., "--out", help="Dataset root to create (must be empty unless --overwrite)."),
    n: int = typer.Option(600, "--n", min=1, help="Number of cases (one film per study)."),
    size: int = typer.Option(256, "--size", min=32, max=4096, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", min=0, help="Master seed (same seed: same bytes)."),
    shortcut_corr: float = typer.Option(
        0.9, "--shortcut-corr", min=0.0, max=1.0, help="Train-split agreement of site marker and label."
    ),
    test_fraction: float = typer.Option(
        0.2, "--test-fraction", min=0.0, max=0.99, help="Share of test cases."
    ),
    test_shortcut: str = typer.Option(
        "reversed", "--test-shortcut", help="Test split: 'reversed' or 'decorrelated' shortcut and cues."
    ),
    monochrome1_share: float = typer.Option(0.1, "--monochrome1-share", min=0.0, max=1.0),
    compressed_share: float = typer.Option(0.1, "--compressed-share", min=0.0, max=1.0),
    nuisance_border_corr: float = typer.Option(0.65, "--nuisance-border-corr", min=0.0, max=1.0),
    nuisance_collimation_corr: float = typer.Option(0.6, "--nuisance-collimation-corr", min=0.0, max=1.0),
    nuisance_texture_corr: float = typer.Option(0.7, "--nuisance-texture-corr", min=0.0, max=1.0),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Worker processes (output does not depend on it)."
    ),
    contact_sheet: bool = typer.Option(
        True, "--contact-sheet/--no-contact-sheet", help="Also write ROOT/contact_sheet.png."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the generator's files in a non-empty dir."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a phantom benchmark in the MIMIC-CXR-EGD layout and print its summary."""
    from mimicry.data.phantom import (
        OutputDirNotEmptyError,
        PhantomConfig,
        PhantomConfigError,
        generate_phantom_dataset,
        render_contact_sheet,
    )

    try:
        config = PhantomConfig(
            n=n,
            size=size,
            seed=seed,
            shortcut_corr=shortcut_corr,
            test_fraction=test_fraction,
            test_shortcut=test_shortcut,  # type: ignore[arg-type]
            monochrome1_share=monochrome1_share,
            compressed_share=compressed_share,
            nuisance_border_corr=nuisance_border_corr,
            nuisance_collimation_corr=nuisance_collimation_corr,
            nuisance_texture_corr=nuisance_texture_corr,
        )
        summary = generate_phantom_dataset(out, config, workers=workers, overwrite=overwrite)
    except (PhantomConfigError, OutputDirNotEmptyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    if contact_sheet:
        summary["contact_sheet"] = str(render_contact_sheet(out, out / "contact_sheet.png"))
    _emit(summary, as_json)


@app.command("summary")
def summary(
    root: Path = typer.Argument(..., help="Dataset root (phantom or MIMIC-CXR-EGD)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Re-read a dataset's CSVs and print counts per class / split / site and shortcut agreement."""
    from mimicry.data.phantom import IncompleteDatasetError, summarize_dataset

    try:
        result = summarize_dataset(root)
    except IncompleteDatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    _emit(result, as_json)


@app.command("contact-sheet")
def contact_sheet_cmd(
    root: Path = typer.Argument(..., help="Phantom dataset root."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    n: int = typer.Option(8, "--n", min=1, help="Number of cases."),
) -> None:
    """Render a PNG grid of a few cases (film, gaze heatmap, masks, marker box) to check them by eye."""
    from mimicry.data.phantom import IncompleteDatasetError, render_contact_sheet

    try:
        path = render_contact_sheet(root, out, n=n)
    except IncompleteDatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(str(path))
