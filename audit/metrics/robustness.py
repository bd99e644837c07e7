"""Explanation robustness: how far an explanation moves when the input moves imperceptibly.

Two estimates from the same Monte-Carlo neighbourhood ``x_k = x + δ_k``, ``δ_k ~ N(0, σ²·I)`` elementwise,
``k = 1 … n_samples`` (one draw per sample for the whole batch, from ``numpy.random.default_rng(seed)``),
with ``Φ`` the explanation function and ``‖·‖`` the Frobenius (ℓ2) norm over the whole map:

* **max-sensitivity** (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019),
  relative to the explanation's own norm as in Quantus ``MaxSensitivity``::

      SENS_max(x) = max_k ‖Φ(x_k) − Φ(x)‖ / ‖Φ(x)‖

  Scale-free, so one threshold serves methods whose maps have different units; 0 = the map does not move.
* **local Lipschitz estimate** (Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods",
  ICML WHI 2018; Quantus ``LocalLipschitzEstimate`` with Euclidean distances)::

      L(x) = max_k ‖Φ(x_k) − Φ(x)‖ / ‖x_k − x‖

  In map units per input unit (depends on the method's scale: reported, not gated).

Yeh et al. take the maximum over a ball ``‖δ‖ ≤ r``; sampling Gaussian noise and keeping the worst sample is
the estimator Quantus uses (a lower bound of the true maximum that grows with ``n_samples``). Undefined (NaN):
an all-zero or non-finite original explanation (max-sensitivity), any non-finite perturbed explanation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.metrics._batch import MetricInputError, to_numpy

__all__ = [
    "Explain",
    "RobustnessScores",
    "explanation_sensitivity",
    "local_lipschitz",
    "max_sensitivity",
    "noise_draws",
]

#: ``explain(x[N, ...]) -> maps[N, ...]``: the explanation function Φ (inputs and maps as numpy arrays).
Explain = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RobustnessScores:
    """Per-input results of :func:`explanation_sensitivity` (``float64[N]`` each)."""

    max_sensitivity: np.ndarray
    local_lipschitz: np.ndarray


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).astype(np.float64, copy=False)


def noise_draws(
    shape: tuple[int, ...], *, noise_std: float, n_samples: int, seed: int | None
) -> list[np.ndarray]:
    """The perturbations ``δ_1 … δ_n`` used by :func:`explanation_sensitivity` (same seed → same draws)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, noise_std, size=shape) for _ in range(n_samples)]


def explanation_sensitivity(
    explain: Explain,
    x: np.ndarray,
    *,
    noise_std: float,
    n_samples: int = 8,
    seed: int | None = 0,
    original: np.ndarray | None = None,
) -> RobustnessScores:
    """Max-sensitivity and local Lipschitz estimate of ``explain`` at each input of the batch ``x``.

    Args:
        explain: Φ, ``x[N, ...] -> maps[N, ...]`` (any map shape; compared as flat vectors).
        x: ``N×…`` batch of model inputs (float).
        noise_std: σ of the Gaussian noise, in the units of ``x``.
        n_samples: number of perturbed copies (explanations computed: ``n_samples`` batches).
        seed: seed of the noise.
        original: Φ(x) when already computed (saves one batch).

    Raises:
        MetricInputError: ``noise_std <= 0``, ``n_samples < 1``, an empty batch, or ``explain`` returning a
            batch of another size.
    """
    if not noise_std > 0 or not np.isfinite(noise_std):
        raise MetricInputError(f"noise_std must be a positive number, got {noise_std}")
    if n_samples < 1:
        raise MetricInputError(f"n_samples must be >= 1, got {n_samples}")
    xa = np.asarray(to_numpy(x))
    if xa.ndim < 1 or xa.shape[0] == 0:
        raise MetricInputError(f"x must be a non-empty batch, got shape {xa.shape}")
    n = xa.shape[0]
    a0 = _flat(np.asarray(to_numpy(original if original is not None else explain(xa))))
    if a0.shape[0] != n:
        raise MetricInputError(f"explain returned {a0.shape[0]} maps for {n} inputs")
    norm0 = np.linalg.norm(a0, axis=1)
    sens = np.full((n, n_samples), np.nan)
    lip = np.full((n, n_samples), np.nan)
    for k, delta in enumerate(noise_draws(xa.shape, noise_std=noise_std, n_samples=n_samples, seed=seed)):
        ak = _flat(np.asarray(to_numpy(explain((xa + delta).astype(xa.dtype, copy=False)))))
        if ak.shape != a0.shape:
            raise MetricInputError(
                f"explain returned maps {ak.shape} for perturbed inputs, {a0.shape} before"
            )
        d = np.linalg.norm(ak - a0, axis=1)
        # the step actually taken, in the input dtype (float32 inputs round the noise)
        dx = np.linalg.norm(_flat((xa + delta).astype(xa.dtype, copy=False)) - _flat(xa), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sens[:, k] = d / norm0
            lip[:, k] = d / dx
    a0_ok = np.isfinite(a0).all(axis=1)
    sens_ok = a0_ok & (norm0 > 0) & np.isfinite(sens).all(axis=1)
    lip_ok = a0_ok & np.isfinite(lip).all(axis=1)
    return RobustnessScores(
        max_sensitivity=np.where(sens_ok, np.max(sens, axis=1), np.nan),
        local_lipschitz=np.where(lip_ok, np.max(lip, axis=1), np.nan),
    )


def max_sensitivity(
    explain: Explain, x: np.ndarray, *, noise_std: float, n_samples: int = 8, seed: int | None = 0
) -> np.ndarray:
    """``SENS_max`` per input (see the module docstring and :func:`explanation_sensitivity`)."""
    scores = explanation_sensitivity(explain, x, noise_std=noise_std, n_samples=n_samples, seed=seed)
    return scores.max_sensitivity


def local_lipschitz(
    explain: Explain, x: np.ndarray, *, noise_std: float, n_samples: int = 8, seed: int | None = 0
) -> np.ndarray:
    """Local Lipschitz estimate per input (see the module docstring and :func:`explanation_sensitivity`)."""
    scores = explanation_sensitivity(explain, x, noise_std=noise_std, n_samples=n_samples, seed=seed)
    return scores.local_lipschitz
