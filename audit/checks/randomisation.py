"""Model-parameter randomisation sanity checks on the torch twin (Adebayo et al. 2018; Arun et al., seed 001).

* **Cascading** randomisation: re-initialise the layers top-down and cumulatively — the logits (the linear
  head) first, then each block downward — and compare each stage's map with the trained model's map by SSIM
  (scikit-image defaults, explicit ``data_range``) and Spearman rank correlation.
* **Independent** randomisation: re-initialise one stage at a time, the others keeping their trained weights.
* **Degradation threshold**: mean SSIM between the trained model's maps of random pairs of *different*
  images (Arun et al. use 50 pairs). A method PASSes the cascading test when the fully randomised SSIM falls
  below it (Table 2, "Randomization").

Re-initialisation (REFERENCE.md, as in CheXplain-IBA): convolutions ``xavier_uniform_``, linear layers
``normal_(0, 0.05)``, biases zero; other parameterised layers (normalisation) ``reset_parameters()``. Seeded:
stage ``i`` draws from ``torch.Generator().manual_seed(seed + i)``.

Stages (:func:`randomisation_stages`): the model's parameterised top-level children, ``classifier`` first and
the others in reverse order of definition; a model with fewer than three such children has them expanded one
level (so a UNet whose encoder is one child still gets per-block stages).

SSIM ``data_range = 1.0``: every map is min-max scaled to [0, 1] (Arun et al.'s post-processing); the
authors' old scikit-image used 2 for float images (REFERENCE.md) — the policy can set it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from audit.checks.base import BootstrapSettings, CheckResult
from audit.errors import CheckInputError
from audit.metrics import spearman, ssim

__all__ = [
    "Explainer",
    "cascading_randomisation",
    "degradation_threshold",
    "independent_randomisation",
    "randomisation_stages",
    "reinitialise",
]

#: ``explainer(model, x[N,1,S,S], targets[N]) -> maps float32[N,S,S]`` in [0, 1].
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], np.ndarray]


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def randomisation_stages(model: nn.Module) -> list[str]:
    """Dotted names of the stages, top-down (see the module docstring)."""
    children = [(n, m) for n, m in model.named_children() if _has_params(m)]
    stages: list[str] = []
    for name, module in children:
        sub = [f"{name}.{s}" for s, sm in module.named_children() if _has_params(sm)]
        stages.extend(sub if len(children) < 3 and len(sub) > 1 else [name])
    head = [s for s in stages if s == "classifier" or s.startswith("classifier.")]
    rest = [s for s in stages if s not in head]
    return head + rest[::-1]


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of ``module`` in place (conv xavier-uniform, linear N(0, 0.05),
    zero biases, ``reset_parameters()`` for other layers)."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.xavier_uniform_(m.weight, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.05, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif any(True for _ in m.parameters(recurse=False)) and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def _pairwise(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.atleast_1d(np.asarray(ssim(a, b, data_range=data_range), dtype=np.float64))
    r = np.atleast_1d(np.asarray(spearman(a, b), dtype=np.float64))
    return s, r


def _run(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    cumulative: bool,
    check: str,
    method: str,
    keys: Sequence[str],
    seed: int,
    data_range: float,
    original: np.ndarray | None,
    class_names: Sequence[str],
    bootstrap: BootstrapSettings | None,
) -> CheckResult:
    if x.ndim != 4 or x.shape[0] != len(keys) or targets.shape[0] != len(keys):
        raise CheckInputError("x must be [N,1,S,S] with one target and one key per image")
    base = explainer(model, x, targets) if original is None else original
    stages = randomisation_stages(model)
    if not stages:
        raise CheckInputError("the model has no parameterised stage to randomise")
    result = CheckResult(check, method)
    curve_ssim: list[float] = []
    curve_rho: list[float] = []
    work = copy.deepcopy(model).eval()
    for i, stage in enumerate(stages):
        if not cumulative:
            work = copy.deepcopy(model).eval()
        reinitialise(work.get_submodule(stage), seed + i)
        maps = explainer(work, x, targets)
        s, r = _pairwise(maps, base, data_range)
        for j, k in enumerate(keys):
            t = int(targets[j])
            cls = class_names[t] if t < len(class_names) else str(t)
            result.add_case(k, {f"ssim@{stage}": s[j], f"spearman@{stage}": r[j]}, cls)
        curve_ssim.append(_nanmean(s))
        curve_rho.append(_nanmean(r))
    last = stages[-1]
    if cumulative:
        result.values["ssim_full"] = dict(result.values[f"ssim@{last}"])
        result.values["spearman_full"] = dict(result.values[f"spearman@{last}"])
    else:
        ssim_keys = [f"ssim@{s}" for s in stages]
        result.values["ssim_max"] = {k: _nanmax([result.values[m][k] for m in ssim_keys]) for k in keys}
    result.details = {"stages": stages, "curve": {"ssim": curve_ssim, "spearman": curve_rho}}
    return result.summarise(bootstrap)


def cascading_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    method: str,
    keys: Sequence[str],
    seed: int = 0,
    data_range: float = 1.0,
    original: np.ndarray | None = None,
    threshold: tuple[float, float] | None = None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Cascading (top-down, cumulative) randomisation of ``model`` (a copy; the model is not modified).

    Per case and stage: ``ssim@<stage>`` and ``spearman@<stage>`` to the trained model's map, and
    ``ssim_full`` / ``spearman_full`` after the last stage. ``threshold`` = ``(ssim, spearman)`` degradation
    thresholds (:func:`degradation_threshold`) are stored as ``baselines["degradation_threshold"]``.
    ``details["curve"]`` holds the mean per stage (the randomisation curve).
    """
    result = _run(
        model,
        x,
        targets,
        explainer,
        cumulative=True,
        check="cascading_randomisation",
        method=method,
        keys=keys,
        seed=seed,
        data_range=data_range,
        original=original,
        class_names=class_names,
        bootstrap=bootstrap,
    )
    if threshold is not None:
        result.baselines["degradation_threshold"] = {"ssim_full": threshold[0], "spearman_full": threshold[1]}
    return result


