"""Generate a phantom dataset in the MIMIC-CXR-EGD layout (brief, "The phantom / EGD dataset layout").

Layout under the output root::

    master_sheet.csv, fixations.csv, bounding_boxes.csv                  (EGD)
    files/p{pid[:2]}/p{pid}/s{study_id}/{dicom_id}.dcm                   (EGD / MIMIC-CXR)
    audio_segmentation_transcripts/{dicom_id}/{left_lung,right_lung,mediastinum,aortic_knob}.png
    masks/{dicom_id}/finding.png, train-rle.csv, stage_2_train_labels.csv (phantom extras: SIIM / RSNA style)
    phantom.json                                                          (written LAST)

``phantom.json`` is written after every other file, so a directory without it is an interrupted run
(:func:`mimicry.data.phantom.summary.summarize_dataset` refuses it). CSVs are written to a temporary name and
renamed. Cases are independent (per-case generators, :mod:`.plan`), so ``workers > 1`` produces the same
bytes as one worker.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from mimicry import __version__
from mimicry.data.phantom.anatomy import mask_box
from mimicry.data.phantom.config import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    NUISANCE_CLASS,
    NUISANCE_CUES,
    REVERSED_SITE_OF_CLASS,
    SCREEN_SIZE,
    SITE_OF_CLASS,
    SITES,
    OutputDirNotEmptyError,
    PhantomConfig,
    PhantomError,
    heatmap_sigma_px,
)
from mimicry.data.phantom.gaze import FIXATION_COLUMNS, Scanpath, fixation_rows, simulate_scanpath
from mimicry.data.phantom.plan import CasePlan, plan_cases
from mimicry.data.phantom.render import MARKER_OF_SITE, RenderedFilm, render_film
from mimicry.data.phantom.summary import summarize_master_sheet
from mimicry.data.phantom.write import (
    BOUNDING_BOX_COLUMNS,
    MASTER_SHEET_COLUMNS,
    RSNA_COLUMNS,
    SIIM_HEADER,
    bounding_box_rows,
    build_dicom,
    csv_line,
    master_sheet_row,
    rsna_rows,
    siim_rows,
    write_png,
)
from mimicry.io import atomic_write_text, atomic_writer

__all__ = ["LAYOUT_ENTRIES", "PhantomCase", "generate_phantom_dataset", "render_case"]

LAYOUT_ENTRIES: tuple[str, ...] = (
    "phantom.json",
    "master_sheet.csv",
    "fixations.csv",
    "bounding_boxes.csv",
    "train-rle.csv",
    "stage_2_train_labels.csv",
    "contact_sheet.png",
    "files",
    "audio_segmentation_transcripts",
    "masks",
)
"""What the generator writes (and what ``overwrite=True`` removes first); nothing else is touched."""

ANATOMY_PNGS: tuple[str, ...] = ("left_lung", "right_lung", "mediastinum", "aortic_knob")


@dataclass
class PhantomCase:
    """One generated case in memory: its plan, rendered film and simulated read."""

    plan: CasePlan
    film: RenderedFilm
    scanpath: Scanpath

    def anatomy_masks(self) -> dict[str, np.ndarray]:
        """The EGD segmentation masks (``left_lung``, ``right_lung``, ``mediastinum``, ``aortic_knob``)."""
        anat = self.film.anatomy
        return {
            "left_lung": anat.masks["left_lung"],
            "right_lung": anat.masks["right_lung"],
            "mediastinum": anat.mediastinum(),
            "aortic_knob": anat.masks["aortic_knob"],
        }


def render_case(config: PhantomConfig, index: int, plan: CasePlan | None = None) -> PhantomCase:
    """Render case ``index`` of the dataset ``config`` describes (same pixels as the written dataset).

    Args:
        config: dataset parameters.
        index: case index in ``[0, config.n)``.
        plan: the case's plan when already computed (``plan_cases(config)[index]``); planned otherwise.
    """
    if not 0 <= index < config.n:
        raise PhantomError(f"case index {index} outside [0, {config.n})")
    if plan is None:
        plan = plan_cases(config)[index]
    film = render_film(plan, config)
    return PhantomCase(plan=plan, film=film, scanpath=simulate_scanpath(plan, film, config.seed))


@dataclass
class _CaseOutput:
    index: int
    master: list[str]
    boxes: list[list[str]]
    fixations: list[str]
    siim: list[str]
    rsna: list[list[str]]
    files: int
    seconds: dict[str, float] = field(default_factory=dict)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Full-size bool masks of the connected components of ``mask`` (``ndimage.label``'s default
    4-connectivity, in its raster order), labelled within the mask's box: an empty mask costs nothing."""
    box = mask_box(mask)
    if box is None:
        return []
    x1, x2, y1, y2 = box
    labels, n_comp = ndimage.label(mask[y1 : y2 + 1, x1 : x2 + 1])
    out = []
    for k in range(1, n_comp + 1):
        comp = np.zeros(mask.shape, dtype=bool)
        comp[y1 : y2 + 1, x1 : x2 + 1] = labels == k
        out.append(comp)
    return out


