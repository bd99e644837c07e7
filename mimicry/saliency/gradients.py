"""Input-gradient methods, all through captum: gradient, SmoothGrad, integrated gradients, smooth IG and
GradientSHAP. Each explains the target *logit*; maps are made non-negative only by the shared
post-processing (Arun et al.: absolute value), so the raw attributions here keep their sign.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Saliency
from torch import Tensor

from mimicry.models.base import CamClassifier
from mimicry.saliency.base import (
    SaliencyMethod,
    grad_input,
    iter_chunks,
    register_method,
    resolve_baseline,
    seeded,
)
from mimicry.saliency.errors import SaliencyError

__all__ = ["Gradient", "GradientShapMethod", "IntegratedGradientsMethod", "SmoothGrad", "SmoothIG"]

_IG_RULES = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")
_NT_TYPES = ("smoothgrad", "smoothgrad_sq")


def _check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise SaliencyError(f"{name} must be ≥ 1, got {value}")
    return int(value)


def _noise_std(x_i: Tensor, noise_level: float) -> float:
    """SmoothGrad's σ = noise level × (x_max − x_min) of the sample (Smilkov et al. 2017, §3)."""
    if not noise_level >= 0.0:
        raise SaliencyError(f"noise_level must be ≥ 0, got {noise_level}")
    return float(noise_level) * float(x_i.max() - x_i.min())


@register_method("gradient")
class Gradient(SaliencyMethod):
    """Vanilla gradient ``∂y^c/∂x`` (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional
    networks", Eq. 2–3; Arun et al.'s GRAD) via captum ``Saliency(abs=False)``; the paper's absolute value is
    taken by the post-processing. Defaults: ``batch_size=16``."""

    defaults: ClassVar[Mapping[str, Any]] = {"batch_size": 16}

    def attribute(
        self, model: CamClassifier, x: Tensor, target: Tensor, *, batch_size: int, **_: Any
    ) -> Tensor:
        sal = Saliency(model)
        return torch.cat(
            [
                sal.attribute(grad_input(x[sl]), target=target[sl], abs=False).detach()
                for sl in iter_chunks(x.shape[0], _check_positive("batch_size", batch_size))
            ]
        )


