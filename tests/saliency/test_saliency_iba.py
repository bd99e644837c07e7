"""IBA, inverse IBA and multi-layer IBA (Schulz et al. 2020; Khakzar et al. 2021) and their statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mimicry.models import LeftRightToyNet, ToyCamNet
from mimicry.saliency import (
    InsufficientSamplesError,
    LayerStats,
    LayerStatsMismatchError,
    SaliencyError,
    bottleneck_capacity,
    estimate_layer_stats,
    explain,
    explain_raw,
    get_method,
    layer_name,
)

FAST = {"steps": 4}


def _stats_images(n: int = 48, size: int = 32, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 1, 1, generator=g) * (0.5 + 0.5 * torch.rand(n, 1, size, size, generator=g))


@pytest.fixture(scope="module")
def setup() -> tuple[LeftRightToyNet, torch.Tensor, dict[str, LayerStats]]:
    model = LeftRightToyNet()
    x = 0.8 + 0.2 * torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    xs = _stats_images()
    stats = {name: estimate_layer_stats(model, name, [xs], n_samples=48) for name in ("block1", "block2")}
    return model, x, stats


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_capacity_is_the_gaussian_kl_of_the_paper() -> None:
    lam = torch.tensor([0.5, 0.0, 0.9])
    r = torch.tensor([2.0, 3.0, -1.0])
    cap = bottleneck_capacity(r, lam, 1.0 - lam)
    # λ = 0.5, r' = 2: μ_z = 1, σ_z² = 0.25 → −½(1 + ln 0.25 − 1 − 0.25) = ½(ln 4 + 0.25)
    expected0 = 0.5 * (math.log(4.0) + 0.25)
    # λ = 0.9, r' = −1: μ_z = −0.9, σ_z² = 0.01 → ½(0.81 + 0.01 − 1 − ln 0.01)
    expected2 = 0.5 * (0.81 + 0.01 - 1.0 - math.log(0.01))
    torch.testing.assert_close(cap, torch.tensor([expected0, 0.0, expected2]))


# ------------------------------------------------------- behaviour of the reference code (Schulz et al.)
#
# Facts taken from the public reference implementation (BioroboticsLab/IBA, PyTorch class ``IBA``), each
# pinned below by a value derived by hand, not by our own output:
# * defaults: beta 10, 10 Adam steps, lr 1, a batch of 10 noisy copies, alpha initialised to 5, smoothing
#   sigma 1 with a (2·round(2σ) + 1)² Gaussian kernel, std floored at min_std 0.01, an element is active
#   when it is non-zero in more than 1 % of the estimation samples (inactive: no noise, no capacity);
# * the estimator: running mean and the n − 1 standard deviation of the layer output;
# * the map is the capacity computed in the *last forward pass* of the optimisation (before the last Adam
#   step), summed over channels, in bits, times (h·w)/(H·W), resized with scikit-image's order-1 resize.


def _hand_map(
    model: LeftRightToyNet, x: torch.Tensor, stats_x: torch.Tensor, alpha: torch.Tensor | float
) -> np.ndarray:
    """The reference's saliency map for a given α, from the definitions (float64, NumPy / scikit-image)."""
    from skimage.transform import resize

    with torch.no_grad():
        r = model.features(x).double().numpy()
        feats = model.features(stats_x).double().numpy()
    mean, std = feats.mean(axis=0), np.maximum(feats.std(axis=0, ddof=1), 0.01)
    active = (feats != 0).mean(axis=0) > 0.01
    lam = 1.0 / (1.0 + np.exp(-np.asarray(alpha, dtype=np.float64)))
    mu_z, var_z = lam * (r - mean) / std, (1.0 - lam) ** 2
    cap = -0.5 * (1.0 + np.log(var_z) - mu_z**2 - var_z) * active  # nats
    (h, w), (hh, ww) = r.shape[-2:], x.shape[-2:]
    bits = cap.sum(axis=1) / np.log(2.0) * (h * w) / (hh * ww)
    return np.stack([resize(b, (hh, ww), order=1, preserve_range=True) for b in bits])


