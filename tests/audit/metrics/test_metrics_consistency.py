"""Explanation consistency (Watson et al.): logistic-regression separability of two sets of maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.metrics import (
    ConsistencyResult,
    MetricInputError,
    consistency_score,
    explanation_consistency,
    multi_model_consistency,
)


def maps(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Gaussian-noise maps around a shared pattern; ``shift`` adds a block only model B highlights."""
    rng = np.random.default_rng(seed)
    base = np.zeros((8, 8))
    base[2:6, 2:6] = 1.0
    out = base + rng.normal(scale=1.0, size=(n, 8, 8))
    out[:, 0:3, 5:8] += shift
    return out


@pytest.mark.parametrize(
    ("accuracy", "expected"), [(0.5, 1.0), (0.75, 0.5), (1.0, 0.0), (0.25, 0.5), (0.0, 0.0), (0.6, 0.8)]
)
def test_consistency_score_hand_values(accuracy, expected):
    assert consistency_score(accuracy) == pytest.approx(expected)


def test_identical_distributions_are_consistent():
    res = explanation_consistency(maps(150, 0), maps(150, 1), seed=0)
    assert isinstance(res, ConsistencyResult)
    assert (res.n_train, res.n_test) == (210, 90)  # stratified 70/30 of 300 maps
    assert 0.35 <= res.accuracy <= 0.65
    assert res.consistency >= 0.7
    assert res.consistency == pytest.approx(1 - 2 * abs(res.accuracy - 0.5))


def test_shifted_distributions_are_separable():
    res = explanation_consistency(maps(150, 0), maps(150, 1, shift=1.5), seed=0)
    assert res.accuracy >= 0.95
    assert res.consistency <= 0.1


def test_seeded_and_accepts_torch():
    a, b = maps(60, 2), maps(60, 3, shift=0.3)
    r1 = explanation_consistency(a, b, seed=7)
    r2 = explanation_consistency(torch.from_numpy(a), torch.from_numpy(b), seed=7)
    assert r1 == r2


def test_multi_model_mean_over_pairs():
    sets = [maps(100, 10), maps(100, 11), maps(100, 12, shift=1.5)]
    res = multi_model_consistency(sets, seed=0)
    assert set(res.pairs) == {(0, 1), (0, 2), (1, 2)}
    assert res.pairs[(0, 1)].consistency > 0.6
    assert res.pairs[(0, 2)].consistency < 0.2
    assert res.pairs[(1, 2)].consistency < 0.2
    assert res.mean_consistency == pytest.approx(np.mean([r.consistency for r in res.pairs.values()]))
    assert res.mean_accuracy == pytest.approx(np.mean([r.accuracy for r in res.pairs.values()]))
    assert res.pairs[(0, 1)] == explanation_consistency(sets[0], sets[1], seed=0)


def test_input_errors():
    with pytest.raises(MetricInputError, match="differ in size"):
        explanation_consistency(np.zeros((10, 4, 4)), np.zeros((10, 5, 5)))
    with pytest.raises(MetricInputError, match="too few"):
        explanation_consistency(np.zeros((1, 4, 4)), np.zeros((10, 4, 4)))
    with pytest.raises(MetricInputError, match="non-finite"):
        explanation_consistency(np.full((10, 4, 4), np.nan), np.zeros((10, 4, 4)))
    with pytest.raises(MetricInputError, match="at least 2 models"):
        multi_model_consistency([np.zeros((10, 4, 4))])
