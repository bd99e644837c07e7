"""Pixels of one phantom chest film: anatomy, findings, site marker, nuisance cues, noise, 12-bit storage.

Image model (brief, "Content"): a projection image. Each structure adds to (bone, heart, fluid) or removes
from (air in lungs, trachea, gastric bubble) an attenuation map ``A``; the detector response
``D = 1 - exp(-k A)`` (random exposure ``k``) gives a MONOCHROME2 presentation image in which air is dark
and bone / soft tissue bright, dense regions are compressed as on a real film; then detector blur,
signal-dependent noise and the burned-in marker are applied and ``D`` is quantised to 12 bits with a random
black / white level (exposure and processing vary between films).

Speed (brief: >= 50 films/s at 256 px on one core): structures are evaluated over their bounding regions
(lung-field box, finding box, hilum box) or on a half-resolution grid (spine, ribs); blurs are binomial
passes, wide ones on a reduced copy (:func:`_blur`).

Findings (brief): CHF = cardiothoracic ratio > 0.5 (set in :mod:`.anatomy`), bilateral perihilar haze and
small effusions blunting the costophrenic angles; pneumonia = one or two irregular focal opacities in one
lung zone each. The finding mask is what is drawn (thresholded opacity field) intersected with the lungs.

Shortcut and nuisance cues (brief, "Planted shortcut"): a burned-in marker whose glyph and corner depend on
the site (:data:`MARKER_OF_SITE`), stored at the full-scale value 4095 (anatomy stays below 3950, so the
marker is the brightest thing on the film); ``border`` = a brighter frame along the film edges;
``collimation`` = straight, slightly tilted collimator shutters (unexposed, bright) at the film's sides (and
sometimes its top); ``texture`` = fine vertical anti-scatter-grid lines.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mimicry.data.phantom.anatomy import Anatomy, Box, Pose, body_half_width, build_anatomy, mask_box
from mimicry.data.phantom.config import PhantomConfig
from mimicry.data.phantom.plan import RENDER_STREAM, CasePlan, case_rng

__all__ = [
    "MARKER_OF_SITE",
    "STORED_MAX",
    "RenderedFilm",
    "render_film",
]

STORED_MAX = 4095
"""Largest stored value (BitsStored 12)."""

MARKER_OF_SITE: dict[str, tuple[str, str]] = {
    "site_a": ("L", "top-left"),
    "site_b": ("ring", "top-right"),
    "site_c": ("plus", "bottom-left"),
}
"""(glyph, corner) of each site's burned-in marker."""


@dataclass
class RenderedFilm:
    """Pixels and geometry of one film.

    Attributes:
        pixels: uint16 ``size x size`` MONOCHROME2 stored values in ``[0, 4095]`` (before any MONOCHROME1
            inversion, which the DICOM writer applies).
        anatomy: the geometry the pixels were drawn from (masks incl. ``right_hilum`` / ``left_hilum``).
        finding: bool finding mask (empty for Normal).
        finding_boxes: inclusive boxes of the finding's connected components (pneumonia opacities; the
            RSNA file lists them); empty for Normal and CHF.
        marker_box: inclusive box of the burned-in site marker.
        marker: bool mask of the marker glyph.
        window: (center, width) that displays the film well, in *stored* MONOCHROME2 units.
        extras: measured values for diagnostics (``ctr``: cardiothoracic ratio from the masks).
    """

    pixels: np.ndarray
    anatomy: Anatomy
    finding: np.ndarray
    finding_boxes: list[Box]
    marker_box: Box
    marker: np.ndarray
    window: tuple[float, float]
    extras: dict[str, float] = field(default_factory=dict)


def _unit_clip(x: np.ndarray) -> np.ndarray:
    """``x`` clipped to ``[0, 1]`` as a new float32 array (maximum / minimum: cheaper than ``np.clip``)."""
    y = np.maximum(x, np.float32(0.0), dtype=np.float32)
    np.minimum(y, np.float32(1.0), out=y)
    return y


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """``3 t^2 - 2 t^3`` of ``t = clip(x, 0, 1)``, in place on one float32 temporary."""
    t = _unit_clip(x)
    out = t * np.float32(-2.0)
    out += np.float32(3.0)
    out *= t
    out *= t
    return out


