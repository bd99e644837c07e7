"""DenseNet classifiers (MONAI DenseNet): contract, ReLU modules, Grad-CAM, twin round trip, ONNX."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mimicry.models import DenseNetClassifier, assert_contract, densenet_tiny
from mimicry.models.zoo import architecture_of, build_model
from mimicry.saliency import differentiable_gradcam


def _x(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_live(grad: torch.Tensor | None) -> None:
    """A gradient that reached its parameter: present, finite and not all zero."""
    assert grad is not None
    assert bool(torch.isfinite(grad).all())
    assert float(grad.abs().sum()) > 0.0


def _trained_stats(model: nn.Module, size: int = 32) -> nn.Module:
    """A few train-mode forwards so BatchNorm running statistics move away from their initial values."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(_x(4, size, seed=10 + seed))
    return model.eval()


@pytest.mark.parametrize("size", [32, 64])
def test_tiny_preset_satisfies_the_contract(size: int) -> None:
    assert_contract(build_model("densenet_tiny"), size=size)


def test_densenet121_contract_shape_and_parameter_count() -> None:
    model = build_model("densenet121")
    assert isinstance(model, DenseNetClassifier)
    assert_contract(model, size=64)
    assert model.classifier.in_features == 1024
    assert _n_params(model) == 6_950_659
    model.eval()
    with torch.no_grad():
        logits, probs, cam = model.forward_with_cam(_x(2, 64))
    assert (logits.shape, probs.shape, cam.shape) == ((2, 3), (2, 3), (2, 3, 2, 2))


def test_tiny_shapes_layers_and_parameter_count() -> None:
    model = densenet_tiny().eval()
    assert _n_params(model) == 18_681
    assert model.classifier.in_features == 30  # 8 → +16 → 12 → +16 → 14 → +16 = 30
    names = [n for n, _ in model.backbone.named_children()]
    assert names == [
        "conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2", "transition2",
        "denseblock3", "norm5", "relu5",
    ]  # fmt: skip
    with torch.no_grad():
        a = model.features(_x(3, 64))
        _, _, cam = model.forward_with_cam(_x(3, 64))
    assert a.shape == (3, 30, 4, 4)
    assert cam.shape == (3, 3, 4, 4)
    assert float(a.min()) == 0.0  # rectified: the cam layer ends in relu5
    assert model.cam_layer is model.backbone


def test_every_relu_is_a_module_and_none_is_inplace() -> None:
    model = build_model("densenet_tiny")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    # relu0 + 2 per dense layer (6 layers) + 1 per transition (2) + relu5
    assert len(relus) == 1 + 12 + 2 + 1
    assert all(r.inplace is False for r in relus)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    # MONAI's own default would have been in-place: the constructor must be what changes it
    from monai.networks.nets import DenseNet

    assert any(getattr(m, "inplace", False) for m in DenseNet(2, 1, 3, 8, 8, (2, 2, 2)).modules())


def test_in_graph_cam_equals_captum_layer_gradcam() -> None:
    from captum.attr import LayerGradCam

    model = _trained_stats(densenet_tiny())
    x = _x(3, 64, seed=1)
    with torch.no_grad():
        _, _, cam = model.forward_with_cam(x)
    gc = LayerGradCam(model, model.cam_layer)
    for c in range(3):
        ref = gc.attribute(x, target=c, relu_attributions=True).detach()[:, 0]
        torch.testing.assert_close(cam[:, c], ref, rtol=0, atol=1e-5)
    assert float(cam.max()) > 0.0


def test_differentiable_gradcam_trains_the_first_convolution() -> None:
    model = densenet_tiny().train()
    maps = differentiable_gradcam(model, _x(2, 64), target=0)
    assert maps.shape == (2, 4, 4)
    maps.mean().backward()
    _assert_live(model.get_parameter("backbone.conv0.weight").grad)


@pytest.mark.parametrize(
    ("arch", "kwargs"), [("densenet_tiny", {}), ("densenet_tiny", {"class_names": ["x", "y"]})]
)
def test_build_model_and_safetensors_round_trip_is_exact(tmp_path, arch: str, kwargs: dict) -> None:
    model = _trained_stats(build_model(arch, **kwargs))
    assert architecture_of(model) == "densenet"
    card_kwargs = json.loads(json.dumps(model.arch_kwargs))
    assert card_kwargs["block_config"] == [2, 2, 2]
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    state = load_file(str(path))
    x = _x(3, 32, seed=4)
    with torch.no_grad():
        want = model.forward_with_cam(x)
    for name, kw in (("densenet", card_kwargs), (arch, kwargs)):
        twin = build_model(name, **kw)
        twin.load_state_dict(state, strict=True)
        twin.eval()
        with torch.no_grad():
            got = twin.forward_with_cam(x)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least one positive entry"):
        DenseNetClassifier(block_config=[])
    with pytest.raises(ValueError, match="at least one class"):
        densenet_tiny(class_names=())


@pytest.mark.slow
def test_onnx_export_of_the_tiny_densenet_matches_torch() -> None:
    from mimicry.registry.export import export_model

    model = _trained_stats(densenet_tiny(), size=64)
    result = export_model(model, _x(3, 64, seed=5), probs_atol=1e-5, logits_atol=1e-5, cam_atol=1e-5)
    assert result.parity.batch_sizes == [1, 3]
    assert max(result.parity.probs_max_abs_diff, result.parity.cam_vs_torch_max_abs_diff) <= 1e-5
    assert result.onnx.cam_grid == (4, 4)
    assert result.cam_layer == "backbone"
