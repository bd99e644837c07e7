"""UNet classifiers (EfficientNet encoder): contract, shapes, Grad-CAM, double backward, twin, ONNX."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mimicry.models import (
    EgdUNetClassifier,
    InputSizeError,
    UNetClassifier,
    assert_contract,
    unet_egd_tiny,
    unet_tiny,
)
from mimicry.models.zoo import ArchitectureError, architecture_of, build_model
from mimicry.saliency import differentiable_gradcam

TINY = ["unet_tiny", "unet_egd_tiny"]


def _x(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_live(grad: torch.Tensor | None) -> None:
    """A gradient that reached its parameter: present, finite and not all zero."""
    assert grad is not None
    assert bool(torch.isfinite(grad).all())
    assert float(grad.abs().sum()) > 0.0


def _calibrated(model: UNetClassifier, size: int = 32) -> UNetClassifier:
    """Set every BatchNorm's running statistics to those of one batch, then switch to eval mode.

    A freshly initialised EfficientNet (MONAI's TF-style init, BN momentum 0.01) in eval mode shrinks its
    activations ~4× per stage (the bottleneck is ~1e-5), which would make the maps tested here all zero.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, the running stats are that batch's
    model.train()
    with torch.no_grad():
        model.forward_multitask(_x(4, size, seed=9))  # encoder and decoder statistics
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


@pytest.mark.parametrize("arch", TINY)
@pytest.mark.parametrize("size", [32, 64])
def test_tiny_presets_satisfy_the_contract(arch: str, size: int) -> None:
    model = build_model(arch)
    assert_contract(model, size=size)
    assert isinstance(model, EgdUNetClassifier if "egd" in arch else UNetClassifier)


@pytest.mark.parametrize(("arch", "cls"), [("unet", UNetClassifier), ("unet_egd", EgdUNetClassifier)])
def test_full_size_models_contract_shapes_and_parameter_counts(arch: str, cls: type) -> None:
    model = build_model(arch)
    assert type(model) is cls
    assert_contract(model, size=64)
    assert model.encoder.channels == (16, 24, 40, 112, 320)  # EfficientNet-b0 stages
    assert model.size_divisor == 32
    assert (_n_params(model.encoder), _n_params(model.decoder) + _n_params(model.head)) == (
        3_594_812,
        1_771_729,
    )
    assert _n_params(model) == 5_367_504
    model.eval()
    with torch.no_grad():
        logits, probs, cam = model.forward_with_cam(_x(2, 64))
    assert (logits.shape, probs.shape, cam.shape) == ((2, 3), (2, 3), (2, 3, 2, 2))


def test_tiny_shapes_and_parameter_counts() -> None:
    model = unet_tiny().eval()
    assert model.encoder.channels == (8, 16, 24)
    assert model.size_divisor == 8
    assert (_n_params(model.encoder), _n_params(model.decoder) + _n_params(model.head)) == (6_042, 9_853)
    assert _n_params(model) == 15_970
    x = _x(3, 32)
    with torch.no_grad():
        feats = model.encode(x)
        assert [tuple(f.shape) for f in feats] == [(3, 8, 16, 16), (3, 16, 8, 8), (3, 24, 4, 4)]
        assert model.decode(feats).shape == (3, 1, 32, 32)
        logits, out = model.forward_multitask(x)
        assert logits.shape == (3, 3)
        assert out.shape == (3, 1, 32, 32)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
        _, _, cam = model.forward_with_cam(x)
        assert cam.shape == (3, 3, 4, 4)
        assert model.features(x).shape == (3, 24, 4, 4)
    # non-square, non-32 sizes that are multiples of 8 decode at full resolution
    with torch.no_grad():
        assert model.forward_multitask(torch.randn(1, 1, 40, 24))[1].shape == (1, 1, 40, 24)


def test_egd_heatmap_is_a_probability_map_of_the_decoder_logits() -> None:
    model = unet_egd_tiny().eval()
    x = _x(2, 32)
    with torch.no_grad():
        _, heatmap_logits = model.forward_multitask(x)
        heatmap = model.heatmap(x)
    assert heatmap.shape == (2, 1, 32, 32)
    torch.testing.assert_close(heatmap, torch.sigmoid(heatmap_logits))
    assert float(heatmap.min()) > 0.0
    assert float(heatmap.max()) < 1.0


def test_forward_multitask_refuses_sizes_the_decoder_cannot_restore() -> None:
    model = unet_tiny()
    with pytest.raises(InputSizeError, match="not a multiple of 8"):
        model.forward_multitask(_x(1, 36))
    with pytest.raises(ValueError, match="needs 3 feature maps"):
        model.decode(model.encode(_x(1, 32))[:2])


def test_decoder_does_not_run_when_classifying() -> None:
    model = unet_tiny().eval()
    calls: list[str] = []
    model.decoder.register_forward_hook(lambda *_: calls.append("decoder"))
    model.head.register_forward_hook(lambda *_: calls.append("head"))
    with torch.no_grad():
        model(_x())
        model.forward_with_cam(_x())
        model.features(_x())
        assert calls == []
        model.forward_multitask(_x())
    assert calls == ["decoder", "head"]


def test_no_inplace_modules_and_plain_swish_everywhere() -> None:
    from monai.networks.blocks.activation import MemoryEfficientSwish, Swish

    model = unet_tiny()
    modules = list(model.modules())
    assert not any(getattr(m, "inplace", False) for m in modules)
    assert not any(isinstance(m, MemoryEfficientSwish) for m in modules)
    # stem + 3 blocks, and the decoder's ReLUs (two per level) are modules with inplace=False
    assert sum(isinstance(m, Swish) for m in modules) == 4
    relus = [m for m in modules if isinstance(m, nn.ReLU)]
    assert len(relus) == 6
    assert all(r.inplace is False for r in relus)


@pytest.mark.parametrize("arch", TINY)
def test_in_graph_cam_equals_captum_layer_gradcam(arch: str) -> None:
    from captum.attr import LayerGradCam

    model = _calibrated(build_model(arch))
    x = _x(3, 32, seed=1)
    with torch.no_grad():
        _, _, cam = model.forward_with_cam(x)
    gc = LayerGradCam(model, model.cam_layer)
    for c in range(3):
        ref = gc.attribute(x, target=c, relu_attributions=True).detach()[:, 0]
        torch.testing.assert_close(cam[:, c], ref, rtol=0, atol=1e-5)
    assert float(cam.max()) > 0.0


def test_differentiable_gradcam_trains_the_encoder() -> None:
    model = unet_tiny().train()
    maps = differentiable_gradcam(model, _x(2, 32), target=1)
    assert maps.shape == (2, 4, 4)
    maps.mean().backward()
    for name in (
        "encoder.stem.conv.weight",
        "encoder.stages.0.0._depthwise_conv.weight",
        "classifier.weight",
    ):
        _assert_live(model.get_parameter(name).grad)
    assert model.get_parameter("head.0.weight").grad is None  # the decoder is not in the classifier graph


def test_double_backward_through_swish_gradmask_style() -> None:
    """GradMask (Viviano et al.): a loss on the input gradient (create_graph=True) reaches the encoder."""
    model = unet_tiny().train()
    x = _x(2, 32).requires_grad_(True)
    logits = model(x)
    (g,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).abs().sum(), x, create_graph=True)
    outside = torch.ones_like(x)
    outside[..., 8:24, 8:24] = 0.0
    (g.abs() * outside).mean().backward()
    _assert_live(model.get_parameter("encoder.stages.2.0._expand_conv.weight").grad)


