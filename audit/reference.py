"""The audit's reference store: EGD-layout cases prepared for one model (docs/methods.md, "Dataset formats").

A reference store is any dataset in the MIMIC-CXR-EGD layout (the phantom benchmark by default; real
MIMIC-CXR-EGD when the user has it) read with :class:`mimicry.data.EgdDataset`. For each case the audit needs
the model input (``mimicry.preprocess``, the model card's spec) and, on the DICOM's *native* grid where
gaze and masks live, the static gaze heatmap, the binary fixation map, the finding mask (localisation), the
union of the anatomy masks (shortcut: mass outside anatomy) and the burned-in marker box (shortcut: mass
on the marker).

Case keys: the audit never stores or prints dataset identifiers; each case is keyed by
``sha256(dicom_id)[:16]`` (:func:`case_key`), stable across runs so the history cache can find it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.transform import resize

from audit.errors import ReferenceDataError
from audit.metrics import box_mask
from mimicry.data import DatasetError, EgdDataset, EgdSample
from mimicry.preprocess import Letterbox, PreprocessSpec, preprocess

__all__ = [
    "GROUP_COLUMNS",
    "ReferenceCase",
    "ReferenceSet",
    "average_finding_mask",
    "case_key",
    "open_reference",
]

#: Demographic and site columns every score is broken down by (the perspective paper: check bias across
#: subgroups).
GROUP_COLUMNS: tuple[str, ...] = ("gender", "age_bucket", "site")

#: Grid of the average-mask low baseline before it is resized to each case (Arun et al., "AVG").
AVERAGE_MASK_GRID = 256


def case_key(dicom_id: str) -> str:
    """Stable, non-identifying key of a case: the first 16 hex digits of ``sha256(dicom_id)``."""
    return hashlib.sha256(dicom_id.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ReferenceCase:
    """One reference case, prepared for one model's preprocessing.

    Attributes:
        key: :func:`case_key` of the dataset id.
        index: position in the reference split (for re-reading).
        label_index: ground-truth class index (the class explained by default).
        groups: ``{"gender": …, "age_bucket": …, "site": …}`` (``None`` when unknown).
        image: float32 ``H×W`` in [0, 1] at native resolution.
        x: float32 ``1×S×S`` model input; ``letterbox`` its geometry.
        heatmap: float32 ``H×W`` static EGD heatmap (sum 1; all zeros without fixations).
        fixation_map: bool ``H×W``.
        finding_mask: bool ``H×W`` or ``None`` (no annotation); an all-False mask means "no finding".
        anatomy: bool ``H×W`` union of the anatomy masks, or ``None`` when the case has none.
        marker: bool ``H×W`` burned-in marker box (phantoms), or ``None``.
    """

    key: str
    index: int
    label_index: int
    groups: dict[str, str | None]
    image: np.ndarray
    x: np.ndarray
    letterbox: Letterbox
    heatmap: np.ndarray
    fixation_map: np.ndarray
    finding_mask: np.ndarray | None
    anatomy: np.ndarray | None
    marker: np.ndarray | None
    has_fixations: bool = field(default=True)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def has_finding(self) -> bool:
        return self.finding_mask is not None and bool(self.finding_mask.any())


def _prepare(sample: EgdSample, index: int, spec: PreprocessSpec) -> ReferenceCase:
    info = sample.info
    shape = (int(sample.image.shape[0]), int(sample.image.shape[1]))
    x, box = preprocess(sample.image, spec)
    anatomy = None
    if sample.anatomy:
        anatomy = np.zeros(shape, dtype=bool)
        for m in sample.anatomy.values():
            anatomy |= m
    marker = None
    if info.marker_box is not None:
        x1, x2, y1, y2 = info.marker_box
        marker = box_mask(shape, x1=x1, y1=y1, x2=x2, y2=y2).astype(bool)
    return ReferenceCase(
        key=case_key(info.dicom_id),
        index=index,
        label_index=int(info.label_index),
        groups={"gender": info.gender, "age_bucket": info.age_bucket, "site": info.site},
        image=sample.image,
        x=x,
        letterbox=box,
        heatmap=sample.heatmap,
        fixation_map=sample.fixation_map,
        finding_mask=sample.finding_mask,
        anatomy=anatomy,
        marker=marker,
        has_fixations=sample.has_fixations,
    )


class ReferenceSet:
    """The reference split of an EGD-layout dataset, prepared lazily for one preprocessing spec.

    Args:
        root: dataset root (EGD layout).
        split: the split scored (``"test"`` by default; ``None`` = every case).
        limit: score at most this many cases (the first ones, in master-sheet order).
        class_names: label columns (the model card's class names).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        split: str | None = "test",
        limit: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        kwargs = {} if class_names is None else {"class_names": tuple(class_names)}
        try:
            self.full = EgdDataset(self.root, **kwargs)
            self.dataset = self.full.split(split) if split else self.full
        except DatasetError as exc:
            raise ReferenceDataError(f"cannot read the reference store: {exc}") from exc
        n = len(self.dataset)
        self.indices = list(range(n if limit is None else min(n, int(limit))))
        if not self.indices:
            raise ReferenceDataError(f"the reference split {split!r} holds no case")
        self.split = split
        self._keys = [case_key(self.dataset.cases[i].dicom_id) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def keys(self) -> list[str]:
        """Case keys in scoring order."""
        return list(self._keys)

    def case(self, i: int, spec: PreprocessSpec) -> ReferenceCase:
        """Case ``i`` (0-based position in :attr:`indices`) prepared for ``spec``."""
        return _prepare(self.dataset[self.indices[i]], self.indices[i], spec)

    def dicom_bytes(self, i: int) -> bytes:
        """The DICOM file of case ``i`` as stored (black-box mode sends it to ``/v1/explain``).

        Raises:
            ReferenceDataError: the file cannot be read (the message names the position, not the case).
        """
        path = self.dataset.cases[self.indices[i]].path
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ReferenceDataError(
                f"cannot read the DICOM of reference case #{i}: {exc.strerror}"
            ) from None

    def cases(self, spec: PreprocessSpec, positions: Sequence[int] | None = None) -> Iterator[ReferenceCase]:
        """Iterate over prepared cases (one at a time: memory stays bounded)."""
        for i in positions if positions is not None else range(len(self)):
            yield self.case(i, spec)

    def average_mask(self, train_split: str = "train") -> np.ndarray | None:
        """Average-mask low baseline (Arun et al., Table 2 "AVG") from ``train_split``; see
        :func:`average_finding_mask`."""
        try:
            train = self.full.split(train_split)
        except DatasetError as exc:
            raise ReferenceDataError(f"cannot read the {train_split!r} split: {exc}") from exc
        return average_finding_mask(train)


def average_finding_mask(dataset: EgdDataset, grid: int = AVERAGE_MASK_GRID) -> np.ndarray | None:
    """The average of every non-empty finding mask of ``dataset``, on a ``grid×grid`` float32 map.

    Arun et al. use "the average of all training/validation masks" as a saliency map: the low baseline a
    saliency method must beat on utility. Masks of different sizes are resized (area averaging) to the grid
    first. Returns ``None`` when the split has no finding mask.
    """
    total = np.zeros((grid, grid), dtype=np.float64)
    count = 0
    for sample in dataset:
        m = sample.finding_mask
        if m is None or not m.any():
            continue
        total += resize(m.astype(np.float32), (grid, grid), order=1, anti_aliasing=True, preserve_range=True)
        count += 1
    if count == 0:
        return None
    return (total / count).astype(np.float32)


def open_reference(root: Path | str, **kwargs: object) -> ReferenceSet:
    """Open a reference store (see :class:`ReferenceSet`)."""
    return ReferenceSet(root, **kwargs)  # type: ignore[arg-type]
