"""Every registered method through the one entry point: shape, range, determinism, target semantics, and
no state left behind on the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from mimicry.models import LeftRightToyNet, ToyCamNet
from mimicry.saliency import (
    InvalidTargetError,
    LayerStats,
    PostProcess,
    SaliencyError,
    SaliencyMethod,
    UnknownMethodError,
    UnknownParameterError,
    estimate_layer_stats,
    explain,
    explain_raw,
    get_method,
    list_methods,
    register_method,
    resolve_target,
)
from mimicry.saliency import base as saliency_base

ALL_METHODS = [
    "gradcam",
    "gradient",
    "smoothgrad",
    "integrated_gradients",
    "smooth_ig",
    "gradient_shap",
    "guided_backprop",
    "guided_gradcam",
    "occlusion",
    "xrai",
    "iba",
    "inverse_iba",
    "multilayer_iba",
]


def _toy() -> ToyCamNet:
    torch.manual_seed(0)
    return ToyCamNet()


def _stats_batches(h: int = 32) -> torch.Tensor:
    """Images of random brightness (IBA's statistics need variation in what the model looks at)."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(48, 1, 1, 1, generator=g) * (0.5 + 0.5 * torch.rand(48, 1, h, h, generator=g))


@pytest.fixture(scope="module")
def toy() -> ToyCamNet:
    return _toy()


@pytest.fixture(scope="module")
def toy_stats(toy: ToyCamNet) -> dict[str, LayerStats]:
    xs = _stats_batches()
    return {
        name: estimate_layer_stats(toy, name, [xs[:20], xs[20:]], n_samples=48)
        for name in ("block1", "block3")
    }


def _fast_params(name: str, stats: dict[str, LayerStats], deep: str, shallow: str) -> dict[str, Any]:
    """Small budgets so the whole file stays fast; defaults are exercised in the method-specific files."""
    return {
        "smoothgrad": {"n_samples": 4},
        "smooth_ig": {"n_samples": 2, "steps": 4},
        "integrated_gradients": {"steps": 8},
        "gradient_shap": {"n_samples": 4},
        "occlusion": {"window": 8, "stride": 8},
        "xrai": {"steps": 4, "algorithm": "fast"},
        "iba": {"stats": stats[deep], "steps": 3},
        "inverse_iba": {"stats": stats[deep], "steps": 3},
        "multilayer_iba": {"stats": [stats[shallow], stats[deep]], "steps": 3, "threshold": 0.01},
    }.get(name, {})


def test_registry_lists_exactly_the_specified_methods() -> None:
    assert list_methods() == sorted(ALL_METHODS)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_gives_deterministic_float32_maps_in_unit_range(
    method: str, toy: ToyCamNet, toy_stats: dict[str, LayerStats]
) -> None:
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    params = _fast_params(method, toy_stats, "block3", "block1")
    maps = explain(toy, x, [0, 2], method, **params)
    assert isinstance(maps, np.ndarray)
    assert maps.dtype == np.float32
    assert maps.shape == (2, 32, 32)
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0
    raw = explain_raw(toy, x, [0, 2], method, **params)
    assert raw.dtype == torch.float32
    assert raw.shape == (2, 1, 32, 32)
    assert np.array_equal(get_method(method).postprocess(raw), maps)  # a second call gives the same map


@pytest.mark.parametrize("method", ALL_METHODS)
def test_no_state_is_left_on_the_model(method: str, toy_stats: dict[str, LayerStats]) -> None:
    model = _toy()
    model.train()
    model.block1[0].bias.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    explain(model, x, None, method, **_fast_params(method, toy_stats, "block3", "block1"))
    assert model.training
    assert all(m.training for m in model.modules())
    for m in model.modules():
        assert not m._forward_hooks
        assert not m._forward_pre_hooks
        assert not m._backward_hooks
        assert not m._backward_pre_hooks
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad == (name != "block1.0.bias"), name
        assert torch.equal(p, before[name]), name


# ------------------------------------------------------------------------------ known-answer model


@pytest.fixture(scope="module")
def left_right() -> tuple[LeftRightToyNet, torch.Tensor, dict[str, LayerStats]]:
    model = LeftRightToyNet()
    x = 0.8 + 0.2 * torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    xs = _stats_batches()
    stats = {name: estimate_layer_stats(model, name, [xs], n_samples=48) for name in ("block1", "block2")}
    return model, x, stats


@pytest.mark.parametrize(
    ("method", "min_fraction"),
    [
        ("gradcam", 0.95),
        ("gradient", 0.999),
        ("integrated_gradients", 0.999),
        ("occlusion", 0.95),
        ("iba", 0.9),
        ("smoothgrad", 0.999),
        ("guided_backprop", 0.999),
        ("multilayer_iba", 0.9),
    ],
)
def test_maps_follow_the_target_class_to_its_half(
    method: str, min_fraction: float, left_right: tuple[LeftRightToyNet, torch.Tensor, dict[str, LayerStats]]
) -> None:
    """Class 0 reads only the left half, class 1 only the right half (both halves are equally bright)."""
    model, x, stats = left_right
    params = _fast_params(method, stats, "block2", "block1")
    if method in ("iba", "multilayer_iba"):
        params["steps"] = 10  # the paper's optimisation budget
    maps = explain(model, x, [0, 1], method, **params)  # sample 0 → class 0, sample 1 → class 1
    left = maps[..., :16].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert left[0] >= min_fraction, (method, float(left[0]))
    assert 1.0 - left[1] >= min_fraction, (method, float(left[1]))


def test_target_none_explains_the_predicted_class(left_right: Any) -> None:
    model, x, _ = left_right
    assert model(x).argmax(1).tolist() == [2, 2]
    np.testing.assert_array_equal(explain(model, x, None, "gradient"), explain(model, x, 2, "gradient"))


# --------------------------------------------------------------------------- registry and validation


def test_resolve_target_forms() -> None:
    model = _toy()
    x = torch.randn(3, 1, 16, 16)
    assert resolve_target(model, x, 1).tolist() == [1, 1, 1]
    assert resolve_target(model, x, [0, 2, 1]).tolist() == [0, 2, 1]
    assert resolve_target(model, x, torch.tensor([2, 0, 1])).tolist() == [2, 0, 1]
    assert resolve_target(model, x, np.int64(2)).tolist() == [2, 2, 2]
    assert resolve_target(model, x, None).tolist() == model(x).argmax(1).tolist()
    for bad in ([0, 1], 3, -1, [0.5, 1.0, 2.0], torch.tensor([0.0, 1.0, 2.0])):
        with pytest.raises(InvalidTargetError):
            resolve_target(model, x, bad)


def test_unknown_method_and_parameter_are_refused() -> None:
    model, x = _toy(), torch.randn(1, 1, 16, 16)
    with pytest.raises(UnknownMethodError, match="unknown saliency method 'lime'"):
        explain(model, x, 0, "lime")
    with pytest.raises(UnknownParameterError, match="n_step"):
        explain(model, x, 0, "integrated_gradients", n_step=10)


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(1, 16, 16),
        torch.randn(1, 3, 16, 16),
        torch.randn(1, 1, 16, 16).double(),
        torch.zeros(0, 1, 8, 8),
    ],
)
def test_malformed_inputs_are_refused(x: torch.Tensor) -> None:
    with pytest.raises(SaliencyError):
        explain(_toy(), x, 0, "gradient")


