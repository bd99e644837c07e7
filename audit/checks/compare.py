"""Paired comparisons between models on per-case scores (the seed papers' tables).

Watson et al. (WACV 2023) compare models with paired t-tests on per-image KLD / NSS; the Wilcoxon
signed-rank test is the distribution-free alternative (:mod:`audit.metrics.stats`). For two audited models
and every (check, method, metric) both have per-case values for, the cases both scored are paired by case key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from audit.checks.base import CheckResult
from audit.metrics import paired_t_test, wilcoxon_test

__all__ = ["Comparison", "compare_models"]


@dataclass(frozen=True)
class Comparison:
    """Model A vs model B on one (check, method, metric): both paired tests on the shared cases."""

    model_a: str
    model_b: str
    check: str
    method: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    effect_size: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def compare_models(
    model_a: str, results_a: Sequence[CheckResult], model_b: str, results_b: Sequence[CheckResult]
) -> list[Comparison]:
    """Paired t-test and Wilcoxon test of A vs B for every shared per-case (check, method, metric)."""
    index_b = {(r.check, r.method): r for r in results_b}
    out: list[Comparison] = []
    for ra in results_a:
        rb = index_b.get((ra.check, ra.method))
        if rb is None:
            continue
        for metric, va in ra.values.items():
            vb = rb.values.get(metric)
            if not vb:
                continue
            cases = sorted(set(va) & set(vb))
            a = np.array([va[c] for c in cases], dtype=np.float64)
            b = np.array([vb[c] for c in cases], dtype=np.float64)
            keep = np.isfinite(a) & np.isfinite(b)
            if keep.sum() < 2:
                continue
            t = paired_t_test(a, b)
            w = wilcoxon_test(a, b)
            out.append(
                Comparison(
                    model_a,
                    model_b,
                    ra.check,
                    ra.method,
                    metric,
                    t.n,
                    float(a[keep].mean()),
                    float(b[keep].mean()),
                    t.mean_difference,
                    t.effect_size,
                    t.statistic,
                    t.pvalue,
                    w.statistic,
                    w.pvalue,
                )
            )
    return out
