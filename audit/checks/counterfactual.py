"""Counterfactual shortcut check: does painting out the burned-in marker change the prediction?

Saliency mass on the marker (:mod:`audit.checks.shortcut`) says where a *map* points; this check asks the
*model*. For every reference case with a recorded marker box (phantoms; docs/methods.md, "The phantom
benchmark"), the box grown by ``margin`` pixels is painted over, in the native image, with the median of a
``ring``-pixel band around it (the local background), and the case is preprocessed and predicted again. As a
control, the same-sized box mirrored to the other side of the image (same rows, so the same distance from the
lungs and the same background) is painted over in the same way: a model that ignores the marker changes about
as much for either, one that reads it changes far more for the marker. In black-box mode the same edit is
made to the stored pixel values of the DICOM (:func:`paint_out_dicom`) and the service predicts the edited
files.

Per case (lower is better for all four):

* ``marker_tv``: total-variation distance ``0.5 * sum |p - p'|`` between the predicted class distributions
  before and after painting out the marker;
* ``marker_flip``: 1 when the predicted class changes, else 0;
* ``control_tv``, ``control_flip``: the same for the mirrored control box.

``baselines["control"]`` maps ``marker_tv`` / ``marker_flip`` to the control's means, so a policy can ask
for "no more than F x what painting out an empty corner does". The check does not depend on the saliency
method; the runner attaches the same result to every audited method's row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO

import numpy as np
import pydicom

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.reference import ReferenceCase
from mimicry.preprocess import PreprocessSpec, preprocess

__all__ = [
    "COUNTERFACTUAL_METRICS",
    "marker_occlusion",
    "occlusion_boxes",
    "occlusion_result",
    "occlusion_row",
    "occlusion_scores",
    "paint_out",
    "paint_out_dicom",
]

COUNTERFACTUAL_METRICS: dict[str, int] = {
    "marker_tv": -1,
    "marker_flip": -1,
    "control_tv": -1,
    "control_flip": -1,
}

Box = tuple[int, int, int, int]
"""Inclusive ``(y1, y2, x1, x2)`` of a box in the native image."""


def occlusion_boxes(marker: np.ndarray, margin: int = 1) -> tuple[Box, Box] | None:
    """The marker's box grown by ``margin`` (clipped to the image) and its left-right mirror image.

    Returns ``None`` when the marker mask is empty, or when the mirrored box would overlap the marker box
    (a marker across the vertical midline has no empty counterpart).
    """
    rows = np.flatnonzero(marker.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(marker.any(axis=0))
    h, w = marker.shape
    y1, y2 = max(0, int(rows[0]) - margin), min(h - 1, int(rows[-1]) + margin)
    x1, x2 = max(0, int(cols[0]) - margin), min(w - 1, int(cols[-1]) + margin)
    mx1, mx2 = w - 1 - x2, w - 1 - x1
    if mx1 <= x2 and x1 <= mx2:
        return None
    return (y1, y2, x1, x2), (y1, y2, mx1, mx2)


def paint_out(image: np.ndarray, box: Box, ring: int = 3) -> np.ndarray:
    """A copy of ``image`` with ``box`` filled by the median of the ``ring``-pixel band around it."""
    y1, y2, x1, x2 = box
    h, w = image.shape
    oy1, oy2 = max(0, y1 - ring), min(h - 1, y2 + ring)
    ox1, ox2 = max(0, x1 - ring), min(w - 1, x2 + ring)
    band = image[oy1 : oy2 + 1, ox1 : ox2 + 1].copy()
    inner = np.zeros(band.shape, dtype=bool)
    inner[y1 - oy1 : y2 - oy1 + 1, x1 - ox1 : x2 - ox1 + 1] = True
    outside = band[~inner]
    fill = float(np.median(outside)) if outside.size else float(np.median(image))
    out = np.array(image, dtype=np.float32 if image.dtype == np.float32 else np.float64, copy=True)
    out[y1 : y2 + 1, x1 : x2 + 1] = fill
    return out


def occlusion_scores(
    predict: Callable[[np.ndarray], np.ndarray],
    cases: Sequence[ReferenceCase],
    spec: PreprocessSpec,
    *,
    margin: int = 1,
    ring: int = 3,
) -> list[dict[str, float]]:
    """Per-case scores of :data:`COUNTERFACTUAL_METRICS` for ``cases`` (one forward batch of 3 x N inputs).

    Cases without a marker (or with no empty mirror box) get NaN.

    Raises:
        CheckInputError: ``predict`` returns a shape other than ``[N, C]`` for ``N`` inputs.
    """
    nan = float("nan")
    jobs: list[tuple[int, Box, Box]] = []
    for j, c in enumerate(cases):
        boxes = occlusion_boxes(c.marker, margin) if c.marker is not None else None
        if boxes is not None:
            jobs.append((j, *boxes))
    out = [dict.fromkeys(COUNTERFACTUAL_METRICS, nan) for _ in cases]
    if not jobs:
        return out
    xs = [cases[j].x for j, _, _ in jobs]
    xs += [preprocess(paint_out(cases[j].image, mbox, ring), spec)[0] for j, mbox, _ in jobs]
    xs += [preprocess(paint_out(cases[j].image, cbox, ring), spec)[0] for j, _, cbox in jobs]
    p = np.asarray(predict(np.stack(xs).astype(np.float32)), dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(xs):
        raise CheckInputError(f"predict returned shape {p.shape} for {len(xs)} inputs")
    n = len(jobs)
    for i, (j, _, _) in enumerate(jobs):
        out[j] = occlusion_row(p[i], p[n + i], p[2 * n + i])
    return out


def occlusion_row(original: np.ndarray, painted: np.ndarray, control: np.ndarray) -> dict[str, float]:
    """The four per-case metrics from the class probabilities of the original, the marker-painted and the
    control-painted image (same class order)."""
    orig = np.asarray(original, dtype=np.float64)
    painted = np.asarray(painted, dtype=np.float64)
    control = np.asarray(control, dtype=np.float64)
    top = int(np.argmax(orig))
    return {
        "marker_tv": 0.5 * float(np.abs(orig - painted).sum()),
        "marker_flip": float(int(np.argmax(painted)) != top),
        "control_tv": 0.5 * float(np.abs(orig - control).sum()),
        "control_flip": float(int(np.argmax(control)) != top),
    }


def paint_out_dicom(dicom: bytes, box: Box, ring: int = 3) -> bytes:
    """The DICOM with ``box`` of its stored pixel values painted out like :func:`paint_out` does to an image.

    Black-box mode sends the edited file to the service: the pixels are decoded (any transfer syntax pydicom
    can decode), the box filled with the median *stored* value of the band around it (the display pipeline is
    monotonic, so this is the band's median display value too, up to the rounding of an even count), and the
    file written again: a compressed file as Explicit VR Little Endian (the edit makes its encoded pixels
    stale), an uncompressed one in its own transfer syntax. Every other element, the SOP Instance UID
    included, is kept.

    Raises:
        CheckInputError: the file cannot be read or decoded, or is not a single-frame greyscale image.
    """
    try:
        ds = pydicom.dcmread(BytesIO(dicom))
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the same image, edited: keep its identity
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom and its codecs raise many types: one typed error leaves here
        raise CheckInputError(f"cannot decode the DICOM to edit it: {type(exc).__name__}") from None
    if pixels.ndim != 2:
        raise CheckInputError(f"expected one greyscale frame, got pixel shape {pixels.shape}")
    edited = paint_out(pixels.astype(np.float64), box, ring)
    ds.PixelData = np.rint(edited).astype(pixels.dtype).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def occlusion_result(
    rows: Sequence[tuple[str, str, dict[str, float]]],
    *,
    method: str = "model",
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """The check's result from ``(case_key, class, scores)`` rows, with the ``control`` baseline."""
    result = CheckResult("counterfactual", method)
    for key, cls, scores in rows:
        result.add_case(key, scores, cls)
    result.summarise(bootstrap)
    nan = float("nan")
    control = {m: result.summaries[m].mean if m in result.summaries else nan for m in COUNTERFACTUAL_METRICS}
    result.baselines["control"] = {"marker_tv": control["control_tv"], "marker_flip": control["control_flip"]}
    return result


def marker_occlusion(
    predict: Callable[[np.ndarray], np.ndarray],
    cases: Sequence[ReferenceCase],
    spec: PreprocessSpec,
    *,
    method: str = "model",
    class_names: Sequence[str] = (),
    margin: int = 1,
    ring: int = 3,
    batch_size: int = 32,
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Counterfactual check over ``cases`` (see the module docstring).

    Args:
        predict: ``float32[N, 1, S, S]`` model inputs → ``[N, C]`` class probabilities.
        cases: reference cases; those without a marker (or with no empty mirror box) get NaN.
        spec: the model's preprocessing (the painted images go through it like the originals).
        method: the row the result is filed under.
        margin: pixels added around the marker box before painting it out.
        ring: width of the background band whose median fills the box.
        batch_size: cases per forward batch (3 inputs each).

    Raises:
        CheckInputError: ``predict`` returns a shape other than ``[N, C]`` for ``N`` inputs.
    """
    rows: list[tuple[str, str, dict[str, float]]] = []
    for start in range(0, len(cases), batch_size):
        chunk = list(cases[start : start + batch_size])
        scores = occlusion_scores(predict, chunk, spec, margin=margin, ring=ring)
        for c, sc in zip(chunk, scores, strict=True):
            cls = class_names[c.label_index] if 0 <= c.label_index < len(class_names) else str(c.label_index)
            rows.append((c.key, cls, sc))
    return occlusion_result(rows, method=method, bootstrap=bootstrap)