def _bbox_slices(box: Box | None, size: int, pad: int = 0) -> tuple[slice, slice] | None:
    if box is None:
        return None
    x1, x2, y1, y2 = box
    y_lo, y_hi = max(0, y1 - pad), min(size, y2 + pad + 1)
    x_lo, x_hi = max(0, x1 - pad), min(size, x2 + pad + 1)
    if y_lo >= y_hi or x_lo >= x_hi:
        return None
    return slice(y_lo, y_hi), slice(x_lo, x_hi)


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``n_out x n_in`` float32 weights of 1-D bilinear resampling with pixel-centre alignment.

    Output sample ``i`` sits at source position ``(i + 0.5) * n_in / n_out - 0.5``; the two neighbours get
    the tent weights and positions outside ``[0, n_in - 1]`` clamp to the edge (PIL's bilinear resize for
    upscaling: its clipped kernel renormalises to the same weights).
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    j0 = np.floor(pos)
    frac = pos - j0
    lo = np.clip(j0, 0, n_in - 1).astype(np.intp)
    hi = np.clip(j0 + 1, 0, n_in - 1).astype(np.intp)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(w, (rows, lo), 1.0 - frac)
    np.add.at(w, (rows, hi), frac)
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


def _upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling (pixel-centre aligned, edges clamped) of a small float array to ``shape``.

    Separable, as two small matrix products (``W_y @ small @ W_x^T``): for the few-cell noise grids this is
    used for, far cheaper than a per-pixel resampler.
    """
    small = np.asarray(small, dtype=np.float32)
    wy = _bilinear_matrix(small.shape[0], shape[0])
    wx = _bilinear_matrix(small.shape[1], shape[1])
    if small.shape[0] <= small.shape[1]:
        return np.ascontiguousarray((wy @ small) @ wx.T)
    return np.ascontiguousarray(wy @ (small @ wx.T))


def _upsample2(small: np.ndarray) -> np.ndarray:
    """Exact 2x bilinear upsampling with pixel-centre alignment (weights 3/4, 1/4; edges replicate).

    At scale 2 output pixel ``2i`` samples source position ``i - 1/4`` and ``2i + 1`` samples ``i + 1/4``, so
    each pass is a two-tap stencil over an edge-padded copy (the same weights as :func:`_upsample`).
    """
    a = np.asarray(small, dtype=np.float32)
    h, w = a.shape
    q1, q3 = np.float32(0.25), np.float32(0.75)
    pad = np.empty((h + 2, w), dtype=np.float32)
    pad[1:-1] = a
    pad[0] = a[0]
    pad[-1] = a[-1]
    mid = pad[1:-1] * q3
    rows = np.empty((2 * h, w), dtype=np.float32)
    np.add(mid, pad[:-2] * q1, out=rows[0::2])
    np.add(mid, pad[2:] * q1, out=rows[1::2])
    pad = np.empty((2 * h, w + 2), dtype=np.float32)
    pad[:, 1:-1] = rows
    pad[:, 0] = rows[:, 0]
    pad[:, -1] = rows[:, -1]
    mid = pad[:, 1:-1] * q3
    out = np.empty((2 * h, 2 * w), dtype=np.float32)
    np.add(mid, pad[:, :-2] * q1, out=out[:, 0::2])
    np.add(mid, pad[:, 2:] * q1, out=out[:, 1::2])
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 6) -> np.ndarray:
    """Low-frequency noise (std ~ 1) of ``shape``: a ``cells x cells`` normal grid, bilinearly upsampled."""
    return _upsample(rng.standard_normal((cells, cells)).astype(np.float32), shape)


def _binomial_blur(img: np.ndarray, passes: int) -> np.ndarray:
    """``passes`` separable [1, 2, 1] / 4 passes (sigma = 0.707 * sqrt(passes)); edges replicate.

    Each pass sums shifted views of an edge-padded copy (rows, then columns) and scales once by 1/16.
    """
    out = np.array(img, dtype=np.float32)
    h, w = out.shape
    for _ in range(passes):
        pad = np.empty((h + 2, w), dtype=np.float32)
        pad[1:-1] = out
        pad[0] = out[0]
        pad[-1] = out[-1]
        rows = pad[:-2] + pad[2:]
        rows += out
        rows += out
        pad = np.empty((h, w + 2), dtype=np.float32)
        pad[:, 1:-1] = rows
        pad[:, 0] = rows[:, 0]
        pad[:, -1] = rows[:, -1]
        out = pad[:, :-2] + pad[:, 2:]
        out += rows
        out += rows
        out *= np.float32(1.0 / 16.0)
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur of a float image (binomial passes; wide kernels on a 2x / 4x reduced copy).

    A sum of ``n`` binomial [1, 2, 1] / 4 passes has variance ``n / 2`` px^2, which approximates a Gaussian
    well from two passes on. Wide blurs run on a ``f``-times box-reduced copy and come back through exact 2x
    bilinear steps, which together add a variance of ``(f^2 - 1) / 4`` px^2 (measured on a delta); the
    passes make up the rest. Smooth weight maps need only their low frequencies.
    """
    img = np.asarray(img, dtype=np.float32)
    if sigma <= 0:
        return img.copy()
    factor = 1
    while sigma / factor > 1.8 and factor < 8 and min(img.shape) // (2 * factor) >= 8:
        factor *= 2
    if factor == 1:
        return _binomial_blur(img, max(1, round(2.0 * sigma * sigma)))
    h, w = img.shape
    small = np.asarray(Image.fromarray(img, mode="F").reduce(factor), dtype=np.float32)
    passes = round((sigma * sigma - (factor * factor - 1) / 4.0) / (0.5 * factor * factor))
    if passes > 0:
        small = _binomial_blur(small, passes)
    while factor > 1:
        small = _upsample2(small)
        factor //= 2
    return np.ascontiguousarray(small[:h, :w])


