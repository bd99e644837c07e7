"""Audit policy: YAML → typed criteria → PASS / FAIL per method × criterion (seed 001, Table 2).

The documented default is ``audit/policy_default.yaml`` (read it for the file format). :func:`evaluate`
turns a model's check results into :class:`Verdict` rows; :func:`format_table` prints them shaped like Arun
et al.'s Table 2 (rows: methods; columns: criteria grouped as Utility | Randomization | Repeatability | …).

Verdict statuses: ``PASS``, ``FAIL``, ``N/A`` (the check did not run for that method, or the statistic or the
threshold is NaN). A run passes its gate when no criterion with ``gate: true`` FAILs.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import PolicyError

__all__ = [
    "ALL_CHECKS",
    "DEFAULT_POLICY_PATH",
    "BaselineRef",
    "Criterion",
    "Policy",
    "Verdict",
    "evaluate",
    "format_table",
    "gate_passed",
    "load_policy",
]

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy_default.yaml")

#: Every check the runner knows, in run order.
ALL_CHECKS: tuple[str, ...] = (
    "gaze",
    "localisation",
    "shortcut",
    "counterfactual",
    "faithfulness",
    "cascading_randomisation",
    "independent_randomisation",
    "random_logit",
    "repeatability",
    "reproducibility",
    "consistency",
    "runtime_reproducibility",
    "subgroups",
    "robustness",
)

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineRef(_Strict):
    """Threshold = ``factor`` × the check's baseline ``baseline`` for the criterion's metric."""

    baseline: str
    factor: float = 1.0


class Criterion(_Strict):
    """One PASS/FAIL rule, applied to every method the check ran for."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    group: str
    label: str = ""
    check: str
    metric: str
    statistic: Literal["mean", "median", "ci_low", "ci_high", "min", "max"] = "mean"
    op: Literal["<", "<=", ">", ">="]
    threshold: float | BaselineRef
    gate: bool = True
    methods: list[str] | None = None

    @field_validator("check")
    @classmethod
    def _known_check(cls, v: str) -> str:
        if v not in ALL_CHECKS:
            raise ValueError(f"unknown check {v!r}; known: {', '.join(ALL_CHECKS)}")
        return v

    @property
    def column(self) -> str:
        return f"{self.group} {self.label}".strip()


class _Randomisation(_Strict):
    n_pairs: int = Field(50, ge=1)
    seed: int = 0


class _Faithfulness(_Strict):
    steps: int = Field(32, ge=2)


class _Subgroups(_Strict):
    columns: list[str] = Field(default_factory=lambda: ["gender", "age_bucket", "site"])
    min_group_size: int = Field(2, ge=1)


class _Bootstrap(_Strict):
    n_resamples: int = Field(2000, ge=100)
    confidence_level: float = Field(0.95, gt=0, lt=1)
    method: Literal["BCa", "percentile"] = "percentile"
    seed: int = 0


