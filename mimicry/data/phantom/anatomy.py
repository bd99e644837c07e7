"""Chest geometry of one phantom: pose, organ outlines, masks and EGD bounding boxes.

Every structure is defined once, in a normalised *patient frame* ``(u, v)`` — ``u`` runs from the image's left
edge (-0.5) to its right edge (+0.5), ``v`` from the top (0) to the bottom (1) — and mapped to pixels by one
:class:`Pose` (scale, rotation, translation). The renderer draws intensities from the very masks computed
here,
so masks, bounding boxes and pixels always agree (brief: "same geometry objects").

Radiological convention (docs/methods.md, "Dataset formats"): the film is viewed as if facing the
patient, so the patient's LEFT lung is on the IMAGE's RIGHT (``u > 0``) and the heart lies mostly to the image
right. EGD names are anatomical: ``"left lung"`` is the image-right lung.

Pixel convention: pixel ``(row, col)`` has its centre at ``(x, y) = (col, row)``; boxes are inclusive
``(x1, x2, y1, y2)`` as in EGD's ``bounding_boxes.csv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "EGD_BOX_NAMES",
    "Anatomy",
    "Box",
    "Pose",
    "body_half_width",
    "build_anatomy",
    "mask_box",
    "rasterize",
]

Box = tuple[int, int, int, int]
"""Inclusive pixel box ``(x1, x2, y1, y2)`` (EGD column order)."""

EGD_BOX_NAMES: tuple[str, ...] = (
    "cardiac silhouette",
    "left clavicle",
    "left costophrenic angle",
    "left hilar structures",
    "left lower lung zone",
    "left lung",
    "left mid lung zone",
    "left upper lung zone",
    "right clavicle",
    "right costophrenic angle",
    "right hilar structures",
    "right lower lung zone",
    "right lung",
    "right mid lung zone",
    "right upper lung zone",
    "trachea",
    "upper mediastinum",
)
"""Anatomical box names written to ``bounding_boxes.csv`` (EGD spelling), in file order."""


@dataclass(frozen=True)
class Pose:
    """Affine map from the patient frame ``(u, v)`` to pixel coordinates ``(x, y)``.

    ``x = size * (0.5 + tx + scale * (cos a * u - sin a * (v - 0.5))) - 0.5`` and likewise for ``y``, so
    ``u = -0.5`` is the left edge of pixel 0 when the pose is the identity.
    """

    size: int
    scale: float = 1.0
    angle: float = 0.0
    tx: float = 0.0
    ty: float = 0.0

    def to_px(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame points to pixel coordinates."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        du, dv = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64) - 0.5
        x = self.size * (0.5 + self.tx + self.scale * (c * du - s * dv)) - 0.5
        y = self.size * (0.5 + self.ty + self.scale * (s * du + c * dv)) - 0.5
        return x, y

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame coordinates ``(U, V)`` of every pixel centre, float32 ``size x size`` each."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        centres = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size - 0.5
        xs = (centres - np.float32(self.tx))[None, :]
        ys = (centres - np.float32(self.ty))[:, None]
        inv = np.float32(1.0 / self.scale)
        u = (np.float32(c) * xs + np.float32(s) * ys) * inv
        v = (np.float32(-s) * xs + np.float32(c) * ys) * inv + np.float32(0.5)
        return u.astype(np.float32), v.astype(np.float32)

    def length(self, d: float) -> float:
        """A patient-frame length in pixels."""
        return d * self.scale * self.size


def rasterize(xy: np.ndarray, size: int) -> np.ndarray:
    """Fill a pixel-space polygon (``N x 2`` array of ``(x, y)``) into a bool ``size x size`` mask.

    Only the polygon's bounding box is rasterised (PIL scanline fill), then placed in the full mask.
    """
    xy = np.asarray(xy, dtype=np.float64)
    mask = np.zeros((size, size), dtype=bool)
    x0, y0 = max(0, int(np.floor(xy[:, 0].min())) - 1), max(0, int(np.floor(xy[:, 1].min())) - 1)
    x1, y1 = min(size, int(np.ceil(xy[:, 0].max())) + 2), min(size, int(np.ceil(xy[:, 1].max())) + 2)
    if x0 >= x1 or y0 >= y1:
        return mask
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(img).polygon((xy - (x0, y0)).ravel().tolist(), fill=1)
    mask[y0:y1, x0:x1] = np.asarray(img, dtype=bool)
    return mask


def mask_box(mask: np.ndarray) -> Box | None:
    """Inclusive ``(x1, x2, y1, y2)`` of a bool mask, ``None`` when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])