def _write_case(root: Path, config: PhantomConfig, plan: CasePlan) -> _CaseOutput:
    t0 = time.perf_counter()
    film = render_film(plan, config)
    t1 = time.perf_counter()
    scan = simulate_scanpath(plan, film, config.seed)
    fixations = fixation_rows(plan, scan, config.size, config.seed)
    t2 = time.perf_counter()
    case = PhantomCase(plan=plan, film=film, scanpath=scan)
    dcm_path = root / plan.path
    dcm_path.parent.mkdir(parents=True, exist_ok=True)
    build_dicom(plan, film, config.seed).save_as(dcm_path, enforce_file_format=True)
    seg_dir = root / "audio_segmentation_transcripts" / plan.dicom_id
    seg_dir.mkdir(parents=True, exist_ok=True)
    for name, mask in case.anatomy_masks().items():
        write_png(seg_dir / f"{name}.png", mask)
    mask_dir = root / "masks" / plan.dicom_id
    mask_dir.mkdir(parents=True, exist_ok=True)
    write_png(mask_dir / "finding.png", film.finding)
    components = _components(film.finding)
    out = _CaseOutput(
        index=plan.index,
        master=master_sheet_row(plan, film),
        boxes=bounding_box_rows(plan, film.anatomy.boxes()),
        fixations=fixations,
        siim=siim_rows(plan, components),
        rsna=rsna_rows(plan, film.finding_boxes),
        files=2 + len(ANATOMY_PNGS),
    )
    t3 = time.perf_counter()
    out.seconds = {"render": t1 - t0, "gaze": t2 - t1, "write": t3 - t2}
    return out


def _prepare(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise PhantomError(f"output path exists and is not a directory: {root}")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise OutputDirNotEmptyError(
                f"output directory is not empty: {root} (pass overwrite to replace it)"
            )
        # phantom.json first: from here on the directory reads as an interrupted run until we finish.
        for name in LAYOUT_ENTRIES:
            target = root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, header: str, chunks: Iterable[str]) -> None:
    with atomic_writer(path, text=True, newline="") as fh:
        fh.write(header)
        for chunk in chunks:
            fh.write(chunk)


def _metadata(config: PhantomConfig, plans: list[CasePlan], outputs: list[_CaseOutput]) -> dict[str, Any]:
    return {
        "generator": "mimicry.data.phantom",
        "generator_version": GENERATOR_VERSION,
        "mimicry_version": __version__,
        "seed": config.seed,
        "size": config.size,
        "n": config.n,
        "class_names": list(CLASS_NAMES),
        "sites": list(SITES),
        "site_of_class": SITE_OF_CLASS,
        "reversed_site_of_class": REVERSED_SITE_OF_CLASS,
        "marker_of_site": {s: {"glyph": g, "corner": c} for s, (g, c) in MARKER_OF_SITE.items()},
        "nuisance_cues": list(NUISANCE_CUES),
        "nuisance_class": NUISANCE_CLASS,
        "split_rates": {s: config.split_rates(s) for s in ("train", "test")},
        "shortcut_mode": {s: config.shortcut_mode(s) for s in ("train", "test")},
        "rate_definitions": {
            "shortcut_corr": "P(site == site_of_class[label]) within the split",
            "nuisance_<cue>_corr": "P(cue present == (label == nuisance_class[cue])) within the split",
        },
        "heatmap_sigma_px": heatmap_sigma_px(config.size),
        "screen_size": list(SCREEN_SIZE),
        "config": config.to_dict(),
        "photometric_counts": dict(sorted(Counter(p.photometric for p in plans).items())),
        "transfer_syntax_counts": dict(sorted(Counter(p.transfer_syntax for p in plans).items())),
        "fixation_rows": sum(len(o.fixations) for o in outputs),
        "files": {"dicom": len(plans), "png": sum(o.files - 1 for o in outputs), "csv": 5},
    }


