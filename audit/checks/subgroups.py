"""Subgroup breakdown of every per-case score (the perspective paper: check bias across subgroups).

For each per-case metric of each check result and each grouping column (gender, age bucket, site), the mean
score per group is computed and the **gap** = largest minus smallest group mean (groups with fewer than
``min_group_size`` scored cases are left out). Gaps are summaries named ``<check>.<metric>.gap[<column>]``
of a ``subgroups`` result per method, so the policy gates them like any other score (e.g. "the gaze CC gap
between sites is at most 0.2"); the group means and sizes are kept in ``details``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from audit.checks.base import CheckResult, MetricSummary
from audit.reference import GROUP_COLUMNS

__all__ = ["gap_metric", "subgroup_gaps"]


def gap_metric(check: str, metric: str, column: str) -> str:
    """Name of a gap summary: ``<check>.<metric>.gap[<column>]``."""
    return f"{check}.{metric}.gap[{column}]"


def subgroup_gaps(
    results: Sequence[CheckResult],
    groups: Mapping[str, Mapping[str, str | None]],
    *,
    columns: Sequence[str] = GROUP_COLUMNS,
    min_group_size: int = 2,
    metrics: Mapping[str, Sequence[str]] | None = None,
) -> list[CheckResult]:
    """One ``subgroups`` result per method over ``results`` (per-case checks).

    Args:
        results: check results with per-case values.
        groups: ``case_key -> {column: group value}`` (:attr:`audit.reference.ReferenceCase.groups`).
        columns: grouping columns.
        min_group_size: groups with fewer scored cases are ignored; a gap needs two groups.
        metrics: optional ``check -> metrics`` to restrict the breakdown (default: every metric).
    """
    by_method: dict[str, CheckResult] = {}
    for r in results:
        wanted = None if metrics is None else set(metrics.get(r.check, ()))
        if metrics is not None and not wanted:
            continue
        out = by_method.setdefault(r.method, CheckResult("subgroups", r.method))
        for metric, per_case in r.values.items():
            if wanted is not None and metric not in wanted:
                continue
            for col in columns:
                buckets: dict[str, list[float]] = defaultdict(list)
                for case, value in per_case.items():
                    g = groups.get(case, {}).get(col)
                    if g is None or not np.isfinite(value):
                        continue
                    buckets[str(g)].append(value)
                means = {g: float(np.mean(v)) for g, v in sorted(buckets.items()) if len(v) >= min_group_size}
                name = gap_metric(r.check, metric, col)
                gap = max(means.values()) - min(means.values()) if len(means) >= 2 else float("nan")
                out.summaries[name] = MetricSummary.scalar(gap)
                out.details[name] = {"means": means, "sizes": {g: len(v) for g, v in sorted(buckets.items())}}
    return list(by_method.values())
