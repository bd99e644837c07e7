"""Localisation utility: maps vs finding masks / boxes, against the average-mask low baseline.

Arun et al. (Radiology: AI 2021; docs/methods.md, "Localisation and faithfulness metrics"): every pixel is
a sample, AUPRC is the
trapezoidal area under the precision-recall curve (:func:`audit.metrics.auprc`); the *low baseline* is the
average of the training split's masks used as a saliency map ("AVG" in Table 2). We add IoU of the top 10 %
of the map (``audit.metrics.iou(top_percent=10)``) and the pointing game (Zhang et al. 2018). Only cases
with a non-empty finding mask are scored (the others give NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.transform import resize

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import auprc, iou, pointing_game
from audit.reference import ReferenceCase

__all__ = ["LOCALISATION_METRICS", "TOP_PERCENT", "localisation_scores", "localisation_utility"]

LOCALISATION_METRICS: dict[str, int] = {"auprc": 1, "iou": 1, "pointing_game": 1}
#: IoU binarises the map at its top ``TOP_PERCENT`` % pixels.
TOP_PERCENT = 10.0


def localisation_scores(saliency: np.ndarray, case: ReferenceCase) -> dict[str, float]:
    """AUPRC, IoU (top 10 %) and pointing game of one native-grid map vs the case's finding mask."""
    if saliency.shape != case.shape:
        raise CheckInputError(f"map shape {saliency.shape} differs from the case grid {case.shape}")
    if not case.has_finding:
        return {m: float("nan") for m in LOCALISATION_METRICS}
    mask = case.finding_mask
    return {
        "auprc": float(auprc(saliency, mask)),
        "iou": float(iou(saliency, mask, top_percent=TOP_PERCENT)),
        "pointing_game": float(pointing_game(saliency, mask)),
    }


def baseline_map(average_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The average mask resized (bilinear) to a case's grid."""
    return resize(average_mask, shape, order=1, mode="edge", preserve_range=True).astype(np.float32)


def localisation_utility(
    maps: Sequence[np.ndarray],
    cases: Sequence[ReferenceCase],
    *,
    method: str,
    average_mask: np.ndarray | None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Localisation-utility check of one method, with the average-mask low baseline.

    ``baselines["average_mask"][metric]`` is the mean score of the average mask used as the saliency map on
    the same cases; per-case baseline values are kept in ``details["average_mask_values"]`` for paired tests.
    """
    if len(maps) != len(cases):
        raise CheckInputError(f"{len(maps)} maps for {len(cases)} cases")
    result = CheckResult("localisation", method)
    base = CheckResult("localisation", "average_mask")
    for m, c in zip(maps, cases, strict=True):
        cls = class_names[c.label_index] if c.label_index < len(class_names) else str(c.label_index)
        result.add_case(c.key, localisation_scores(m, c), cls)
        if average_mask is not None:
            base.add_case(c.key, localisation_scores(baseline_map(average_mask, c.shape), c), cls)
    result.summarise(bootstrap)
    if average_mask is not None:
        base.summarise(bootstrap)
        result.baselines["average_mask"] = {k: s.mean for k, s in base.summaries.items()}
        result.details["average_mask_values"] = {k: [v for v in d.values()] for k, d in base.values.items()}
    return result
