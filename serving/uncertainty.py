"""How sure a prediction is (seed 003: a model should be able to say "I don't know").

* **Predictive entropy** ``H(p̄) = −Σ_c p̄_c ln p̄_c`` (nats) of the served probabilities, and its share of
  the maximum ``ln K``. ``abstain`` is ``H > threshold`` with the threshold from the card's ``uncertainty``
  section (:class:`mimicry.registry.UncertaintySpec`), else ``ServeSettings.default_abstain_entropy``, else
  no abstention (``abstain: null``).
* **Ensemble disagreement**: for an ensemble (the twin exposes ``member_probs``) the mutual information
  ``I = H(p̄) − (1/S) Σ_s H(p_s)`` between the prediction and the member (Lakshminarayanan et al., NeurIPS
  2017; the BALD decomposition of Houlsby et al. 2011) and the largest member-vs-mean total-variation
  distance.
* **Out-of-distribution** (image statistics): with ``reference_stats.image_mean`` / ``image_std`` in the
  card — the mean and standard deviation, over the reference (training) images, of each image's mean
  display intensity in ``[0, 1]`` after letterboxing — the input's statistic gives
  ``z = |mean(x) − image_mean| / image_std`` and ``ood = z > ServeSettings.ood_z_threshold``. With no
  reference statistics the check is reported as not available (``ood: null``), never as "in distribution".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mimicry.registry import ModelCard

__all__ = [
    "abstain_threshold",
    "ensemble_disagreement",
    "image_statistic",
    "ood_check",
    "predictive_entropy",
    "uncertainty_report",
]


def predictive_entropy(probs: np.ndarray) -> float:
    """``−Σ p ln p`` in nats for one probability vector (``0 ln 0 = 0``)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def abstain_threshold(card: ModelCard, default: float | None) -> tuple[float | None, str]:
    """The abstention threshold (nats) and where it came from (``card``, ``settings`` or ``none``)."""
    if card.uncertainty is not None:
        return float(card.uncertainty.abstain_threshold), "card"
    if default is not None:
        return float(default), "settings"
    return None, "none"


def ensemble_disagreement(member_probs: np.ndarray) -> dict[str, float]:
    """Mutual information (nats) and max total-variation distance of members ``[S, K]`` from their mean."""
    m = np.asarray(member_probs, dtype=np.float64)
    mean = m.mean(axis=0)
    mi = predictive_entropy(mean) - float(np.mean([predictive_entropy(row) for row in m]))
    tv = float(0.5 * np.abs(m - mean).sum(axis=1).max())
    return {"mutual_information": max(mi, 0.0), "max_member_tv": tv, "members": int(m.shape[0])}


def image_statistic(boxed_image: np.ndarray) -> float:
    """Mean display intensity of the letterboxed image (the statistic compared with ``reference_stats``)."""
    return float(np.mean(boxed_image, dtype=np.float64))


def ood_check(card: ModelCard, statistic: float, z_threshold: float) -> dict[str, Any] | None:
    """``{"method", "z", "threshold", "ood"}`` or ``None`` when the card has no usable reference."""
    ref = card.reference_stats
    if ref is None or ref.image_mean is None or ref.image_std is None or not ref.image_std > 0:
        return None
    z = abs(statistic - float(ref.image_mean)) / float(ref.image_std)
    return {
        "method": "image_mean_zscore",
        "statistic": statistic,
        "z": z,
        "threshold": z_threshold,
        "ood": bool(z > z_threshold),
    }


def uncertainty_report(
    card: ModelCard,
    probs: np.ndarray,
    *,
    statistic: float | None,
    default_threshold: float | None,
    ood_z_threshold: float,
    member_probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``uncertainty`` object of a prediction (see the module docstring for every member)."""
    h = predictive_entropy(probs)
    k = int(np.asarray(probs).size)
    threshold, source = abstain_threshold(card, default_threshold)
    ood = ood_check(card, statistic, ood_z_threshold) if statistic is not None else None
    abstain = None if threshold is None else bool(h > threshold)
    return {
        "predictive_entropy": h,
        "normalized_entropy": h / math.log(k) if k > 1 else 0.0,
        "abstain_threshold": threshold,
        "threshold_source": source,
        "abstain": abstain,
        "ensemble": ensemble_disagreement(member_probs) if member_probs is not None else None,
        "ood": ood,
    }
