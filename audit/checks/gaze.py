"""Gaze alignment: each method's maps vs the radiologists' EGD heatmaps and fixations.

Metrics follow the MIT saliency benchmark conventions (REFERENCE.md, "Gaze metrics"; Bylinskii et al.):
KLD(G‖S) and CC / SIM against the static heatmap, NSS and AUC-Judd against the binary fixation map. The map is
scored on the DICOM's native grid (``mimicry.preprocess.unletterbox``), where the gaze lives. Cases without a
fixation on the image give NaN (dropped by the summaries).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import auc_judd, cc, kld, nss, sim
from audit.reference import ReferenceCase

__all__ = ["GAZE_METRICS", "gaze_alignment", "gaze_scores"]

#: Metric name -> direction (``+1`` higher is better, ``-1`` lower is better).
GAZE_METRICS: dict[str, int] = {"kld": -1, "nss": 1, "cc": 1, "sim": 1, "auc_judd": 1}


def gaze_scores(saliency: np.ndarray, case: ReferenceCase) -> dict[str, float]:
    """KLD, NSS, CC, SIM and AUC-Judd of one native-grid map against one case's gaze."""
    if saliency.shape != case.shape:
        raise CheckInputError(f"map shape {saliency.shape} differs from the case grid {case.shape}")
    if not case.has_fixations:
        return {m: float("nan") for m in GAZE_METRICS}
    return {
        "kld": float(kld(saliency, case.heatmap)),
        "nss": float(nss(saliency, case.fixation_map)),
        "cc": float(cc(saliency, case.heatmap)),
        "sim": float(sim(saliency, case.heatmap)),
        "auc_judd": float(auc_judd(saliency, case.fixation_map)),
    }


def gaze_alignment(
    maps: Sequence[np.ndarray],
    cases: Sequence[ReferenceCase],
    *,
    method: str,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Gaze-alignment check of one method: per-case :func:`gaze_scores` and bootstrap summaries."""
    if len(maps) != len(cases):
        raise CheckInputError(f"{len(maps)} maps for {len(cases)} cases")
    result = CheckResult("gaze", method)
    for m, c in zip(maps, cases, strict=True):
        result.add_case(c.key, gaze_scores(m, c), _class(class_names, c.label_index))
    return result.summarise(bootstrap)


def _class(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)