def generate_phantom_dataset(
    out_dir: str | Path,
    config: PhantomConfig | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a phantom dataset to ``out_dir`` and return its summary.

    Args:
        out_dir: dataset root; created if missing, must be empty unless ``overwrite``.
        config: parameters (defaults: :class:`PhantomConfig`).
        workers: processes rendering and writing cases (output is identical for any value).
        overwrite: remove the generator's own entries (:data:`LAYOUT_ENTRIES`) from a non-empty ``out_dir``
            first; other files are left alone.
        progress: called as ``progress(done, total)`` after each case.

    Returns:
        Summary dict: counts per class / split / site, shortcut and nuisance agreement per split, file
        counts, ``seconds``, ``images_per_second`` and per-stage seconds (summed over workers).

    Raises:
        OutputDirNotEmptyError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    config = config or PhantomConfig()
    if workers < 1:
        raise PhantomError(f"workers must be >= 1, got {workers}")
    root = Path(out_dir)
    _prepare(root, overwrite)
    t_start = time.perf_counter()
    plans = plan_cases(config)
    t_plan = time.perf_counter() - t_start
    job = partial(_write_case, root, config)
    outputs: list[_CaseOutput] = []
    if workers == 1:
        for i, plan in enumerate(plans):
            outputs.append(job(plan))
            if progress:
                progress(i + 1, len(plans))
    else:
        chunk = max(1, len(plans) // (workers * 8))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, out in enumerate(pool.map(job, plans, chunksize=chunk)):
                outputs.append(out)
                if progress:
                    progress(i + 1, len(plans))
    t_csv = time.perf_counter()
    _write_text(
        root / "master_sheet.csv", csv_line(MASTER_SHEET_COLUMNS), (csv_line(o.master) for o in outputs)
    )
    _write_text(
        root / "fixations.csv",
        csv_line(FIXATION_COLUMNS),
        ("".join(o.fixations) for o in outputs),
    )
    _write_text(
        root / "bounding_boxes.csv",
        csv_line(BOUNDING_BOX_COLUMNS),
        ("".join(csv_line(r) for r in o.boxes) for o in outputs),
    )
    _write_text(root / "train-rle.csv", SIIM_HEADER + "\n", ("".join(o.siim) for o in outputs))
    _write_text(
        root / "stage_2_train_labels.csv",
        csv_line(RSNA_COLUMNS),
        ("".join(csv_line(r) for r in o.rsna) for o in outputs),
    )
    meta = _metadata(config, plans, outputs)
    atomic_write_text(root / "phantom.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    t_end = time.perf_counter()

    df = pd.read_csv(
        root / "master_sheet.csv", dtype={"dicom_id": str, "patient_id": str}, keep_default_na=False
    )
    summary = summarize_master_sheet(df)
    seconds = t_end - t_start
    stages = {"plan": t_plan}
    for key in ("render", "gaze", "write"):
        stages[key] = float(sum(o.seconds[key] for o in outputs))
    stages["csv"] = t_end - t_csv
    summary.update(
        {
            "root": str(root),
            "kind": "phantom",
            "size": config.size,
            "seed": config.seed,
            "generator_version": GENERATOR_VERSION,
            "photometric_counts": meta["photometric_counts"],
            "transfer_syntax_counts": meta["transfer_syntax_counts"],
            "fixations": {
                "rows": meta["fixation_rows"],
                "off_image": sum(sum(1 for r in o.fixations if r.endswith(",-1,-1\n")) for o in outputs),
                "images": len(outputs),
            },
            "files": meta["files"],
            "seconds": seconds,
            "images_per_second": len(plans) / seconds if seconds > 0 else float("inf"),
            "stage_seconds": stages,
            "workers": workers,
        }
    )
    return summary