def independent_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explainer: Explainer,
    *,
    method: str,
    keys: Sequence[str],
    seed: int = 0,
    data_range: float = 1.0,
    original: np.ndarray | None = None,
    threshold: tuple[float, float] | None = None,
    class_names: Sequence[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> CheckResult:
    """Independent randomisation: one stage at a time; per case ``ssim@<stage>``, ``spearman@<stage>`` and
    ``ssim_max`` (the highest SSIM over stages: the stage the map is least sensitive to)."""
    result = _run(
        model,
        x,
        targets,
        explainer,
        cumulative=False,
        check="independent_randomisation",
        method=method,
        keys=keys,
        seed=seed,
        data_range=data_range,
        original=original,
        class_names=class_names,
        bootstrap=bootstrap,
    )
    if threshold is not None:
        result.baselines["degradation_threshold"] = {"ssim_max": threshold[0]}
    return result


def degradation_threshold(
    maps: np.ndarray, *, n_pairs: int = 50, seed: int = 0, data_range: float = 1.0
) -> tuple[float, float]:
    """Mean SSIM and mean Spearman between maps of ``n_pairs`` random pairs of *different* images.

    Pairs ``(i, j)``, ``i != j``, drawn uniformly with ``numpy.random.default_rng(seed)`` (with replacement
    across pairs: fewer than 50 distinct pairs exist for fewer than 11 images).

    Raises:
        CheckInputError: fewer than two maps.
    """
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 3 or m.shape[0] < 2:
        raise CheckInputError("the degradation threshold needs at least two maps N×H×W")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, m.shape[0], size=n_pairs)
    j = (i + rng.integers(1, m.shape[0], size=n_pairs)) % m.shape[0]  # j != i, uniform over the others
    s, r = _pairwise(m[i], m[j], data_range)
    return _nanmean(s), _nanmean(r)


def _nanmax(values: list[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else float("nan")


def _nanmean(a: np.ndarray) -> float:
    """Mean of the finite values (NaN when there is none), without numpy's empty-slice warning."""
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")
