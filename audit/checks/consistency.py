"""Explanation consistency across replicates (Watson et al., "Agree to disagree", WACV 2022).

The metric is defined in docs/methods.md, "Explanation consistency".

A logistic regression is trained to tell which of two models produced an explanation
(:func:`audit.metrics.explanation_consistency`: flattened maps, standardised, stratified 70/30 split). The
score is ``consistency = 1 − 2·|accuracy − 0.5|`` (1 = indistinguishable, 0 = perfectly separable), averaged
over the audited model paired with each replicate. Model-level: no per-case values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit.checks.base import CheckResult, MetricSummary
from audit.errors import CheckInputError
from audit.metrics import explanation_consistency

__all__ = ["replicate_consistency"]


def replicate_consistency(
    maps: np.ndarray,
    replicate_maps: Sequence[np.ndarray],
    *,
    method: str,
    others: Sequence[str] = (),
    seed: int = 0,
) -> CheckResult:
    """Consistency of one model's maps ``N×S×S`` with each replicate's maps of the same cases.

    Summaries: ``consistency`` and ``accuracy`` (means over replicates); ``details["pairs"]`` per replicate.

    Raises:
        CheckInputError: no replicate, or too few maps for the stratified split.
    """
    if not replicate_maps:
        raise CheckInputError("explanation consistency needs at least one replicate")
    pairs = []
    for i, other in enumerate(replicate_maps):
        try:
            r = explanation_consistency(maps, other, seed=seed)
        except ValueError as exc:
            raise CheckInputError(f"explanation consistency: {exc}") from exc
        pairs.append(
            {
                "other": others[i] if i < len(others) else str(i),
                "accuracy": r.accuracy,
                "consistency": r.consistency,
                "n_test": r.n_test,
            }
        )
    result = CheckResult("consistency", method)
    result.summaries["consistency"] = MetricSummary.scalar(float(np.mean([p["consistency"] for p in pairs])))
    result.summaries["accuracy"] = MetricSummary.scalar(float(np.mean([p["accuracy"] for p in pairs])))
    result.details["pairs"] = pairs
    return result
