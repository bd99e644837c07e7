"""Repeatability, reproducibility and runtime reproducibility (Arun et al., Radiology: AI 2021).

* **Repeatability**: SSIM between the maps of two replicates (same recipe, other seed: registry versions
  sharing a ``replicate_group``), per case on the native grid; **reproducibility**: the same between two
  architectures trained on the same data (same ``dataset_fingerprint``). Both are compared with the low
  baseline SSIM = 0.5 (Table 2, "LOW"); ``baselines["low"] = {"ssim": 0.5}``.
* **Runtime reproducibility** (docs/architecture.md, "Why a twin"): the torch twin vs ONNX Runtime on the
  same preprocessed inputs — the largest absolute difference of the class probabilities and of the in-graph
  Grad-CAM (normalised per map by its maximum, so the tolerance does not depend on the logit scale). A served
  model (Triton via an endpoint) is compared the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import spearman, ssim

__all__ = [
    "LOW_BASELINE_SSIM",
    "map_agreement",
    "onnx_forward",
    "runtime_reproducibility",
]

LOW_BASELINE_SSIM = 0.5

#: ``run(x[N,1,S,S]) -> (probs[N,K], cam[N,K,h,w])``.
CamRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def map_agreement(
    maps_a: Sequence[np.ndarray],
    maps_b: Sequence[np.ndarray],
    keys: Sequence[str],
    *,
    check: str,
    method: str,
    other: str,
    data_range: float = 1.0,
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Per-case SSIM and Spearman between two models' maps of the same cases (same grid per case).

    ``check`` is ``"repeatability"`` or ``"reproducibility"``; ``other`` names the second model
    (``name:version``) in ``details``.
    """
    if not len(maps_a) == len(maps_b) == len(keys):
        raise CheckInputError("maps_a, maps_b and keys must have equal lengths")
    result = CheckResult(check, method)
    for a, b, k in zip(maps_a, maps_b, keys, strict=True):
        if a.shape != b.shape:
            raise CheckInputError(f"map shapes differ: {a.shape} vs {b.shape}")
        result.add_case(
            k, {"ssim": float(ssim(a, b, data_range=data_range)), "spearman": float(spearman(a, b))}
        )
    result.baselines["low"] = {"ssim": LOW_BASELINE_SSIM}
    result.details["other"] = other
    return result.summarise(bootstrap)


def onnx_forward(onnx_path: Path | str) -> CamRunner:
    """An ONNX Runtime (CPU) runner of a registry model: ``x -> (probs, cam)``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = dict(
            zip(names, sess.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)}), strict=True)
        )
        return out["probs"], out["cam"]

    return run


def torch_forward(model: torch.nn.Module) -> CamRunner:
    """The torch twin as a runner: ``forward_with_cam`` without gradients."""

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            _, probs, cam = model.forward_with_cam(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        return probs.numpy(), cam.numpy()

    return run


def _peak_normalised(cam: np.ndarray) -> np.ndarray:
    peak = cam.reshape(cam.shape[0], -1).max(axis=1)
    return cam / np.where(peak > 0, peak, 1.0)[:, None, None]


def runtime_reproducibility(
    reference: CamRunner,
    other: CamRunner,
    inputs: Sequence[np.ndarray],
    targets: Sequence[int],
    keys: Sequence[str],
    *,
    runtime: str = "onnxruntime",
    batch_size: int = 16,
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Per case: ``probs_max_abs_diff`` (all classes) and ``cam_max_abs_diff`` (target class, peak-normalised
    maps) between ``reference`` (the torch twin) and ``other`` (ONNX Runtime / Triton).

    The check's method is ``"gradcam"`` (the in-graph Grad-CAM); ``details["runtime"]`` names ``other``.
    """
    if not len(inputs) == len(targets) == len(keys):
        raise CheckInputError("inputs, targets and keys must have equal lengths")
    result = CheckResult("runtime_reproducibility", "gradcam")
    for start in range(0, len(inputs), batch_size):
        x = np.stack(inputs[start : start + batch_size]).astype(np.float32)
        t = np.asarray(targets[start : start + batch_size], dtype=int)
        p_ref, c_ref = reference(x)
        p_oth, c_oth = other(x)
        rows = np.arange(x.shape[0])
        dp = np.abs(p_ref - p_oth).max(axis=1)
        dc = np.abs(_peak_normalised(c_ref[rows, t]) - _peak_normalised(c_oth[rows, t]))
        dc = dc.reshape(dc.shape[0], -1).max(axis=1)
        for j in rows:
            result.add_case(
                keys[start + j], {"probs_max_abs_diff": float(dp[j]), "cam_max_abs_diff": float(dc[j])}
            )
    result.details["runtime"] = runtime
    return result.summarise(bootstrap)
