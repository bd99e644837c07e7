"""Phantom benchmark: synthetic chest films in exactly the MIMIC-CXR-EGD layout.

Real EGD / SIIM / RSNA data are credentialed and cannot be downloaded here (docs/methods.md, "The phantom
benchmark"), so this package writes synthetic DX films with anatomy and finding masks, simulated radiologist
fixations, synthetic PHI and a planted shortcut (a burned-in site marker correlated with the label in the
training split and reversed or decorrelated in the test split, plus weak nuisance cues).

Modules: :mod:`.config` (parameters, constants, errors), :mod:`.plan` (per-case metadata; the metadata-only
path), :mod:`.anatomy` (geometry, masks, boxes), :mod:`.render` (pixels), :mod:`.gaze` (scanpaths and
``fixations.csv`` rows), :mod:`.write` (DICOM, PNG, CSV rows), :mod:`.generate` (the dataset writer),
:mod:`.summary` (re-reading summaries) and :mod:`.contact_sheet` (a PNG grid for a person to look at).
"""

from mimicry.data.phantom.config import (
    CLASS_NAMES,
    NUISANCE_CLASS,
    NUISANCE_CUES,
    REVERSED_SITE_OF_CLASS,
    SITE_OF_CLASS,
    SITES,
    IncompleteDatasetError,
    OutputDirNotEmptyError,
    PhantomConfig,
    PhantomConfigError,
    PhantomError,
    heatmap_sigma_px,
)
from mimicry.data.phantom.contact_sheet import render_contact_sheet
from mimicry.data.phantom.generate import PhantomCase, generate_phantom_dataset, render_case
from mimicry.data.phantom.plan import CasePlan, plan_cases
from mimicry.data.phantom.summary import format_summary, summarize_dataset

__all__ = [
    "CLASS_NAMES",
    "NUISANCE_CLASS",
    "NUISANCE_CUES",
    "REVERSED_SITE_OF_CLASS",
    "SITES",
    "SITE_OF_CLASS",
    "CasePlan",
    "IncompleteDatasetError",
    "OutputDirNotEmptyError",
    "PhantomCase",
    "PhantomConfig",
    "PhantomConfigError",
    "PhantomError",
    "format_summary",
    "generate_phantom_dataset",
    "heatmap_sigma_px",
    "plan_cases",
    "render_case",
    "render_contact_sheet",
    "summarize_dataset",
]