def test_iba_without_stats_is_refused_with_a_clear_message() -> None:
    with pytest.raises(SaliencyError, match="estimate_layer_stats"):
        explain(_toy(), torch.randn(1, 1, 16, 16), 0, "iba")


def test_register_method_adds_a_method_with_its_defaults() -> None:
    @register_method("test_constant")
    class _Constant(SaliencyMethod):
        defaults: ClassVar[Mapping[str, Any]] = {"value": 1.5}
        postprocess = PostProcess(normalise=False, clip_percentile=None)

        def attribute(
            self, model: Any, x: torch.Tensor, target: torch.Tensor, *, value: float
        ) -> torch.Tensor:
            return torch.full_like(x, value) * (target[:, None, None, None] + 1)

    try:
        assert "test_constant" in list_methods()
        maps = explain(_toy(), torch.zeros(2, 1, 4, 4), [0, 1], "test_constant")
        np.testing.assert_array_equal(maps, np.stack([np.full((4, 4), 1.5), np.full((4, 4), 3.0)]))
        maps = explain(_toy(), torch.zeros(1, 1, 4, 4), 0, "test_constant", value=-2.0)
        np.testing.assert_array_equal(maps, np.full((1, 4, 4), 2.0))
        with pytest.raises(SaliencyError, match="already registered"):
            register_method("test_constant")(_Constant)
    finally:
        saliency_base._REGISTRY.pop("test_constant", None)


def test_model_mode_is_restored_when_a_method_fails() -> None:
    model = _toy().train()
    with pytest.raises(SaliencyError):
        explain(model, torch.randn(1, 1, 16, 16), 0, "integrated_gradients", rule="simpson")
    assert model.training


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gradcam", "gradient", "integrated_gradients", "occlusion", "iba"])
def test_cuda_matches_cpu(method: str, toy_stats: dict[str, LayerStats]) -> None:
    model = _toy()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    params = _fast_params(method, toy_stats, "block3", "block1")
    cpu = explain_raw(model, x, [0, 1], method, **params)
    gpu = explain_raw(model.cuda(), x.cuda(), [0, 1], method, **params)
    assert gpu.device.type == "cuda"
    if method == "iba":  # noise is drawn by a CUDA generator: same seed, different stream
        assert torch.isfinite(gpu).all()
        assert (gpu >= 0).all()
    else:
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
