"""Saliency methods of mimicry: one registry, one signature (docs/methods.md, "Saliency methods").

``explain(model, x, target, method, **params) -> float32[N, H, W]`` in ``[0, 1]`` at input resolution, with
the shared post-processing of Arun et al. (:class:`PostProcess`); :func:`explain_raw` returns the raw
attributions. Registered methods (see each class's docstring for its paper and defaults): ``gradcam``,
``gradient``, ``smoothgrad``, ``integrated_gradients``, ``smooth_ig``, ``guided_backprop``,
``guided_gradcam``, ``gradient_shap``, ``occlusion``, ``xrai``, ``iba``, ``inverse_iba``, ``multilayer_iba``.

Also: :func:`differentiable_gradcam` (Grad-CAM that trains the model), :func:`occlusion_from_forward`
(occlusion against ONNX Runtime / Triton), :func:`estimate_layer_stats` / :class:`LayerStats` (IBA's
running statistics) and :func:`upsample` (feature-resolution maps → input resolution, as Grad-CAM does).
"""

from mimicry.saliency.base import (
    SaliencyMethod,
    Target,
    attribution_mode,
    explain,
    explain_raw,
    get_method,
    list_methods,
    register_method,
    resolve_baseline,
    resolve_target,
    seeded,
    upsample,
)
from mimicry.saliency.errors import (
    InsufficientSamplesError,
    InvalidTargetError,
    LayerStatsMismatchError,
    SaliencyError,
    UnknownMethodError,
    UnknownParameterError,
)
from mimicry.saliency.gradcam import GradCam, differentiable_gradcam
from mimicry.saliency.gradients import (
    Gradient,
    GradientShapMethod,
    IntegratedGradientsMethod,
    SmoothGrad,
    SmoothIG,
)
from mimicry.saliency.guided import GuidedBackpropMethod, GuidedGradCamMethod
from mimicry.saliency.iba import (
    PAPER_MIN_SAMPLES,
    IbaMethod,
    InverseIbaMethod,
    LayerStats,
    MultiLayerIbaMethod,
    bottleneck_capacity,
    estimate_layer_stats,
    layer_name,
)
from mimicry.saliency.occlusion import OcclusionMethod, occlusion_from_forward, occlusion_geometry
from mimicry.saliency.postprocess import ARUN_ET_AL, PostProcess
from mimicry.saliency.xrai import Xrai

__all__ = [
    "ARUN_ET_AL",
    "PAPER_MIN_SAMPLES",
    "GradCam",
    "Gradient",
    "GradientShapMethod",
    "GuidedBackpropMethod",
    "GuidedGradCamMethod",
    "IbaMethod",
    "InsufficientSamplesError",
    "IntegratedGradientsMethod",
    "InvalidTargetError",
    "InverseIbaMethod",
    "LayerStats",
    "LayerStatsMismatchError",
    "MultiLayerIbaMethod",
    "OcclusionMethod",
    "PostProcess",
    "SaliencyError",
    "SaliencyMethod",
    "SmoothGrad",
    "SmoothIG",
    "Target",
    "UnknownMethodError",
    "UnknownParameterError",
    "Xrai",
    "attribution_mode",
    "bottleneck_capacity",
    "differentiable_gradcam",
    "estimate_layer_stats",
    "explain",
    "explain_raw",
    "get_method",
    "layer_name",
    "list_methods",
    "occlusion_from_forward",
    "occlusion_geometry",
    "register_method",
    "resolve_baseline",
    "resolve_target",
    "seeded",
    "upsample",
]
