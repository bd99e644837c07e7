"""Classification metrics reported every epoch (validation) and at the end of a run (test).

Watson et al. (WACV 2023, §4) report accuracy over the three mutually exclusive classes (Normal, CHF,
pneumonia); we add the macro one-vs-rest AUROC (scikit-learn) and the mean negative log-likelihood of the
predicted probabilities. Probabilities are what the deployed model outputs: a softmax for one classifier,
the mean of the members' softmax outputs for an ensemble (Eq. 1).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["accuracy", "classification_metrics", "macro_auroc", "mean_nll"]

_PROB_FLOOR = 1e-12


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be [N, K] with N = {y.shape[0]} labels, got shape {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]})")
    return y, p


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of cases whose arg-max class is the label (NaN for no cases)."""
    y, p = _check(labels, probs)
    if y.size == 0:
        return math.nan
    return float(np.mean(p.argmax(axis=1) == y))


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro-averaged one-vs-rest AUROC (``sklearn.metrics.roc_auc_score`` per class).

    Classes that are absent (or the only class present) in ``labels`` have no defined AUROC and are left out
    of the mean; with every class present this equals ``roc_auc_score(labels, probs, multi_class="ovr",
    average="macro")``. NaN when no class has both positives and negatives.
    """
    y, p = _check(labels, probs)
    scores = []
    for k in range(p.shape[1]):
        positive = y == k
        if positive.any() and (~positive).any():
            scores.append(roc_auc_score(positive.astype(np.int64), p[:, k]))
    return float(np.mean(scores)) if scores else math.nan


def mean_nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean ``−log p(label)`` (probabilities floored at 1e-12); NaN for no cases."""
    y, p = _check(labels, probs)
    if y.size == 0:
        return math.nan
    return float(-np.mean(np.log(np.maximum(p[np.arange(y.size), y], _PROB_FLOOR))))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_loss``, ``{prefix}_accuracy``, ``{prefix}_auroc`` (see the functions above)."""
    return {
        f"{prefix}_loss": mean_nll(labels, probs),
        f"{prefix}_accuracy": accuracy(labels, probs),
        f"{prefix}_auroc": macro_auroc(labels, probs),
    }
