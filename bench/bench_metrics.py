"""Benchmark: batched audit metrics vs a plain per-image Python loop, one CPU core, printed as JSON.

Scores N saliency maps of S×S (default 1000 maps of 224²) against gaze maps, binary fixation maps and masks
with every gaze metric (KLD, NSS, CC, SIM, AUC-Judd, AUC-Borji with ``--borji-splits`` splits, default 10
instead of the benchmark's 100) and every localisation metric (AUPRC, IoU at a threshold and at top-10 %,
pointing game, relevance mass, relevance rank). Target: the batched total under 5 s on one core.

The baseline is a plain per-image Python loop over the same metrics, written the obvious way: the MIT
benchmark's MATLAB code transcribed (AUC-Judd's threshold loop, AUC-Borji's per-split loop), scikit-learn's
``precision_recall_curve`` + ``auc`` for AUPRC (Arun et al.), numpy one map at a time for the rest, with the
same conventions (ties, NaN rules, AUC-Borji's per-map random streams). Both routes' scores are compared
(``max_abs_diff``, ``same_nans``), so the speed-up is for the same numbers. Wall-clock and CPU times are
both reported: on a shared machine the wall clock includes time stolen by other processes.

Synthetic but realistic inputs (no data files needed): Grad-CAM-like maps (a 7×7 ReLU'd activation grid,
bilinearly upsampled: exact zeros and many tied values, as real Grad-CAM maps have), gaze maps from
~60-150 clustered fixations smoothed by a Gaussian, and two-ellipse "lung" masks (~1/3 of the image).

Usage: ``python bench/bench_metrics.py [--n 1000] [--size 224] [--repeat 3] [--loop-n N]``; with
``--loop-n`` smaller than ``--n`` the loop runs on the first N images and its time is scaled to ``--n``
(reported as ``loop_extrapolated_to_n``).
"""

from __future__ import annotations

import os

# One core: set before numpy / scipy / torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from scipy.integrate import trapezoid  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import metrics as M  # noqa: E402

try:  # the brief asks for torch at one thread too (it is imported by other audit code paths)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a project dependency
    torch = None


