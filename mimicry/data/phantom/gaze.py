"""Simulated radiologist eye gaze: a scanpath of fixations written as EGD ``fixations.csv`` rows.

Reading model (brief, "Simulated radiologist gaze"; Karargyris et al. 2021 describe a systematic read): a
first look at the mediastinum, a top-to-bottom sweep of the patient's right lung (image left) and then the
left lung by zone, the heart, both costophrenic angles and hila, then dwelling on what is abnormal: repeated,
longer fixations on pneumonia opacities; on the heart borders, the perihilar haze and the effusions in CHF;
a second, looser sweep of the lungs for a normal film. A few glances leave the image (``X_ORIGINAL =
Y_ORIGINAL = -1``). Fixations never land on the burned-in site marker: radiologists do not read it, and the
audit relies on gaze being free of the shortcut.

Screen geometry (EGD ``master_sheet.csv`` ``image_*_pad`` columns): the film is letterboxed on a 1920 x 1080
screen with the given pads, so for an on-image fixation at continuous image coordinates ``(cx, cy)`` (pixel
``j`` spans ``[j, j + 1)``)::

    FPOGX = (image_left_pad + cx * (1920 - image_left_pad - image_right_pad) / W) / 1920   (5 decimals)
    X_ORIGINAL = floor((FPOGX * 1920 - image_left_pad) * W / (1920 - image_left_pad - image_right_pad))

and likewise for y with the top/bottom pads and 1080; ``X_ORIGINAL`` is recomputed from the *rounded*
``FPOGX`` so the two columns agree exactly. The other Gazepoint columns follow the relations seen in EGD:
``Time (in secs) = FPOGS + FPOGD``, ``TIMETICK`` = a 10 MHz tick counter, ``CNT`` ~ 60 Hz sample counter,
``SACCADE_MAG`` = screen-pixel distance from the previous fixation and ``SACCADE_DIR`` its direction in
degrees (counter-clockwise from +x, screen y pointing down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimicry.data import egd as egd_format
from mimicry.data.phantom.anatomy import Box, mask_box
from mimicry.data.phantom.config import SCREEN_SIZE
from mimicry.data.phantom.plan import GAZE_STREAM, CasePlan, case_rng
from mimicry.data.phantom.render import RenderedFilm

__all__ = ["FIXATION_COLUMNS", "Scanpath", "fixation_rows", "simulate_scanpath"]

FIXATION_COLUMNS: tuple[str, ...] = egd_format.FIXATION_COLUMNS
"""EGD ``fixations.csv`` header, in file order (defined by the reader)."""

_TICK_BASE = 690_000_000_000
_MEDIA_SLOT_S = 900.0


@dataclass
class Scanpath:
    """Fixations of one read, in viewing order.

    Attributes:
        x, y: pixel-centre image coordinates (column, row), float; NaN for off-image glances.
        start, duration: fixation start (s from the start of the read) and duration (s).
        aoi: what each fixation was aimed at (``"right_lung"``, ``"finding"``, ``"off_image"``, ...).
    """

    x: np.ndarray
    y: np.ndarray
    start: np.ndarray
    duration: np.ndarray
    aoi: list[str]

    @property
    def on_image(self) -> np.ndarray:
        return ~np.isnan(self.x)


@dataclass(frozen=True)
class _Target:
    """An area to look at: pixels of ``mask`` inside the box ``[x0, x1] x [y0, y1]`` (and a disc, if any)."""

    mask: np.ndarray
    x0: int
    x1: int
    y0: int
    y1: int
    disc: tuple[float, float, float] | None = None


_CANDIDATES = 24
"""Uniform candidate points drawn per fixation (in one generator call for the whole scanpath)."""


def _first_hits(targets: list[_Target], uv: np.ndarray) -> list[tuple[float, float] | None]:
    """Rejection sampling for every fixation at once: ``uv`` (``n x 2 x k`` uniforms in ``[0, 1)``) give
    ``k`` candidate pixels in each target's box; the first that lies in the target is taken (``None`` when
    none does: :func:`_sample` then draws more). One mask lookup per distinct target, not per fixation.
    """
    n = len(targets)
    if n == 0:
        return []
    bounds = np.array([(t.x0, t.x1, t.y0, t.y1) for t in targets], dtype=np.intp)
    x0, x1, y0, y1 = (bounds[:, i : i + 1] for i in range(4))
    xs = np.minimum(x0 + (uv[:, 0] * (x1 - x0 + 1)).astype(np.intp), x1)
    ys = np.minimum(y0 + (uv[:, 1] * (y1 - y0 + 1)).astype(np.intp), y1)
    ok = np.empty(xs.shape, dtype=bool)
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(id(t), []).append(i)
    for rows in groups.values():
        t = targets[rows[0]]
        gx, gy = xs[rows], ys[rows]
        hit = t.mask[gy, gx]
        if t.disc is not None:
            cx, cy, r = t.disc
            hit &= (gx - cx) ** 2 + (gy - cy) ** 2 <= r * r
        ok[rows] = hit
    first = ok.argmax(axis=1)
    found = ok[np.arange(n), first].tolist()
    px, py = xs[np.arange(n), first].tolist(), ys[np.arange(n), first].tolist()
    return [(float(a), float(b)) if f else None for a, b, f in zip(px, py, found, strict=True)]


def _sample(rng: np.random.Generator, t: _Target, fallback: np.ndarray) -> tuple[float, float]:
    """A random pixel of the target by rejection sampling in its box; falls back to any pixel of it."""
    for _ in range(4):
        xs = rng.integers(t.x0, t.x1 + 1, 16)
        ys = rng.integers(t.y0, t.y1 + 1, 16)
        ok = t.mask[ys, xs]
        if t.disc is not None:
            cx, cy, r = t.disc
            ok &= (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        hit = np.flatnonzero(ok)
        if hit.size:
            return float(xs[hit[0]]), float(ys[hit[0]])
    ys, xs = np.nonzero(t.mask[t.y0 : t.y1 + 1, t.x0 : t.x1 + 1])
    if ys.size == 0:
        ys, xs = np.nonzero(fallback)
        i = int(rng.integers(ys.size))
        return float(xs[i]), float(ys[i])
    i = int(rng.integers(ys.size))
    return float(xs[i] + t.x0), float(ys[i] + t.y0)


def simulate_scanpath(plan: CasePlan, film: RenderedFilm, seed: int) -> Scanpath:
    """Simulate one radiologist read of ``film`` (uses the case's ``GAZE_STREAM`` generator only)."""
    rng = case_rng(seed, GAZE_STREAM, plan.index)
    anat = film.anatomy
    size = anat.size
    masks = anat.masks
    boxes = anat.boxes()
    lungs = anat.lungs()
    mx1, mx2, my1, my2 = film.marker_box
    jitter = 0.012 * size
    full = (0, size - 1, 0, size - 1)

    def target(mask: np.ndarray, box: Box | None, disc: tuple[float, float, float] | None = None) -> _Target:
        x0, x1, y0, y1 = box if box is not None else full
        return _Target(mask, x0, x1, y0, y1, disc)

    def union(*names: str) -> Box | None:
        return _union([boxes[n] for n in names if n in boxes])

    heart_box = boxes.get("cardiac silhouette")
    plan_aois: list[tuple[str, _Target, bool]] = []  # (aoi, target, dwell)

    def visit(name: str, t: _Target, count: int, dwell: bool = False) -> None:
        plan_aois.extend((name, t, dwell) for _ in range(count))

    visit(
        "mediastinum",
        target(anat.mediastinum(), union("upper mediastinum", "cardiac silhouette")),
        int(rng.integers(1, 3)),
    )
    finding = film.finding
    finding_box = mask_box(finding) if plan.label != "Normal" else None
    finding_t = (
        target(finding, finding_box)
        if finding_box is not None
        else target(lungs, union("left lung", "right lung"))
    )
    for side in ("right", "left"):
        lung = masks[f"{side}_lung"]
        for zone in ("upper", "mid", "lower"):
            visit(
                f"{side}_lung_{zone}",
                target(lung, boxes.get(f"{side} {zone} lung zone")),
                int(rng.integers(2, 4)),
            )
        if plan.label == "pneumonia" and finding_box is not None and (finding & lung).any():
            visit("finding", finding_t, int(rng.integers(3, 6)), dwell=True)
    visit("heart", target(masks["heart"], heart_box), int(rng.integers(2, 4)))
    for side in ("right", "left"):
        cx, cy = anat.points[f"{side}_cp"]
        visit(
            f"{side}_cp", target(masks[f"{side}_lung"], boxes.get(f"{side} lung"), (cx, cy, 0.08 * size)), 1
        )
        hx, hy = anat.points[f"{side}_hilum"]
        visit(f"{side}_hilum", target(lungs, union("left lung", "right lung"), (hx, hy, 0.06 * size)), 1)
    if plan.label == "pneumonia":
        visit("finding", finding_t, int(rng.integers(5, 9)), dwell=True)
    elif plan.label == "CHF":
        heart = masks["heart"]
        edge = (heart & ~np.roll(heart, 3, axis=1)) | (heart & ~np.roll(heart, -3, axis=1))
        visit("heart_border", target(edge, heart_box), int(rng.integers(3, 6)), dwell=True)
        visit("finding", finding_t, int(rng.integers(6, 10)), dwell=True)
    else:
        visit("lungs", target(lungs, union("left lung", "right lung")), int(rng.integers(5, 9)))

    n_off = int(rng.integers(1, 4))
    total = len(plan_aois) + n_off
    off_slots = set(rng.choice(np.arange(1, total), size=n_off, replace=False).tolist())
    xs_out: list[float] = []
    ys_out: list[float] = []
    aoi_out: list[str] = []
    dwell_out: list[bool] = []
    # One generator call each for every fixation's first candidates and its jitter (most fixations need
    # nothing more); retries draw afresh.
    first_pts = _first_hits([t for _, t, _ in plan_aois], rng.random((len(plan_aois), 2, _CANDIDATES)))
    first_jitter = rng.normal(0.0, jitter, (len(plan_aois), 2)).tolist()
    k = 0
    for slot in range(total):
        if slot in off_slots or k >= len(plan_aois):
            xs_out.append(math.nan)
            ys_out.append(math.nan)
            aoi_out.append("off_image")
            dwell_out.append(False)
            continue
        name, t, dwell = plan_aois[k]
        for attempt in range(12):
            if attempt == 0:
                pt = first_pts[k]
                px, py = pt if pt is not None else _sample(rng, t, lungs)
                jx, jy = first_jitter[k]
            else:
                px, py = _sample(rng, t, lungs)
                jx, jy = float(rng.normal(0.0, jitter)), float(rng.normal(0.0, jitter))
            fx = min(max(px + jx, 0.0), size - 1.0)
            fy = min(max(py + jy, 0.0), size - 1.0)
            if not (mx1 - 1 <= round(fx) <= mx2 + 1 and my1 - 1 <= round(fy) <= my2 + 1):
                break
        else:  # pragma: no cover - markers sit outside the lungs, so a clean point is always found
            fx, fy = px, py
        k += 1
        xs_out.append(fx)
        ys_out.append(fy)
        aoi_out.append(name)
        dwell_out.append(dwell)

    n = len(xs_out)
    dwell_arr = np.asarray(dwell_out)
    dur = np.where(dwell_arr, rng.gamma(2.5, 0.18, n) + 0.12, rng.gamma(2.2, 0.1, n) + 0.08)
    gaps = rng.uniform(0.02, 0.06, n)
    start = float(rng.uniform(0.0, 0.05)) + np.concatenate([[0.0], np.cumsum(dur[:-1] + gaps[:-1])])
    return Scanpath(
        x=np.asarray(xs_out, dtype=np.float64),
        y=np.asarray(ys_out, dtype=np.float64),
        start=start,
        duration=dur,
        aoi=aoi_out,
    )


def _union(boxes: list[Box]) -> Box | None:
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        max(b[1] for b in boxes),
        min(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


_ROW_FORMAT = (
    "{},{},{},{},{:.5f},{}.0,{:.5f},{:.5f},{:.5f},{:.5f},{},1,{:.5f},{:.5f},1,{:.5f},{:.5f},{:.5f},{:.5f},1,"
    "{:.5f},{:.5f},{:.5f},{:.5f},1,{},{:.5f},{},{:.5f},1,{:.5f},1,{:.5f},{:.5f},0.0,{},{}\n"
)


def fixation_rows(plan: CasePlan, path: Scanpath, size: int, seed: int) -> list[str]:
    """EGD ``fixations.csv`` lines (newline-terminated, :data:`FIXATION_COLUMNS` order) for one scanpath."""
    rng = case_rng(seed, GAZE_STREAM, plan.index + 1_000_000_007)
    sw, sh = SCREEN_SIZE
    top, bottom, left, right = plan.pads
    dw, dh = sw - left - right, sh - top - bottom
    n = path.x.size
    fpogx = np.empty(n)
    fpogy = np.empty(n)
    xo = np.full(n, -1, dtype=np.int64)
    yo = np.full(n, -1, dtype=np.int64)
    on = path.on_image
    # On-image fixations: continuous coordinate = pixel centre + 0.5.
    fpogx[on] = np.round((left + (path.x[on] + 0.5) * dw / size) / sw, 5)
    fpogy[on] = np.round((top + (path.y[on] + 0.5) * dh / size) / sh, 5)
    xo[on] = np.clip(np.floor((fpogx[on] * sw - left) * size / dw), 0, size - 1).astype(np.int64)
    yo[on] = np.clip(np.floor((fpogy[on] * sh - top) * size / dh), 0, size - 1).astype(np.int64)
    # Off-image glances: somewhere in the side pads (the letterbox), or above/below when those pads exist.
    off = ~on
    n_off = int(off.sum())
    if n_off:
        side = rng.random(n_off) < 0.5
        sx = np.where(
            side,
            rng.uniform(0.1 * left, 0.9 * left, n_off),
            rng.uniform(sw - 0.9 * right, sw - 0.1 * right, n_off),
        )
        fpogx[off] = np.round(sx / sw, 5)
        fpogy[off] = np.round(rng.uniform(0.1, 0.9, n_off), 5)
    bpogx = np.clip(np.round(fpogx + rng.normal(0.0, 0.01, n), 5), 0.0, 1.0)
    bpogy = np.clip(np.round(fpogy + rng.normal(0.0, 0.01, n), 5), 0.0, 1.0)
    fpogs = np.round(path.start, 5)
    fpogd = np.round(path.duration, 5)
    time_s = np.round(fpogs + fpogd, 5)
    tick0 = _TICK_BASE + round(plan.index * _MEDIA_SLOT_S * 1e7)
    ticks = tick0 + np.round(time_s * 1e7).astype(np.int64)
    cnt = np.round(time_s * 60.0).astype(np.int64) + 2
    dx = np.diff(fpogx * sw, prepend=fpogx[0] * sw)
    dy = np.diff(fpogy * sh, prepend=fpogy[0] * sh)
    mag = np.hypot(dx, dy)
    ang = np.degrees(np.arctan2(-dy, dx)) % 360.0
    ang[mag == 0] = 0.0
    pupil = rng.normal(0.0, 1.0, (n, 8))
    blink = rng.random(n) < 0.06
    bkid = np.cumsum(blink) * blink
    bkdur = np.where(blink, rng.uniform(0.08, 0.3, n), 0.0)
    bkpmin = int(rng.integers(12, 26))
    # Python floats / ints format several times faster than numpy scalars (same text).
    pu = (
        0.378 + 0.004 * pupil[:, 0], 0.594 + 0.003 * pupil[:, 1], 18.2 + 0.4 * pupil[:, 2],
        1.05 + 0.02 * pupil[:, 3], 0.637 + 0.004 * pupil[:, 4], 0.598 + 0.003 * pupil[:, 5],
        18.4 + 0.4 * pupil[:, 6], 1.05 + 0.02 * pupil[:, 7],
    )  # fmt: skip
    cols = zip(
        cnt.tolist(), time_s.tolist(), ticks.tolist(), fpogx.tolist(), fpogy.tolist(), fpogs.tolist(),
        fpogd.tolist(), range(1, n + 1), bpogx.tolist(), bpogy.tolist(), *(c.tolist() for c in pu),
        bkid.tolist(), bkdur.tolist(), (3.6 + 0.1 * pupil[:, 2]).tolist(), (3.7 + 0.1 * pupil[:, 6]).tolist(),
        mag.tolist(), ang.tolist(), xo.tolist(), yo.tolist(), strict=True,
    )  # fmt: skip
    head = (plan.session_id, plan.media_id, plan.dicom_id)
    rows: list[str] = []
    for c in cols:
        rows.append(_ROW_FORMAT.format(*head, *c[:20], bkpmin, *c[20:]))
    return rows
