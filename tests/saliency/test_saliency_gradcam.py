"""Grad-CAM three ways — captum LayerGradCam, the in-graph forward op, the differentiable version — agree,
and the differentiable one trains the model."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from mimicry.models import ToyCamNet, cam_from_features
from mimicry.saliency import differentiable_gradcam, explain_raw, upsample


def _model(seed: int) -> ToyCamNet:
    torch.manual_seed(seed)
    model = ToyCamNet(width=6).eval()
    with torch.no_grad():  # non-trivial maps for every class: live features, a positive weight per class
        model.block3[0].bias.add_(0.5)
        model.classifier.weight.mul_(4.0).add_(1.0)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_in_graph_captum_and_differentiable_gradcam_are_equal(seed: int, target: int) -> None:
    model = _model(seed)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(10 + seed))
    t = torch.full((4,), target)
    captum_cam = (
        LayerGradCam(model, model.cam_layer).attribute(x, target=t, relu_attributions=True)[:, 0].detach()
    )
    with torch.no_grad():
        _, _, cams = model.forward_with_cam(x)
    in_graph = cams[:, target]
    diff = differentiable_gradcam(model, x, t).detach()
    assert captum_cam.shape == in_graph.shape == diff.shape == (4, 8, 8)
    assert float(captum_cam.max()) > 1e-3  # a non-trivial map
    torch.testing.assert_close(in_graph, captum_cam, rtol=0, atol=1e-5)
    torch.testing.assert_close(diff, captum_cam, rtol=0, atol=1e-5)
    torch.testing.assert_close(diff, in_graph, rtol=0, atol=1e-5)


def test_per_sample_targets_and_upsampled_variants_agree() -> None:
    model = _model(3)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    targets = [2, 0, 1]
    captum_raw = explain_raw(model, x, targets, "gradcam")
    in_graph_raw = explain_raw(model, x, targets, "gradcam", variant="in_graph")
    torch.testing.assert_close(in_graph_raw, captum_raw, rtol=0, atol=1e-5)
    maps = differentiable_gradcam(model, x, targets).detach()
    torch.testing.assert_close(upsample(maps, (32, 32))[:, None], captum_raw, rtol=0, atol=1e-5)
    reference = LayerAttribution.interpolate(maps[:, None], (32, 32), "bilinear")
    torch.testing.assert_close(upsample(maps, (32, 32)), reference[:, 0], rtol=0, atol=0)


def test_differentiable_gradcam_carries_gradient_to_every_weight() -> None:
    """The map's gradient w.r.t. the weights equals that of the analytic in-graph CAM (which depends on the
    head weight W only through ∂score/∂A = W/(h·w): without create_graph it would get no gradient)."""
    model = _model(4).train()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([1, 2])

    maps = differentiable_gradcam(model, x, t)
    assert maps.requires_grad
    grads = torch.autograd.grad(maps.pow(2).sum(), list(model.parameters()), allow_unused=True)

    a = model.features(x)
    reference = cam_from_features(a, model.classifier.weight)[torch.arange(2), t]
    ref_grads = torch.autograd.grad(reference.pow(2).sum(), list(model.parameters()), allow_unused=True)

    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads, strict=True):
        if name == "classifier.bias":  # the bias does not enter Grad-CAM
            assert g is None or float(g.abs().max()) == 0.0
            continue
        assert g is not None, name
        assert float(g.abs().max()) > 0.0, name
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert model.training  # differentiable_gradcam leaves the caller's mode alone


def test_without_create_graph_the_head_weight_gets_no_gradient() -> None:
    model = _model(5)
    x = torch.randn(1, 1, 32, 32)
    maps = differentiable_gradcam(model, x, 0, create_graph=False)
    (g,) = torch.autograd.grad(maps.sum(), [model.classifier.weight], allow_unused=True)
    assert g is None


def test_return_logits_and_no_hook_left_behind() -> None:
    model = _model(6)
    x = torch.randn(2, 1, 32, 32)
    maps, logits = differentiable_gradcam(model, x, None, return_logits=True)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(maps, differentiable_gradcam(model, x, logits.argmax(1)))
    assert not model.cam_layer._forward_hooks


def test_differentiable_gradcam_on_a_frozen_model_and_plain_input() -> None:
    model = _model(7)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 1, 32, 32)
    maps = differentiable_gradcam(model, x, 1, create_graph=False)
    with torch.no_grad():
        expected = model.forward_with_cam(x)[2][:, 1]
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5)


def test_ensemble_gradcam_is_the_mean_of_member_maps() -> None:
    # Watson et al. (WACV 2023): an ensemble's Grad-CAM is the mean of its sub-models' maps. Layer methods
    # therefore run per member (an Ensemble has no single cam_layer) and must equal the in-graph mean.
    from mimicry.models.ensemble import Ensemble
    from mimicry.models.toy import ToyCamNet

    torch.manual_seed(0)
    ens = Ensemble([ToyCamNet(width=4), ToyCamNet(width=4), ToyCamNet(width=4)]).eval()
    x = torch.randn(3, 1, 32, 32)
    target = torch.tensor([0, 1, 2])
    raw = explain_raw(ens, x, target, "gradcam")
    members = torch.stack([explain_raw(m, x, target, "gradcam") for m in ens.submodels]).mean(0)
    torch.testing.assert_close(raw, members, atol=1e-6, rtol=0)
    in_graph = explain_raw(ens, x, target, "gradcam", variant="in_graph")
    torch.testing.assert_close(raw, in_graph, atol=1e-5, rtol=0)
    ggc = explain_raw(ens, x, target, "guided_gradcam")
    ggc_members = torch.stack([explain_raw(m, x, target, "guided_gradcam") for m in ens.submodels]).mean(0)
    torch.testing.assert_close(ggc, ggc_members, atol=1e-6, rtol=0)