def make_inputs(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic saliency / gaze / fixation / mask arrays (see the module docstring)."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 7, 7)).astype(np.float32) + np.linspace(-0.5, 0.5, 7, dtype=np.float32)
    saliency = M.resize_maps(np.maximum(low, 0), (size, size)).astype(np.float32)
    fixations = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        k = int(rng.integers(60, 150))
        cy, cx = rng.uniform(0.22 * size, 0.76 * size, 2)
        ys = np.clip(rng.normal(cy, 0.13 * size, k), 0, size - 1).astype(int)
        xs = np.clip(rng.normal(cx, 0.13 * size, k), 0, size - 1).astype(int)
        fixations[i, ys, xs] = True
    gaze = gaussian_filter(fixations.astype(np.float32), sigma=(0, size / 28, size / 28))
    yy, xx = np.mgrid[:size, :size] / size
    lungs = (((yy - 0.5) / 0.31) ** 2 + ((xx - 0.29) / 0.17) ** 2 <= 1) | (
        ((yy - 0.5) / 0.31) ** 2 + ((xx - 0.71) / 0.17) ** 2 <= 1
    )
    masks = np.stack([np.roll(lungs, tuple(rng.integers(-10, 11, 2)), axis=(0, 1)) for _ in range(n)])
    return {"saliency": saliency, "gaze": gaze, "fixations": fixations, "masks": masks}


# ------------------------------------------------------------------ plain per-image implementations
# The loop baseline: one image at a time, written the obvious way (the MIT benchmark's MATLAB code
# transcribed, scikit-learn for AUPRC as Arun et al.), with the same conventions as audit.metrics so that
# both routes must give the same numbers.
EPS = M.EPS


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


def plain_kld(s: np.ndarray, g: np.ndarray) -> float:
    s, g = s.astype(np.float64), g.astype(np.float64)  # MATLAB im2double
    if s.min() < 0 or g.min() < 0 or s.sum() == 0 or g.sum() == 0:
        return float("nan")
    p, q = s / s.sum(), g / g.sum()
    return float(np.sum(q * np.log(EPS + q / (p + EPS))))


def plain_nss(s: np.ndarray, f: np.ndarray) -> float:
    if s.max() == s.min() or not f.any():
        return float("nan")
    s = s.astype(np.float64)
    z = (s - s.mean()) / s.std(ddof=1)
    return float(z[f].mean())


def plain_cc(s: np.ndarray, g: np.ndarray) -> float:
    if s.max() == s.min() or g.max() == g.min():
        return float("nan")
    return float(np.corrcoef(s.ravel().astype(np.float64), g.ravel().astype(np.float64))[0, 1])


def plain_sim(s: np.ndarray, g: np.ndarray) -> float:
    if s.max() == s.min() or g.max() == g.min():
        return float("nan")
    p, q = _minmax(s), _minmax(g)
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def plain_auc_judd(s: np.ndarray, f: np.ndarray) -> float:
    """AUC_Judd.m's threshold loop (a full pass over the map per fixation), ties counted together."""
    if s.max() == s.min() or not f.any() or f.all():
        return float("nan")
    sal = _minmax(s)
    sth = np.sort(sal[f])[::-1]
    nf, npix = sth.size, sal.size
    tp, fp = [0.0], [0.0]
    for t in sth:
        above_fix = np.count_nonzero(sth >= t)
        tp.append(above_fix / nf)
        fp.append((np.count_nonzero(sal >= t) - above_fix) / (npix - nf))
    tp.append(1.0)
    fp.append(1.0)
    return float(trapezoid(tp, fp))


def plain_auc_borji(s: np.ndarray, f: np.ndarray, n_splits: int, index: int, seed: int = 0) -> float:
    """AUC_Borji.m's per-split loop, drawing from auc_borji's documented per-map stream."""
    if s.max() == s.min() or not f.any():
        return float("nan")
    sal = _minmax(s).ravel()
    sth = sal[f.ravel()]
    entropy = np.random.SeedSequence(seed).entropy
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(index,)))
    randfix = sal[rng.integers(0, sal.size, size=(sth.size, n_splits))]
    areas = []
    for k in range(n_splits):
        cur = randfix[:, k]
        top = max(sth.max(), cur.max())
        thresholds = np.round(0.1 * np.arange(int(np.floor(top / 0.1 + 1e-9)), -1, -1), 12)
        tp = [0.0] + [np.count_nonzero(sth >= t) / sth.size for t in thresholds] + [1.0]
        fp = [0.0] + [np.count_nonzero(cur >= t) / sth.size for t in thresholds] + [1.0]
        areas.append(trapezoid(tp, fp))
    return float(np.mean(areas))


def plain_iou(s: np.ndarray, m: np.ndarray, threshold: float = 0.0, top: float | None = None) -> float:
    if not m.any():
        return float("nan")
    if top is not None:
        if s.max() == s.min():
            return float("nan")
        k = max(1, int(np.ceil(top / 100 * s.size - 1e-9)))
        threshold = np.sort(s.ravel())[-k]
    region = s >= threshold
    return float((region & m).sum() / (region | m).sum())


def plain_pointing_game(s: np.ndarray, m: np.ndarray) -> float:
    if s.max() == s.min() or not m.any():
        return float("nan")
    return float(m[s == s.max()].any())


def plain_relevance_mass(s: np.ndarray, m: np.ndarray) -> float:
    r = np.maximum(s, 0).astype(np.float64)
    if r.sum() == 0 or not m.any():
        return float("nan")
    return float(r[m].sum() / r.sum())


def plain_relevance_rank(s: np.ndarray, m: np.ndarray) -> float:
    k = int(m.sum())
    if k == 0:
        return float("nan")
    v = np.sort(s.ravel())[-k]  # K-th largest; pixels tied with it share the remaining places
    above, tied = s > v, s == v
    return float(((above & m).sum() + (k - above.sum()) * (tied & m).sum() / tied.sum()) / k)


