"""Explanation consistency: can a classifier tell which model produced an explanation?

Watson, Hasan & Al Moubayed, "Agree to disagree: When deep learning models with identical architectures
produce distinct explanations", WACV 2022 (docs/methods.md, "Explanation consistency"): flatten the
maps, standardise, train a logistic regression to predict the producing model on a stratified 70 % split,
and report its accuracy on the held-out 30 %. Accuracy near 50 % means the two models' explanations are
indistinguishable (consistent); near 100 % means they are trivially separable.

The reported score (our definition, documented in docs/methods.md, "Explanation consistency") maps
accuracy to [0, 1]::

    consistency = 1 − 2·|accuracy − 0.5|        1 = indistinguishable, 0 = perfectly separable

(accuracy *below* chance also lowers the score: it is as informative as accuracy above chance).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit.metrics._batch import MetricInputError, to_numpy

__all__ = [
    "ConsistencyResult",
    "MultiModelConsistency",
    "consistency_score",
    "explanation_consistency",
    "multi_model_consistency",
]


@dataclass(frozen=True)
class ConsistencyResult:
    """Outcome of one two-model separability test.

    Attributes:
        accuracy: held-out accuracy of the logistic regression, in [0, 1].
        consistency: ``1 − 2·|accuracy − 0.5|`` (1 = indistinguishable, 0 = perfectly separable).
        n_train: number of maps the classifier was fitted on (both models).
        n_test: number of held-out maps the accuracy is measured on.
    """

    accuracy: float
    consistency: float
    n_train: int
    n_test: int


@dataclass(frozen=True)
class MultiModelConsistency:
    """Mean two-model consistency over every pair of models (e.g. the sub-models of an ensemble).

    Attributes:
        mean_consistency: mean of ``pairs[...].consistency``.
        mean_accuracy: mean of ``pairs[...].accuracy``.
        pairs: ``{(i, j): ConsistencyResult}`` for every ``i < j``.
    """

    mean_consistency: float
    mean_accuracy: float
    pairs: dict[tuple[int, int], ConsistencyResult] = field(default_factory=dict)


def consistency_score(accuracy: float) -> float:
    """``1 − 2·|accuracy − 0.5|``: 1 at chance (indistinguishable), 0 at 0 % or 100 % (separable)."""
    return 1.0 - 2.0 * abs(float(accuracy) - 0.5)


def _features(maps: Any, name: str) -> np.ndarray:
    a = to_numpy(maps)
    if a.ndim < 2:
        raise MetricInputError(f"{name} must be a batch of maps N×H×W (or N×D), got shape {a.shape}")
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    if not np.isfinite(a).all():
        raise MetricInputError(f"{name} contains non-finite values")
    return a


def explanation_consistency(
    maps_a: Any,
    maps_b: Any,
    *,
    test_size: float = 0.3,
    seed: int = 0,
    max_iter: int = 1000,
) -> ConsistencyResult:
    """Logistic-regression separability of two sets of explanations (Watson et al., WACV 2022).

    Procedure: flatten each map to a vector; label maps of model A 0 and model B 1; stratified split
    ``sklearn.model_selection.train_test_split(test_size=0.3, stratify=labels, random_state=seed)``;
    fit ``StandardScaler`` → ``LogisticRegression`` (scikit-learn defaults: L2, C = 1, lbfgs;
    ``random_state=seed``) on the training part only (the scaler sees no held-out map); accuracy on the
    held-out part. Deterministic for a seed.

    Args:
        maps_a: ``N_a×H×W`` maps of model A (or ``N_a×D`` feature vectors); torch tensors accepted.
        maps_b: ``N_b×H×W`` maps of model B, same map size.
        test_size: held-out fraction (paper: 0.3).
        seed: seed of the split and the solver.

    Raises:
        MetricInputError: different map sizes, non-finite values, or too few maps (each model needs enough
            maps for both the training and the held-out part: at least 2, in practice dozens).
    """
    a = _features(maps_a, "maps_a")
    b = _features(maps_b, "maps_b")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"maps_a and maps_b differ in size: {a.shape[1]} vs {b.shape[1]} values")
    if not 0 < test_size < 1:
        raise MetricInputError(f"test_size must be in (0, 1), got {test_size}")
    n_test = int(np.ceil(test_size * (a.shape[0] + b.shape[0])))
    if min(a.shape[0], b.shape[0]) < 2 or n_test < 2 or a.shape[0] + b.shape[0] - n_test < 2:
        raise MetricInputError(
            f"too few maps for a stratified split: {a.shape[0]} and {b.shape[0]} (need >= 2 per model)"
        )
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(a.shape[0], dtype=int), np.ones(b.shape[0], dtype=int)])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    clf.fit(x_tr, y_tr)
    acc = float(np.mean(clf.predict(x_te) == y_te))
    return ConsistencyResult(
        accuracy=acc, consistency=consistency_score(acc), n_train=int(y_tr.size), n_test=int(y_te.size)
    )


def multi_model_consistency(
    maps: Sequence[Any], *, test_size: float = 0.3, seed: int = 0, max_iter: int = 1000
) -> MultiModelConsistency:
    """Explanation consistency of several models: :func:`explanation_consistency` for every pair
    ``i < j`` (same seed), averaged. ``maps[k]`` holds model ``k``'s maps (``N_k×H×W``)."""
    if len(maps) < 2:
        raise MetricInputError(f"multi_model_consistency needs at least 2 models, got {len(maps)}")
    pairs = {
        (i, j): explanation_consistency(maps[i], maps[j], test_size=test_size, seed=seed, max_iter=max_iter)
        for i, j in itertools.combinations(range(len(maps)), 2)
    }
    return MultiModelConsistency(
        mean_consistency=float(np.mean([r.consistency for r in pairs.values()])),
        mean_accuracy=float(np.mean([r.accuracy for r in pairs.values()])),
        pairs=pairs,
    )