def test_second_derivatives_are_exact() -> None:
    """torch.autograd.gradgradcheck (float64): the second-order graph through Swish/SE/BN is correct."""
    model = unet_tiny().double().eval()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: model(t)[:, 1] - model(t)[:, 0], (x,), fast_mode=True)


def test_encoder_preactivation_is_the_linear_bottleneck() -> None:
    model = _calibrated(unet_tiny())
    x = _x(2, 32)
    captured: list[torch.Tensor] = []
    bn_out: list[torch.Tensor] = []
    model.cam_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    last = model.cam_layer[-1]  # stride-2 MBConv block: no identity skip
    last._bn2.register_forward_hook(lambda _m, _i, out: bn_out.append(out))
    with torch.no_grad():
        pre = model.encoder_preactivation(x)
        feats = model.features(x)
    assert pre.shape == (2, 24, 4, 4)
    torch.testing.assert_close(pre, feats, rtol=0, atol=0)
    torch.testing.assert_close(captured[0], pre, rtol=0, atol=0)
    # the tensor is BN(project_conv(·)) itself: nothing (no ReLU, no Swish) is applied after the last BN
    torch.testing.assert_close(bn_out[0], pre, rtol=0, atol=0)
    assert float(pre.min()) < 0.0 < float(pre.max())