def metric_table(borji_splits: int) -> dict[str, tuple[Callable, str, Callable]]:
    """name -> (batched call on the whole batch, reference key, plain per-image call (map, ref, index))."""

    def borji_batched(s: np.ndarray, f: np.ndarray) -> np.ndarray:
        return M.auc_borji(s, f, n_splits=borji_splits)

    return {
        "kld": (M.kld, "gaze", lambda s, g, i: plain_kld(s, g)),
        "nss": (M.nss, "fixations", lambda s, f, i: plain_nss(s, f)),
        "cc": (M.cc, "gaze", lambda s, g, i: plain_cc(s, g)),
        "sim": (M.sim, "gaze", lambda s, g, i: plain_sim(s, g)),
        "auc_judd": (M.auc_judd, "fixations", lambda s, f, i: plain_auc_judd(s, f)),
        "auc_borji": (borji_batched, "fixations", lambda s, f, i: plain_auc_borji(s, f, borji_splits, i)),
        "auprc": (M.auprc, "masks", lambda s, m, i: M.auprc_sklearn(s, m)),
        "iou_threshold_0.5": (
            lambda s, m: M.iou(s, m, threshold=0.5),
            "masks",
            lambda s, m, i: plain_iou(s, m, threshold=0.5),
        ),
        "iou_top_10pct": (
            lambda s, m: M.iou(s, m, top_percent=10),
            "masks",
            lambda s, m, i: plain_iou(s, m, top=10),
        ),
        "pointing_game": (M.pointing_game, "masks", lambda s, m, i: plain_pointing_game(s, m)),
        "relevance_mass": (M.relevance_mass, "masks", lambda s, m, i: plain_relevance_mass(s, m)),
        "relevance_rank": (M.relevance_rank, "masks", lambda s, m, i: plain_relevance_rank(s, m)),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--borji-splits", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="batched timings: best of this many runs")
    ap.add_argument("--loop-n", type=int, default=None, help="images for the loop baseline (default --n)")
    args = ap.parse_args()

    data = make_inputs(args.n, args.size)
    sal = data["saliency"]
    loop_n = min(args.n, args.loop_n or args.n)
    table = metric_table(args.borji_splits)

    rows: dict[str, dict[str, float]] = {}
    for name, (batched, ref_key, plain) in table.items():
        ref = data[ref_key]
        best_wall = best_cpu = float("inf")
        scores = np.empty(0)
        for _ in range(max(1, args.repeat)):
            scores, wall, cpu = _timed(lambda b=batched, r=ref: b(sal, r))
            best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        one, loop_wall, loop_cpu = _timed(
            lambda p=plain, r=ref: np.array([p(sal[i], r[i], i) for i in range(loop_n)], dtype=np.float64)
        )
        scale = args.n / loop_n
        same_nan = bool(np.array_equal(np.isnan(one), np.isnan(scores[:loop_n])))
        both = ~(np.isnan(one) | np.isnan(scores[:loop_n]))
        rows[name] = {
            "batched_s": round(best_wall, 4),
            "batched_cpu_s": round(best_cpu, 4),
            "loop_s": round(loop_wall * scale, 4),
            "loop_cpu_s": round(loop_cpu * scale, 4),
            "speedup": round(loop_wall * scale / best_wall, 2),
            "max_abs_diff": float(np.max(np.abs(one[both] - scores[:loop_n][both]), initial=0.0)),
            "same_nans": same_nan,
            "nan_count": int(np.isnan(scores).sum()),
        }

    total = sum(r["batched_s"] for r in rows.values())
    total_cpu = sum(r["batched_cpu_s"] for r in rows.values())
    total_loop = sum(r["loop_s"] for r in rows.values())
    report = {
        "benchmark": "audit.metrics: batched vs plain per-image Python loop",
        "n_maps": args.n,
        "map_shape": [args.size, args.size],
        "saliency_dtype": str(sal.dtype),
        "threads": 1,
        "auc_borji_splits": args.borji_splits,
        "batched_timing": f"best of {args.repeat} runs",
        "loop_images": loop_n,
        "loop_extrapolated_to_n": loop_n < args.n,
        "metrics": rows,
        "total_batched_s": round(total, 3),
        "total_batched_cpu_s": round(total_cpu, 3),
        "total_loop_s": round(total_loop, 3),
        "speedup_total": round(total_loop / total, 2),
        "target_s": 5.0,
        "meets_target": total < 5.0,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
