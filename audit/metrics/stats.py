"""Statistics over per-image scores: bootstrap confidence intervals and paired two-model tests.

All functions take 1-D per-image scores (numpy arrays, lists or torch tensors). NaN scores (metrics that were
undefined for an image) are dropped — pairwise for the paired tests — and the number of values actually used
is reported as ``n``. Watson et al. (WACV 2023) compare models with paired t-tests on per-image KLD / NSS;
the Wilcoxon signed-rank test is the distribution-free alternative.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from audit.metrics._batch import MetricInputError, to_numpy

__all__ = ["BootstrapCI", "PairedTestResult", "bootstrap_ci", "paired_t_test", "wilcoxon_test"]

_NAN = float("nan")


def _vector(x: Any, name: str) -> np.ndarray:
    a = np.asarray(to_numpy(x), dtype=np.float64)
    if a.ndim != 1:
        raise MetricInputError(f"{name} must be a 1-D array of per-image scores, got shape {a.shape}")
    return a


@dataclass(frozen=True)
class BootstrapCI:
    """A bootstrap confidence interval.

    Attributes:
        estimate: the statistic on the NaN-free sample.
        low, high: interval bounds (NaN when it cannot be computed: n < 2, or BCa on degenerate data).
        standard_error: bootstrap standard error of the statistic.
        n: number of values used; n_dropped: number of NaN values dropped.
        method: ``"BCa"`` or ``"percentile"``; confidence_level: e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    standard_error: float
    n: int
    n_dropped: int
    method: str
    confidence_level: float


def bootstrap_ci(
    scores: Any,
    *,
    statistic: Callable[..., Any] = np.mean,
    method: Literal["BCa", "percentile"] = "BCa",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int | None = 0,
) -> BootstrapCI:
    """Bootstrap confidence interval of a statistic of per-image scores (``scipy.stats.bootstrap``).

    Calls ``scipy.stats.bootstrap((x,), statistic, method=method, confidence_level=confidence_level,
    n_resamples=n_resamples, rng=seed)`` on the scores with NaNs removed: ``"percentile"`` is the plain
    percentile interval, ``"BCa"`` the bias-corrected and accelerated interval (Efron 1987), scipy's
    default. ``statistic`` must accept an ``axis`` keyword to be vectorised (``np.mean``, ``np.median``);
    other callables are applied per resample. Seeded (``seed`` → ``rng``).
    """
    if method not in ("BCa", "percentile"):
        raise MetricInputError(f"method must be 'BCa' or 'percentile', got {method!r}")
    if not 0 < confidence_level < 1:
        raise MetricInputError(f"confidence_level must be in (0, 1), got {confidence_level}")
    a = _vector(scores, "scores")
    x = a[~np.isnan(a)]
    dropped = int(a.size - x.size)
    estimate = float(statistic(x)) if x.size else _NAN
    low = high = se = _NAN
    if x.size >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.bootstrap(
                (x,),
                statistic,
                method=method,
                confidence_level=confidence_level,
                n_resamples=n_resamples,
                rng=seed,
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        se = float(res.standard_error)
    return BootstrapCI(
        estimate=estimate,
        low=low,
        high=high,
        standard_error=se,
        n=int(x.size),
        n_dropped=dropped,
        method=method,
        confidence_level=float(confidence_level),
    )


@dataclass(frozen=True)
class PairedTestResult:
    """A paired two-model comparison on per-image scores.

    Attributes:
        test: ``"paired t-test"`` or ``"wilcoxon signed-rank"``.
        statistic, pvalue: as returned by scipy (NaN when n < 2).
        n: number of image pairs used (pairs with a NaN on either side dropped).
        mean_difference: ``mean(a − b)``.
        effect_size: Cohen's d_z = ``mean(a − b) / std(a − b, ddof=1)`` (NaN if the differences are constant).
    """

    test: str
    statistic: float
    pvalue: float
    n: int
    mean_difference: float
    effect_size: float


def _pairs(scores_a: Any, scores_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _vector(scores_a, "scores_a")
    b = _vector(scores_b, "scores_b")
    if a.shape != b.shape:
        raise MetricInputError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def _summary(d: np.ndarray) -> tuple[float, float]:
    mean = float(d.mean()) if d.size else _NAN
    sd = float(d.std(ddof=1)) if d.size >= 2 else _NAN
    dz = mean / sd if d.size >= 2 and sd > 0 else _NAN
    return mean, dz


def paired_t_test(
    scores_a: Any, scores_b: Any, *, alternative: Literal["two-sided", "less", "greater"] = "two-sided"
) -> PairedTestResult:
    """Paired t-test of model A vs model B per-image scores: ``scipy.stats.ttest_rel(a, b)`` (df = n − 1).

    ``alternative="greater"`` tests ``mean(a − b) > 0``. NaN pairs are dropped; NaN result when n < 2.
    """
    a, b = _pairs(scores_a, scores_b)
    d = a - b
    mean, dz = _summary(d)
    stat = p = _NAN
    if d.size >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_rel(a, b, alternative=alternative)
        stat, p = float(res.statistic), float(res.pvalue)
    return PairedTestResult("paired t-test", stat, p, int(d.size), mean, dz)


def wilcoxon_test(
    scores_a: Any, scores_b: Any, *, alternative: Literal["two-sided", "less", "greater"] = "two-sided"
) -> PairedTestResult:
    """Wilcoxon signed-rank test of the paired differences: ``scipy.stats.wilcoxon(a, b)``.

    scipy defaults: zero differences dropped (``zero_method="wilcox"``), exact or normal-approximation
    p-value chosen automatically (``method="auto"``). NaN pairs are dropped; NaN result when n < 2.
    """
    a, b = _pairs(scores_a, scores_b)
    d = a - b
    mean, dz = _summary(d)
    stat = p = _NAN
    if d.size >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            res = stats.wilcoxon(a, b, alternative=alternative)
        stat, p = float(res.statistic), float(res.pvalue)
    return PairedTestResult("wilcoxon signed-rank", stat, p, int(d.size), mean, dz)