def test_actdiff_penalty_is_differentiable_and_zero_for_identical_inputs() -> None:
    model = unet_tiny().train()
    x = _x(2, 32)
    x_masked = x.clone()
    x_masked[..., :8] = x_masked[..., :8].flatten(-2)[..., torch.randperm(32 * 8)].reshape(2, 1, 32, 8)
    model.eval()
    with torch.no_grad():
        assert float((model.encoder_preactivation(x) - model.encoder_preactivation(x.clone())).norm()) == 0.0
    penalty = (
        (model.encoder_preactivation(x_masked) - model.encoder_preactivation(x)).pow(2).sum(1).sqrt().mean()
    )
    assert float(penalty.detach()) > 0.0
    penalty.backward()
    assert float(model.get_parameter("encoder.stem.conv.weight").grad.abs().sum()) > 0.0


@pytest.mark.parametrize(
    ("arch", "kwargs"), [("unet_tiny", {}), ("unet_egd_tiny", {"class_names": ["a", "b"]})]
)
def test_build_model_and_safetensors_round_trip_is_exact(tmp_path, arch: str, kwargs: dict) -> None:
    model = _calibrated(build_model(arch, **kwargs))
    # the card records the class's registered name and the resolved kwargs; both routes rebuild the twin
    assert architecture_of(model) == ("unet_egd" if "egd" in arch else "unet")
    card_kwargs = json.loads(json.dumps(model.arch_kwargs))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    state = load_file(str(path))
    x = _x(3, 32, seed=4)
    with torch.no_grad():
        want = (*model.forward_with_cam(x), *model.forward_multitask(x))
    for name, kw in ((architecture_of(model), card_kwargs), (arch, kwargs)):
        twin = build_model(name, **kw)
        twin.load_state_dict(state, strict=True)
        twin.eval()
        with torch.no_grad():
            got = (*twin.forward_with_cam(x), *twin.forward_multitask(x))
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    assert model.class_names == tuple(kwargs.get("class_names", ("Normal", "CHF", "pneumonia")))


def test_arch_kwargs_and_argument_errors() -> None:
    model = unet_tiny()
    assert model.arch_kwargs == {
        "encoder": "efficientnet-tiny",
        "decoder_channels": [16, 8, 8],
        "class_names": ["Normal", "CHF", "pneumonia"],
        "drop_connect_rate": None,
        "bn_momentum": 0.1,
    }
    rates = [b.drop_connect_rate for b in model.encoder.modules() if hasattr(b, "_project_conv")]
    assert rates == pytest.approx([0.0, 0.2 / 3, 0.4 / 3])
    custom = UNetClassifier(encoder="efficientnet-tiny", decoder_channels=[4, 4, 4], drop_connect_rate=0.0)
    assert [b.drop_connect_rate for b in custom.encoder.modules() if hasattr(b, "_project_conv")] == [0.0] * 3
    assert custom.head[0].in_channels == 4
    with pytest.raises(ValueError, match="unknown encoder 'resnet18'"):
        UNetClassifier(encoder="resnet18")
    with pytest.raises(ValueError, match="needs 3 positive entries"):
        UNetClassifier(encoder="efficientnet-tiny", decoder_channels=[8, 8])
    with pytest.raises(ValueError, match="at least one class"):
        unet_tiny(class_names=[])
    with pytest.raises(ArchitectureError, match="rejected its arguments"):
        build_model("unet_tiny", encoder="efficientnet-b0")


@pytest.mark.slow
def test_onnx_export_of_the_tiny_unet_matches_torch_and_holds_only_the_classifier() -> None:
    import onnx

    from mimicry.registry.export import export_model

    model = _calibrated(unet_tiny())
    result = export_model(model, _x(3, 32, seed=5), probs_atol=1e-5, logits_atol=1e-5, cam_atol=1e-5)
    assert result.parity.batch_sizes == [1, 3]  # batch 1 and 3 through one graph exported at batch 3
    assert result.parity.cam_vs_captum_max_abs_diff <= 1e-5
    assert result.onnx.cam_grid == (4, 4)
    assert result.cam_layer == "encoder.stages.2"
    graph = onnx.load_from_string(result.onnx_bytes).graph
    ops = [n.op_type for n in graph.node]
    # the decoder's nearest-neighbour upsampling never appears; every encoder conv + the in-graph cam conv do
    assert "Resize" not in ops
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.encoder.modules())
    assert ops.count("Conv") == n_convs + 1


def test_encoder_batchnorm_tracks_running_statistics_at_torch_default_momentum() -> None:
    # MONAI's TF-style momentum (0.01) leaves eval-mode statistics far behind after a short training run.
    from mimicry.models.zoo import build_model

    model = build_model("unet_tiny")
    momenta = {m.momentum for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}
    slow = build_model("unet", encoder="efficientnet-tiny", bn_momentum=0.01)
    assert {m.momentum for m in slow.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}
    assert slow.arch_kwargs["bn_momentum"] == 0.01