class Policy(_Strict):
    """A parsed policy file (schema in ``audit/policy_default.yaml``)."""

    version: Literal[1] = 1
    methods: list[str] = Field(default_factory=lambda: ["gradcam"])
    checks: list[str] | Literal["all"] = "all"
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    target: Literal["label", "predicted"] = "label"
    split: str | None = "test"
    max_cases: int | None = Field(None, ge=1)
    ssim_data_range: float = Field(1.0, gt=0)
    bootstrap: _Bootstrap = Field(default_factory=_Bootstrap)
    pairwise_cases: int = Field(16, ge=2)
    randomisation: _Randomisation = Field(default_factory=_Randomisation)
    faithfulness: _Faithfulness = Field(default_factory=_Faithfulness)
    subgroups: _Subgroups = Field(default_factory=_Subgroups)
    max_partners: int = Field(2, ge=0)
    criteria: list[Criterion] = Field(default_factory=list)

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            unknown = [c for c in v if c not in ALL_CHECKS]
            if unknown:
                raise ValueError(f"unknown checks {unknown}; known: {', '.join(ALL_CHECKS)}")
        return v

    @field_validator("criteria")
    @classmethod
    def _unique_ids(cls, v: list[Criterion]) -> list[Criterion]:
        ids = [c.id for c in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate criterion ids: {dup}")
        return v

    @property
    def check_list(self) -> list[str]:
        return list(ALL_CHECKS) if self.checks == "all" else list(self.checks)

    @property
    def bootstrap_settings(self) -> BootstrapSettings:
        b = self.bootstrap
        return BootstrapSettings(b.n_resamples, b.confidence_level, b.method, b.seed)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON form (identifies the policy in the history)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def load_policy(path: Path | str | None = None) -> Policy:
    """Read and validate a policy YAML file (``None``: the documented default).

    Raises:
        PolicyError: unreadable file, invalid YAML, or a schema violation (the message names the field).
    """
    p = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file {p.name!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {p.name!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {p.name!r} must hold a mapping")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"policy file {p.name!r} is invalid:\n{exc}") from exc


@dataclass(frozen=True)
class Verdict:
    """Outcome of one criterion for one method of one model."""

    criterion: str
    column: str
    method: str
    status: Literal["PASS", "FAIL", "N/A"]
    value: float | None
    threshold: float | None
    op: str
    gate: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _verdict(c: Criterion, method: str, result: CheckResult | None) -> Verdict:
    def na(reason: str, value: float | None = None, thr: float | None = None) -> Verdict:
        return Verdict(c.id, c.column, method, "N/A", value, thr, c.op, c.gate, reason)

    if result is None:
        return na("check not run")
    summary = result.summaries.get(c.metric)
    if summary is None:
        return na(f"no metric {c.metric!r}")
    value = _finite(summary.statistic(c.statistic))
    if isinstance(c.threshold, BaselineRef):
        base = result.baselines.get(c.threshold.baseline, {}).get(c.metric)
        thr = _finite(None if base is None else base * c.threshold.factor)
        if thr is None:
            return na(f"baseline {c.threshold.baseline!r} unavailable", value)
    else:
        thr = float(c.threshold)
    if value is None:
        return na("no finite value", None, thr)
    ok = _OPS[c.op](value, thr)
    return Verdict(c.id, c.column, method, "PASS" if ok else "FAIL", value, thr, c.op, c.gate)


def evaluate(policy: Policy, results: Sequence[CheckResult], methods: Sequence[str]) -> list[Verdict]:
    """Verdicts for every criterion × method (methods in the given order; ``methods`` restricts them)."""
    index = {(r.check, r.method): r for r in results}
    out: list[Verdict] = []
    for m in methods:
        for c in policy.criteria:
            if c.methods is not None and m not in c.methods:
                continue
            out.append(_verdict(c, m, index.get((c.check, m))))
    return out


def gate_passed(verdicts: Sequence[Verdict]) -> bool:
    """True when no gating criterion FAILs (N/A never fails)."""
    return not any(v.gate and v.status == "FAIL" for v in verdicts)


def format_table(verdicts: Sequence[Verdict], *, methods: Sequence[str] | None = None) -> str:
    """Plain-text PASS/FAIL table shaped like Arun et al.'s Table 2.

    Two header rows (criterion group, then sub-label), one row per method; non-gating criteria are marked
    with ``*`` in the header.
    """
    columns: list[tuple[str, str, str, bool]] = []  # (criterion id, group, label, gate)
    seen: set[str] = set()
    for v in verdicts:
        if v.criterion not in seen:
            seen.add(v.criterion)
            group, _, label = v.column.partition(" ")
            columns.append((v.criterion, group, label + ("" if v.gate else "*"), v.gate))
    rows = list(methods) if methods is not None else list(dict.fromkeys(v.method for v in verdicts))
    cell = {(v.method, v.criterion): v.status for v in verdicts}
    header1 = ["Method"]
    header2 = [""]
    last_group = None
    for _, group, label, _ in columns:
        header1.append(group if group != last_group else "")
        header2.append(label)
        last_group = group
    body = [[m] + [cell.get((m, cid), "-") for cid, *_ in columns] for m in rows]
    table = [header1, header2, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header1))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)