def _ribs(p: dict[str, float], u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Posterior (arched, brighter) and anterior (faint, descending medially) ribs on the grid ``(u, v)``."""
    spacing = p["rib_spacing"]
    first = p["rib_first_v"]
    a = np.abs(u - np.float32(p["spine_u"]))
    lat = np.full(u.shape, np.float32(p["lat_u_l"]) + np.float32(0.03), dtype=np.float32)
    np.copyto(lat, np.float32(p["lat_u_r"]) + np.float32(0.03), where=u < p["spine_u"])
    wall = _smoothstep((lat - a) * np.float32(30.0))
    # Posterior ribs: from the spine slightly up, then curving down towards the lateral chest wall.
    phase = (v - first + p["rib_c1"] * a - p["rib_c2"] * a * a) / spacing
    k = np.floor(phase)
    x = (phase - k) * np.float32(1.0 / 0.5)
    band = (x < 1.0) & (k >= 0) & (k < 10)
    prof = np.float32(1.0) - np.float32(0.5) * np.sin(np.float32(math.pi) * _unit_clip(x))
    post = band * prof * _smoothstep((a - 0.025) * np.float32(15.0)) * wall
    # Anterior ribs: from the lateral wall medially downward; costal cartilage (medial part) is invisible.
    phase_a = (v - first - 0.17 - 0.5 * (lat - a)) / (spacing * 1.1)
    ka = np.floor(phase_a)
    xa = (phase_a - ka) * np.float32(1.0 / 0.4)
    band_a = (xa < 1.0) & (ka >= 0) & (ka < 6)
    ant = band_a * _smoothstep((a - 0.15) * np.float32(8.0)) * wall
    strength = np.float32(rng.uniform(0.12, 0.16))
    return (strength * (post + np.float32(0.3) * ant)).astype(np.float32)


def _spine(p: dict[str, float], uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
    """Vertebral column on the grid ``(uu, vv)``: vertebral bodies, pedicles and darker disc spaces."""
    out = np.zeros(uu.shape, dtype=np.float32)
    half = 0.036
    cols = np.flatnonzero((np.abs(uu - p["spine_u"]) < half + 0.01).any(axis=0))
    if cols.size == 0:
        return out
    cs = slice(int(cols[0]), int(cols[-1]) + 1)
    u, v = uu[:, cs] - np.float32(p["spine_u"]), vv[:, cs]
    r = np.sqrt(_unit_clip(1.0 - (u / half) ** 2))
    period = 0.043
    ph = (v / period) % 1.0
    disc = 1.0 - 0.3 * _smoothstep(1.0 - np.abs(ph - 0.5) * 8.0)
    ped = np.exp(-(((np.abs(u) - 0.024) / 0.007) ** 2 + ((ph - 0.35) / 0.13) ** 2))
    top = _smoothstep(v / 0.05)
    out[:, cs] = (0.22 * r * disc + 0.07 * ped) * top
    return out


def _vessels(anat: Anatomy, rng: np.random.Generator, chf: bool) -> np.ndarray:
    """Pulmonary vascular markings: branching, tapering, slightly curved trees from each hilum."""
    size = anat.size
    img = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(img)
    unit = anat.pose.length(1.0)
    scale = size / 256.0
    n_roots, levels = 7, 3
    per_side = n_roots * (2**levels - 1)
    # All random numbers up front (one call): bend, branch angle, length factor per segment.
    rand = rng.random((2, per_side + n_roots, 3))
    for side_i, (side_name, side) in enumerate((("right", -1.0), ("left", 1.0))):
        hx, hy = anat.points[f"{side_name}_hilum"]
        base = math.pi if side < 0 else 0.0
        r = rand[side_i]
        roots = np.linspace(-1.3, 1.35, n_roots) + (r[:n_roots, 0] - 0.5) * 0.24
        stack = [
            (hx, hy, base - side * float(a), 0.09 * unit * (0.8 + 0.4 * float(r[i, 1])), 2.4, 0.16, 0)
            for i, a in enumerate(roots)
        ]
        j = n_roots
        while stack:
            x0, y0, ang, length, width, val, depth = stack.pop()
            bend, turn_r, len_r = r[j]
            j += 1
            boost = 1.4 if (chf and math.sin(ang) < -0.3) else 1.0  # cephalisation in CHF
            xm, ym = x0 + 0.5 * length * math.cos(ang), y0 + 0.5 * length * math.sin(ang)
            ang2 = ang + (bend - 0.5) * 0.5
            x1, y1 = xm + 0.5 * length * math.cos(ang2), ym + 0.5 * length * math.sin(ang2)
            draw.line(
                [(x0, y0), (xm, ym), (x1, y1)], fill=float(val * boost), width=max(1, round(width * scale))
            )
            if depth < levels - 1:
                spread = 0.2 + 0.3 * turn_r
                for turn in (-1.0, 1.0):
                    nxt = (
                        x1,
                        y1,
                        ang2 + turn * spread,
                        length * (0.65 + 0.2 * len_r),
                        width * 0.7,
                        val * 0.75,
                    )
                    stack.append((*nxt, depth + 1))
    return np.asarray(img, dtype=np.float32)


def _hila(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Hilar vessels as lobulated blobs; stores their masks (``right_hilum``, ``left_hilum``) in ``anat``."""
    size = anat.size
    out = np.zeros((size, size), dtype=np.float32)
    unit = anat.pose.length(1.0)
    for side_name in ("right", "left"):
        hx, hy = anat.points[f"{side_name}_hilum"]
        r = 0.05 * unit
        box = (int(hx - 2 * r), int(hx + 2 * r), int(hy - 2.5 * r), int(hy + 2.5 * r))
        sl = _bbox_slices(box, size)
        m = np.zeros((size, size), dtype=bool)
        if sl is not None:
            ys, xs = np.mgrid[sl[0], sl[1]].astype(np.float32)
            blob = np.zeros_like(xs)
            for _ in range(3):
                cx = hx + float(rng.normal(0.0, 0.25 * r))
                cy = hy + float(rng.normal(0.0, 0.6 * r))
                sx, sy = float(rng.uniform(0.25, 0.4)) * r, float(rng.uniform(0.5, 0.8)) * r
                blob += np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
            blob = np.clip(blob, 0.0, 1.0)
            out[sl] = np.maximum(out[sl], blob)
            m[sl] = blob > 0.3
        anat.masks[f"{side_name}_hilum"] = m
    return out


def _pneumonia(
    anat: Anatomy, rng: np.random.Generator, lungs_soft: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """One or two irregular focal opacities, each in one zone of one lung. Returns (field, mask, boxes)."""
    size = anat.size
    field_ = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    unit = anat.pose.length(1.0)
    n_op = 1 if rng.random() < 0.7 else 2
    used: set[tuple[str, int]] = set()
    for _ in range(n_op):
        for attempt in range(60):
            side = "right" if rng.random() < 0.5 else "left"
            zone = int(rng.integers(3))
            if (side, zone) in used:
                continue
            lung = anat.masks[f"{side}_lung"]
            box = mask_box(lung)
            if box is None:
                continue
            cuts = np.linspace(box[2], box[3] + 1, 4).round().astype(int)
            rows = slice(int(cuts[zone]), int(cuts[zone + 1]))
            ys, xs = np.nonzero(lung[rows])
            if ys.size == 0:
                continue
            r = float(rng.uniform(0.085, 0.13)) * unit
            pick = int(rng.integers(ys.size))
            cy, cx = float(ys[pick] + rows.start), float(xs[pick])
            off = int(max(1, round(0.5 * r)))
            probes = [(cy, cx - off), (cy, cx + off), (cy - off, cx), (cy + off, cx)]
            clear = all(0 <= py < size and 0 <= px < size and lung[int(py), int(px)] for py, px in probes)
            if not clear and attempt < 30:  # prefer centres well inside the lung, then accept any
                continue
            used.add((side, zone))
            half = 2.2 * r
            x1, x2 = max(0, int(cx - half)), min(size, int(cx + half) + 1)
            y1, y2 = max(0, int(cy - half)), min(size, int(cy + half) + 1)
            yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
            f = np.zeros_like(xx)
            for _b in range(int(rng.integers(5, 10))):
                bx = cx + float(rng.normal(0.0, 0.6 * r))
                by = cy + float(rng.normal(0.0, 0.6 * r))
                s = float(rng.uniform(0.3, 0.55)) * r
                f += float(rng.uniform(0.6, 1.0)) * np.exp(-0.5 * ((xx - bx) ** 2 + (yy - by) ** 2) / (s * s))
            f *= 1.0 + 0.45 * _smooth_noise(rng, f.shape, cells=6)
            f = np.clip(f / max(float(f.max()), 1e-6), 0.0, 1.0)
            local = (f > 0.45) & lung[y1:y2, x1:x2]
            lab, n = ndimage.label(local)
            if n == 0:
                continue
            if n > 1:
                sizes = np.bincount(lab.ravel())[1:]
                local = lab == (int(np.argmax(sizes)) + 1)
            mask[y1:y2, x1:x2] |= local
            amp = float(rng.uniform(0.36, 0.5))
            field_[y1:y2, x1:x2] = np.maximum(
                field_[y1:y2, x1:x2], amp * _smoothstep((f - 0.15) / 0.65) * lungs_soft[y1:y2, x1:x2]
            )
            break
    lab, n = ndimage.label(mask)
    boxes = [b for b in (mask_box(lab == k) for k in range(1, n + 1)) if b is not None]
    return field_, mask, boxes


def _chf(
    anat: Anatomy,
    rng: np.random.Generator,
    uu: np.ndarray,
    vv: np.ndarray,
    lungs_soft: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral perihilar (bat-wing) haze and small effusions. Returns (opacity field, finding mask)."""
    p = anat.params
    size = anat.size
    field_ = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    amp = float(rng.uniform(0.14, 0.22))
    lungs = anat.lungs()
    for side_name, s, sign in (("right", "r", -1.0), ("left", "l", 1.0)):
        lung = anat.masks[f"{side_name}_lung"]
        box = _bbox_slices(mask_box(lung), size, pad=2)
        if box is None:
            continue
        u, v = uu[box], vv[box]
        du = (u - p[f"hilum_u_{s}"]) * sign  # lateral distance from the hilum
        dv = v - p[f"hilum_v_{s}"]
        sx = float(rng.uniform(0.1, 0.14))
        sy = float(rng.uniform(0.1, 0.13))
        haze = np.exp(
            -0.5 * ((np.maximum(du, 0.0) / sx) ** 2 + (np.minimum(du, 0.0) / 0.05) ** 2 + (dv / sy) ** 2)
        )
        haze *= 1.0 + 0.25 * _smooth_noise(rng, haze.shape, cells=4)
        haze = np.clip(haze, 0.0, 1.0).astype(np.float32)
        # Effusion: meniscus above the costophrenic angle, higher laterally.
        depth = float(rng.uniform(0.05, 0.09))
        lat = np.clip((np.abs(u - p["spine_u"]) - 0.1) / (p[f"lat_u_{s}"] - 0.1), 0.0, 1.0)
        top = p[f"cp_v_{s}"] - depth * (0.3 + 0.7 * lat**1.5)
        eff = _smoothstep((v - top) / 0.02) if depth > 0 else np.zeros_like(v)
        local_lung = lung[box]
        soft = lungs_soft[box]
        field_[box] += (amp * haze + 0.45 * eff) * soft
        mask[box] |= local_lung & ((haze > 0.5) | (eff > 0.5))
    return field_, mask & lungs


def _marker(site: str, anat: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """Burned-in site marker glyph (bool mask) and its box, kept clear of the lungs."""
    size = anat.size
    glyph_kind, corner = MARKER_OF_SITE[site]
    g = max(6, round(0.085 * size))
    t = max(1, round(g / 4))
    yy, xx = np.mgrid[0:g, 0:g]
    if glyph_kind == "L":
        glyph = (xx < t) | (yy >= g - t)
    elif glyph_kind == "ring":
        c = (g - 1) / 2.0
        d = np.hypot(xx - c, yy - c)
        glyph = (d <= c + 0.25) & (d >= c - t + 0.25)
    else:
        c0 = (g - t) // 2
        glyph = ((xx >= c0) & (xx < c0 + t)) | ((yy >= c0) & (yy < c0 + t))
    lo, hi = round(0.03 * size), round(0.08 * size)
    ox = int(rng.integers(lo, hi + 1))
    oy = int(rng.integers(lo, hi + 1))
    x0 = ox if "left" in corner else size - g - ox
    y0 = oy if "top" in corner else size - g - oy
    lungs = anat.masks["lung_fields"]
    # Slide towards the corner until the glyph is clear of the lung fields (always possible at the corner).
    step_x = -1 if "left" in corner else 1
    step_y = -1 if "top" in corner else 1
    for _ in range(size):
        if not lungs[max(0, y0 - 1) : y0 + g + 1, max(0, x0 - 1) : x0 + g + 1].any():
            break
        x0 = int(np.clip(x0 + step_x, 1, size - g - 1))
        y0 = int(np.clip(y0 + step_y, 1, size - g - 1))
    mask = np.zeros((size, size), dtype=bool)
    mask[y0 : y0 + g, x0 : x0 + g] = glyph
    box = mask_box(mask)
    assert box is not None
    return mask, box


def _edge_distance(size: int) -> np.ndarray:
    idx = np.arange(size, dtype=np.float32)
    d1 = np.minimum(idx, size - 1 - idx) / size
    return np.minimum(d1[:, None], d1[None, :])


def render_film(plan: CasePlan, config: PhantomConfig) -> RenderedFilm:
    """Render the pixels of planned case ``plan`` (uses the case's ``RENDER_STREAM`` generator only)."""
    size = config.size
    rng = case_rng(config.seed, RENDER_STREAM, plan.index)
    anat = build_anatomy(rng, size, plan.label)
    p = anat.params
    uu, vv = anat.pose.grid()
    masks = anat.masks
    f32 = np.float32

    # Soft tissue: body chord profile, denser abdomen below the diaphragm.
    r = uu - f32(p["spine_u"])
    hw = body_half_width(vv, p)
    body = (np.abs(r) < hw) & (vv > -0.2)
    chord = r / hw
    chord *= chord
    np.subtract(f32(1.0), chord, out=chord)
    np.maximum(chord, f32(0.0), out=chord)  # 1 - t^2 <= 1: no upper clip needed
    np.sqrt(chord, out=chord)
    chord *= f32(0.64)
    chord += f32(0.36)
    soft = chord * body
    cp_v = 0.5 * (p["cp_v_r"] + p["cp_v_l"])
    soft += f32(0.12) * _smoothstep((vv - f32(cp_v - 0.08)) * f32(6.0)) * body
    # Air in the lungs: thickest mid-lung, thinning towards apex, base and lateral edges.
    fields = (masks["lung_fields"] & ~masks["upper_mediastinum"]).astype(np.float32)
    taper = _blur(fields, 0.03 * size * anat.pose.scale)
    apex_v = p["apex_v"]
    depth = f32(0.8) + f32(0.2) * np.sin(f32(math.pi) * _unit_clip((vv - apex_v) / f32(cp_v - apex_v + 0.02)))
    air = f32(rng.uniform(0.62, 0.72))
    heart = masks["heart"]
    # The heart displaces the lung in front of it (its silhouette), but adds nothing below the diaphragm.
    soft -= air * fields * depth * (f32(0.55) + f32(0.45) * taper) * (f32(1.0) - f32(0.9) * heart)
    soft += f32(0.08) * heart + f32(0.06) * masks["upper_mediastinum"]
    soft -= f32(0.3) * masks["trachea"] + f32(0.16) * masks["bronchi"]
    gx, gy = anat.pose.to_px(np.array([0.17 + rng.uniform(-0.03, 0.03)]), np.array([p["cp_v_l"] + 0.025]))
    gr = anat.pose.length(float(rng.uniform(0.03, 0.045)))
    sl = _bbox_slices((int(gx[0] - 2 * gr), int(gx[0] + 2 * gr), int(gy[0] - gr), int(gy[0] + gr)), size)
    if sl is not None and rng.random() < 0.8:  # gastric bubble under the left hemidiaphragm (image right)
        ys, xs = np.mgrid[sl[0], sl[1]].astype(np.float32)
        bub = (((xs - gx[0]) / (1.6 * gr)) ** 2 + ((ys - gy[0]) / gr) ** 2 < 1.0) & ~masks["lung_fields"][sl]
        soft[sl] -= f32(0.25) * bub
    if plan.gender == "F":  # breast shadows over the lower lung zones
        rows = slice(max(0, int(size * 0.35)), size)
        for side in (-1.0, 1.0):
            bu = (uu[rows] - f32(side * 0.24)) / f32(0.13)
            bv = np.minimum(vv[rows] - f32(cp_v - 0.05), 0.0) / f32(0.13)
            edge = _smoothstep((f32(cp_v + 0.02) - vv[rows]) * f32(60.0))
            soft[rows] += f32(rng.uniform(0.05, 0.09)) * np.exp(-0.5 * (bu * bu + bv * bv)) * edge
    # Soft weights (visibility of vessels, ribs, opacities); organ edges get the detector blur below.
    sigma_soft = max(1.0, 0.008 * size)
    lungs_soft = _blur(fields, sigma_soft)

    hila = _hila(anat, rng)
    vessels = _vessels(anat, rng, plan.label == "CHF")
    # Spine and ribs are smooth at the detector's resolution: from 128 px up they are evaluated on a
    # half-resolution grid (same pose) and upsampled, which costs a quarter of the work.
    open_lung = anat.lungs().astype(np.float32)  # ribs show best over lung not behind heart/mediastinum
    if size >= 128:
        bu, bv = Pose(size // 2, anat.pose.scale, anat.pose.angle, anat.pose.tx, anat.pose.ty).grid()
        if size % 2 == 0:  # 2 x 2 means of 0 / 1 values: exact, and what PIL's BOX resize gives
            quarter = open_lung[0::2, 0::2] + open_lung[1::2, 0::2]
            quarter += open_lung[0::2, 1::2]
            quarter += open_lung[1::2, 1::2]
            open_lung = quarter * f32(0.25)
        else:
            open_lung = np.asarray(
                Image.fromarray(open_lung, mode="F").resize((size // 2, size // 2), Image.Resampling.BOX)
            )
    else:
        bu, bv = uu, vv
    open_lung = _blur(open_lung, 1.5 * sigma_soft * bu.shape[0] / size)
    bone = _spine(p, bu, bv) + _ribs(p, bu, bv, rng) * (f32(0.3) + f32(0.7) * open_lung)
    if bone.shape[0] != size:
        bone = _upsample2(bone)[:size, :size] if 2 * bone.shape[0] >= size else _upsample(bone, (size, size))
    for side in ("right", "left"):
        bone += f32(0.3) * masks[f"{side}_clavicle"]
    a_map = soft + bone + (vessels + f32(0.22) * hila) * lungs_soft

    finding = np.zeros((size, size), dtype=bool)
    finding_boxes: list[Box] = []
    if plan.label == "pneumonia":
        field_, finding, finding_boxes = _pneumonia(anat, rng, lungs_soft)
        a_map += field_
    elif plan.label == "CHF":
        field_, finding = _chf(anat, rng, uu, vv, lungs_soft)
        a_map += field_
    a_map += f32(0.05) * _smooth_noise(rng, (size, size), cells=10) * lungs_soft

    # Detector response (exposure k), collimation, MTF blur, grid lines, noise, burned-in marker.
    k = float(rng.uniform(1.5, 1.9))
    disp = np.maximum(a_map, f32(0.0))
    disp *= f32(-k)
    np.exp(disp, out=disp)
    np.subtract(f32(1.0), disp, out=disp)
    disp *= f32(1.0 / (1.0 - math.exp(-k * 1.45)))
    disp = _unit_clip(disp)
    if plan.nuisance["border"]:
        disp = disp + f32(rng.uniform(0.12, 0.18)) * np.exp(_edge_distance(size) * f32(-1.0 / 0.03))
    if plan.nuisance["collimation"]:
        inset = float(rng.uniform(0.025, 0.05))
        tilt = math.tan(math.radians(float(rng.uniform(-2.0, 2.0))))
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        shift = f32(tilt) * (centres[:, None] - 0.5)
        outside = (centres[None, :] < inset + shift) | (centres[None, :] > 1.0 - inset + shift)
        if rng.random() < 0.5:
            outside |= (centres < inset * 0.8)[:, None]
        np.copyto(disp, f32(rng.uniform(0.82, 0.9)), where=outside)
    disp = _blur(disp, max(0.5, 0.75 * size / 256.0))  # detector MTF
    if plan.nuisance["texture"]:
        period = max(2.2, size / 90.0)
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        lines = np.sin(f32(2.0 * math.pi / period) * np.arange(size, dtype=np.float32) + f32(phase))
        disp = disp + f32(0.03) * lines[None, :]
    # Signal-dependent (quantum-like) noise. A unit-variance uniform variate looks the same as a Gaussian
    # one at these amplitudes once quantised, and is several times cheaper to draw.
    noise = (rng.random((size, size), dtype=np.float32) - f32(0.5)) * f32(math.sqrt(12.0))
    disp = disp + noise * f32(rng.uniform(0.008, 0.014)) * (f32(0.6) + disp)
    marker, marker_box = _marker(plan.site, anat, rng)

    lo = float(rng.uniform(40.0, 250.0))
    hi = float(rng.uniform(3600.0, 3950.0))
    disp = _unit_clip(disp)
    disp *= f32(hi - lo)
    disp += f32(lo)
    pixels = np.rint(disp, out=disp).astype(np.uint16)
    pixels[marker] = STORED_MAX  # burned in at full scale, above anything the detector produced
    sample = pixels[::3, ::3][body[::3, ::3]]
    if sample.size < 16:
        sample = pixels.ravel()
    k_lo, k_hi = int(0.005 * (sample.size - 1)), int(0.995 * (sample.size - 1))
    part = np.partition(sample, (k_lo, k_hi))
    q_lo, q_hi = float(part[k_lo]), float(part[k_hi])
    margin = 0.04 * max(q_hi - q_lo, 64.0)
    # The window spans the body's values with a small margin and stays below full scale, so the marker
    # (4095) always displays white.
    bottom, top = max(q_lo - margin, 0.0), min(q_hi + margin, STORED_MAX - 1.0)
    window = ((bottom + top) / 2.0, top - bottom)
    return RenderedFilm(
        pixels=pixels,
        anatomy=anat,
        finding=finding,
        finding_boxes=finding_boxes,
        marker_box=marker_box,
        marker=marker,
        window=window,
        extras={"ctr": anat.ctr()},
    )
