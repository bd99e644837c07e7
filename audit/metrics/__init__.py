"""Explanation-quality metrics: pure functions over numpy arrays / torch tensors, batched.

Every metric takes the saliency map(s) first and the reference second, accepts one map ``H×W`` or a batch
``N×H×W`` (torch tensors are converted), returns a ``float`` or an ``np.ndarray[N]``, and gives NaN where it
is undefined. Each function's docstring cites its paper / reference code and states its convention.

Modules: :mod:`~audit.metrics.gaze` (MIT saliency benchmark), :mod:`~audit.metrics.localisation` (masks),
:mod:`~audit.metrics.similarity` (map vs map), :mod:`~audit.metrics.faithfulness` (insertion / deletion /
Sensitivity-n), :mod:`~audit.metrics.consistency` (Watson et al.), :mod:`~audit.metrics.shortcut` (mass
outside anatomy / in the border), :mod:`~audit.metrics.robustness` (max-sensitivity, local Lipschitz),
:mod:`~audit.metrics.stats` (bootstrap CIs, paired tests).
"""

from audit.metrics._batch import MetricInputError, resize_maps
from audit.metrics.consistency import (
    ConsistencyResult,
    MultiModelConsistency,
    consistency_score,
    explanation_consistency,
    multi_model_consistency,
)
from audit.metrics.faithfulness import (
    Forward,
    blurred_baseline,
    deletion_auc,
    insertion_auc,
    perturbation_curve,
    sensitivity_n,
)
from audit.metrics.gaze import (
    EPS,
    auc_borji,
    auc_judd,
    cc,
    center_prior,
    info_gain,
    kld,
    nss,
    sauc,
    shuffled_fixation_map,
    sim,
)
from audit.metrics.localisation import (
    auprc,
    auprc_sklearn,
    box_mask,
    iou,
    pointing_game,
    relevance_mass,
    relevance_rank,
    severity_correlation,
)
from audit.metrics.robustness import (
    RobustnessScores,
    explanation_sensitivity,
    local_lipschitz,
    max_sensitivity,
)
from audit.metrics.shortcut import border_band_mask, border_mass, mass_in_region, mass_outside
from audit.metrics.similarity import spearman, ssim, topk_overlap
from audit.metrics.stats import BootstrapCI, PairedTestResult, bootstrap_ci, paired_t_test, wilcoxon_test

__all__ = [
    "EPS",
    "BootstrapCI",
    "ConsistencyResult",
    "Forward",
    "MetricInputError",
    "MultiModelConsistency",
    "PairedTestResult",
    "RobustnessScores",
    "auc_borji",
    "auc_judd",
    "auprc",
    "auprc_sklearn",
    "blurred_baseline",
    "bootstrap_ci",
    "border_band_mask",
    "border_mass",
    "box_mask",
    "cc",
    "center_prior",
    "consistency_score",
    "deletion_auc",
    "explanation_consistency",
    "explanation_sensitivity",
    "info_gain",
    "insertion_auc",
    "iou",
    "kld",
    "local_lipschitz",
    "mass_in_region",
    "mass_outside",
    "max_sensitivity",
    "multi_model_consistency",
    "nss",
    "paired_t_test",
    "perturbation_curve",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "resize_maps",
    "sauc",
    "sensitivity_n",
    "severity_correlation",
    "shuffled_fixation_map",
    "sim",
    "spearman",
    "ssim",
    "topk_overlap",
    "wilcoxon_test",
]