@register_method("smoothgrad")
class SmoothGrad(SaliencyMethod):
    """SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise", Eq. 3):
    ``(1/n) Σ_i ∂y^c/∂x (x + N(0, σ²))`` via captum ``NoiseTunnel(Saliency)``.

    Defaults: ``n_samples=25`` and ``noise_level=0.15`` (σ = 15 % of the sample's ``x_max − x_min``; the
    paper recommends 10–20 %; 25 samples and 15 % are the defaults of the PAIR ``saliency`` library's
    ``GetSmoothedMask``), ``nt_type="smoothgrad"`` (mean of gradients, Eq. 3; ``"smoothgrad_sq"`` = mean of
    squares), ``batch_size=16`` noisy copies per pass, ``seed=0`` (global RNGs restored afterwards). σ is
    per sample, so samples are processed one at a time.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "n_samples": 25,
        "noise_level": 0.15,
        "nt_type": "smoothgrad",
        "batch_size": 16,
        "seed": 0,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        n_samples: int,
        noise_level: float,
        nt_type: str,
        batch_size: int,
        seed: int | None,
        **_: Any,
    ) -> Tensor:
        if nt_type not in _NT_TYPES:
            raise SaliencyError(f"nt_type must be one of {_NT_TYPES}, got {nt_type!r}")
        n_samples = _check_positive("n_samples", n_samples)
        batch_size = _check_positive("batch_size", batch_size)
        nt = NoiseTunnel(Saliency(model))
        out = []
        with seeded(seed, x.device):
            for i in range(x.shape[0]):
                out.append(
                    nt.attribute(
                        x[i : i + 1],
                        nt_type=nt_type,
                        nt_samples=n_samples,
                        nt_samples_batch_size=min(batch_size, n_samples),
                        stdevs=_noise_std(x[i], noise_level),
                        target=target[i : i + 1],
                        abs=False,
                    ).detach()
                )
        return torch.cat(out)


@register_method("integrated_gradients")
class IntegratedGradientsMethod(SaliencyMethod):
    """Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic attribution for deep networks",
    Eq. 1 and its Riemann approximation in §5) via captum ``IntegratedGradients``:
    ``(x − x') · (1/m) Σ_{k=1..m} ∂y^c/∂x (x' + (k/m)(x − x'))``.

    Defaults (Arun et al.): ``steps=25`` interpolation steps, ``baseline="black"`` (the model-input value
    of a black image, ``model.black_level``; a float or a tensor broadcastable to ``x`` is also accepted),
    ``rule="riemann_right"`` (the paper's sum; any captum rule may be chosen, e.g. ``"gausslegendre"``,
    captum's default), ``batch_size=16`` interpolated images per pass (captum ``internal_batch_size``).
    Completeness: the attributions sum to ``y^c(x) − y^c(x')`` up to the approximation error.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "steps": 25,
        "baseline": "black",
        "rule": "riemann_right",
        "batch_size": 16,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        steps: int,
        baseline: Any,
        rule: str,
        batch_size: int,
        **_: Any,
    ) -> Tensor:
        if rule not in _IG_RULES:
            raise SaliencyError(f"rule must be one of {_IG_RULES}, got {rule!r}")
        steps = _check_positive("steps", steps)
        batch_size = _check_positive("batch_size", batch_size)
        base = resolve_baseline(model, x, baseline)
        ig = IntegratedGradients(model)
        out = []
        for sl in iter_chunks(x.shape[0], batch_size):
            out.append(
                ig.attribute(
                    x[sl],
                    baselines=base[sl],
                    target=target[sl],
                    n_steps=steps,
                    method=rule,
                    internal_batch_size=batch_size,
                ).detach()
            )
        return torch.cat(out)


@register_method("smooth_ig")
class SmoothIG(SaliencyMethod):
    """Smooth integrated gradients (Arun et al.'s SIG; Smilkov et al. 2017 applied to Sundararajan et al.
    2017): SmoothGrad's average over noisy copies ``x + N(0, σ²)`` of the IG attribution with a fixed
    baseline, via captum ``NoiseTunnel(IntegratedGradients)``.

    Defaults: ``n_samples=25``, ``noise_level=0.15``, ``nt_type="smoothgrad"`` (as :class:`SmoothGrad`),
    ``steps=25``, ``baseline="black"``, ``rule="riemann_right"`` (as :class:`IntegratedGradientsMethod`),
    ``batch_size=16`` model inputs per pass (noisy copies × steps are split to fit), ``seed=0``.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "n_samples": 25,
        "noise_level": 0.15,
        "nt_type": "smoothgrad",
        "steps": 25,
        "baseline": "black",
        "rule": "riemann_right",
        "batch_size": 16,
        "seed": 0,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        n_samples: int,
        noise_level: float,
        nt_type: str,
        steps: int,
        baseline: Any,
        rule: str,
        batch_size: int,
        seed: int | None,
        **_: Any,
    ) -> Tensor:
        if nt_type not in _NT_TYPES:
            raise SaliencyError(f"nt_type must be one of {_NT_TYPES}, got {nt_type!r}")
        if rule not in _IG_RULES:
            raise SaliencyError(f"rule must be one of {_IG_RULES}, got {rule!r}")
        n_samples = _check_positive("n_samples", n_samples)
        steps = _check_positive("steps", steps)
        batch_size = _check_positive("batch_size", batch_size)
        base = resolve_baseline(model, x, baseline)
        copies_per_pass = max(1, min(n_samples, batch_size // steps))
        nt = NoiseTunnel(IntegratedGradients(model))
        out = []
        with seeded(seed, x.device):
            for i in range(x.shape[0]):
                out.append(
                    nt.attribute(
                        x[i : i + 1],
                        nt_type=nt_type,
                        nt_samples=n_samples,
                        nt_samples_batch_size=copies_per_pass,
                        stdevs=_noise_std(x[i], noise_level),
                        baselines=base[i : i + 1],
                        target=target[i : i + 1],
                        n_steps=steps,
                        method=rule,
                        internal_batch_size=max(batch_size, copies_per_pass),
                    ).detach()
                )
        return torch.cat(out)


@register_method("gradient_shap")
class GradientShapMethod(SaliencyMethod):
    """GradientSHAP (Lundberg & Lee 2017, "A unified approach to interpreting model predictions"; the
    expected-gradients estimator of SHAP values) via captum ``GradientShap``: the mean over ``n_samples``
    draws of ``(x − x') · ∂y^c/∂x (x' + α(x − x'))`` with ``x'`` drawn from the reference images,
    ``α ~ U(0, 1)`` and optional input noise ``N(0, stdevs²)``.

    Defaults: ``baselines="black"`` (a single black reference, ``model.black_level``; pass a tensor
    ``[M, 1, H, W]`` of background images — e.g. training images, as SHAP recommends — to sample from),
    ``n_samples=25`` (the budget of IG's 25 steps), ``stdevs=0.0`` (captum's default), ``batch_size=16``
    model inputs per pass (``n_samples`` larger than that is split into independent draws and averaged,
    which is the same estimator), ``seed=0``.
    """

    defaults: ClassVar[Mapping[str, Any]] = {
        "baselines": "black",
        "n_samples": 25,
        "stdevs": 0.0,
        "batch_size": 16,
        "seed": 0,
    }

    def attribute(
        self,
        model: CamClassifier,
        x: Tensor,
        target: Tensor,
        *,
        baselines: Any,
        n_samples: int,
        stdevs: float,
        batch_size: int,
        seed: int | None,
        **_: Any,
    ) -> Tensor:
        n_samples = _check_positive("n_samples", n_samples)
        batch_size = _check_positive("batch_size", batch_size)
        if isinstance(baselines, str | int | float):
            refs = resolve_baseline(model, x[:1], baselines)
        else:
            refs = torch.as_tensor(baselines).to(device=x.device, dtype=x.dtype)
            if refs.ndim != 4 or refs.shape[1:] != x.shape[1:]:
                raise SaliencyError(
                    f"baselines must be [M, {x.shape[1]}, H, W] like x, got {tuple(refs.shape)}"
                )
        gs = GradientShap(model)
        samples_per_call = max(1, batch_size // n_samples)
        draws = [len(range(n_samples)[s]) for s in iter_chunks(n_samples, batch_size)]
        out = []
        with seeded(seed, x.device):
            for sl in iter_chunks(x.shape[0], samples_per_call):
                acc = torch.zeros_like(x[sl])
                for n_draw in draws:
                    attr = gs.attribute(
                        x[sl], baselines=refs, n_samples=n_draw, stdevs=float(stdevs), target=target[sl]
                    )
                    acc += attr.detach() * (n_draw / n_samples)
                out.append(acc)
        return torch.cat(out)
