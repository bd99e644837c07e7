"""Contact sheet: a PNG grid of a few cases for a person to check that the phantoms look right.

Each case gets two panels (brief, "Contact sheet"): the film as a viewer displays it (read back from the
DICOM with pydicom: modality LUT, VOI LUT window, MONOCHROME1 inversion), and the same film with the static
fixation heatmap (fixation counts blurred with ``heatmap_sigma_px``), the fixations, the lung / mediastinum
/ finding outlines and the marker box. Titles give class, site, split, photometric interpretation and
transfer syntax. Cases are picked round-robin over the classes so every class shows up.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy.ndimage import gaussian_filter

from mimicry.data.phantom.config import CLASS_NAMES, IncompleteDatasetError, heatmap_sigma_px

__all__ = ["display_image", "render_contact_sheet"]

_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.1": "explicit LE",
    "1.2.840.10008.1.2.5": "RLE",
    "1.2.840.10008.1.2.4.80": "JPEG-LS",
    "1.2.840.10008.1.2.4.90": "J2K",
    "1.2.840.10008.1.2.1.99": "deflate",
}


def display_image(ds: pydicom.Dataset) -> np.ndarray:
    """Float image in ``[0, 1]`` as displayed (modality LUT, first VOI window, MONOCHROME1 inverted)."""
    arr = ds.pixel_array
    modality = apply_modality_lut(arr, ds)
    shown = apply_voi_lut(modality, ds).astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    bits = int(ds.BitsStored)
    lo, hi = intercept, slope * (2**bits - 1) + intercept
    out = np.clip((shown - lo) / (hi - lo), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return out


def _pick(df: pd.DataFrame, n: int) -> list[int]:
    labels = df[list(CLASS_NAMES)].astype(int).idxmax(axis=1)
    queues = {c: list(np.flatnonzero(labels.to_numpy() == c)) for c in CLASS_NAMES}
    picked: list[int] = []
    while len(picked) < min(n, len(df)):
        for c in CLASS_NAMES:
            if queues[c] and len(picked) < n:
                picked.append(int(queues[c].pop(0)))
        if not any(queues.values()):
            break
    return picked


def _read_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if path.is_file():
        return np.asarray(Image.open(path)) > 0
    return np.zeros(shape, dtype=bool)


def render_contact_sheet(root: str | Path, out_png: str | Path, n: int = 8, cases_per_row: int = 4) -> Path:
    """Render ``n`` cases of the dataset at ``root`` into ``out_png`` and return its path.

    Raises:
        IncompleteDatasetError: ``root`` has no ``master_sheet.csv``.
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    root = Path(root)
    sheet = root / "master_sheet.csv"
    if not sheet.is_file():
        raise IncompleteDatasetError(f"no master_sheet.csv in {root}")
    df = pd.read_csv(sheet, dtype={"dicom_id": str}, keep_default_na=False)
    fix = pd.read_csv(root / "fixations.csv", usecols=["DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL"])
    groups = {k: g for k, g in fix.groupby("DICOM_ID")}
    sigma = None
    meta_path = root / "phantom.json"
    if meta_path.is_file():
        sigma = json.loads(meta_path.read_text()).get("heatmap_sigma_px")
    picked = _pick(df, n)
    per_row = max(1, min(cases_per_row, len(picked)))
    rows = -(-len(picked) // per_row)
    fig = Figure(figsize=(2 * per_row * 2.6, rows * 2.9), dpi=110)
    FigureCanvasAgg(fig)
    for k, i in enumerate(picked):
        rec = df.iloc[i]
        ds = pydicom.dcmread(root / rec["path"])
        img = display_image(ds)
        h, w = img.shape
        ax_raw = fig.add_subplot(rows, 2 * per_row, 2 * k + 1)
        ax_ov = fig.add_subplot(rows, 2 * per_row, 2 * k + 2)
        for ax in (ax_raw, ax_ov):
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_axis_off()
        label = CLASS_NAMES[int(np.argmax([int(rec[c]) for c in CLASS_NAMES]))]
        syntax = _SYNTAX_NAMES.get(str(ds.file_meta.TransferSyntaxUID), str(ds.file_meta.TransferSyntaxUID))
        title = f"{label} | {rec.get('site', '')} | {rec.get('split', '')}"
        ax_raw.set_title(f"{title}\n{ds.PhotometricInterpretation} {syntax}", fontsize=7)
        g = groups.get(rec["dicom_id"])
        pts = np.empty((0, 2))
        if g is not None:
            valid = (g["X_ORIGINAL"] >= 0) & (g["Y_ORIGINAL"] >= 0)
            pts = g.loc[valid, ["X_ORIGINAL", "Y_ORIGINAL"]].to_numpy(dtype=float)
        counts = np.zeros((h, w))
        for x, y in pts.astype(int):
            if 0 <= x < w and 0 <= y < h:
                counts[y, x] += 1
        heat = gaussian_filter(counts, sigma if sigma else heatmap_sigma_px(w))
        if heat.max() > 0:
            heat = heat / heat.max()
            ax_ov.imshow(np.ma.masked_less(heat, 0.08), cmap="inferno", alpha=0.5, vmin=0.0, vmax=1.0)
        ax_ov.scatter(pts[:, 0], pts[:, 1], s=3, c="cyan", linewidths=0)
        seg = root / "audio_segmentation_transcripts" / rec["dicom_id"]
        for name, colour in (("right_lung", "lime"), ("left_lung", "lime"), ("mediastinum", "deepskyblue")):
            m = _read_png(seg / f"{name}.png", (h, w))
            if m.any():
                ax_ov.contour(m.astype(float), levels=[0.5], colors=colour, linewidths=0.6)
        finding = _read_png(root / "masks" / rec["dicom_id"] / "finding.png", (h, w))
        if finding.any():
            ax_ov.contour(finding.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        if "marker_x1" in rec:
            x1, x2, y1, y2 = (float(rec[c]) for c in ("marker_x1", "marker_x2", "marker_y1", "marker_y2"))
            ax_ov.add_patch(
                Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, ec="magenta", lw=0.8)
            )
        ax_ov.set_title(f"gaze ({len(pts)} fix.), masks, marker", fontsize=7)
    fig.tight_layout(pad=0.3)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
