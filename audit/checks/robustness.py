"""Explanation robustness: does a method's map stay put when the image changes imperceptibly?

For each of the model-level cases (the policy's ``pairwise_cases``) the explainer is run on
``ROBUSTNESS_SAMPLES`` copies of the model input with Gaussian noise of standard deviation
:data:`NOISE_STD` added (:func:`audit.metrics.explanation_sensitivity`) and scored by

* ``max_sensitivity`` — Yeh et al. (NeurIPS 2019), ``max_k ‖Φ(x_k) − Φ(x)‖ / ‖Φ(x)‖`` (Quantus
  ``MaxSensitivity``): 0 = the map does not move; 1 = it moves by as much as its own norm;
* ``local_lipschitz`` — Alvarez-Melis & Jaakkola (2018), ``max_k ‖Φ(x_k) − Φ(x)‖ / ‖x_k − x‖``.

The low baseline ``baselines["unrelated"]["max_sensitivity"]`` is how far the map moves when the image is
replaced by a *different patient's* image: per case ``‖Φ(x_j) − Φ(x_i)‖ / ‖Φ(x_i)‖`` with ``j`` the next case
(cyclically), averaged. The default policy PASSes a method when its mean max-sensitivity is below half of
that (docs/audit.md, "Explanation robustness"): noise no reader can see must not move the map half as far as a
change of patient does.

Maps are compared as the explainer returns them (the audit's explainers min-max scale each map to [0, 1],
so a map's scale does not enter). ``NOISE_STD`` is in model-input units: with the default preprocessing
(``(pixel − 0.5)/0.25``) 0.02 is 0.005 of the display range, about 1.3 grey levels of an 8-bit image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from audit.checks.base import BootstrapSettings, CheckResult
from audit.checks.randomisation import Explainer
from audit.errors import CheckInputError
from audit.metrics import explanation_sensitivity

__all__ = [
    "NOISE_STD",
    "ROBUSTNESS_METRICS",
    "ROBUSTNESS_SAMPLES",
    "explanation_robustness",
    "unrelated_distance",
]

#: Metric name -> direction (``-1``: lower is better).
ROBUSTNESS_METRICS: dict[str, int] = {"max_sensitivity": -1, "local_lipschitz": -1}
#: Standard deviation of the input noise, in model-input units (see the module docstring).
NOISE_STD = 0.02
#: Perturbed copies per case (each one explanation of the batch).
ROBUSTNESS_SAMPLES = 8


def unrelated_distance(maps: np.ndarray) -> np.ndarray:
    """Per case ``i``: ``‖Φ(x_{i+1}) − Φ(x_i)‖ / ‖Φ(x_i)‖``, cyclic (NaN for fewer than two maps, a zero
    map)."""
    a = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    if a.shape[0] < 2:
        return np.full(a.shape[0], np.nan)
    norm = np.linalg.norm(a, axis=1)
    d = np.linalg.norm(np.roll(a, -1, axis=0) - a, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, d / norm, np.nan)


def explanation_robustness(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    method: str,
    keys: Sequence[str],
    noise_std: float = NOISE_STD,
    n_samples: int = ROBUSTNESS_SAMPLES,
    seed: int = 0,
    original: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Robustness check of one method on the batch ``x`` (``[N,1,S,S]``, one target and key per image).

    Per case: ``max_sensitivity`` and ``local_lipschitz``; ``baselines["unrelated"]`` holds the mean
    :func:`unrelated_distance` (as ``max_sensitivity``); ``details`` the noise settings.
    """
    if x.ndim != 4 or x.shape[0] != len(keys) or targets.shape[0] != len(keys):
        raise CheckInputError("x must be [N,1,S,S] with one target and one key per image")
    model = model.eval()
    dtype = x.dtype

    def explain(xa: np.ndarray) -> np.ndarray:
        return np.asarray(explainer(model, torch.from_numpy(np.ascontiguousarray(xa)).to(dtype), targets))

    base = explain(x.detach().cpu().numpy()) if original is None else np.asarray(original)
    scores = explanation_sensitivity(
        explain, x.detach().cpu().numpy(), noise_std=noise_std, n_samples=n_samples, seed=seed, original=base
    )
    result = CheckResult("robustness", method)
    for j, k in enumerate(keys):
        t = int(targets[j])
        cls = class_names[t] if 0 <= t < len(class_names) else str(t)
        result.add_case(
            k,
            {"max_sensitivity": scores.max_sensitivity[j], "local_lipschitz": scores.local_lipschitz[j]},
            cls,
        )
    result.summarise(bootstrap)
    unrelated = unrelated_distance(base)
    result.baselines["unrelated"] = {
        "max_sensitivity": float(np.nanmean(unrelated)) if np.isfinite(unrelated).any() else float("nan")
    }
    result.details = {"noise_std": float(noise_std), "n_samples": int(n_samples), "seed": int(seed)}
    return result