@dataclass
class Anatomy:
    """Geometry of one chest: pose, patient-frame parameters, pixel polygons and bool masks.

    Attributes:
        pose: patient frame to pixels.
        params: scalar patient-frame parameters (lung extents, diaphragm heights, rib layout...).
        masks: bool ``size x size`` masks: ``right_lung``, ``left_lung`` (patient sides), ``heart``,
            ``upper_mediastinum`` (incl. the aortic knob), ``aortic_knob``, ``trachea``, ``bronchi``,
            ``right_clavicle``, ``left_clavicle`` and ``lung_fields`` (the lung outlines before the heart
            and mediastinum are cut out: air behind the heart, rib extents). The renderer adds
            ``right_hilum`` / ``left_hilum`` (thresholded hilar blobs it draws).
        points: pixel-space landmarks ``right_cp``, ``left_cp`` (costophrenic angles), ``right_hilum``,
            ``left_hilum`` (centres) and ``carina``.
        polygons: the pixel-space outlines the polygon masks were filled from.
    """

    pose: Pose
    params: dict[str, float]
    masks: dict[str, np.ndarray]
    points: dict[str, tuple[float, float]]
    polygons: dict[str, np.ndarray] = field(default_factory=dict)
    _boxes: tuple[tuple[str, ...], dict[str, Box]] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return self.pose.size

    def lungs(self) -> np.ndarray:
        """Union of both lung masks."""
        return self.masks["right_lung"] | self.masks["left_lung"]

    def mediastinum(self) -> np.ndarray:
        """EGD ``mediastinum.png``: upper mediastinum, aortic knob and cardiac silhouette together."""
        return self.masks["upper_mediastinum"] | self.masks["heart"]

    def ctr(self) -> float:
        """Cardiothoracic ratio from the masks: heart width / span of the two lungs (pixel boxes)."""
        heart = mask_box(self.masks["heart"])
        right = mask_box(self.masks["right_lung"])
        left = mask_box(self.masks["left_lung"])
        if heart is None or right is None or left is None:
            return float("nan")
        return (heart[1] - heart[0] + 1) / (left[1] - right[0] + 1)

    def boxes(self) -> dict[str, Box]:
        """EGD anatomical boxes (:data:`EGD_BOX_NAMES`) derived from the masks and landmarks (cached)."""
        key = tuple(sorted(self.masks))
        if self._boxes is None or self._boxes[0] != key:
            self._boxes = (key, self._compute_boxes())
        return dict(self._boxes[1])

    def _compute_boxes(self) -> dict[str, Box]:
        size = self.size
        out: dict[str, Box] = {}

        def put(name: str, box: Box | None) -> None:
            if box is not None:
                out[name] = box

        put("cardiac silhouette", mask_box(self.masks["heart"]))
        put("upper mediastinum", mask_box(self.masks["upper_mediastinum"]))
        put("trachea", mask_box(self.masks["trachea"]))
        for side in ("left", "right"):
            put(f"{side} clavicle", mask_box(self.masks[f"{side}_clavicle"]))
            hilum = self.masks.get(f"{side}_hilum")
            if hilum is not None:
                put(f"{side} hilar structures", mask_box(hilum))
            lung = self.masks[f"{side}_lung"]
            box = mask_box(lung)
            put(f"{side} lung", box)
            if box is not None:
                y1, y2 = box[2], box[3]
                cuts = np.linspace(y1, y2 + 1, 4).round().astype(int)
                for zone, a, b in zip(("upper", "mid", "lower"), cuts[:-1], cuts[1:], strict=True):
                    zb = mask_box(lung[a:b])
                    if zb is not None:
                        put(f"{side} {zone} lung zone", (zb[0], zb[1], zb[2] + a, zb[3] + a))
            cx, cy = self.points[f"{side}_cp"]
            reach = 0.09 * size * self.pose.scale
            pad = 0.015 * size * self.pose.scale
            # The costophrenic angle box spans the angle: from just lateral of it, medially and upward.
            if side == "right":  # image left: medial is +x
                x1, x2 = cx - pad, cx + reach
            else:
                x1, x2 = cx - reach, cx + pad
            y1, y2 = cy - reach, cy + pad
            bx1, bx2 = max(0, math.floor(x1)), min(size - 1, math.ceil(x2))
            by1, by2 = max(0, math.floor(y1)), min(size - 1, math.ceil(y2))
            if bx1 <= bx2 and by1 <= by2:
                out[f"{side} costophrenic angle"] = (bx1, bx2, by1, by2)
        return {name: out[name] for name in EGD_BOX_NAMES if name in out}


