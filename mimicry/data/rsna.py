"""RSNA pneumonia ``stage_2_train_labels.csv``: boxes per image and their inclusive rasterisation.

Format (docs/methods.md, "Dataset formats"):
columns ``patientId, x, y, width, height, Target``; ``x, y`` is the
top-left pixel of a box on the 1024 x 1024 image; one row per box, so an image may have several rows; an
image without opacity has a single row with empty ``x..height`` and ``Target`` 0. (``patientId`` is really an
image id; the phantoms write the DICOM id there.)

Inclusive convention (Arun et al.: boxes are rasterised inclusive): a box ``x, y, width, height`` covers
columns ``x .. x + width - 1`` and rows ``y .. y + height - 1``, i.e. exactly ``width x height`` pixels; so
``x=2, y=1, width=3, height=2`` covers columns 2, 3, 4 and rows 1, 2. Equivalently it is the continuous
region ``[x, x + width) x [y, y + height)``. Rasterising onto another grid scales that region by
``target / source`` and switches on every target pixel it overlaps (:func:`mimicry.data.masks.box_mask`):
columns ``floor(x * Wt / Ws) .. ceil((x + width) * Wt / Ws) - 1``. For 1024 -> 256 (factor 1/4) a box at
``x=4, width=4`` (source columns 4..7) covers target column 1 only, while ``width=5`` (4..8) also touches
column 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mimicry.data.masks import DatasetFormatError, MissingDatasetFileError, box_mask, require_columns

__all__ = ["RSNA_SHAPE", "Box", "rasterise_boxes", "read_rsna_boxes"]

RSNA_SHAPE = (1024, 1024)
"""(H, W) of the RSNA pneumonia images."""

_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]


@dataclass(frozen=True)
class Box:
    """One RSNA box: top-left pixel ``(x, y)`` and its size in pixels (inclusive, see module docstring)."""

    x: float
    y: float
    width: float
    height: float

    @property
    def x2(self) -> float:
        """Last covered column (inclusive): ``x + width - 1``."""
        return self.x + self.width - 1.0

    @property
    def y2(self) -> float:
        """Last covered row (inclusive): ``y + height - 1``."""
        return self.y + self.height - 1.0

    def as_x1x2y1y2(self) -> tuple[float, float, float, float]:
        """Inclusive extent in the EGD ``bounding_boxes.csv`` order ``(x1, x2, y1, y2)``."""
        return (self.x, self.x2, self.y, self.y2)


def read_rsna_boxes(csv_path: Path | str) -> dict[str, list[Box]]:
    """Read ``stage_2_train_labels.csv`` into ``patientId -> [Box, ...]`` (file order).

    Rows with ``Target`` 0 contribute no box, so an image with only such rows maps to ``[]``. Every image in
    the file appears as a key.

    Raises:
        MissingDatasetFileError: the file does not exist.
        MissingColumnsError: any of ``patientId, x, y, width, height, Target`` is missing (all are listed).
        DatasetFormatError: ``Target`` not 0/1, or a ``Target`` 1 row with a missing, non-numeric or
            non-positive size, or a missing / non-numeric coordinate (the column is named, not the image).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise MissingDatasetFileError("RSNA stage_2_train_labels.csv not found", path=path)
    label = "RSNA stage_2_train_labels.csv"
    try:
        df = pd.read_csv(path, dtype={"patientId": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{label} is not a readable CSV", path=path) from exc
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df.columns, _COLUMNS, label, path)

    numeric = {}
    for col in ("x", "y", "width", "height", "Target"):
        values = pd.to_numeric(df[col], errors="coerce")
        if (values.isna() & df[col].notna()).any():
            raise DatasetFormatError(f"{label}: non-numeric value in column {col!r}", path=path, column=col)
        numeric[col] = values.to_numpy(dtype=np.float64)
    target = numeric["Target"]
    if not np.isin(target, (0.0, 1.0)).all():
        raise DatasetFormatError(f"{label}: column 'Target' must be 0 or 1", path=path, column="Target")
    positive = target == 1.0
    for col in ("x", "y", "width", "height"):
        if np.isnan(numeric[col][positive]).any():
            raise DatasetFormatError(f"{label}: Target 1 row with an empty {col!r}", path=path, column=col)
    for col in ("width", "height"):
        if (numeric[col][positive] <= 0).any():
            raise DatasetFormatError(f"{label}: non-positive {col!r} in a box row", path=path, column=col)
    ids = df["patientId"].astype(str).str.strip().tolist()

    out: dict[str, list[Box]] = {}
    for i, pid in enumerate(ids):
        boxes = out.setdefault(pid, [])
        if positive[i]:
            boxes.append(
                Box(
                    x=float(numeric["x"][i]),
                    y=float(numeric["y"][i]),
                    width=float(numeric["width"][i]),
                    height=float(numeric["height"][i]),
                )
            )
    return out


def rasterise_boxes(
    boxes: Iterable[Box],
    shape: tuple[int, int],
    *,
    source_shape: tuple[int, int] = RSNA_SHAPE,
) -> np.ndarray:
    """Rasterise RSNA boxes (inclusive) onto a bool mask of ``shape``, scaling from ``source_shape``.

    Args:
        boxes: boxes in pixel coordinates of an image of ``source_shape``.
        shape: target ``(H, W)``.
        source_shape: ``(H, W)`` the coordinates refer to (1024 x 1024 for RSNA; the image size for phantoms).

    Returns:
        bool ``H x W``: the union of every target pixel overlapping a box's region ``[x, x + width) x
        [y, y + height)`` scaled by ``target / source`` (module docstring), clipped to the image; all False
        for no boxes.
    """
    out = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    for b in boxes:
        if not (math.isfinite(b.width) and math.isfinite(b.height)) or b.width <= 0 or b.height <= 0:
            continue
        out |= box_mask(b.x, b.x2, b.y, b.y2, shape, source_shape=source_shape)
    return out
