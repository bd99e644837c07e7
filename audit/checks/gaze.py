"""Gaze alignment: each method's maps vs the radiologists' EGD heatmaps and fixations.

Metrics follow the MIT saliency benchmark conventions (docs/audit.md, "Checks"; Bylinskii et al.):
KLD(G‖S) and CC / SIM against the static heatmap; NSS, AUC-Judd and shuffled AUC against the binary fixation
map. sAUC's negatives are the fixated pixels of the *other* reference cases (:class:`ShuffledFixations`,
the benchmark's ``otherMap``), so a map that only reproduces the readers' common centre bias scores ≈ 0.5. The
map is scored on the DICOM's native grid (``mimicry.preprocess.unletterbox``), where the gaze lives. Cases
without a fixation on the image give NaN (dropped by the summaries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import auc_judd, cc, kld, nss, sauc, sim
from audit.reference import ReferenceCase, ReferenceSet
from mimicry.data import valid_fixations

__all__ = ["GAZE_METRICS", "ShuffledFixations", "gaze_alignment", "gaze_scores"]

#: Metric name -> direction (``+1`` higher is better, ``-1`` lower is better).
GAZE_METRICS: dict[str, int] = {"kld": -1, "nss": 1, "cc": 1, "sim": 1, "auc_judd": 1, "sauc": 1}


class ShuffledFixations:
    """The fixated pixels of every reference case, to build each case's sAUC negatives.

    ``other_map(case)`` is :func:`audit.metrics.shuffled_fixation_map` of all *other* cases' fixated pixels on
    ``case``'s grid (a fixation at column ``x`` of an image ``W_j`` wide goes to ``⌊x · W / W_j⌋``), computed
    in one vectorised pass over the pooled coordinates.

    Args:
        items: ``(case key, rows, cols, (H, W))`` per case: the fixated pixels (each once) on its native grid.
    """

    def __init__(self, items: Iterable[tuple[str, np.ndarray, np.ndarray, tuple[int, int]]]) -> None:
        keys: list[str] = []
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        hs: list[np.ndarray] = []
        ws: list[np.ndarray] = []
        owner: list[np.ndarray] = []
        for i, (key, r, c, (h, w)) in enumerate(items):
            r = np.asarray(r, dtype=np.float64).ravel()
            c = np.asarray(c, dtype=np.float64).ravel()
            keys.append(key)
            rows.append(r)
            cols.append(c)
            hs.append(np.full(r.size, float(h)))
            ws.append(np.full(r.size, float(w)))
            owner.append(np.full(r.size, i, dtype=np.int64))
        self.keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        cat = (lambda a: np.concatenate(a)) if keys else (lambda a: np.zeros(0))
        self._rows, self._cols, self._h, self._w = cat(rows), cat(cols), cat(hs), cat(ws)
        self._owner = cat(owner).astype(np.int64)

    @classmethod
    def from_cases(cls, cases: Sequence[ReferenceCase]) -> ShuffledFixations:
        """From prepared cases (their binary fixation maps)."""
        return cls((c.key, *np.nonzero(c.fixation_map), c.shape) for c in cases)

    @classmethod
    def from_reference(cls, reference: ReferenceSet) -> ShuffledFixations:
        """Every case of a reference store, without decoding the images: the fixations are read from the
        store's fixation table and placed exactly as the cases' fixation maps place them
        (``mimicry.data.valid_fixations`` on the image grid read from the DICOM header's Rows × Columns).
        A case whose header cannot be read adds no negatives (scoring it fails on its own)."""
        return cls(_fixated_pixels(reference, i, key) for i, key in enumerate(reference.keys))

    @property
    def fingerprint(self) -> str:
        """sha256 of the pooled case keys: sAUC depends on which other cases are in the pool."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()

    def other_map(self, case: ReferenceCase) -> np.ndarray:
        """Bool map on ``case``'s grid, True where a fixation of another pooled case lands."""
        h, w = case.shape
        out = np.zeros((h, w), dtype=bool)
        keep = self._owner != self._index.get(case.key, -1)
        # same expressions as audit.metrics.shuffled_fixation_map (bit-identical pixel choice)
        rr = np.clip((self._rows[keep] * (h / self._h[keep])).astype(np.int64), 0, h - 1)
        cc_ = np.clip((self._cols[keep] * (w / self._w[keep])).astype(np.int64), 0, w - 1)
        out[rr, cc_] = True
        return out


def _fixated_pixels(
    reference: ReferenceSet, i: int, key: str
) -> tuple[str, np.ndarray, np.ndarray, tuple[int, int]]:
    ds = reference.dataset
    index = reference.indices[i]
    empty = np.zeros(0)
    try:
        header = pydicom.dcmread(
            ds.cases[index].path, stop_before_pixels=True, specific_tags=["Rows", "Columns"]
        )
        shape = (int(header.Rows), int(header.Columns))
    except (OSError, AttributeError, TypeError, ValueError, InvalidDicomError):
        return key, empty, empty, (1, 1)
    fix = valid_fixations(ds.raw_fixations(index), shape)
    if fix.shape[0] == 0:
        return key, empty, empty, shape
    pix = np.unique(fix[:, 1].astype(np.int64) * shape[1] + fix[:, 0].astype(np.int64))  # each pixel once
    return key, pix // shape[1], pix % shape[1], shape


def gaze_scores(
    saliency: np.ndarray, case: ReferenceCase, shuffled: ShuffledFixations | None = None
) -> dict[str, float]:
    """KLD, NSS, CC, SIM, AUC-Judd and sAUC of one native-grid map against one case's gaze.

    ``shuffled`` supplies sAUC's negatives (the other cases' fixations); without it sAUC is NaN.
    """
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
        "sauc": float(sauc(saliency, case.fixation_map, shuffled.other_map(case)))
        if shuffled is not None
        else float("nan"),
    }


def gaze_alignment(
    maps: Sequence[np.ndarray],
    cases: Sequence[ReferenceCase],
    *,
    method: str,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
    shuffled: ShuffledFixations | None = None,
) -> CheckResult:
    """Gaze-alignment check of one method: per-case :func:`gaze_scores` and bootstrap summaries.

    sAUC's negatives come from ``shuffled`` (default: the other cases given here).
    """
    if len(maps) != len(cases):
        raise CheckInputError(f"{len(maps)} maps for {len(cases)} cases")
    pool = shuffled if shuffled is not None else ShuffledFixations.from_cases(cases)
    result = CheckResult("gaze", method)
    for m, c in zip(maps, cases, strict=True):
        result.add_case(c.key, gaze_scores(m, c, pool), _class(class_names, c.label_index))
    return result.summarise(bootstrap)


def _class(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)
