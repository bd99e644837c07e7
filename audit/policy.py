"""Audit policy: YAML → typed criteria → PASS / FAIL per method × criterion (Arun et al. 2021, Table 2).

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
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.checks.base import BootstrapSettings, CheckResult
from audit.checks.counterfactual import COUNTERFACTUAL_METRICS
from audit.checks.faithfulness import FAITHFULNESS_METRICS
from audit.checks.gaze import GAZE_METRICS
from audit.checks.localisation import LOCALISATION_METRICS
from audit.checks.random_logit import RANDOM_LOGIT_METRICS
from audit.checks.robustness import ROBUSTNESS_METRICS
from audit.checks.shortcut import SHORTCUT_METRICS
from audit.errors import PolicyError
from audit.iba_stats import audit_only_params

__all__ = [
    "ALL_CHECKS",
    "CHECK_BASELINES",
    "CHECK_METRICS",
    "DEFAULT_POLICY_PATH",
    "BaselineRef",
    "Criterion",
    "Policy",
    "Verdict",
    "evaluate",
    "format_table",
    "gate_passed",
    "load_policy",
    "policy_problems",
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

#: The metrics each check reports (``fnmatch`` patterns where a name holds a model-specific part: the
#: randomisation checks' per-stage ``ssim@<stage>``). ``subgroups`` reports ``<check>.<metric>.gap[<column>]``
#: for every per-case metric of another check and every grouping column (see :func:`policy_problems`). A new
#: check registers its metric names here (a test asserts every check of :data:`ALL_CHECKS` has an entry).
CHECK_METRICS: dict[str, tuple[str, ...]] = {
    "gaze": tuple(GAZE_METRICS),
    "localisation": tuple(LOCALISATION_METRICS),
    "shortcut": tuple(SHORTCUT_METRICS),
    "counterfactual": tuple(COUNTERFACTUAL_METRICS),
    "faithfulness": tuple(FAITHFULNESS_METRICS),
    "cascading_randomisation": ("ssim_full", "spearman_full", "ssim@*", "spearman@*"),
    "independent_randomisation": ("ssim_max", "ssim@*", "spearman@*"),
    "repeatability": ("ssim", "spearman"),
    "reproducibility": ("ssim", "spearman"),
    "consistency": ("consistency", "accuracy"),
    "runtime_reproducibility": ("probs_max_abs_diff", "cam_max_abs_diff"),
    "random_logit": tuple(RANDOM_LOGIT_METRICS),
    "robustness": tuple(ROBUSTNESS_METRICS),
    "subgroups": (),
}

#: The named baselines (``threshold: {baseline: NAME}``) each check records.
CHECK_BASELINES: dict[str, tuple[str, ...]] = {
    "localisation": ("average_mask",),
    "shortcut": ("uniform",),
    "counterfactual": ("control",),
    "cascading_randomisation": ("degradation_threshold",),
    "independent_randomisation": ("degradation_threshold",),
    "repeatability": ("low",),
    "reproducibility": ("low",),
    "random_logit": ("degradation_threshold",),
    "robustness": ("unrelated",),
}

_GAP = re.compile(r"^(?P<check>[a-z_]+)\.(?P<metric>.+)\.gap\[(?P<column>[^\]]+)\]$")

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

    @model_validator(mode="after")
    def _semantics(self) -> Policy:
        problems = policy_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

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


def _metric_known(check: str, metric: str) -> bool:
    return any(fnmatchcase(metric, pattern) for pattern in CHECK_METRICS.get(check, ()))


def _type_problem(name: str, value: Any, default: Any) -> str | None:
    """A value whose type cannot stand for the default's (int for int, number for float, bool for bool)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{name} must be an integer, got {value!r}"
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"{name} must be a number, got {value!r}"
    return None  # str / None defaults accept several types (e.g. a baseline: "black" or a number)


def policy_problems(policy: Policy) -> list[str]:
    """Everything in ``policy`` the audit could not run as written, one line each (empty: none).

    * every method (``methods``, ``method_params`` keys, a criterion's ``methods``) is a registered saliency
      method (:func:`mimicry.saliency.list_methods`);
    * every ``method_params`` entry is a parameter of that method (its registry ``defaults``, the keyword
      arguments :func:`mimicry.saliency.explain` accepts, of a type its default can stand for; for the IBA
      methods also the audit's layer-statistics parameters, :func:`audit.iba_stats.audit_only_params`);
    * every criterion's metric is one its check reports (:data:`CHECK_METRICS`; a ``subgroups`` gap names
      another check's metric and a grouping column of ``subgroups.columns``), and every baseline threshold
      names a baseline its check records (:data:`CHECK_BASELINES`).
    """
    from mimicry.saliency import get_method, list_methods

    known = set(list_methods())
    out: list[str] = []

    def method_ok(where: str, name: str) -> bool:
        if name in known:
            return True
        out.append(f"{where}: unknown saliency method {name!r}; known: {', '.join(sorted(known))}")
        return False

    for m in policy.methods:
        method_ok("methods", m)
    for m, params in policy.method_params.items():
        if not method_ok("method_params", m):
            continue
        defaults = get_method(m).defaults
        accepted = [*defaults, *audit_only_params(m)]
        for key, value in params.items():
            where = f"method_params.{m}.{key}"
            if key not in accepted:
                out.append(f"{where}: {m} takes no parameter {key!r}; its parameters: {', '.join(accepted)}")
            elif key in defaults and (why := _type_problem(key, value, defaults[key])) is not None:
                out.append(f"{where}: {why}")
    for i, c in enumerate(policy.criteria):
        where = f"criteria[{i}] ({c.id})"
        for m in c.methods or ():
            method_ok(f"{where}.methods", m)
        if c.check == "subgroups":
            g = _GAP.match(c.metric)
            if g is None:
                out.append(f"{where}.metric: {c.metric!r} is not CHECK.METRIC.gap[COLUMN]")
            elif g["check"] not in CHECK_METRICS or g["check"] == "subgroups":
                out.append(f"{where}.metric: {c.metric!r} names no check that subgroups break down")
            elif not _metric_known(g["check"], g["metric"]):
                out.append(f"{where}.metric: check {g['check']!r} reports no metric {g['metric']!r}")
            elif g["column"] not in policy.subgroups.columns:
                out.append(
                    f"{where}.metric: {g['column']!r} is not a grouping column "
                    f"(subgroups.columns: {', '.join(policy.subgroups.columns)})"
                )
        elif c.check in CHECK_METRICS and not _metric_known(c.check, c.metric):
            out.append(
                f"{where}.metric: check {c.check!r} reports no metric {c.metric!r}; "
                f"its metrics: {', '.join(CHECK_METRICS[c.check])}"
            )
        if isinstance(c.threshold, BaselineRef) and c.check in CHECK_METRICS:
            names = CHECK_BASELINES.get(c.check, ())
            if c.threshold.baseline not in names:
                out.append(
                    f"{where}.threshold: check {c.check!r} records no baseline {c.threshold.baseline!r}"
                    + (f"; its baselines: {', '.join(names)}" if names else "")
                )
    return out


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``location: message`` (pydantic's own text, without the input dump)."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.extend(f"  {loc + ': ' if loc else ''}{part}" for part in msg.splitlines())
    return "\n".join(lines)


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
        raise PolicyError(f"policy file {p.name!r} is invalid:\n{_describe(exc)}") from None


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
