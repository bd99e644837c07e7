"""The audit runner: registry model(s) × reference store × methods × checks → scores, verdicts, history.

:func:`run_audit` is what ``mimicry audit run`` calls (docs/audit.md: registry version → audit → SQLite
history → report → Prometheus → promotion gate). Each audited model is a *source of maps and
predictions* with declared capabilities (:mod:`audit.sources`): a registry version's torch twin (white-box
mode) or a model a running service serves (black-box mode, ``config.endpoint``; :mod:`audit.blackbox`). Per
source:

1. the checks it cannot run are N/A with the reason (:func:`audit.model_checks.not_applicable`), e.g. in
   black-box mode those that need the weights;
2. one scoring loop over the reference cases (:func:`audit.scoring.score_cases`): maps of the cases not
   already in the history's cache (:mod:`audit.cache`, keyed by the source's model sha256, method, case and
   scoring config), per-case checks (gaze, localisation, shortcut, faithfulness), counterfactual occlusion;
3. the model-level checks it can run (:func:`audit.model_checks.model_level`): randomisation, random logit,
   robustness, repeatability, reproducibility, consistency, runtime reproducibility; then subgroup gaps;
4. the policy's verdicts and the run's end row.

In black-box mode the models are those the endpoint serves (``GET /v1/models``); the history records the
endpoint's model name, version and ``model.onnx`` sha256. ``runtime_reproducibility`` compares the registry's
torch twin with the service when the registry given alongside holds the served version with the same
``model.onnx`` sha256.

IBA methods (``iba``, ``inverse_iba``, ``multilayer_iba``) get their ``stats=``: the card's ``iba_stats``
when they match the layer, else :func:`mimicry.saliency.iba.estimate_layer_stats` on the reference's
training split, cached per model sha256 in a sidecar file next to the history.

Several audited models are then compared pairwise (paired t-test and Wilcoxon per shared metric).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.blackbox import EndpointClient, public_url, select_served
from audit.cache import SCORING_VERSION
from audit.checks import CheckResult, Comparison, compare_models
from audit.errors import AuditError
from audit.model_checks import model_level, not_applicable, subgroups
from audit.policy import Policy, Verdict, evaluate, gate_passed
from audit.reference import ReferenceSet
from audit.scores import CaseScores, Score
from audit.scoring import N_EXAMPLES, PER_CASE_CHECKS, AuditContext, score_cases
from audit.sources import (
    ENDPOINT_CAPABILITIES,
    Capabilities,
    EndpointSource,
    MapSource,
    TwinSource,
    can_run,
    make_explainer,
    model_sha256,
)
from mimicry.registry import Registry, RegistryError
from mimicry.saliency import SaliencyError

__all__ = [
    "BLACKBOX_PER_CASE",
    "N_EXAMPLES",
    "PER_CASE_CHECKS",
    "SCORING_VERSION",
    "AuditConfig",
    "AuditReport",
    "Capabilities",
    "CaseScores",
    "MapSource",
    "ModelAudit",
    "Score",
    "audit_source",
    "make_explainer",
    "model_sha256",
    "resolve_models",
    "run_audit",
]

log = logging.getLogger(__name__)

#: Per-case checks a black-box audit can score from the returned maps alone.
BLACKBOX_PER_CASE: tuple[str, ...] = tuple(c for c in PER_CASE_CHECKS if can_run(ENDPOINT_CAPABILITIES, c))


@dataclass
class AuditConfig:
    """What to audit and how (the command line, resolved).

    Attributes:
        registry: registry directory. models: references (``NAME``, ``NAME:V``, ``NAME@ALIAS``,
            ``NAME:all``, ``all``). reference: EGD-layout reference store. policy: the parsed policy.
        methods / checks: override the policy's lists (``None``: the policy's).
        history_path: SQLite history (``None``: no history, no cache).
        jobs: threads scoring cases in parallel. batch_size: cases per chunk (memory bound).
        progress: show a progress bar (stderr).
        endpoint: black-box mode: the base URL of a running mimicry service (``None``: white-box).
        endpoint_token: its bearer token (``None``: ``$MIMICRY_AUDIT_ENDPOINT_TOKEN``).
        endpoint_timeout_s / endpoint_retries: per-request timeout and retries (503 / 429 / transport).
    """

    registry: Path
    models: Sequence[str]
    reference: Path
    policy: Policy
    methods: Sequence[str] | None = None
    checks: Sequence[str] | None = None
    history_path: Path | None = None
    jobs: int = 1
    batch_size: int = 8
    progress: bool = False
    endpoint: str | None = None
    endpoint_token: str | None = field(default=None, repr=False)
    endpoint_timeout_s: float = 120.0
    endpoint_retries: int = 4

    @property
    def mode(self) -> str:
        return "blackbox" if self.endpoint else "whitebox"

    @property
    def method_list(self) -> list[str]:
        return list(self.methods) if self.methods else list(self.policy.methods)

    @property
    def check_list(self) -> list[str]:
        if self.checks and list(self.checks) != ["all"]:
            return list(self.checks)
        return self.policy.check_list

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": str(self.registry),
            "models": list(self.models),
            "reference": str(self.reference),
            "methods": self.method_list,
            "checks": self.check_list,
            "jobs": self.jobs,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "endpoint": public_url(self.endpoint) if self.endpoint else None,
        }


@dataclass
class ModelAudit:
    """The audit of one model version."""

    name: str
    version: int
    sha256: str
    architecture: str
    methods: list[str]
    results: list[CheckResult] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    passed: bool = False
    run_id: int | None = None
    duration_s: float = 0.0
    n_cases: int = 0
    n_cached: int = 0
    errors: list[str] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "whitebox"
    endpoint: str | None = None
    not_applicable: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def status(self) -> str:
        """``"error"`` (the audit, or a method of it, could not run), else ``"passed"`` / ``"failed"``."""
        return "error" if self.errors else ("passed" if self.passed else "failed")

    def result(self, check: str, method: str) -> CheckResult | None:
        for r in self.results:
            if r.check == check and r.method == method:
                return r
        return None


@dataclass
class AuditReport:
    """Everything one ``audit run`` produced."""

    config: dict[str, Any]
    policy: Policy
    models: list[ModelAudit]
    comparisons: list[Comparison]
    started: float
    finished: float

    @property
    def passed(self) -> bool:
        return bool(self.models) and all(m.passed and not m.errors for m in self.models)

    @property
    def status(self) -> str:
        """``"error"`` when any model's audit could not run (its verdicts are incomplete), else
        ``"passed"`` / ``"failed"`` (the gate)."""
        if any(m.errors for m in self.models):
            return "error"
        return "passed" if self.passed else "failed"


def resolve_models(registry: Registry, specs: Sequence[str]) -> list[tuple[str, int]]:
    """Expand model references: ``all`` (every version of every model), ``NAME:all``, or one reference."""
    out: list[tuple[str, int]] = []
    for spec in specs:
        if spec == "all":
            out.extend((n, v) for n in registry.models() for v in registry.versions(n))
        elif spec.endswith(":all"):
            name = spec[: -len(":all")]
            out.extend((name, v) for v in registry.versions(name))
        else:
            out.append(registry.resolve(spec))
    return list(dict.fromkeys(out))


def audit_source(ctx: AuditContext, source: MapSource) -> ModelAudit:
    """Audit one source: N/A checks, the scoring loop, model-level checks, verdicts, history (one run)."""
    t0 = time.perf_counter()
    ident = source.identity
    audit = ModelAudit(ident.name, ident.version, ident.sha256, ident.architecture, list(ctx.methods))
    audit.mode = source.mode
    audit.endpoint = ident.endpoint
    audit.not_applicable = not_applicable(source, ctx.checks)
    if ctx.history is not None:
        audit.run_id = ctx.history.start_run(
            model=ident.name,
            version=ident.version,
            sha256=ident.sha256,
            policy_json=ctx.policy.canonical_json(),
            policy_sha256=ctx.policy.sha256,
            config={**ctx.config.to_dict(), **ident.run_config},
        )
    try:
        refused = source.open(ctx.methods)
        failed = set(refused)
        audit.errors.extend(refused.values())
        pairs = score_cases(ctx, source, audit, failed)
        model_level(ctx, source, audit, pairs, failed)
        subgroups(ctx, audit)
        verdicts = evaluate(ctx.policy, audit.results, ctx.methods)
        audit.verdicts = _explain_na(ctx.policy, verdicts, audit.not_applicable)
        audit.passed = gate_passed(audit.verdicts) and not audit.errors
    except (AuditError, RegistryError, SaliencyError, ValueError, RuntimeError) as exc:
        audit.errors.append(f"{type(exc).__name__}: {exc}")
        audit.passed = False
        log.error("%s audit of %s failed: %s", source.mode, ident.ref, type(exc).__name__)
    audit.duration_s = time.perf_counter() - t0
    if ctx.history is not None and audit.run_id is not None:
        ctx.history.record_results(audit.run_id, audit.results, audit.verdicts)
        status = "error" if audit.errors else ("passed" if audit.passed else "failed")
        ctx.history.finish_run(audit.run_id, status=status, passed=audit.passed)
    return audit


def _explain_na(policy: Policy, verdicts: list[Verdict], reasons: dict[str, str]) -> list[Verdict]:
    """N/A verdicts of checks that cannot run (black-box mode) carry the reason instead of "check not run"."""
    check_of = {c.id: c.check for c in policy.criteria}
    out = []
    for v in verdicts:
        why = reasons.get(check_of.get(v.criterion, ""))
        out.append(dataclasses.replace(v, reason=why) if v.status == "N/A" and why else v)
    return out


def run_audit(config: AuditConfig) -> AuditReport:
    """Audit every model of ``config`` and return the report (nothing is written besides the history).

    Raises:
        ReferenceDataError: the reference store is unusable.
        RegistryError: a model reference does not resolve.
        EndpointError: black-box mode: the endpoint is unreachable or serves no matching model.
    """
    started = time.time()
    if config.endpoint:
        audits = _run_blackbox(config)
        return AuditReport(config.to_dict(), config.policy, audits, _compare(audits), started, time.time())
    registry = Registry(config.registry)
    targets = resolve_models(registry, config.models)
    if not targets:
        raise AuditError("no model version matches the requested references")
    first = registry.card(f"{targets[0][0]}:{targets[0][1]}")
    reference = ReferenceSet(
        config.reference,
        split=config.policy.split,
        limit=config.policy.max_cases,
        class_names=first.class_names,
    )
    ctx = AuditContext(config, reference)
    try:
        audits = [audit_source(ctx, TwinSource(ctx, registry, registry.card(f"{n}:{v}"))) for n, v in targets]
    finally:
        ctx.close()
    return AuditReport(config.to_dict(), config.policy, audits, _compare(audits), started, time.time())


def _run_blackbox(config: AuditConfig) -> list[ModelAudit]:
    """Black-box audits of the endpoint's models matching ``config.models``."""
    assert config.endpoint is not None
    with EndpointClient(
        config.endpoint,
        token=config.endpoint_token,
        timeout_s=config.endpoint_timeout_s,
        retries=config.endpoint_retries,
        jobs=config.jobs,
    ) as client:
        served = select_served(client.models(), config.models)
        registry = None
        if config.registry is not None and Path(config.registry).is_dir():
            registry = Registry(config.registry)
        reference = ReferenceSet(
            config.reference,
            split=config.policy.split,
            limit=config.policy.max_cases,
            class_names=served[0].class_names,
        )
        ctx = AuditContext(config, reference)
        try:
            return [audit_source(ctx, EndpointSource(ctx, info, client, registry)) for info in served]
        finally:
            ctx.close()


def _compare(audits: list[ModelAudit]) -> list[Comparison]:
    comparisons: list[Comparison] = []
    for i in range(len(audits)):
        for j in range(i + 1, len(audits)):
            a, b = audits[i], audits[j]
            comparisons.extend(
                compare_models(
                    a.ref,
                    [r for r in a.results if r.check in PER_CASE_CHECKS],
                    b.ref,
                    [r for r in b.results if r.check in PER_CASE_CHECKS],
                )
            )
    return comparisons