def test_defaults_are_those_of_the_reference_code() -> None:
    common = {
        "steps": 10, "lr": 1.0, "copies": 10, "init_alpha": 5.0, "sigma": 1.0, "min_std": 0.01,
        "active_threshold": 0.01, "readout": "last_forward",
    }  # fmt: skip
    for method, beta in (("iba", 10.0), ("inverse_iba", 30.0), ("multilayer_iba", 10.0)):
        defaults = dict(get_method(method).defaults)
        assert {k: defaults[k] for k in common} == common
        assert defaults["beta"] == beta  # inverse IBA: Khakzar et al.'s beta = 30


def test_smoothing_kernel_is_the_five_by_five_gaussian_of_sigma_1() -> None:
    from mimicry.saliency.iba import _gaussian_kernel

    k = _gaussian_kernel(1.0, 2, torch.device("cpu"), torch.float64)
    assert tuple(k.shape) == (2, 1, 5, 5)  # 2·round(2σ) + 1 = 5
    row = 1 + 2 * math.exp(-0.5) + 2 * math.exp(-2.0)  # Σ exp(−d²/2), d = −2…2
    assert float(k[0, 0, 2, 2]) == pytest.approx(1 / row**2, rel=1e-12)  # 0.16210…
    assert float(k[0, 0, 0, 0]) == pytest.approx(math.exp(-4.0) / row**2, rel=1e-12)
    assert float(k.sum()) == pytest.approx(2.0)


def test_one_step_map_is_the_capacity_of_the_first_forward_pass(setup) -> None:
    """steps = 1: the only forward pass ran with α = 5 everywhere (a constant mask stays constant under the
    smoothing), so the reference's map is the capacity at λ = sigmoid(5), whatever the Adam step did."""
    model, x, _ = setup
    stats_x = _stats_images()
    stats = estimate_layer_stats(model, "block2", [stats_x], n_samples=48)
    raw = explain_raw(model, x, [0, 1, 0], "iba", stats=stats, steps=1)
    expected = _hand_map(model, x, stats_x, 5.0)
    np.testing.assert_allclose(raw[:, 0].double().numpy(), expected, rtol=2e-4, atol=1e-6)


