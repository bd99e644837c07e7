"""Shared types of the audit checks: per-case scores, bootstrap summaries, check results.

Every check produces, per (method, metric), one value per reference case (NaN where the metric is undefined
for that case) and a :class:`MetricSummary` with a bootstrap confidence interval
(:func:`audit.metrics.bootstrap_ci`). Model-level quantities (a degradation threshold, a logistic-regression
consistency score, subgroup gaps) are summaries without per-case values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.metrics import bootstrap_ci

__all__ = ["BootstrapSettings", "CheckResult", "MetricSummary", "summarise", "summarise_values"]


@dataclass(frozen=True)
class BootstrapSettings:
    """How confidence intervals are computed (``scipy.stats.bootstrap`` through
    :func:`audit.metrics.bootstrap_ci`)."""

    n_resamples: int = 2000
    confidence_level: float = 0.95
    method: str = "percentile"
    seed: int = 0


@dataclass(frozen=True)
class MetricSummary:
    """Summary of one metric over the reference cases.

    Attributes:
        mean, median, std: over the NaN-free values (std with ``ddof=1``; NaN when n < 2).
        ci_low, ci_high: bootstrap confidence interval of the mean (NaN when n < 2).
        min, max: extremes of the NaN-free values.
        n: values used; n_dropped: NaN values dropped.
    """

    mean: float
    median: float
    std: float
    ci_low: float
    ci_high: float
    n: int
    n_dropped: int = 0
    min: float = float("nan")
    max: float = float("nan")

    @classmethod
    def scalar(cls, value: float) -> MetricSummary:
        """A model-level quantity (no per-case values, no interval)."""
        v = float(value)
        ok = math.isfinite(v)
        nan = float("nan")
        return cls(v, v, nan, nan, nan, 1 if ok else 0, 0 if ok else 1, v, v)

    def statistic(self, name: str) -> float:
        """``mean`` / ``median`` / ``std`` / ``ci_low`` / ``ci_high`` / ``min`` / ``max`` / ``n``."""
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in self.__dict__.items()}


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def summarise_values(values: Any, settings: BootstrapSettings | None = None) -> MetricSummary:
    """Mean, median, std and bootstrap CI of the mean of per-case ``values`` (NaNs dropped)."""
    s = settings or BootstrapSettings()
    a = np.asarray(values, dtype=np.float64).ravel()
    x = a[np.isfinite(a)]
    ci = bootstrap_ci(
        x,
        method=s.method,  # type: ignore[arg-type]
        confidence_level=s.confidence_level,
        n_resamples=s.n_resamples,
        seed=s.seed,
    )
    return MetricSummary(
        mean=float(x.mean()) if x.size else float("nan"),
        median=float(np.median(x)) if x.size else float("nan"),
        std=float(x.std(ddof=1)) if x.size >= 2 else float("nan"),
        ci_low=ci.low,
        ci_high=ci.high,
        n=int(x.size),
        n_dropped=int(a.size - x.size),
        min=float(x.min()) if x.size else float("nan"),
        max=float(x.max()) if x.size else float("nan"),
    )


@dataclass
class CheckResult:
    """Outcome of one check for one model and one saliency method.

    Attributes:
        check: check name (``gaze``, ``localisation``, ``cascading_randomisation`` …).
        method: saliency method name (``-`` for method-independent checks).
        values: ``metric -> {case_key: value}`` per-case scores (case keys: :func:`audit.reference.case_key`).
        case_class: ``case_key -> class name`` explained for that case.
        summaries: ``metric -> MetricSummary``.
        baselines: ``baseline name -> {metric: value}`` a criterion can compare with (e.g.
            ``average_mask``, ``degradation_threshold``, ``low``).
        details: JSON-able extras (randomisation curves, stage names, group means …).
    """

    check: str
    method: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    case_class: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, MetricSummary] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add_case(self, case: str, scores: Mapping[str, float], cls: str = "") -> None:
        """Record one case's scores (metric -> value)."""
        for metric, value in scores.items():
            self.values.setdefault(metric, {})[case] = float(value)
        self.case_class[case] = cls

    def summarise(self, settings: BootstrapSettings | None = None) -> CheckResult:
        """Fill :attr:`summaries` for every per-case metric (keeps scalar summaries already set)."""
        for metric, per_case in self.values.items():
            self.summaries[metric] = summarise_values(list(per_case.values()), settings)
        return self

    def array(self, metric: str, cases: list[str]) -> np.ndarray:
        """Per-case values of ``metric`` in the order of ``cases`` (NaN where missing)."""
        d = self.values.get(metric, {})
        return np.array([d.get(c, float("nan")) for c in cases], dtype=np.float64)

    def to_dict(self, *, with_values: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "method": self.method,
            "summaries": {m: s.to_dict() for m, s in self.summaries.items()},
            "baselines": {b: {m: _json_float(v) for m, v in d.items()} for b, d in self.baselines.items()},
            "details": self.details,
        }
        if with_values:
            out["values"] = {m: {c: _json_float(v) for c, v in d.items()} for m, d in self.values.items()}
            out["case_class"] = dict(self.case_class)
        return out


def summarise(results: list[CheckResult], settings: BootstrapSettings | None = None) -> list[CheckResult]:
    """Summarise every result in place and return the list."""
    for r in results:
        r.summarise(settings)
    return results
