"""Audit checks: composable functions over a loaded model's maps and a reference store (docs/audit.md).

Each check returns a :class:`~audit.checks.base.CheckResult` (per-case scores, bootstrap summaries,
baselines):

* :func:`gaze_alignment` — KLD, NSS, CC, SIM, AUC-Judd, shuffled AUC vs EGD heatmaps / fixations;
* :func:`localisation_utility` — AUPRC, IoU, pointing game vs finding masks, with the average-mask baseline;
* :func:`cascading_randomisation`, :func:`independent_randomisation`, :func:`degradation_threshold` (stages on
  the classification path: :func:`randomisation_stages`); :func:`random_logit` (the map of another class);
* :func:`map_agreement` (repeatability / reproducibility vs SSIM 0.5), :func:`runtime_reproducibility`;
* :func:`replicate_consistency` (logistic-regression separability);
* :func:`faithfulness` (insertion / deletion AUC); :func:`shortcut_mass` (marker, outside anatomy, border);
* :func:`subgroup_gaps` (gender, age bucket, site); :func:`compare_models` (paired tests between models);
* :func:`marker_occlusion` (counterfactual: prediction change when the site marker is painted out);
* :func:`explanation_robustness` (max-sensitivity and local Lipschitz estimate under small input noise).
"""

from audit.checks.base import BootstrapSettings, CheckResult, MetricSummary, summarise_values
from audit.checks.compare import Comparison, compare_models
from audit.checks.consistency import replicate_consistency
from audit.checks.counterfactual import (
    COUNTERFACTUAL_METRICS,
    marker_occlusion,
    occlusion_result,
    occlusion_scores,
)
from audit.checks.faithfulness import FAITHFULNESS_METRICS, faithfulness, faithfulness_scores
from audit.checks.gaze import GAZE_METRICS, ShuffledFixations, gaze_alignment, gaze_scores
from audit.checks.localisation import LOCALISATION_METRICS, localisation_scores, localisation_utility
from audit.checks.random_logit import RANDOM_LOGIT_METRICS, other_classes, random_logit
from audit.checks.randomisation import (
    Explainer,
    Stage,
    cascading_randomisation,
    degradation_threshold,
    excluded_modules,
    independent_randomisation,
    randomisation_stages,
    reinitialise,
    reinitialise_stage,
)
from audit.checks.robustness import ROBUSTNESS_METRICS, explanation_robustness
from audit.checks.shortcut import SHORTCUT_METRICS, shortcut_mass, shortcut_scores
from audit.checks.similarity import (
    LOW_BASELINE_SSIM,
    map_agreement,
    onnx_forward,
    runtime_reproducibility,
    torch_forward,
)
from audit.checks.subgroups import gap_metric, subgroup_gaps

__all__ = [
    "COUNTERFACTUAL_METRICS",
    "FAITHFULNESS_METRICS",
    "GAZE_METRICS",
    "LOCALISATION_METRICS",
    "LOW_BASELINE_SSIM",
    "RANDOM_LOGIT_METRICS",
    "ROBUSTNESS_METRICS",
    "SHORTCUT_METRICS",
    "BootstrapSettings",
    "CheckResult",
    "Comparison",
    "Explainer",
    "MetricSummary",
    "ShuffledFixations",
    "Stage",
    "cascading_randomisation",
    "compare_models",
    "degradation_threshold",
    "excluded_modules",
    "explanation_robustness",
    "faithfulness",
    "faithfulness_scores",
    "gap_metric",
    "gaze_alignment",
    "gaze_scores",
    "independent_randomisation",
    "localisation_scores",
    "localisation_utility",
    "map_agreement",
    "marker_occlusion",
    "occlusion_result",
    "occlusion_scores",
    "onnx_forward",
    "other_classes",
    "random_logit",
    "randomisation_stages",
    "reinitialise",
    "reinitialise_stage",
    "replicate_consistency",
    "runtime_reproducibility",
    "shortcut_mass",
    "shortcut_scores",
    "subgroup_gaps",
    "summarise_values",
    "torch_forward",
]