def test_capacity_is_read_before_the_last_adam_step_unless_asked_otherwise(setup) -> None:
    """Without smoothing and with a dominant information term, Adam's first step moves every active α by
    exactly −lr (its first update is lr·g/|g|, and ∂capacity/∂α > 0): α = 5 → 4. Inactive elements get no
    gradient and keep α = 5 (their capacity is 0 either way)."""
    model, x, _ = setup
    stats_x = _stats_images()
    stats = estimate_layer_stats(model, "block2", [stats_x], n_samples=48)
    kw = {"stats": stats, "sigma": 0, "beta": 1e6}
    at5, at4 = _hand_map(model, x, stats_x, 5.0), _hand_map(model, x, stats_x, 4.0)
    assert not np.allclose(at5, at4, rtol=1e-2)

    def run(**extra: object) -> np.ndarray:
        return explain_raw(model, x, [0, 1, 0], "iba", **kw, **extra)[:, 0].double().numpy()

    np.testing.assert_allclose(run(steps=1), at5, rtol=2e-4, atol=1e-6)  # reference: last forward pass
    np.testing.assert_allclose(run(steps=2), at4, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(run(steps=1, readout="optimised"), at4, rtol=2e-4, atol=1e-6)
    # Inverse IBA shares the bottleneck (Khakzar et al. Eq. 4: the capacity term is IBA's; only the
    # cross-entropy sees Z_inv), so it reads the capacity the same way.
    inv = explain_raw(model, x, [0, 1, 0], "inverse_iba", steps=1, **kw)[:, 0].double().numpy()
    np.testing.assert_allclose(inv, at5, rtol=2e-4, atol=1e-6)
    with pytest.raises(SaliencyError, match="readout"):
        run(steps=1, readout="after")


def test_inactive_elements_get_no_capacity(setup) -> None:
    """block2 of the toy net zeroes one half of its channels (a dead ReLU): those elements are inactive."""
    model, x, stats = setup
    assert stats["block2"].nonzero is not None
    dead = stats["block2"].nonzero <= 0.01
    assert dead.any()
    assert not dead.all()
    masked = explain_raw(model, x, [0, 1, 0], "iba", stats=stats["block2"], steps=0)
    everything = explain_raw(
        model, x, [0, 1, 0], "iba", stats=stats["block2"], steps=0, active_threshold=-1.0
    )
    assert float(masked.sum()) < float(everything.sum())


def test_iba_map_is_non_negative_and_shrinks_with_beta(setup) -> None:
    model, x, stats = setup
    totals = []
    for beta in (1.0, 10.0, 100.0):
        raw = explain_raw(model, x, [0, 1, 0], "iba", stats=stats["block2"], beta=beta, **FAST)
        assert bool((raw >= 0).all())
        assert bool(torch.isfinite(raw).all())
        totals.append(raw.sum(dim=(1, 2, 3)))
    assert bool((totals[0] > totals[1]).all())
    assert bool((totals[1] > totals[2]).all())


def test_iba_is_deterministic_for_a_seed_and_independent_of_batching(setup) -> None:
    model, x, stats = setup
    a = explain_raw(model, x, [0, 1, 1], "iba", stats=stats["block2"], seed=5, batch_size=10, **FAST)
    b = explain_raw(model, x, [0, 1, 1], "iba", stats=stats["block2"], seed=5, batch_size=30, **FAST)
    c = explain_raw(model, x, [0, 1, 1], "iba", stats=stats["block2"], seed=6, batch_size=30, **FAST)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(a, c)


def test_bottleneck_hook_is_removed_after_the_call(setup) -> None:
    model, x, stats = setup
    model.train()
    explain_raw(model, x[:1], 0, "iba", stats=stats["block2"], **FAST)
    assert _no_hooks(model)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_bottleneck_hook_is_removed_after_an_exception(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, stats = setup

    def _boom(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("head failed")

    model.train()
    monkeypatch.setattr(model.classifier, "forward", _boom)
    with pytest.raises(RuntimeError, match="head failed"):
        explain_raw(model, x[:1], 0, "iba", stats=stats["block2"], **FAST)
    monkeypatch.undo()
    assert _no_hooks(model)
    assert model.training
    model.eval()


def test_statistics_that_do_not_fit_the_layer_are_refused(setup) -> None:
    model, x, _ = setup
    wrong = LayerStats("block2", np.zeros((3, 16, 16)), np.ones((3, 16, 16)), 10)
    with pytest.raises(LayerStatsMismatchError, match="does not match"):
        explain_raw(model, x[:1], 0, "iba", stats=wrong, **FAST)
    assert _no_hooks(model)
    with pytest.raises(LayerStatsMismatchError, match="no submodule"):
        explain_raw(model, x[:1], 0, "iba", stats=LayerStats("block9", wrong.mean, wrong.std, 10))


def test_inverse_iba_highlights_the_predictive_half(setup) -> None:
    model, x, stats = setup
    maps = explain(model, x[:2], [0, 1], "inverse_iba", stats=stats["block2"])
    left = maps[..., :16].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert left[0] > 0.75
    assert left[1] < 0.25
    iba = explain(model, x[:2], [0, 1], "iba", stats=stats["block2"])
    assert not np.allclose(maps, iba)


def test_multilayer_iba_is_the_intersection_of_thresholded_normalised_maps(setup) -> None:
    model, x, stats = setup
    params = {"steps": 4, "beta": 10.0, "seed": 2}
    threshold = 0.03
    per_layer = [
        explain_raw(model, x, [0, 1, 0], "iba", stats=stats[k], **params) for k in ("block1", "block2")
    ]
    expected = torch.ones_like(per_layer[0], dtype=torch.bool)
    for m in per_layer:
        expected &= (m / m.flatten(1).norm(dim=1)[:, None, None, None]) > threshold
    raw = explain_raw(
        model,
        x,
        [0, 1, 0],
        "multilayer_iba",
        stats=[stats["block1"], stats["block2"]],
        threshold=threshold,
        **params,
    )
    assert set(raw.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(raw, expected.float())
    assert 0 < int(raw.sum()) < raw.numel()  # a real intersection: neither empty nor everything
    maps = explain(
        model,
        x,
        [0, 1, 0],
        "multilayer_iba",
        stats=[stats["block1"], stats["block2"]],
        threshold=threshold,
        **params,
    )
    np.testing.assert_array_equal(maps, raw[:, 0].numpy())  # binary maps are not rescaled


def test_multilayer_iba_needs_several_layers(setup) -> None:
    model, x, stats = setup
    with pytest.raises(SaliencyError, match="≥ 2"):
        explain(model, x[:1], 0, "multilayer_iba", stats=stats["block2"])
    with pytest.raises(SaliencyError, match="≥ 2"):
        explain(model, x[:1], 0, "multilayer_iba", stats=[stats["block2"]])


# ------------------------------------------------------------------------------------- statistics


def test_estimate_layer_stats_matches_numpy_over_the_first_n_samples() -> None:
    torch.manual_seed(0)
    model = ToyCamNet().train()
    xs = torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    batches = [xs[:7], (xs[7:17], torch.zeros(10)), {"image": xs[17:37]}, xs[37:]]
    stats = estimate_layer_stats(model, model.block2, batches, n_samples=30)
    assert stats.layer == "block2"
    assert stats.n_samples == 30
    assert stats.shape == (8, 8, 8)
    with torch.no_grad():
        feats = model.eval().block2(model.block1(xs[:30])).double().numpy()
    np.testing.assert_allclose(stats.mean, feats.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, feats.std(axis=0, ddof=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats.nonzero, (feats != 0).mean(axis=0).astype(np.float32))
    model.train()
    estimate_layer_stats(model, None, [xs], n_samples=10)
    assert model.training
    assert _no_hooks(model)


def test_estimate_layer_stats_refuses_too_few_samples() -> None:
    model = ToyCamNet()
    with pytest.raises(InsufficientSamplesError, match="only 5"):
        estimate_layer_stats(model, None, [torch.randn(5, 1, 16, 16)])  # the paper's 1000 by default
    assert _no_hooks(model)


def test_layer_names_resolve_from_names_modules_and_the_cam_layer() -> None:
    model = ToyCamNet()
    assert layer_name(model, None) == "block3"
    assert layer_name(model, model.block1) == "block1"
    assert layer_name(model, "block2.0") == "block2.0"
    with pytest.raises(LayerStatsMismatchError):
        layer_name(model, "head")


def test_layer_stats_round_trip_through_json_and_arrays() -> None:
    g = np.random.default_rng(0)
    stats = LayerStats(
        "features.denseblock3", g.random((4, 3, 2)), g.random((4, 3, 2)), 1000, g.random((4, 3, 2))
    )
    again = LayerStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(again.nonzero, stats.nonzero)
    legacy = {k: v for k, v in stats.to_dict().items() if k != "nonzero"}  # written before it existed
    assert LayerStats.from_dict(legacy).nonzero is None
    assert again.layer == stats.layer
    assert again.n_samples == 1000
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
    arrays, meta = stats.to_arrays()
    assert all(isinstance(v, str) for v in meta.values())
    again = LayerStats.from_arrays(arrays, meta)
    np.testing.assert_array_equal(again.std, stats.std)
    np.testing.assert_array_equal(again.nonzero, stats.nonzero)
    with pytest.raises(LayerStatsMismatchError):
        LayerStats("x", np.zeros((2, 2)), np.zeros((2, 2)), 3)
    with pytest.raises(LayerStatsMismatchError):
        LayerStats("x", np.zeros((1, 2, 2)), -np.ones((1, 2, 2)), 3)
