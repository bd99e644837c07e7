"""Explanation robustness: max-sensitivity (Yeh et al. 2019) and the local Lipschitz estimate
(Alvarez-Melis & Jaakkola 2018) against Quantus ``MaxSensitivity`` / ``LocalLipschitzEstimate`` fed the same
noise draws; and the ``robustness`` check through the shipped default policy: an explanation that jumps
under imperceptible noise FAILs, a smooth one PASSes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.checks import explanation_robustness
from audit.checks.robustness import NOISE_STD, ROBUSTNESS_SAMPLES, unrelated_distance
from audit.metrics import MetricInputError, explanation_sensitivity
from audit.metrics.robustness import noise_draws
from audit.policy import evaluate, load_policy
from tests.audit.metrics.oracles import quantus

S = 8  # image side


class Pixelwise(nn.Module):
    """Two logits ``±Σ w ⊙ f(x)``: the input gradient is ``±w ⊙ f'(x)``."""

    def __init__(self, f, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.rand(1, 1, S, S, generator=g) + 0.5)
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.w * self.f(x)).flatten(1).sum(1)
        return torch.stack([z, -z], dim=1)


def smooth() -> Pixelwise:
    return Pixelwise(torch.tanh)


def jumpy() -> Pixelwise:
    return Pixelwise(
        lambda x: torch.sin(300.0 * x) / 300.0
    )  # gradient cos(300 x): its phase moves 6 rad per σ


def gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Plain input gradient of the target logit, ``[N,S,S]`` (no scaling)."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x).gather(1, targets[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g[:, 0].numpy().astype(np.float64)


def audit_style(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """As the audit's explainers: |gradient|, min-max scaled to [0, 1] per map."""
    a = np.abs(gradient(model, x, targets))
    lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    return ((a - lo) / (hi - lo)).astype(np.float32)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, S, S, generator=g, dtype=torch.float64), torch.zeros(6, dtype=torch.long)


def _replay(draws):
    """A Quantus ``perturb_func`` that adds our noise draws, one per call (Quantus perturbs the whole batch
    once per sample, as we do)."""
    it = iter(draws)

    def perturb(arr, indices=None, indexed_axes=None, **kwargs):
        return arr + next(it).reshape(arr.shape)

    return perturb


@pytest.mark.parametrize("make", [smooth, jumpy])
def test_max_sensitivity_and_local_lipschitz_equal_quantus(make, batch):
    q = quantus()
    x, t = batch
    model = make().double().eval()
    n = 5
    std = 0.05

    def explain_np(xa: np.ndarray) -> np.ndarray:
        return gradient(model, torch.from_numpy(xa), t)

    ours = explanation_sensitivity(explain_np, x.numpy(), noise_std=std, n_samples=n, seed=3)

    def explain_func(model, inputs, targets, **kwargs):
        return gradient(model, torch.as_tensor(inputs), torch.as_tensor(targets).long())[:, None]

    draws = noise_draws(tuple(x.shape), noise_std=std, n_samples=n, seed=3)
    a0 = explain_func(model, x.numpy(), t.numpy())
    common = {"model": model, "x_batch": x.numpy(), "y_batch": t.numpy(), "a_batch": a0,
              "explain_func": explain_func, "device": "cpu"}  # fmt: skip
    ref_sens = q.MaxSensitivity(nr_samples=n, perturb_func=_replay(draws), disable_warnings=True)(**common)
    ref_lip = q.LocalLipschitzEstimate(
        nr_samples=n,
        perturb_func=_replay(draws),
        normalise=False,
        norm_numerator=q.similarity_func.distance_euclidean,
        disable_warnings=True,
    )(**common)
    np.testing.assert_allclose(ours.max_sensitivity, ref_sens, rtol=1e-12, atol=0)
    # Quantus adds 1e-10 to the denominator ‖x_k − x‖ (≈ 0.05·8 here): a ≈ 3e-10 relative difference
    np.testing.assert_allclose(ours.local_lipschitz, ref_lip, rtol=1e-9, atol=0)


def test_the_sensitivity_is_zero_for_a_constant_explanation_and_nan_for_a_zero_map(batch):
    x, _ = batch
    r = explanation_sensitivity(lambda xa: np.ones((xa.shape[0], 3)), x.numpy(), noise_std=0.1, n_samples=2)
    np.testing.assert_array_equal(r.max_sensitivity, 0.0)
    r = explanation_sensitivity(lambda xa: np.zeros((xa.shape[0], 3)), x.numpy(), noise_std=0.1, n_samples=2)
    assert np.isnan(r.max_sensitivity).all()
    np.testing.assert_array_equal(r.local_lipschitz, 0.0)


def test_invalid_arguments_raise(batch):
    x, _ = batch
    f = lambda xa: np.ones((xa.shape[0], 3))  # noqa: E731
    for kwargs in ({"noise_std": 0.0}, {"noise_std": float("nan")}, {"noise_std": 0.1, "n_samples": 0}):
        with pytest.raises(MetricInputError):
            explanation_sensitivity(f, x.numpy(), **kwargs)
    with pytest.raises(MetricInputError):
        explanation_sensitivity(lambda xa: np.ones((1, 3)), x.numpy(), noise_std=0.1)


def test_unrelated_distance_is_cyclic_and_relative():
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0), np.full((2, 2), 2.0)])
    np.testing.assert_allclose(unrelated_distance(maps), [2.0, 1 / 3, 0.5])
    assert np.isnan(unrelated_distance(maps[:1])).all()


def _verdict(model: nn.Module, batch) -> tuple[str, object]:
    x, t = batch
    keys = [f"c{i}" for i in range(x.shape[0])]
    r = explanation_robustness(model.double().eval(), x, t, audit_style, method="gradient", keys=keys)
    (v,) = [v for v in evaluate(load_policy(None), [r], ["gradient"]) if v.criterion == "robustness_sens"]
    return v.status, r


def test_a_jumpy_explanation_fails_the_default_policy(batch):
    status, r = _verdict(jumpy(), batch)
    assert status == "FAIL"
    assert r.summaries["max_sensitivity"].mean > 0.5 * r.baselines["unrelated"]["max_sensitivity"]
    assert r.details == {"noise_std": NOISE_STD, "n_samples": ROBUSTNESS_SAMPLES, "seed": 0}


def test_a_smooth_explanation_passes_the_default_policy(batch):
    status, r = _verdict(smooth(), batch)
    assert status == "PASS"
    assert r.summaries["max_sensitivity"].n == batch[0].shape[0]
    assert set(r.values) == {"max_sensitivity", "local_lipschitz"}
