"""Occlusion (Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks", §4.2): slide
a square of ``baseline`` value over the image and record how much the target class *probability* drops;
overlapping windows are averaged (captum ``Occlusion``).

Occlusion needs only a forward pass, so besides the registry method (torch model) there is
:func:`occlusion_from_forward`, which takes any callable ``float32[N, 1, H, W] -> probabilities [N, K]`` on
NumPy arrays — an ONNX Runtime session or a Triton client — and runs the very same captum computation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from captum.attr import Occlusion
from torch import Tensor

from mimicry.models.base import CamClassifier
from mimicry.saliency.base import SaliencyMethod, register_method
from mimicry.saliency.errors import InvalidTargetError, SaliencyError
from mimicry.saliency.gradients import _check_positive

__all__ = ["OcclusionMethod", "occlusion_from_forward", "occlusion_geometry"]

NumpyForward = Callable[[np.ndarray], np.ndarray]


def occlusion_geometry(height: int, width: int, window: int | None, stride: int | None) -> tuple[int, int]:
    """Resolve ``(window, stride)``: defaults ``window = max(1, round(min(H, W) / 8))`` (28 px at 224²) and
    ``stride = max(1, window // 2)`` (half-overlapping windows).

    Raises:
        SaliencyError: a window larger than the image, or a stride larger than the window (captum's rule).
    """
    win = max(1, round(min(height, width) / 8)) if window is None else int(window)
    st = max(1, win // 2) if stride is None else int(stride)
    if not 1 <= win <= min(height, width):
        raise SaliencyError(f"occlusion window {win} must lie in [1, {min(height, width)}]")
    if not 1 <= st <= win:
        raise SaliencyError(f"occlusion stride {st} must lie in [1, window={win}]")
    return win, st


def _occlude(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    window: int,
    stride: int,
    baseline: float,
    batch_size: int,
) -> Tensor:
    """captum ``Occlusion`` one sample at a time, ``batch_size`` occluded copies per forward call."""
    occ = Occlusion(forward)
    c = x.shape[1]
    out = []
    for i in range(x.shape[0]):
        out.append(
            occ.attribute(
                x[i : i + 1],
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=float(baseline),
                target=target[i : i + 1],
                perturbations_per_eval=batch_size,
            ).detach()
        )
    return torch.cat(out)


@register_method("occlusion")
class OcclusionMethod(SaliencyMethod):
    """Occlusion sensitivity of the target probability (softmax of the logits; ``output="logits"`` to
    occlude the logit instead): attribution of a pixel = mean over the windows covering it of
    ``p_c(x) − p_c(x with the window set to baseline)``.

    Defaults: ``window=None`` / ``stride=None`` (→ :func:`occlusion_geometry`: ⅛ of the image side, half
    overlap), ``baseline=0.0`` (the normalisation mean, i.e. mid grey for mimicry's preprocessing —
    Zeiler & Fergus occlude with a grey square), ``output="probs"``, ``batch_size=16`` occluded images per
    forward pass.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "window": None,
        "stride": None,
        "baseline": 0.0,
        "output": "probs",
        "batch_size": 16,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        window: int | None,
        stride: int | None,
        baseline: float,
        output: str,
        batch_size: int,
        **_: Any,
    ) -> Tensor:
        if output not in ("probs", "logits"):
            raise SaliencyError(f"output must be 'probs' or 'logits', got {output!r}")
        win, st = occlusion_geometry(x.shape[-2], x.shape[-1], window, stride)

        def forward(t: Tensor) -> Tensor:
            logits = model(t)
            return torch.softmax(logits, dim=1) if output == "probs" else logits

        return _occlude(forward, x, target, win, st, baseline, _check_positive("batch_size", batch_size))


def occlusion_from_forward(
    forward: NumpyForward,
    x: np.ndarray,
    target: int | Sequence[int] | np.ndarray | None = None,
    *,
    window: int | None = None,
    stride: int | None = None,
    baseline: float = 0.0,
    batch_size: int = 16,
) -> np.ndarray:
    """Occlusion against any backend that gives probabilities (ONNX Runtime, Triton).

    Args:
        forward: ``float32[B, 1, H, W] -> float[B, K]`` probabilities, on NumPy arrays; called with
            ``B ≤ batch_size``.
        x: ``float32[N, 1, H, W]`` model inputs.
        target: Class index, one per sample, or ``None`` (= argmax of ``forward(x)``).
        window, stride, baseline: As the ``occlusion`` method (:func:`occlusion_geometry`).
        batch_size: Occluded images per ``forward`` call.

    Returns:
        Raw attributions ``float32[N, 1, H, W]`` — identical to captum ``Occlusion`` on the same function;
        apply :class:`~mimicry.saliency.postprocess.PostProcess` for a ``[0, 1]`` map.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype != np.float32 or x.shape[0] == 0:
        raise SaliencyError(f"x must be float32[N, C, H, W] with N ≥ 1, got {x.dtype} {x.shape}")

    def forward_t(t: Tensor) -> Tensor:
        probs = np.asarray(forward(np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)))
        if probs.ndim != 2 or probs.shape[0] != t.shape[0]:
            raise SaliencyError(f"forward returned shape {probs.shape} for a batch of {t.shape[0]}")
        return torch.from_numpy(probs.astype(np.float32, copy=False))

    xt = torch.from_numpy(np.ascontiguousarray(x))
    n = x.shape[0]
    probs0 = torch.cat([forward_t(xt[i : i + batch_size]) for i in range(0, n, max(1, batch_size))])
    if target is None:
        tt = probs0.argmax(dim=1)
    else:
        arr = np.atleast_1d(np.asarray(target))
        if not np.issubdtype(arr.dtype, np.integer):
            raise InvalidTargetError("target must be an int, a sequence of ints or None")
        if arr.size == 1:
            arr = np.repeat(arr, n)
        if arr.shape != (n,):
            raise InvalidTargetError(f"{arr.size} targets for a batch of {n}")
        if arr.min() < 0 or arr.max() >= probs0.shape[1]:
            raise InvalidTargetError(f"target classes must lie in [0, {probs0.shape[1]})")
        tt = torch.from_numpy(arr.astype(np.int64))
    win, st = occlusion_geometry(x.shape[-2], x.shape[-1], window, stride)
    with torch.no_grad():
        attr = _occlude(forward_t, xt, tt, win, st, baseline, _check_positive("batch_size", batch_size))
    return attr.numpy().astype(np.float32, copy=False)
