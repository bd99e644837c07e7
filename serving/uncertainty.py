"""How sure a prediction is (the perspective paper: a model should be able to say "I don't
know"; docs/methods.md, "Out-of-distribution and abstain flags").

* **Predictive entropy** ``H(p̄) = −Σ_c p̄_c ln p̄_c`` (nats) of the served probabilities, and its share of
  the maximum ``ln K``. ``abstain`` is ``H > threshold`` with the threshold from the card's ``uncertainty``
  section (:class:`mimicry.registry.UncertaintySpec`), else ``ServeSettings.default_abstain_entropy``, else
  no abstention (``abstain: null``).
* **Ensemble disagreement** (``disagreement``; ``null`` for a single model): for an ensemble of ``S``
  sub-models with probabilities ``p_s`` and mean ``p̄ = (1/S) Σ_s p_s`` (Watson et al., Eq. 1), the
  disagreement is the **mutual information** between the prediction and the member,
  ``I = H(p̄) − (1/S) Σ_s H(p_s)`` in nats (the BALD / "epistemic" part of the predictive entropy: Houlsby
  et al. 2011; Lakshminarayanan et al., NeurIPS 2017). ``0 ≤ I ≤ ln S`` and ``I ≤ ln K``; it is ``0`` iff
  every member gives the same vector. Also reported: the mean pairwise total-variation distance
  ``(2 / S(S−1)) Σ_{s<t} ½‖p_s − p_t‖₁``, the largest member-vs-mean TV distance, and each member's
  probabilities. ``abstain`` also turns true when ``I`` exceeds the disagreement threshold: the card's
  ``uncertainty.disagreement_threshold`` when the card schema has it, else
  ``ServeSettings.default_abstain_disagreement``, else none (reported, never abstaining). The members'
  probabilities come from the backend when the graph exports ``member_probs``, otherwise from the torch
  twin (``source``: ``backend`` or ``twin``).
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
    "disagreement_threshold",
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


def disagreement_threshold(card: ModelCard, default: float | None) -> tuple[float | None, str]:
    """The ensemble disagreement threshold (nats of mutual information) and its source (``card``,
    ``settings`` or ``none``). The card field is read when :class:`mimicry.registry.UncertaintySpec` has
    a ``disagreement_threshold`` (not in today's card schema)."""
    value = getattr(card.uncertainty, "disagreement_threshold", None) if card.uncertainty else None
    if value is not None:
        return float(value), "card"
    if default is not None:
        return float(default), "settings"
    return None, "none"


def ensemble_disagreement(member_probs: np.ndarray) -> dict[str, Any]:
    """Disagreement of ``S`` members' probability vectors ``[S, K]`` (definitions in the module docstring).

    Returns:
        ``{"measure": "mutual_information", "value", "mutual_information", "mean_pairwise_tv",
        "max_member_tv", "members", "member_probabilities"}``; ``value`` is the mutual information (nats).

    Raises:
        ValueError: ``member_probs`` is not ``[S, K]`` with ``S ≥ 1``.
    """
    m = np.asarray(member_probs, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1:
        raise ValueError(f"member_probs must be [S, K], got shape {m.shape}")
    s = m.shape[0]
    mean = m.mean(axis=0)
    mi = max(predictive_entropy(mean) - float(np.mean([predictive_entropy(row) for row in m])), 0.0)
    tv = float(0.5 * np.abs(m - mean).sum(axis=1).max())
    pairwise = 0.5 * np.abs(m[:, None, :] - m[None, :, :]).sum(axis=-1)
    mean_pairwise = float(pairwise[np.triu_indices(s, k=1)].mean()) if s > 1 else 0.0
    return {
        "measure": "mutual_information",
        "value": mi,
        "mutual_information": mi,
        "mean_pairwise_tv": mean_pairwise,
        "max_member_tv": tv,
        "members": int(s),
        "member_probabilities": m.tolist(),
    }


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
    default_disagreement_threshold: float | None = None,
    member_source: str = "twin",
) -> dict[str, Any]:
    """The ``uncertainty`` object of a prediction (see the module docstring for every member).

    Args:
        card: The served model's card (thresholds, reference statistics).
        probs: The served probabilities ``[K]``.
        statistic: The input's image statistic for the OOD check (``None``: not computed).
        default_threshold: Entropy threshold for cards without an ``uncertainty`` section.
        ood_z_threshold: OOD z-score threshold.
        member_probs: For an ensemble, its members' probabilities ``[S, K]`` (``None``: not an ensemble,
            or disagreement switched off).
        default_disagreement_threshold: Mutual-information threshold when the card records none.
        member_source: Where ``member_probs`` came from (``twin`` or ``backend``).

    ``abstain`` is ``None`` when no applicable threshold exists, else ``True`` iff any criterion fires;
    ``abstain_reasons`` lists which (``predictive_entropy``, ``disagreement``).
    """
    h = predictive_entropy(probs)
    k = int(np.asarray(probs).size)
    threshold, source = abstain_threshold(card, default_threshold)
    ood = ood_check(card, statistic, ood_z_threshold) if statistic is not None else None
    reasons: list[str] = []
    decided = threshold is not None
    if threshold is not None and h > threshold:
        reasons.append("predictive_entropy")
    disagreement: dict[str, Any] | None = None
    if member_probs is not None:
        disagreement = ensemble_disagreement(member_probs)
        d_threshold, d_source = disagreement_threshold(card, default_disagreement_threshold)
        d_abstain = None if d_threshold is None else bool(disagreement["value"] > d_threshold)
        disagreement.update(
            {
                "threshold": d_threshold,
                "threshold_source": d_source,
                "abstain": d_abstain,
                "source": member_source,
            }
        )
        decided = decided or d_threshold is not None
        if d_abstain:
            reasons.append("disagreement")
    return {
        "predictive_entropy": h,
        "normalized_entropy": h / math.log(k) if k > 1 else 0.0,
        "abstain_threshold": threshold,
        "threshold_source": source,
        "abstain": bool(reasons) if decided else None,
        "abstain_reasons": reasons,
        "disagreement": disagreement,
        "ood": ood,
    }
