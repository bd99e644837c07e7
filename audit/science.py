"""The science benchmark's explanation columns, scored by the audit (docs/results.md).

The benchmark itself (:mod:`training.science`) trains and publishes; the composition root hands it
:func:`score_explanations` and :func:`paired_pvalue` from here, so ``mimicry audit run`` on the benchmark's
registry reproduces its table and training never imports the audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import AuditError
from audit.metrics import paired_t_test
from audit.policy import load_policy
from audit.runner import AuditConfig, run_audit

__all__ = ["SCORED_CHECKS", "paired_pvalue", "score_explanations"]

SCORED_CHECKS: tuple[str, ...] = ("gaze", "localisation", "shortcut", "consistency")
"""Audit checks the explanation columns come from (:func:`score_explanations`)."""


def score_explanations(
    registry: str | Path, refs: Sequence[str], reference: str | Path, *, jobs: int = 1
) -> dict[str, dict[str, Any]]:
    """Score the Grad-CAM of published versions ``refs`` exactly as ``mimicry audit run`` does.

    Runs :func:`audit.runner.run_audit` with the default policy (target = the labelled class, the
    policy's post-processing, scores at the image's native resolution after un-letterboxing) and the checks
    :data:`SCORED_CHECKS` on the ``test`` split of ``reference``, without a history database. So
    ``mimicry audit run --registry REG --model science-<recipe>:<v> --reference REF --methods gradcam``
    reports the same KLD, NSS, AUPRC, marker mass and consistency for each version.

    Returns ``ref -> {"means": {kld, nss, auprc, marker_mass}, "per_case": {kld, nss} (arrays in sorted
    case-key order), "consistency": float | None, "n_with_finding": int}``.

    Raises:
        AuditError: the audit reported an error for a version (a method or check failed).
    """
    config = AuditConfig(
        registry=Path(registry),
        models=list(refs),
        reference=Path(reference),
        policy=load_policy(None),
        methods=["gradcam"],
        checks=list(SCORED_CHECKS),
        history_path=None,
        jobs=jobs,
    )
    report = run_audit(config)
    out: dict[str, dict[str, Any]] = {}
    for audit in report.models:
        if audit.errors:
            raise AuditError(f"auditing {audit.ref} failed: {'; '.join(audit.errors)}")
        gaze = audit.result("gaze", "gradcam")
        loc = audit.result("localisation", "gradcam")
        short = audit.result("shortcut", "gradcam")
        if gaze is None or loc is None or short is None:
            raise AuditError(f"the audit of {audit.ref} returned no gaze/localisation/shortcut result")
        keys = sorted(gaze.values["kld"])
        cons = audit.result("consistency", "gradcam")
        out[audit.ref] = {
            "means": {
                "kld": gaze.summaries["kld"].mean,
                "nss": gaze.summaries["nss"].mean,
                "auprc": loc.summaries["auprc"].mean,
                "marker_mass": short.summaries["marker_mass"].mean,
            },
            "per_case": {"kld": gaze.array("kld", keys), "nss": gaze.array("nss", keys)},
            "consistency": cons.summaries["consistency"].mean if cons is not None else None,
            "n_with_finding": int(loc.summaries["auprc"].n),
        }
    return out


def paired_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of the paired t-test of ``a`` vs ``b`` (:func:`audit.metrics.paired_t_test`)."""
    return float(paired_t_test(a, b).pvalue)
