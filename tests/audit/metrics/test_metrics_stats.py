"""Bootstrap confidence intervals and paired tests against scipy, with NaN handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from audit.metrics import (
    BootstrapCI,
    MetricInputError,
    PairedTestResult,
    bootstrap_ci,
    paired_t_test,
    wilcoxon_test,
)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_bootstrap_matches_scipy_and_drops_nans(method):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=40)
    with_nans = np.concatenate([x[:20], [np.nan, np.nan], x[20:]])
    res = bootstrap_ci(with_nans, method=method, n_resamples=2000, seed=3)
    ref = stats.bootstrap((x,), np.mean, method=method, n_resamples=2000, rng=3)
    assert isinstance(res, BootstrapCI)
    assert (res.n, res.n_dropped, res.method) == (40, 2, method)
    assert res.estimate == pytest.approx(x.mean())
    assert res.low == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert res.high == pytest.approx(ref.confidence_interval.high, rel=1e-12)
    assert res.standard_error == pytest.approx(ref.standard_error, rel=1e-12)
    assert res.low < x.mean() < res.high


def test_bootstrap_seeded_other_statistic_and_small_samples():
    x = np.arange(30.0)
    a = bootstrap_ci(x, statistic=np.median, n_resamples=500, seed=1)
    assert a == bootstrap_ci(x, statistic=np.median, n_resamples=500, seed=1)
    assert a.estimate == 14.5
    one = bootstrap_ci([np.nan, 2.0])
    assert (one.n, one.n_dropped, one.estimate) == (1, 1, 2.0)
    assert math.isnan(one.low)
    assert math.isnan(one.high)
    degenerate = bootstrap_ci(np.ones(10), method="BCa", n_resamples=200)
    assert degenerate.estimate == 1.0
    assert math.isnan(degenerate.low)
    assert bootstrap_ci(np.ones(10), method="percentile", n_resamples=200).low == 1.0
    with pytest.raises(MetricInputError):
        bootstrap_ci(x, method="basic")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="1-D"):
        bootstrap_ci(np.ones((3, 3)))


def test_paired_t_test_hand_values():
    # d = [1, 2, 3, 4]: mean 2.5, sd (N−1) = sqrt(5/3) = 1.29099; dz = 2.5/1.29099 = 1.93649;
    # t = mean / (sd / sqrt(4)) = 3.87298 with 3 degrees of freedom
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4)
    res = paired_t_test(a, b)
    assert isinstance(res, PairedTestResult)
    assert res.n == 4
    assert res.mean_difference == pytest.approx(2.5)
    assert res.effect_size == pytest.approx(2.5 / math.sqrt(5 / 3))
    assert res.statistic == pytest.approx(2.5 / (math.sqrt(5 / 3) / 2))
    assert res.pvalue == pytest.approx(2 * stats.t.sf(res.statistic, df=3))


def test_paired_tests_match_scipy_and_drop_nan_pairs():
    rng = np.random.default_rng(1)
    a = rng.normal(size=30)
    b = a + rng.normal(0.3, 1.0, size=30)
    a_nan, b_nan = a.copy(), b.copy()
    a_nan[3] = np.nan
    b_nan[7] = np.nan
    keep = np.ones(30, dtype=bool)
    keep[[3, 7]] = False
    t = paired_t_test(a_nan, b_nan)
    ref = stats.ttest_rel(a[keep], b[keep])
    assert (t.n, t.statistic, t.pvalue) == (28, pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    w = wilcoxon_test(a_nan, b_nan, alternative="less")
    ref_w = stats.wilcoxon(a[keep], b[keep], alternative="less")
    assert (w.n, w.statistic, w.pvalue) == (28, pytest.approx(ref_w.statistic), pytest.approx(ref_w.pvalue))
    d = a[keep] - b[keep]
    assert w.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    assert w.test == "wilcoxon signed-rank"


def test_paired_tests_undefined_and_invalid():
    res = paired_t_test([1.0, np.nan], [0.0, 1.0])
    assert res.n == 1
    assert math.isnan(res.pvalue)
    assert math.isnan(res.effect_size)
    same = paired_t_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # constant difference: dz undefined
    assert math.isnan(same.effect_size)
    with pytest.raises(MetricInputError, match="equal lengths"):
        wilcoxon_test([1.0, 2.0], [1.0])
