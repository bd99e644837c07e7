"""Model-level checks, run after the per-case loop on the first ``policy.pairwise_cases`` cases.

Each check runs where the source declares what it needs (:data:`audit.sources.REQUIREMENTS`) and is N/A
with the reason otherwise (:func:`not_applicable`):

* with the model weights (a torch twin): cascading and independent randomisation (stages on the
  classification path) with the degradation threshold, the random-logit check (predicted class vs a random
  other class, same threshold), robustness to input noise;
* with registry partners: repeatability (versions sharing the replicate group), reproducibility (other
  architectures, same dataset fingerprint), explanation consistency across replicates;
* with a second runtime: runtime reproducibility (torch twin vs ONNX Runtime, or vs the service);
* always: subgroup gaps of the per-case checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from audit.checks import (
    BootstrapSettings,
    CheckResult,
    cascading_randomisation,
    degradation_threshold,
    explanation_robustness,
    independent_randomisation,
    map_agreement,
    random_logit,
    replicate_consistency,
    subgroup_gaps,
)
from audit.errors import AuditError, CheckInputError
from audit.scoring import PER_CASE_CHECKS, AuditContext, Pairs
from audit.sources import (
    MapSource,
    TwinSource,
    make_explainer,
    missing_capability,
    twin_method_params,
    twin_targets,
)
from mimicry.preprocess import unletterbox
from mimicry.registry import ModelCard, RegistryError

if TYPE_CHECKING:
    from audit.runner import ModelAudit

__all__ = ["model_level", "not_applicable", "subgroups"]

RANDOMISATION = ("cascading_randomisation", "independent_randomisation", "random_logit")


def not_applicable(source: MapSource, checks: Sequence[str]) -> dict[str, str]:
    """The checks ``source`` cannot run, with the reason (in ``checks``' order)."""
    out: dict[str, str] = {}
    for check in checks:
        why = missing_capability(source, check)
        if why is not None:
            out[check] = why
    return out


def model_level(
    ctx: AuditContext, source: MapSource, audit: ModelAudit, pairs: Pairs, failed: set[str]
) -> None:
    """The model-level checks ``source`` can run (appended to ``audit.results``)."""
    k = ctx.pairwise_cases
    if source.capabilities.weights and not isinstance(source, TwinSource):
        raise AuditError(f"the weights of a {source.mode} source cannot be audited (only a torch twin's)")
    if isinstance(source, TwinSource) and source.capabilities.weights and k >= 2 and pairs.x:
        _twin_checks(ctx, source, audit, pairs, failed)
    if "runtime_reproducibility" in ctx.checks and source.capabilities.runtime_parity:
        result = source.runtime_parity(ctx, pairs, k)
        if result is not None:
            audit.results.append(result)


def subgroups(ctx: AuditContext, audit: ModelAudit) -> None:
    if "subgroups" in ctx.checks:
        sg = ctx.policy.subgroups
        audit.results.extend(
            subgroup_gaps(
                [r for r in audit.results if r.check in PER_CASE_CHECKS],
                ctx.groups,
                columns=sg.columns,
                min_group_size=sg.min_group_size,
            )
        )


def partners(ctx: AuditContext, source: TwinSource) -> dict[str, list[ModelCard]]:
    """Replicates (same replicate group) and reproducibility partners (other architecture, same data)."""
    card, registry = source.card, source.registry
    reps: list[ModelCard] = []
    archs: list[ModelCard] = []
    for name in registry.models():
        for v in registry.versions(name):
            if name == card.name and v == card.version:
                continue
            try:
                other = registry.card(f"{name}:{v}")
            except RegistryError:
                continue
            if card.replicate_group and other.replicate_group == card.replicate_group:
                reps.append(other)
            elif (
                card.dataset_fingerprint
                and other.dataset_fingerprint == card.dataset_fingerprint
                and other.architecture != card.architecture
            ):
                archs.append(other)
    k = ctx.policy.max_partners
    return {"repeatability": reps[:k], "reproducibility": archs[:k]}


def _partner_maps(
    ctx: AuditContext, source: TwinSource, other: ModelCard, method: str, positions: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Model-resolution and native-grid maps of a partner model on the first ``positions`` cases."""
    twin = source.registry.load_twin(other.ref)
    params = twin_method_params(ctx, method, other, twin)
    cases = [ctx.reference.case(i, other.preprocessing) for i in range(positions)]
    t = torch.tensor(twin_targets(ctx, twin, cases), dtype=torch.long)
    x = torch.from_numpy(np.stack([c.x for c in cases]))
    maps = make_explainer(method, params)(twin, x, t)
    return list(maps), [unletterbox(m, c.letterbox) for m, c in zip(maps, cases, strict=True)]


def _mean_agreement(results: list[CheckResult], bootstrap: BootstrapSettings) -> CheckResult:
    """Average several partners' per-case agreement into one result (``details["others"]`` lists them)."""
    if len(results) == 1:
        r = results[0]
        r.details["others"] = [r.details.get("other")]
        return r
    first = results[0]
    out = CheckResult(first.check, first.method, baselines=dict(first.baselines))
    for metric, per_case in first.values.items():
        for c in per_case:
            vals = np.array([r.values[metric].get(c, np.nan) for r in results], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out.values.setdefault(metric, {})[c] = float(vals.mean()) if vals.size else float("nan")
    out.details["others"] = [r.details.get("other") for r in results]
    return out.summarise(bootstrap)


def _twin_checks(
    ctx: AuditContext, source: TwinSource, audit: ModelAudit, pairs: Pairs, failed: set[str]
) -> None:
    p = ctx.policy
    checks = set(ctx.checks)
    twin = source.twin
    assert twin is not None
    names = list(source.identity.class_names)
    x = torch.from_numpy(np.stack(pairs.x))
    t = torch.tensor(pairs.t, dtype=torch.long)
    k = len(pairs.keys)
    partner_cards = (
        partners(ctx, source)
        if {"repeatability", "reproducibility", "consistency"} & checks and source.capabilities.partners
        else {"repeatability": [], "reproducibility": []}
    )
    native_cases = None
    for m in ctx.methods:
        if m in failed:
            continue
        explainer = source.explainers[m]
        pm = np.stack(pairs.maps[m])
        common = {"method": m, "keys": pairs.keys, "class_names": names, "bootstrap": ctx.bootstrap}
        thr = None
        if set(RANDOMISATION) & checks:
            thr = degradation_threshold(
                pm, n_pairs=p.randomisation.n_pairs, seed=p.randomisation.seed, data_range=p.ssim_data_range
            )
        for check, fn in (
            ("cascading_randomisation", cascading_randomisation),
            ("independent_randomisation", independent_randomisation),
        ):
            if check in checks:
                audit.results.append(
                    fn(
                        twin, x, t, explainer, seed=p.randomisation.seed, data_range=p.ssim_data_range,
                        original=pm, threshold=thr, **common,  # type: ignore[arg-type]
                    )
                )  # fmt: skip
        if "random_logit" in checks:  # predicted class vs a random other class (Sixt et al.)
            audit.results.append(
                random_logit(
                    twin, x, explainer, seed=p.randomisation.seed, data_range=p.ssim_data_range,
                    original=pm if p.target == "predicted" else None, threshold=thr,
                    **common,  # type: ignore[arg-type]
                )
            )  # fmt: skip
        if "robustness" in checks and source.capabilities.perturbed_explanations:
            audit.results.append(
                explanation_robustness(
                    twin, x, t, explainer, seed=p.randomisation.seed, original=pm,
                    **common,  # type: ignore[arg-type]
                )
            )  # fmt: skip
        rep_maps_model: list[np.ndarray] = []
        rep_refs: list[str] = []
        for check in ("repeatability", "reproducibility"):
            others = partner_cards[check]
            wanted = check in checks or (check == "repeatability" and "consistency" in checks)
            if not others or not wanted:
                continue
            if native_cases is None:
                native_cases = [ctx.reference.case(i, source.identity.spec) for i in range(k)]
            own_native = [unletterbox(mm, c.letterbox) for mm, c in zip(pm, native_cases, strict=True)]
            agreements = []
            for other in others:
                model_maps, native = _partner_maps(ctx, source, other, m, k)
                if check == "repeatability" and model_maps[0].shape == pm.shape[1:]:
                    rep_maps_model.append(np.stack(model_maps))
                    rep_refs.append(other.ref)
                if check in checks:
                    agreements.append(
                        map_agreement(
                            own_native, native, pairs.keys, check=check, method=m, other=other.ref,
                            data_range=p.ssim_data_range, bootstrap=ctx.bootstrap,
                        )
                    )  # fmt: skip
            if agreements:
                audit.results.append(_mean_agreement(agreements, ctx.bootstrap))
        if "consistency" in checks and rep_maps_model:
            try:
                audit.results.append(
                    replicate_consistency(
                        pm, rep_maps_model, method=m, others=rep_refs, seed=p.randomisation.seed
                    )
                )
            except CheckInputError as exc:
                audit.errors.append(f"consistency ({m}): {exc}")
