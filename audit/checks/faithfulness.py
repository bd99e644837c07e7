"""Faithfulness: insertion / deletion AUC (Petsiuk et al. 2018, as used by Khakzar et al., MICCAI 2021).

Scored at model resolution on the preprocessed input: the most salient pixels are deleted from (replaced by
the blurred image, σ = 5 px) or inserted into (the blurred image) the input, and the target-class probability
is integrated over the fraction of pixels changed. Deletion: lower is better; insertion: higher is better;
``insertion_minus_deletion`` > 0 means the map ranks pixels better than its reverse would (the gated score).
The model is any ``forward(x[B,1,S,S]) -> probs[B,K]`` (the torch twin, ONNX Runtime, Triton).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import Forward, deletion_auc, insertion_auc

__all__ = ["FAITHFULNESS_METRICS", "faithfulness", "faithfulness_scores", "perturbation_step"]

FAITHFULNESS_METRICS: dict[str, int] = {"insertion_auc": 1, "deletion_auc": -1, "insertion_minus_deletion": 1}
#: Number of perturbation steps over the whole image (RISE: 224 steps of 224 pixels on 224×224 images).
DEFAULT_STEPS = 32


def perturbation_step(size: int, steps: int = DEFAULT_STEPS) -> int:
    """Pixels changed per step so that a ``size×size`` input takes ``steps`` steps."""
    return max(1, (size * size + steps - 1) // steps)


def faithfulness_scores(
    saliency: np.ndarray, x: np.ndarray, forward: Forward, target: int, *, steps: int = DEFAULT_STEPS
) -> dict[str, float]:
    """Insertion and deletion AUC of one model-resolution map ``S×S`` for input ``x`` (``1×S×S``)."""
    if saliency.shape != x.shape[-2:]:
        raise CheckInputError(f"map shape {saliency.shape} differs from the input grid {x.shape[-2:]}")
    step = perturbation_step(int(x.shape[-1]), steps)
    ins = float(insertion_auc(saliency, x, forward, int(target), step=step))
    dele = float(deletion_auc(saliency, x, forward, int(target), step=step))
    return {"insertion_auc": ins, "deletion_auc": dele, "insertion_minus_deletion": ins - dele}


def faithfulness(
    maps: Sequence[np.ndarray],
    inputs: Sequence[np.ndarray],
    targets: Sequence[int],
    keys: Sequence[str],
    forward: Forward,
    *,
    method: str,
    class_names: Sequence[str] = (),
    steps: int = DEFAULT_STEPS,
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Faithfulness check of one method over model-resolution maps and inputs."""
    if not len(maps) == len(inputs) == len(targets) == len(keys):
        raise CheckInputError("maps, inputs, targets and keys must have equal lengths")
    result = CheckResult("faithfulness", method)
    for m, x, t, k in zip(maps, inputs, targets, keys, strict=True):
        cls = class_names[t] if t < len(class_names) else str(t)
        result.add_case(k, faithfulness_scores(m, x, forward, t, steps=steps), cls)
    return result.summarise(bootstrap)
