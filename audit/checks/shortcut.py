"""Shortcut reliance: saliency mass where no diagnostic evidence can be.

The phantom benchmark (docs/methods.md, "The phantom benchmark") plants a burned-in site marker correlated
with the label; a model
that learned it puts saliency on the marker. Per case (native grid, map normalised to unit mass by the
metric functions of :mod:`audit.metrics.shortcut`):

* ``marker_mass``: share of the map's mass inside the recorded marker box;
* ``outside_anatomy``: share outside the union of the anatomy masks (lungs, mediastinum, aortic knob);
* ``border_mass``: share in the outer 10 % band of the image.

Lower is better for all three.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import border_mass, mass_in_region, mass_outside
from audit.reference import ReferenceCase

__all__ = ["BORDER_FRACTION", "SHORTCUT_METRICS", "shortcut_mass", "shortcut_scores"]

SHORTCUT_METRICS: dict[str, int] = {"marker_mass": -1, "outside_anatomy": -1, "border_mass": -1}
BORDER_FRACTION = 0.1


def shortcut_scores(saliency: np.ndarray, case: ReferenceCase) -> dict[str, float]:
    """Marker mass, mass outside anatomy and border-band mass of one native-grid map."""
    if saliency.shape != case.shape:
        raise CheckInputError(f"map shape {saliency.shape} differs from the case grid {case.shape}")
    nan = float("nan")
    return {
        "marker_mass": float(mass_in_region(saliency, case.marker)) if case.marker is not None else nan,
        "outside_anatomy": float(mass_outside(saliency, case.anatomy)) if case.anatomy is not None else nan,
        "border_mass": float(border_mass(saliency, fraction=BORDER_FRACTION)),
    }


def shortcut_mass(
    maps: Sequence[np.ndarray],
    cases: Sequence[ReferenceCase],
    *,
    method: str,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Shortcut check of one method: per-case :func:`shortcut_scores` and bootstrap summaries.

    ``baselines["uniform"]`` holds what a uniform map would score (the area fractions), a natural
    reference: a map with more mass on the marker than its area is drawn to it.
    """
    if len(maps) != len(cases):
        raise CheckInputError(f"{len(maps)} maps for {len(cases)} cases")
    result = CheckResult("shortcut", method)
    uniform = CheckResult("shortcut", "uniform")
    for m, c in zip(maps, cases, strict=True):
        cls = class_names[c.label_index] if c.label_index < len(class_names) else str(c.label_index)
        result.add_case(c.key, shortcut_scores(m, c), cls)
        uniform.add_case(c.key, shortcut_scores(np.ones(c.shape, np.float32), c), cls)
    result.summarise(bootstrap)
    result.baselines["uniform"] = {
        k: float(np.nanmean(list(d.values()))) if np.isfinite(list(d.values())).any() else float("nan")
        for k, d in uniform.values.items()
    }
    return result
