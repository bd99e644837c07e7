"""MIMIC-CXR eye-gaze dataset (EGD) reader: one code path for the real dataset and for phantoms.

Layout (docs/methods.md, "Dataset formats"; PhysioNet ``egd-cxr`` 1.0.0; the phantom writes the same)::

    ROOT/master_sheet.csv        one row per image: ids, path, demographics, one-hot Normal/CHF/pneumonia, ...
    ROOT/fixations.csv           one row per fixation: DICOM_ID, X_ORIGINAL, Y_ORIGINAL (px, -1 = off image),
                                 FPOGD (duration, s), ... (37 columns)
    ROOT/bounding_boxes.csv      dicom_id, bbox_name, x1, x2, y1, y2 (note the order; inclusive pixels)
    ROOT/audio_segmentation_transcripts/<dicom_id>/{left_lung,right_lung,mediastinum,aortic_knob}.png
    IMAGES_ROOT/<path column>    the DICOM (files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm)
    phantom extras (optional):   ROOT/phantom.json, ROOT/masks/<dicom_id>/finding.png, extra master-sheet
                                 columns split, site, marker_x1, marker_x2, marker_y1, marker_y2, ...

For phantoms ``IMAGES_ROOT`` is ``ROOT`` (they ship ``files/``); for the real EGD, pass the MIMIC-CXR root
(the directory holding ``files/``) as ``images_root``.

Static heatmap sigma (``heatmap_sigma_px``): ``None`` (the default) means *the root's* ``phantom.json``
``heatmap_sigma_px`` when the root has one (phantoms are small images, so their generator records
``150 * size / 3000``), else **150.0 px**, the EGD dataset paper's sigma at MIMIC-CXR's native resolution.
An explicit number always wins. The heatmap itself is built by :func:`mimicry.data.heatmap.static_heatmap`
(count map at full resolution, ``gaussian_filter(mode="constant", truncate=4)``, sum 1; all zeros when an
image has no fixation on it, which happens in the real EGD).

Metadata (master sheet, fixations grouped by ``DICOM_ID``, boxes) is parsed once, eagerly, when the dataset
is built; pixels and masks are read per item. Errors are typed (:mod:`mimicry.data.masks`): a missing file
is a :class:`MissingDatasetFileError`, a missing column a :class:`MissingColumnsError` listing every missing
column, a bad value a :class:`DatasetFormatError` naming the column. Messages never carry patient, study or
DICOM ids (per-case problems are reported by dataset index; the path is on the exception's ``path``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mimicry.data.heatmap import (
    DEFAULT_HEATMAP_SIGMA_PX,
    binary_fixation_map,
    static_heatmap,
    valid_fixations,
)
from mimicry.data.masks import (
    DatasetFormatError,
    MissingDatasetFileError,
    read_mask_png,
    require_columns,
)
from mimicry.data.split import patient_split

if TYPE_CHECKING:
    from mimicry.settings import IngestSettings

__all__ = [
    "ANATOMY_NAMES",
    "BOUNDING_BOX_COLUMNS",
    "DEFAULT_CLASS_NAMES",
    "FIXATION_COLUMNS",
    "MASTER_SHEET_COLUMNS",
    "PHANTOM_EXTRA_COLUMNS",
    "EgdCaseInfo",
    "EgdDataset",
    "EgdSample",
    "parse_anchor_age",
]

DEFAULT_CLASS_NAMES: tuple[str, ...] = ("Normal", "CHF", "pneumonia")

MASTER_SHEET_COLUMNS: tuple[str, ...] = (
    "dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age",
    "image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad",
    "dx1", "dx1_icd", "dx2", "dx2_icd", "dx3", "dx3_icd", "dx4", "dx4_icd", "dx5", "dx5_icd",
    "dx6", "dx6_icd", "dx7", "dx7_icd", "dx8", "dx8_icd", "dx9", "dx9_icd",
    "normal_reports", "Normal", "CHF", "pneumonia", "consolidation", "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis", "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__", "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity", "normal_anatomically", "elevated_hemidiaphragm", "hyperaeration",
    "vascular_redistribution", "atelectasis__chx", "cardiomegaly__chx", "consolidation__chx", "edema__chx",
    "enlarged_cardiomediastinum__chx", "fracture__chx", "lung_lesion__chx", "lung_opacity__chx",
    "no_finding__chx", "pleural_effusion__chx", "pleural_other__chx", "pneumonia__chx",
    "pneumothorax__chx", "support_devices__chx", "cxr_exam_indication",
)  # fmt: skip
"""The real EGD ``master_sheet.csv`` columns, in file order."""

PHANTOM_EXTRA_COLUMNS: tuple[str, ...] = (
    "split", "site", "marker_x1", "marker_x2", "marker_y1", "marker_y2", "shortcut_corr", "shortcut_mode",
    "nuisance_border_corr", "nuisance_collimation_corr", "nuisance_texture_corr",
    "nuisance_border", "nuisance_collimation", "nuisance_texture",
)  # fmt: skip
"""Optional columns phantoms append after :data:`MASTER_SHEET_COLUMNS` (real data lacks them)."""

FIXATION_COLUMNS: tuple[str, ...] = (
    "SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "TIMETICK(f=10000000)",
    "FPOGX", "FPOGY", "FPOGS", "FPOGD", "FPOGID", "FPOGV", "BPOGX", "BPOGY", "BPOGV",
    "LPCX", "LPCY", "LPD", "LPS", "LPV", "RPCX", "RPCY", "RPD", "RPS", "RPV",
    "BKID", "BKDUR", "BKPMIN", "LPMM", "LPMMV", "RPMM", "RPMMV", "SACCADE_MAG", "SACCADE_DIR",
    "VID_FRAME", "X_ORIGINAL", "Y_ORIGINAL",
)  # fmt: skip
"""The real EGD ``fixations.csv`` columns, in file order (the reader needs only a few of them)."""

BOUNDING_BOX_COLUMNS: tuple[str, ...] = ("dicom_id", "bbox_name", "x1", "x2", "y1", "y2")
"""``bounding_boxes.csv`` columns, in file order (x1, x2, y1, y2: inclusive pixel extent)."""

ANATOMY_NAMES: tuple[str, ...] = ("left_lung", "right_lung", "mediastinum", "aortic_knob")
"""Anatomy mask PNGs under ``audio_segmentation_transcripts/<dicom_id>/``."""

_REQUIRED_MASTER = ("dicom_id", "path", "study_id", "patient_id", "gender", "anchor_age")
_REQUIRED_FIXATIONS = ("DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL", "FPOGD")
_MARKER_COLUMNS = ("marker_x1", "marker_x2", "marker_y1", "marker_y2")
_AGE_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_MASTER = "EGD master_sheet.csv"
_FIXATIONS = "EGD fixations.csv"
_BOXES = "EGD bounding_boxes.csv"


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, eq=False)
class EgdCaseInfo:
    """Metadata of one image (cheap; no pixels).

    Attributes:
        dicom_id, patient_id, study_id: identifiers as strings (leading zeros kept).
        path: absolute path of the DICOM (``images_root / relative_path``).
        relative_path: the ``path`` column as written in the master sheet.
        label: one-hot ``float32[K]`` over the dataset's ``class_names``.
        label_index: index of the positive class.
        gender: ``"F"`` / ``"M"`` (as written, upper-cased) or ``None`` when empty.
        age: integer age when ``anchor_age`` is a plain integer, ``None`` when it is a range (real EGD).
        age_bucket: ``"20-30"`` style string (``anchor_age`` range without spaces; an integer age ``a`` goes
            to the decade ``[10*floor(a/10), +10)``, so 30 -> ``"30-40"``); other strings pass through
            without spaces; ``None`` when empty.
        split: the ``split`` column when present; else the computed patient split when the dataset was
            restricted to a split; else ``None``.
        site: the ``site`` column (phantoms) or ``None``.
        marker_box: ``(x1, x2, y1, y2)`` inclusive pixel box of the burned-in site marker (phantoms), else
            ``None``.
    """

    dicom_id: str
    patient_id: str
    study_id: str
    path: Path
    relative_path: str
    label: np.ndarray
    label_index: int
    gender: str | None
    age: int | None
    age_bucket: str | None
    split: str | None
    site: str | None
    marker_box: tuple[float, float, float, float] | None


@dataclass(frozen=True, eq=False)
class EgdSample:
    """One loaded image with its gaze and annotations (all arrays at the DICOM's native resolution).

    Attributes:
        info: the case's :class:`EgdCaseInfo`.
        image: float32 ``H x W`` in [0, 1] from :func:`mimicry.dicom.read_dicom`.
        heatmap: float32 ``H x W`` static EGD heatmap, sum 1, NaN-free; all zeros when no fixation lies on
            the image (see :attr:`has_fixations`).
        fixation_map: bool ``H x W``, True at fixated pixels (NSS / AUC ground truth).
        fixations: float64 ``N x 3`` (x, y, duration s) of the valid fixations in file order; x, y are the
            rounded pixel coordinates used for the maps.
        anatomy: ``name -> bool H x W`` for the anatomy PNGs that exist (subset of :data:`ANATOMY_NAMES`).
        boxes: ``bbox_name -> (x1, x2, y1, y2)`` inclusive pixel boxes from ``bounding_boxes.csv``.
        finding_mask: bool ``H x W`` phantom finding mask (``masks/<dicom_id>/finding.png``) or ``None``.
    """

    info: EgdCaseInfo
    image: np.ndarray
    heatmap: np.ndarray
    fixation_map: np.ndarray
    fixations: np.ndarray
    anatomy: dict[str, np.ndarray]
    boxes: dict[str, tuple[float, float, float, float]]
    finding_mask: np.ndarray | None

    @property
    def label(self) -> np.ndarray:
        """One-hot ``float32[K]`` label (shortcut for ``info.label``)."""
        return self.info.label

    @property
    def has_fixations(self) -> bool:
        """Whether at least one fixation lies on the image (otherwise the heatmap is all zeros)."""
        return bool(self.fixations.shape[0] > 0)


def parse_anchor_age(value: object) -> tuple[int | None, str | None]:
    """Parse EGD's ``anchor_age``: ``"20 - 30"`` -> ``(None, "20-30")``; ``"47"`` -> ``(47, "40-50")``.

    Empty / missing -> ``(None, None)``; any other string -> ``(None, string without spaces)``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    text = str(value).strip()
    if not text or text.lower() == "nan":
        return None, None
    m = _AGE_RANGE.match(text)
    if m:
        return None, f"{int(m.group(1))}-{int(m.group(2))}"
    try:
        number = float(text)
    except ValueError:
        return None, text.replace(" ", "")
    if not number.is_integer() or number < 0:
        return None, text.replace(" ", "")
    age = int(number)
    lo = (age // 10) * 10
    return age, f"{lo}-{lo + 10}"


# --------------------------------------------------------------------------------------------- parsing


def _read_csv(path: Path, label: str, **kwargs: Any) -> pd.DataFrame:
    if not path.is_file():
        raise MissingDatasetFileError(f"{label} not found", path=path)
    try:
        df = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{label} is not a readable CSV", path=path) from exc
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _numeric(series: pd.Series, label: str, column: str, path: Path, *, allow_missing: bool) -> np.ndarray:
    """Column as float64; non-numeric cells (and, unless allowed, empty cells) are a format error."""
    text = series.astype(str).str.strip()
    empty = series.isna() | (text == "") | (text.str.lower() == "nan")
    values = pd.to_numeric(text.where(~empty, None), errors="coerce")
    if (values.isna() & ~empty).any():
        raise DatasetFormatError(f"{label}: non-numeric value in column {column!r}", path=path, column=column)
    if not allow_missing and empty.any():
        raise DatasetFormatError(f"{label}: empty value in column {column!r}", path=path, column=column)
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    """Human-readable 1-based data-row numbers (not identifiers), truncated."""
    shown = ", ".join(str(int(r) + 1) for r in rows[:limit])
    return shown + (", ..." if len(rows) > limit else "")


def _optional_str(value: str) -> str | None:
    value = value.strip()
    return value or None


# --------------------------------------------------------------------------------------------- dataset


class EgdDataset:
    """MIMIC-CXR-EGD (or phantom) dataset: ``len``, indexing, iteration, splits, class counts.

    Args:
        root: dataset root holding ``master_sheet.csv``, ``fixations.csv``, ``bounding_boxes.csv`` and
            ``audio_segmentation_transcripts/`` (module docstring).
        images_root: directory the master sheet's ``path`` column is relative to; defaults to ``root``
            (phantoms). For the real EGD, the MIMIC-CXR root.
        class_names: master-sheet columns forming the one-hot label, in output order.
        heatmap_sigma_px: static-heatmap sigma in pixels of the DICOM. ``None``: ``phantom.json``'s
            ``heatmap_sigma_px`` if the root has one, else 150.0 (EGD paper, native resolution).
        ingest_settings: passed to :func:`mimicry.dicom.read_dicom` (``None``: its defaults).
        split: ``None`` (all cases) or a split name: the rows whose ``split`` column equals it when the
            column exists, else ``"train"`` / ``"test"`` of :func:`mimicry.data.split.patient_split`.
        test_fraction, split_seed: parameters of that patient split (used only without a ``split`` column).

    Raises:
        MissingDatasetFileError, MissingColumnsError, DatasetFormatError: see the module docstring.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        images_root: Path | str | None = None,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        heatmap_sigma_px: float | None = None,
        ingest_settings: IngestSettings | None = None,
        split: str | None = None,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.images_root = Path(images_root) if images_root is not None else self.root
        self.class_names: tuple[str, ...] = tuple(class_names)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be non-empty and distinct")
        self.ingest_settings = ingest_settings
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        if not self.root.is_dir():
            raise MissingDatasetFileError("EGD dataset root is not a directory", path=self.root)

        self.phantom_metadata: dict[str, Any] | None = self._read_phantom_json()
        self.heatmap_sigma_px: float = self._resolve_sigma(heatmap_sigma_px)

        self._full_frame = self._read_master_sheet()
        self._labels = self._parse_labels(self._full_frame)
        self._has_split_column = "split" in self._full_frame.columns
        self._computed_split: pd.Series | None = None
        self._fix_values, self._fix_groups = self._read_fixations()
        self._boxes = self._read_boxes()

        self._split_name: str | None = None
        self._positions = np.arange(len(self._full_frame))
        self._cases = self._build_cases(self._positions)
        if split is not None:
            self._restrict_in_place(split)

    # ---------------------------------------------------------------------------------- file parsing

    def _read_phantom_json(self) -> dict[str, Any] | None:
        path = self.root / "phantom.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetFormatError("phantom.json is not valid JSON", path=path) from exc
        if not isinstance(data, dict):
            raise DatasetFormatError("phantom.json must hold a JSON object", path=path)
        return data

    def _resolve_sigma(self, sigma: float | None) -> float:
        if sigma is None:
            meta = self.phantom_metadata or {}
            if "heatmap_sigma_px" in meta:
                try:
                    sigma = float(meta["heatmap_sigma_px"])
                except (TypeError, ValueError) as exc:
                    raise DatasetFormatError(
                        "phantom.json: heatmap_sigma_px is not a number", path=self.root / "phantom.json"
                    ) from exc
            else:
                sigma = DEFAULT_HEATMAP_SIGMA_PX
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"heatmap_sigma_px must be a positive number, got {sigma}")
        return sigma

    def _read_master_sheet(self) -> pd.DataFrame:
        path = self.root / "master_sheet.csv"
        df = _read_csv(path, _MASTER, dtype=str, keep_default_na=False)
        require_columns(df.columns, [*_REQUIRED_MASTER, *self.class_names], _MASTER, path)
        for col in ("dicom_id", "patient_id", "study_id", "path"):
            df[col] = df[col].str.strip()
            empty = np.flatnonzero((df[col] == "").to_numpy())
            if empty.size:
                raise DatasetFormatError(
                    f"{_MASTER}: empty {col!r} in data row(s) {_row_list(empty)}", path=path, column=col
                )
        dup = np.flatnonzero(df["dicom_id"].duplicated().to_numpy())
        if dup.size:
            raise DatasetFormatError(
                f"{_MASTER}: duplicate dicom_id in data row(s) {_row_list(dup)}", path=path, column="dicom_id"
            )
        posix = [PurePosixPath(p.replace("\\", "/")) for p in df["path"].tolist()]
        bad_path = [i for i, p in enumerate(posix) if p.is_absolute() or ".." in p.parts]
        if bad_path:
            raise DatasetFormatError(
                f"{_MASTER}: 'path' must be relative to the images root without '..' "
                f"(data row(s) {_row_list(np.asarray(bad_path))})",
                path=path,
                column="path",
            )
        if "split" in df.columns:
            df["split"] = df["split"].str.strip().str.lower()
            empty = np.flatnonzero((df["split"] == "").to_numpy())
            if empty.size:
                raise DatasetFormatError(
                    f"{_MASTER}: empty 'split' in data row(s) {_row_list(empty)}", path=path, column="split"
                )
        return df.reset_index(drop=True)

    def _parse_labels(self, df: pd.DataFrame) -> np.ndarray:
        path = self.root / "master_sheet.csv"
        labels = np.zeros((len(df), len(self.class_names)), dtype=np.float32)
        for k, name in enumerate(self.class_names):
            values = _numeric(df[name], _MASTER, name, path, allow_missing=False)
            if not np.isin(values, (0.0, 1.0)).all():
                raise DatasetFormatError(f"{_MASTER}: column {name!r} must be 0 or 1", path=path, column=name)
            labels[:, k] = values
        not_one_hot = np.flatnonzero(labels.sum(axis=1) != 1)
        if not_one_hot.size:
            raise DatasetFormatError(
                f"{_MASTER}: label columns {list(self.class_names)} are not one-hot in data row(s) "
                f"{_row_list(not_one_hot)}",
                path=path,
                column=self.class_names[0],
            )
        return labels

    def _read_fixations(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Parse ``fixations.csv`` once: (x, y, duration) float64 rows + ``DICOM_ID -> row indices``."""
        path = self.root / "fixations.csv"
        wanted = set(_REQUIRED_FIXATIONS)
        df = _read_csv(path, _FIXATIONS, usecols=lambda c: str(c).strip() in wanted, dtype=str)
        require_columns(df.columns, _REQUIRED_FIXATIONS, _FIXATIONS, path)
        ids = df["DICOM_ID"].fillna("").str.strip()
        if (ids == "").any():
            raise DatasetFormatError(f"{_FIXATIONS}: empty 'DICOM_ID'", path=path, column="DICOM_ID")
        values = np.column_stack(
            [
                _numeric(df["X_ORIGINAL"], _FIXATIONS, "X_ORIGINAL", path, allow_missing=True),
                _numeric(df["Y_ORIGINAL"], _FIXATIONS, "Y_ORIGINAL", path, allow_missing=True),
                _numeric(df["FPOGD"], _FIXATIONS, "FPOGD", path, allow_missing=True),
            ]
        ).reshape(len(df), 3)
        groups = {
            str(k): np.asarray(v, dtype=np.intp) for k, v in ids.groupby(ids, sort=False).indices.items()
        }
        return values, groups

    def _read_boxes(self) -> dict[str, dict[str, tuple[float, float, float, float]]]:
        path = self.root / "bounding_boxes.csv"
        df = _read_csv(path, _BOXES, dtype=str, keep_default_na=False)
        require_columns(df.columns, BOUNDING_BOX_COLUMNS, _BOXES, path)
        coords = [_numeric(df[c], _BOXES, c, path, allow_missing=False) for c in ("x1", "x2", "y1", "y2")]
        out: dict[str, dict[str, tuple[float, float, float, float]]] = {}
        ids = df["dicom_id"].str.strip().tolist()
        names = df["bbox_name"].str.strip().tolist()
        for i, (dicom_id, name) in enumerate(zip(ids, names, strict=True)):
            per_image = out.setdefault(dicom_id, {})
            # First occurrence wins if a name repeats for one image.
            per_image.setdefault(name, (coords[0][i], coords[1][i], coords[2][i], coords[3][i]))
        return out

    # ---------------------------------------------------------------------------------- case records

    def _build_cases(self, positions: np.ndarray) -> list[EgdCaseInfo]:
        df = self._full_frame
        path = self.root / "master_sheet.csv"
        has_site = "site" in df.columns
        has_marker = all(c in df.columns for c in _MARKER_COLUMNS)
        markers = (
            np.column_stack([_numeric(df[c], _MASTER, c, path, allow_missing=True) for c in _MARKER_COLUMNS])
            if has_marker
            else None
        )
        computed = self._computed_split if not self._has_split_column else None
        cases = []
        for pos in positions.tolist():
            row = df.iloc[pos]
            age, bucket = parse_anchor_age(row["anchor_age"])
            gender = _optional_str(row["gender"])
            if self._has_split_column:
                split = row["split"]
            elif computed is not None:
                split = str(computed.iloc[pos])
            else:
                split = None
            marker = None
            if markers is not None and np.isfinite(markers[pos]).all():
                marker = (
                    float(markers[pos, 0]),
                    float(markers[pos, 1]),
                    float(markers[pos, 2]),
                    float(markers[pos, 3]),
                )
            label = self._labels[pos].copy()
            cases.append(
                EgdCaseInfo(
                    dicom_id=row["dicom_id"],
                    patient_id=row["patient_id"],
                    study_id=row["study_id"],
                    path=self.images_root / row["path"],
                    relative_path=row["path"],
                    label=label,
                    label_index=int(np.argmax(label)),
                    gender=gender.upper() if gender else None,
                    age=age,
                    age_bucket=bucket,
                    split=split,
                    site=_optional_str(row["site"]) if has_site else None,
                    marker_box=marker,
                )
            )
        return cases

    def _split_labels(self) -> pd.Series:
        """Split of every row of the full master sheet (column, or computed patient split, cached)."""
        if self._has_split_column:
            return self._full_frame["split"]
        if self._computed_split is None:
            self._computed_split = patient_split(
                self._full_frame, test_fraction=self.test_fraction, seed=self.split_seed
            )
        return self._computed_split

    def _restrict_in_place(self, name: str) -> None:
        name = str(name).strip().lower()
        labels = self._split_labels()
        if not self._has_split_column and name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' without a split column, got {name!r}")
        keep = np.flatnonzero((labels.iloc[self._positions] == name).to_numpy())
        self._positions = self._positions[keep]
        self._split_name = name
        self._cases = self._build_cases(self._positions)

    # ---------------------------------------------------------------------------------- public API

    @property
    def cases(self) -> list[EgdCaseInfo]:
        """Per-image metadata, in master-sheet order (restricted to this dataset's split)."""
        return list(self._cases)

    @property
    def frame(self) -> pd.DataFrame:
        """The master-sheet rows of this dataset (all columns as strings; index = master-sheet row)."""
        return self._full_frame.iloc[self._positions].copy()

    @property
    def split_name(self) -> str | None:
        """The split this dataset is restricted to, or ``None``."""
        return self._split_name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> EgdDataset:
        """A new dataset restricted to split ``name`` (``"train"`` / ``"test"``; see the class docstring).

        Without a ``split`` column the assignment is :func:`patient_split` over the *whole* master sheet, so
        ``split("train")`` and ``split("test")`` partition the patients whatever subset ``self`` is.
        """
        other = copy.copy(self)
        other._restrict_in_place(name)
        return other

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in ``class_names`` order."""
        counts = (
            self._labels[self._positions].sum(axis=0) if len(self._positions) else np.zeros(self.num_classes)
        )
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def raw_fixations(self, index: int) -> np.ndarray:
        """All ``fixations.csv`` rows of case ``index`` as float64 ``N x 3`` (x, y, duration), file order,
        *unfiltered* (``-1`` rows included). ``(0, 3)`` when the image has no fixation rows."""
        dicom_id = self._cases[self._check_index(index)].dicom_id
        rows = self._fix_groups.get(dicom_id)
        if rows is None:
            return np.zeros((0, 3), dtype=np.float64)
        return self._fix_values[rows].copy()

    def boxes(self, index: int) -> dict[str, tuple[float, float, float, float]]:
        """``bounding_boxes.csv`` boxes of case ``index``: ``bbox_name -> (x1, x2, y1, y2)``."""
        return dict(self._boxes.get(self._cases[self._check_index(index)].dicom_id, {}))

    def load_image(self, index: int) -> np.ndarray:
        """float32 ``H x W`` pixels in [0, 1] of case ``index`` via :func:`mimicry.dicom.read_dicom`.

        Raises:
            MissingDatasetFileError: the DICOM is missing (the message names the case index only).
            mimicry.dicom.DicomIngestError: the DICOM is refused by the ingest settings or undecodable.
        """
        i = self._check_index(index)
        path = self._cases[i].path
        if not path.is_file():
            raise MissingDatasetFileError(f"DICOM of case #{i} not found under images_root", path=path)
        from mimicry.dicom import read_dicom  # lazy: metadata-only use must not need the DICOM stack

        pixels = np.asarray(read_dicom(path, settings=self.ingest_settings).pixels, dtype=np.float32)
        if pixels.ndim != 2:
            raise DatasetFormatError(f"DICOM of case #{i} is not a single 2-D frame", path=path)
        return pixels

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int) -> EgdSample:
        i = self._check_index(index)
        info = self._cases[i]
        image = self.load_image(i)
        shape = (int(image.shape[0]), int(image.shape[1]))
        fixations = valid_fixations(self.raw_fixations(i), shape)
        anatomy = {}
        for name in ANATOMY_NAMES:
            png = self.root / "audio_segmentation_transcripts" / info.dicom_id / f"{name}.png"
            if png.is_file():
                anatomy[name] = self._read_case_mask(png, f"anatomy mask {name!r}", i, shape)
        finding_png = self.root / "masks" / info.dicom_id / "finding.png"
        finding = (
            self._read_case_mask(finding_png, "finding mask", i, shape) if finding_png.is_file() else None
        )
        return EgdSample(
            info=info,
            image=image,
            heatmap=static_heatmap(fixations, shape, self.heatmap_sigma_px),
            fixation_map=binary_fixation_map(fixations, shape),
            fixations=fixations,
            anatomy=anatomy,
            boxes=self.boxes(i),
            finding_mask=finding,
        )

    def __iter__(self) -> Iterator[EgdSample]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        split = f", split={self._split_name!r}" if self._split_name else ""
        return (
            f"EgdDataset(n={len(self)}{split}, classes={self.class_counts()}, sigma={self.heatmap_sigma_px})"
        )

    # ---------------------------------------------------------------------------------- helpers

    def _check_index(self, index: int) -> int:
        n = len(self._positions)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} cases")
        return i

    @staticmethod
    def _read_case_mask(path: Path, label: str, index: int, shape: tuple[int, int]) -> np.ndarray:
        mask = read_mask_png(path, label=f"{label} of case #{index}")
        if mask.shape != shape:
            raise DatasetFormatError(
                f"{label} of case #{index} has shape {mask.shape}, the DICOM has {shape}", path=path
            )
        return mask
