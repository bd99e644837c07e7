"""Shared dataset plumbing: typed errors, binary-mask PNG IO and inclusive box rasterisation.

Every dataset reader in :mod:`mimicry.data` raises the errors defined here, so callers can catch one family
(:class:`DatasetError`) whatever the format. Error messages name the offending *file kind* and *column*,
never a patient, study or DICOM identifier (those are PHI-adjacent); the full path, when relevant, is kept
on the exception's ``path`` attribute for programmatic use.

Box convention (Arun et al.; docs/methods.md, "Localisation and faithfulness metrics": boxes are
rasterised inclusively): a box whose inclusive pixel
extent is columns ``x1..x2`` and rows ``y1..y2`` covers the continuous region ``[x1, x2 + 1) x [y1, y2 + 1)``
of the source image, where pixel ``c`` occupies ``[c, c + 1)``. Rasterising onto a target grid of another
size scales that region by ``target / source`` along each axis and switches on every target pixel whose
area overlaps it (conservative rasterisation). At identity scale and integer coordinates this is exactly
columns ``x1..x2`` and rows ``y1..y2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DatasetError",
    "DatasetFormatError",
    "MissingColumnsError",
    "MissingDatasetFileError",
    "box_mask",
    "boxes_mask",
    "read_mask_png",
    "require_columns",
    "write_mask_png",
]


class DatasetError(Exception):
    """Base class of every error raised by the dataset readers."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset file exists but does not follow its documented format.

    Attributes:
        path: the offending file (``None`` when the problem is not tied to one file). Not part of the
            message when it would reveal identifiers (per-case files).
        column: the offending column, when there is one.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, column: str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.column = column


class MissingColumnsError(DatasetFormatError):
    """A CSV lacks required columns; ``missing`` lists all of them (checked up front, in layout order)."""

    def __init__(self, file_label: str, missing: Sequence[str], *, path: Path | str | None = None) -> None:
        self.missing = list(missing)
        super().__init__(
            f"{file_label}: missing required column(s) {self.missing}",
            path=path,
            column=self.missing[0] if self.missing else None,
        )


class MissingDatasetFileError(DatasetError, FileNotFoundError):
    """A file the dataset layout requires does not exist."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def require_columns(
    columns: Iterable[str], required: Sequence[str], file_label: str, path: Path | None
) -> None:
    """Raise :class:`MissingColumnsError` listing every column of ``required`` absent from ``columns``."""
    present = set(columns)
    missing = [c for c in required if c not in present]
    if missing:
        raise MissingColumnsError(file_label, missing, path=path)


# --------------------------------------------------------------------------------------------- PNG masks


def read_mask_png(path: Path | str, *, label: str = "mask PNG") -> np.ndarray:
    """Read a binary mask PNG (8-bit single channel, 0 / 255 in the EGD layout; 1-bit greyscale from the
    phantom generator) as a bool ``H x W`` array.

    Any non-zero value is foreground. Multi-channel images (RGB/RGBA exports) count a pixel as foreground
    when any colour channel is non-zero; an alpha channel is ignored.

    Raises:
        MissingDatasetFileError: the file does not exist.
        DatasetFormatError: the file is not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingDatasetFileError(f"{label} not found", path=p)
    try:
        with Image.open(p) as img:
            arr = np.asarray(img)
    except (OSError, ValueError) as exc:  # PIL raises UnidentifiedImageError (an OSError) on junk
        raise DatasetFormatError(f"{label} is not a readable image", path=p) from exc
    if arr.ndim == 3:
        arr = arr[..., : min(3, arr.shape[-1])].any(axis=-1)
    if arr.ndim != 2:
        raise DatasetFormatError(f"{label} is not a 2-D image", path=p)
    return np.asarray(arr > 0, dtype=bool)


def write_mask_png(path: Path | str, mask: np.ndarray) -> None:
    """Write a bool ``H x W`` mask as an 8-bit single-channel PNG with values 0 / 255 (the EGD layout)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(m.astype(bool), 255, 0).astype(np.uint8), mode="L").save(p)


# ------------------------------------------------------------------------------------ box rasterisation


def _covered_range(lo: float, hi_inclusive: float, source: int, target: int) -> tuple[int, int]:
    """Target indices ``[start, stop)`` overlapping the source interval ``[lo, hi_inclusive + 1)``.

    The scaled interval is ``[lo * t / s, (hi + 1) * t / s)``; index ``j`` (occupying ``[j, j + 1)``)
    overlaps it iff ``j >= floor(lo')`` and ``j < ceil(hi')``. Products are formed before the division so
    that integer inputs give exact boundaries (``x * t`` is an exact float64 integer and the division is
    correctly rounded), which matters when a box edge falls exactly on a target pixel boundary.
    """
    start = math.floor(lo * target / source)
    stop = math.ceil((hi_inclusive + 1.0) * target / source)
    return max(start, 0), min(stop, target)


def box_mask(
    x1: float,
    x2: float,
    y1: float,
    y2: float,
    shape: tuple[int, int],
    *,
    source_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Rasterise one inclusive box (columns ``x1..x2``, rows ``y1..y2`` on the source grid) to a bool mask.

    Args:
        x1, x2, y1, y2: inclusive pixel extent on the source image (the ``bounding_boxes.csv`` column order).
        shape: target ``(H, W)``.
        source_shape: ``(H, W)`` of the grid the coordinates refer to; ``None`` means ``shape`` (no scaling).

    Returns:
        bool ``H x W``; empty when the box is degenerate (``x2 < x1`` or ``y2 < y1``) or outside the image.
        See the module docstring for the exact (conservative) scaling rule.
    """
    h, w = (int(shape[0]), int(shape[1]))
    sh, sw = (h, w) if source_shape is None else (int(source_shape[0]), int(source_shape[1]))
    if h <= 0 or w <= 0 or sh <= 0 or sw <= 0:
        raise ValueError(f"shapes must be positive, got target {shape} and source {source_shape}")
    out = np.zeros((h, w), dtype=bool)
    if not all(math.isfinite(v) for v in (x1, x2, y1, y2)) or x2 < x1 or y2 < y1:
        return out
    c0, c1 = _covered_range(float(x1), float(x2), sw, w)
    r0, r1 = _covered_range(float(y1), float(y2), sh, h)
    if c0 < c1 and r0 < r1:
        out[r0:r1, c0:c1] = True
    return out


def boxes_mask(
    boxes: Iterable[tuple[float, float, float, float]],
    shape: tuple[int, int],
    *,
    source_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Union of :func:`box_mask` over inclusive ``(x1, x2, y1, y2)`` boxes; all-False when there are none."""
    out = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    for x1, x2, y1, y2 in boxes:
        out |= box_mask(x1, x2, y1, y2, shape, source_shape=source_shape)
    return out
