"""Gradient-family methods: exact values, IG completeness, seeds, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from mimicry.models import LeftRightToyNet, ToyCamNet
from mimicry.saliency import SaliencyError, explain, explain_raw


def _toy(seed: int = 0) -> ToyCamNet:
    torch.manual_seed(seed)
    return ToyCamNet().eval()


def _x(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_gradient_is_the_input_gradient_of_the_target_logit() -> None:
    model, x = _toy(), _x()
    xg = x.clone().requires_grad_(True)
    model(xg)[torch.arange(2), torch.tensor([1, 0])].sum().backward()
    torch.testing.assert_close(explain_raw(model, x, [1, 0], "gradient"), xg.grad, rtol=0, atol=0)


@pytest.mark.parametrize(("rule", "steps"), [("riemann_right", 1024), ("gausslegendre", 64)])
def test_integrated_gradients_completeness(rule: str, steps: int) -> None:
    """Σ attributions = F(x) − F(x') (Sundararajan et al., Prop. 1), up to the quadrature error."""
    model = LeftRightToyNet()
    x = 0.8 + 0.2 * torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1])
    raw = explain_raw(model, x, target, "integrated_gradients", steps=steps, rule=rule)
    black = torch.full_like(x, model.black_level)
    with torch.no_grad():
        difference = model(x)[torch.arange(2), target] - model(black)[torch.arange(2), target]
    assert float(difference.abs().min()) > 10.0  # a large output change to explain
    torch.testing.assert_close(raw.sum(dim=(1, 2, 3)), difference, rtol=2e-3, atol=0)
    delta = IntegratedGradients(model).compute_convergence_delta(
        raw, start_point=black, end_point=x, target=target
    )
    assert float(delta.abs().max()) < 2e-3 * float(difference.abs().min())


def test_integrated_gradients_paper_default_is_25_steps_from_black() -> None:
    model, x = _toy(), _x()
    default = explain_raw(model, x, [0, 1], "integrated_gradients")
    black = torch.full((1, 1, 32, 32), model.black_level)
    explicit = IntegratedGradients(model).attribute(
        x, baselines=black.expand_as(x), target=[0, 1], n_steps=25, method="riemann_right"
    )
    torch.testing.assert_close(default, explicit, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(explain_raw(model, x, [0, 1], "integrated_gradients", baseline=-2.0), default)
    torch.testing.assert_close(explain_raw(model, x, [0, 1], "integrated_gradients", baseline=black), default)
    other = explain_raw(model, x, [0, 1], "integrated_gradients", baseline=0.0)
    assert not torch.allclose(other, default)


def test_baseline_of_wrong_shape_is_refused() -> None:
    with pytest.raises(SaliencyError, match="broadcast"):
        explain(_toy(), _x(), 0, "integrated_gradients", baseline=torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient", "guided_backprop", "gradcam"])
def test_batch_size_bounds_memory_without_changing_results(method: str) -> None:
    model, x = _toy(), _x(3)
    params = {"steps": 8} if method == "integrated_gradients" else {}
    small = explain_raw(model, x, [0, 1, 2], method, batch_size=2, **params)
    large = explain_raw(model, x, [0, 1, 2], method, batch_size=64, **params)
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-7)


def test_smoothgrad_without_noise_is_the_gradient() -> None:
    model, x = _toy(), _x()
    smooth = explain_raw(model, x, [0, 2], "smoothgrad", noise_level=0.0, n_samples=3)
    torch.testing.assert_close(smooth, explain_raw(model, x, [0, 2], "gradient"), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("smoothgrad", {"n_samples": 5}),
        ("smooth_ig", {"n_samples": 3, "steps": 4}),
        ("gradient_shap", {"n_samples": 5}),
    ],
)
def test_stochastic_methods_depend_on_the_seed_only_and_restore_global_rngs(
    method: str, params: dict
) -> None:
    model, x = _toy(), _x()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002 - the global RNG captum uses
    a = explain_raw(model, x, [0, 1], method, seed=3, **params)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002 - the global RNG captum uses
    assert after[0] == np_state[0]
    assert np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    torch.manual_seed(123)  # global state must not matter
    b = explain_raw(model, x, [0, 1], method, seed=3, **params)
    c = explain_raw(model, x, [0, 1], method, seed=4, **params)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_gradient_shap_splits_large_sample_counts_into_batches() -> None:
    """n_samples > batch_size is split into independent draws; the estimate stays an average of
    (x − x')·∇F over draws, so with a reference equal to x every attribution is exactly zero."""
    model, x = _toy(), _x(1)
    zero = explain_raw(model, x, 0, "gradient_shap", baselines=x.clone(), n_samples=7, batch_size=3)
    assert torch.equal(zero, torch.zeros_like(zero))
    refs = torch.randn(4, 1, 32, 32)
    out = explain_raw(model, x, 0, "gradient_shap", baselines=refs, n_samples=7, batch_size=3)
    assert out.abs().sum() > 0


def test_invalid_parameters_are_refused() -> None:
    model, x = _toy(), _x(1)
    with pytest.raises(SaliencyError, match="rule"):
        explain(model, x, 0, "integrated_gradients", rule="simpson")
    with pytest.raises(SaliencyError, match="steps"):
        explain(model, x, 0, "integrated_gradients", steps=0)
    with pytest.raises(SaliencyError, match="nt_type"):
        explain(model, x, 0, "smoothgrad", nt_type="vargrad2")
    with pytest.raises(SaliencyError, match="noise_level"):
        explain(model, x, 0, "smoothgrad", noise_level=-0.1)
