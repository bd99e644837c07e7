"""Epoch metrics: accuracy, macro one-vs-rest AUROC (scikit-learn), mean NLL — hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.metrics import accuracy, classification_metrics, macro_auroc, mean_nll

LABELS = np.array([0, 1, 2, 0, 1, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # correct
        [0.1, 0.8, 0.1],  # correct
        [0.5, 0.1, 0.4],  # wrong (0)
        [0.2, 0.5, 0.3],  # wrong (1)
        [0.3, 0.4, 0.3],  # correct
        [0.1, 0.1, 0.8],  # correct
    ]
)


def test_accuracy_is_the_argmax_hit_rate() -> None:
    assert accuracy(LABELS, PROBS) == pytest.approx(4 / 6)
    assert math.isnan(accuracy(np.zeros(0, int), np.zeros((0, 3))))


def test_macro_auroc_equals_sklearn_ovr_macro_when_every_class_is_present() -> None:
    expected = roc_auc_score(LABELS, PROBS, multi_class="ovr", average="macro")
    assert macro_auroc(LABELS, PROBS) == pytest.approx(expected, abs=1e-12)
    # By hand (pairs ranked right / 8): class 0, positives {0.7, 0.2} vs negatives {0.1, 0.5, 0.3, 0.1}: 6;
    # class 1, {0.8, 0.4} vs {0.2, 0.1, 0.5, 0.1}: 7; class 2, {0.4, 0.8} vs {0.1, 0.1, 0.3, 0.3}: 8.
    assert macro_auroc(LABELS, PROBS) == pytest.approx((6 / 8 + 7 / 8 + 8 / 8) / 3)


def test_macro_auroc_skips_classes_without_positives_or_negatives() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.3, 0.7, 0.0], [0.2, 0.8, 0.0]])
    # class 0: positives {0.9, 0.4} vs negatives {0.3, 0.2}: 1.0; class 1: {0.7, 0.8} vs {0.1, 0.6}: 1.0;
    # class 2 never occurs: left out.
    assert macro_auroc(labels, probs) == pytest.approx(1.0)
    assert math.isnan(macro_auroc(np.array([1, 1]), np.array([[0.5, 0.5], [0.2, 0.8]])))


def test_mean_nll_and_prefixing() -> None:
    expected = -np.mean(np.log([0.7, 0.8, 0.4, 0.2, 0.4, 0.8]))
    assert mean_nll(LABELS, PROBS) == pytest.approx(expected)
    out = classification_metrics(LABELS, PROBS, "val")
    assert set(out) == {"val_loss", "val_accuracy", "val_auroc"}
    assert out["val_loss"] == pytest.approx(expected)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"probs must be \[N, K\]"):
        accuracy(np.array([0, 1]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="class indices"):
        accuracy(np.array([0, 3]), np.zeros((2, 3)))