def _interp_outline(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(points, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def _lung_outline(side: int, p: dict[str, float], n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Patient-frame outline of one lung field (side -1: patient right/image left, +1: patient left).

    Apex cap (semicircle) -> lateral wall widening to ``lat`` -> acute costophrenic angle at ``cp`` ->
    diaphragm dome rising steeply from the angle -> medial border back up to the apex.
    """
    apex_v, apex_u, med_u = p["apex_v"], p["apex_u"], p["med_u"]
    lat_u, cp_u, cp_v, dome_h = p["lat_u"], p["cp_u"], p["cp_v"], p["dome_h"]
    r = (apex_u - med_u) / 2.0
    cap_v = apex_v + r
    th = np.linspace(math.pi, 0.0, n // 2)
    cap_u = med_u + r + r * np.cos(th)
    cap_vv = cap_v - r * np.sin(th)
    t = np.linspace(0.0, 1.0, n)[1:]
    wall_v = cap_v + (cp_v - cap_v) * t
    widen = 1.0 - (1.0 - np.clip(t / 0.55, 0.0, 1.0)) ** 2.4
    wall_u = apex_u + (lat_u - apex_u) * widen - (lat_u - cp_u) * np.clip((t - 0.62) / 0.38, 0.0, 1.0) ** 1.5
    w = np.linspace(0.0, 1.0, n)[1:]
    base_u = p["base_med_u"]
    dia_u = cp_u + (base_u - cp_u) * w
    dia_v = cp_v - dome_h * np.sin(math.pi * 0.8 * w) ** 0.55
    s = np.linspace(0.0, 1.0, n // 2)[1:-1]
    med_uu = dia_u[-1] + (med_u - dia_u[-1]) * s
    med_vv = dia_v[-1] + (cap_v - dia_v[-1]) * s
    u = np.concatenate([cap_u, wall_u, dia_u, med_uu])
    v = np.concatenate([cap_vv, wall_v, dia_v, med_vv])
    return side * u, v


def _heart_outline(p: dict[str, float], n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Patient-frame cardiac silhouette scaled to exactly ``[h_u1, h_u2] x [h_v1, h_v2]``.

    A rotated, slightly egg-shaped ellipse: long axis from upper image-left to the apex at the lower image
    right (left ventricle on the patient's left).
    """
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x = np.cos(t) * (1.0 + 0.18 * np.cos(t))  # fuller towards the apex side
    y = 0.78 * np.sin(t)
    a = math.radians(p["h_tilt"])
    xr = x * math.cos(a) - y * math.sin(a)
    yr = x * math.sin(a) + y * math.cos(a)
    xr = (xr - xr.min()) / (xr.max() - xr.min())
    yr = (yr - yr.min()) / (yr.max() - yr.min())
    return p["h_u1"] + xr * (p["h_u2"] - p["h_u1"]), p["h_v1"] + yr * (p["h_v2"] - p["h_v1"])


def _band_outline(cu: np.ndarray, cv: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed outline of a band of half-width ``half`` around the centreline ``(cu, cv)``."""
    du, dv = np.gradient(cu), np.gradient(cv)
    norm = np.hypot(du, dv) + 1e-12
    nu, nv = -dv / norm, du / norm
    u = np.concatenate([cu + nu * half, (cu - nu * half)[::-1]])
    v = np.concatenate([cv + nv * half, (cv - nv * half)[::-1]])
    return u, v


def body_half_width(v: np.ndarray, p: dict[str, float]) -> np.ndarray:
    """Half-width of the body outline at height ``v``: neck, smooth shoulder slope, chest wall."""
    neck, chest, sh = np.float32(p["neck_hw"]), np.float32(p["body_hw"]), np.float32(p["shoulder_v"])
    t = np.clip((v - (sh - np.float32(0.04))) * np.float32(1.0 / 0.2), 0.0, 1.0)
    t = t * (np.float32(2.0) - t)  # fast rise at the shoulder, flattening along the chest wall
    return neck + (chest - neck) * t


def build_anatomy(rng: np.random.Generator, size: int, label: str) -> Anatomy:
    """Draw a random chest for ``label`` (``"CHF"`` gets cardiothoracic ratio 0.545-0.63, else 0.37-0.46).

    Args:
        rng: the case's render generator (consumed in a fixed order).
        size: image side in pixels.
        label: class name; only the heart size depends on it here (findings are drawn by the renderer).
    """
    pose = Pose(
        size=size,
        scale=float(rng.uniform(0.9, 1.0)),
        angle=math.radians(float(rng.uniform(-3.0, 3.0))),
        tx=float(rng.uniform(-0.02, 0.02)),
        ty=float(rng.uniform(-0.015, 0.03)),
    )
    lat = float(rng.uniform(0.37, 0.41))
    p: dict[str, float] = {
        "apex_v": float(rng.uniform(0.08, 0.11)),
        "cp_v_r": float(rng.uniform(0.74, 0.79)),
        "dome_h_r": float(rng.uniform(0.08, 0.11)),
        "lat_u_r": lat + float(rng.uniform(-0.01, 0.01)),
        "lat_u_l": lat + float(rng.uniform(-0.01, 0.01)),
    }
    p["cp_v_l"] = p["cp_v_r"] + float(rng.uniform(0.005, 0.03))
    p["dome_h_l"] = p["dome_h_r"] - float(rng.uniform(0.0, 0.02))
    p["spine_u"] = float(rng.uniform(-0.006, 0.006))
    p["neck_hw"] = float(rng.uniform(0.085, 0.11))
    p["body_hw"] = max(p["lat_u_r"], p["lat_u_l"]) + float(rng.uniform(0.06, 0.11))
    p["shoulder_v"] = float(rng.uniform(0.03, 0.07))
    ctr = float(rng.uniform(0.545, 0.63)) if label == "CHF" else float(rng.uniform(0.37, 0.46))
    p["ctr_target"] = ctr
    thoracic = p["lat_u_r"] + p["lat_u_l"]
    width = ctr * thoracic
    p["h_u1"] = p["spine_u"] - float(rng.uniform(0.28, 0.35)) * width
    p["h_u2"] = p["h_u1"] + width
    base_l = p["cp_v_l"] - 0.6 * p["dome_h_l"]
    p["h_v2"] = base_l + float(rng.uniform(0.02, 0.035))
    p["h_v1"] = p["h_v2"] - float(np.clip(width * rng.uniform(0.72, 0.85), 0.2, 0.36))
    p["h_tilt"] = float(rng.uniform(20.0, 35.0))
    p["carina_v"] = float(min(p["h_v1"] - 0.05, rng.uniform(0.3, 0.34)))
    p["knob_v"] = p["carina_v"] - float(rng.uniform(0.0, 0.03))
    p["knob_r"] = float(rng.uniform(0.026, 0.036))
    p["rib_first_v"] = p["apex_v"] + float(rng.uniform(-0.01, 0.01))
    p["rib_spacing"] = (p["cp_v_r"] - p["rib_first_v"]) / float(rng.uniform(9.0, 10.0))
    p["rib_c1"] = float(rng.uniform(0.2, 0.3))
    p["rib_c2"] = float(rng.uniform(1.5, 1.9))

    masks: dict[str, np.ndarray] = {}
    polygons: dict[str, np.ndarray] = {}

    def add_polygon(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        x, y = pose.to_px(u, v)
        xy = np.stack([x, y], axis=1)
        polygons[name] = xy
        mask = rasterize(xy, size)
        masks[name] = mask
        return mask

    for side_name, side in (("right", -1), ("left", 1)):
        s = "r" if side_name == "right" else "l"
        lp = {
            "apex_v": p["apex_v"] + (0.0 if side_name == "right" else float(rng.uniform(-0.01, 0.01))),
            "apex_u": float(rng.uniform(0.15, 0.19)),
            "med_u": float(rng.uniform(0.035, 0.05)),
            "lat_u": p[f"lat_u_{s}"],
            "cp_u": p[f"lat_u_{s}"] - float(rng.uniform(0.01, 0.03)),
            "cp_v": p[f"cp_v_{s}"],
            "dome_h": p[f"dome_h_{s}"],
            "base_med_u": float(rng.uniform(0.04, 0.07)),
        }
        u, v = _lung_outline(side, lp)
        add_polygon(f"{side_name}_field", u, v)
        p[f"apex_u_{s}"] = lp["apex_u"]
        p[f"cp_u_{s}"] = lp["cp_u"]

    hu, hv = _heart_outline(p)
    add_polygon("heart", hu, hv)
    # The class is defined on what a reader measures (the pixel boxes), so pixel quantisation and the pose
    # must not push a CHF heart to CTR <= 0.5 or a normal one to >= 0.5: correct the width if they would.
    span_r, span_l = mask_box(masks["right_field"]), mask_box(masks["left_field"])
    lo, hi = (0.515, 1.0) if label == "CHF" else (0.0, 0.485)
    for _ in range(4):
        heart_box = mask_box(masks["heart"])
        if span_r is None or span_l is None or heart_box is None:
            break
        measured = (heart_box[1] - heart_box[0] + 1) / (span_l[1] - span_r[0] + 1)
        if lo <= measured <= hi:
            break
        target = min(max(measured, lo + 0.01), hi - 0.01)
        centre = 0.5 * (hu.min() + hu.max())
        hu = centre + (hu - centre) * (target / measured)
        add_polygon("heart", hu, hv)
    p["h_u1"], p["h_u2"] = float(hu.min()), float(hu.max())

    # Upper mediastinum: narrow at the thoracic inlet, widening down to the heart; aortic knob on the
    # patient's left (image right).
    top, bottom = 0.03, p["h_v1"] + 0.06
    su = p["spine_u"]
    kv = p["knob_v"]
    med_u = [
        su - 0.04,
        su - 0.05,
        su - 0.058,
        su - 0.062,
        su - 0.05,
        su + 0.06,
        su + 0.07,
        su + 0.058,
        su + 0.045,
    ]
    med_v = [top, kv - 0.1, kv, bottom - 0.03, bottom, bottom, kv + 0.04, kv - 0.08, top]
    add_polygon("upper_mediastinum_core", np.asarray(med_u), np.asarray(med_v))
    th = np.linspace(0.0, 2.0 * math.pi, 28, endpoint=False)
    knob_u = su + 0.05 + p["knob_r"] * 0.45
    add_polygon("aortic_knob", knob_u + p["knob_r"] * np.cos(th), kv + p["knob_r"] * np.sin(th))
    masks["upper_mediastinum"] = masks.pop("upper_mediastinum_core") | masks["aortic_knob"]
    p["knob_u"] = knob_u

    # Trachea (air column) down to the carina, then the two main bronchi.
    tv = np.linspace(-0.02, p["carina_v"], 16)
    tu = su - 0.006 * np.sin(np.clip((tv - p["knob_v"] + 0.1) / 0.2, 0.0, 1.0) * math.pi)
    half = np.full_like(tv, 0.016)
    add_polygon("trachea", *_band_outline(tu, tv, half))
    for side_name, side, length, drop in (("right", -1, 0.075, 0.06), ("left", 1, 0.1, 0.05)):
        b = np.linspace(0.0, 1.0, 8)
        bu = tu[-1] + side * length * b
        bv = p["carina_v"] + drop * b**1.2
        add_polygon(f"{side_name}_bronchus", *_band_outline(bu, bv, np.full_like(bu, 0.011)))
    masks["bronchi"] = masks.pop("right_bronchus") | masks.pop("left_bronchus")

    # Clavicles: S-shaped bands from the sternal end up and out to the shoulder.
    clav_v0 = p["apex_v"] + float(rng.uniform(0.05, 0.08))
    for side_name, side in (("right", -1), ("left", 1)):
        c = np.linspace(0.0, 1.0, 24)
        cu = side * (0.03 + c * float(rng.uniform(0.3, 0.34)))
        cv = clav_v0 - c * float(rng.uniform(0.05, 0.08)) + 0.012 * np.sin(2.0 * math.pi * c)
        half = 0.011 + 0.006 * (1.0 - c) ** 3
        add_polygon(f"{side_name}_clavicle", *_band_outline(cu, cv, half))

    cut = masks["heart"] | masks["upper_mediastinum"]
    masks["right_lung"] = masks["right_field"] & ~cut
    masks["left_lung"] = masks["left_field"] & ~cut
    masks["lung_fields"] = masks.pop("right_field") | masks.pop("left_field")

    points: dict[str, tuple[float, float]] = {}
    for side_name, side in (("right", -1), ("left", 1)):
        s = "r" if side_name == "right" else "l"
        x, y = pose.to_px(np.array([side * p[f"cp_u_{s}"]]), np.array([p[f"cp_v_{s}"]]))
        points[f"{side_name}_cp"] = (float(x[0]), float(y[0]))
    x, y = pose.to_px(np.array([tu[-1]]), np.array([p["carina_v"]]))
    points["carina"] = (float(x[0]), float(y[0]))
    p["hilum_u_r"] = min(p["h_u1"] - 0.01, -0.085) - float(rng.uniform(0.0, 0.015))
    p["hilum_v_r"] = p["carina_v"] + float(rng.uniform(0.07, 0.09))
    p["hilum_u_l"] = max(su + 0.1, p["knob_u"] + 0.03) + float(rng.uniform(0.0, 0.015))
    p["hilum_v_l"] = p["carina_v"] + float(rng.uniform(0.04, 0.06))
    for side_name, s in (("right", "r"), ("left", "l")):
        x, y = pose.to_px(np.array([p[f"hilum_u_{s}"]]), np.array([p[f"hilum_v_{s}"]]))
        points[f"{side_name}_hilum"] = (float(x[0]), float(y[0]))
    return Anatomy(pose=pose, params=p, masks=masks, points=points, polygons=polygons)
