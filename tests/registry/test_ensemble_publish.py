"""An Ensemble exports and publishes like a single model: its Grad-CAM is the mean of its members'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from captum.attr import LayerGradCam

from mimicry.models.ensemble import build_ensemble
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import ExportError, Registry, export_model
from mimicry.registry.export import cam_layer_name

SIZE = 32


def _ensemble(n: int = 3):
    torch.manual_seed(0)
    ens = build_ensemble("unet_tiny", n)
    # Estimate BatchNorm running statistics so the untrained members are not silent in eval mode.
    ens.train()
    with torch.no_grad():
        for _ in range(3):
            ens(torch.randn(8, 1, SIZE, SIZE))
    return ens.eval()


def test_ensemble_cam_layer_name_is_a_member_pattern() -> None:
    ens = _ensemble(2)
    member = cam_layer_name(ens.submodels[0])
    assert cam_layer_name(ens) == f"submodels.*.{member}"


def test_ensemble_publishes_and_onnx_cam_is_mean_of_member_captum_cams(tmp_path: Path) -> None:
    ens = _ensemble(3)
    x = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    reg = Registry(tmp_path / "registry")
    card = reg.publish(
        ens,
        name="cxr-ens",
        held_batch=x,
        preprocessing=PreprocessSpec(size=SIZE),
        architecture="ensemble",
        arch_kwargs=ens.arch_kwargs,
    )
    assert card.version == 1
    sess = ort.InferenceSession(str(reg.load_onnx_path("cxr-ens")), providers=["CPUExecutionProvider"])
    _, probs, cam = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        member_probs = torch.stack([torch.softmax(m(x), 1) for m in ens.submodels]).mean(0)
    np.testing.assert_allclose(probs, member_probs.numpy(), atol=1e-5)
    expected = np.zeros_like(cam)
    for m in ens.submodels:
        gc = LayerGradCam(m, m.cam_layer)
        for c in range(3):
            expected[:, c] += gc.attribute(x, target=c, relu_attributions=True).detach()[:, 0].numpy() / 3
    np.testing.assert_allclose(cam, expected, atol=1e-4)
    twin = reg.load_twin("cxr-ens")
    with torch.no_grad():
        np.testing.assert_allclose(twin.member_probs(x).numpy(), ens.member_probs(x).numpy(), atol=1e-6)


def test_sabotaged_ensemble_member_is_refused() -> None:
    ens = _ensemble(2)
    # A member whose head does not match its feature map breaks the contract: the export must refuse it.
    ens.submodels[1].classifier = torch.nn.Linear(ens.submodels[1].classifier.in_features, 4)
    with pytest.raises(ExportError):
        export_model(ens, torch.randn(2, 1, SIZE, SIZE), exporter="torchscript")
