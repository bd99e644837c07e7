"""ONNX export with in-graph Grad-CAM: signature, dynamic batch, parity with torch and captum, failures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from captum.attr import LayerGradCam
from torch import Tensor

from mimicry.models.toy import LeftRightToyNet, ToyCamNet
from mimicry.registry import ExportError, ExportParityError, check_onnx_parity, export_model, export_onnx
from tests.registry import held_batch, toy_export, toy_model


def _run(onnx_bytes: bytes, x: Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(["logits", "probs", "cam"], {"image": x.numpy()})


def _captum(model: ToyCamNet, x: Tensor) -> np.ndarray:
    gc = LayerGradCam(model, model.cam_layer)
    return np.stack(
        [gc.attribute(x, target=c, relu_attributions=True).detach()[:, 0].numpy() for c in range(3)], axis=1
    )


def test_export_signature_and_card_info() -> None:
    _, _, result = toy_export()
    proto = onnx.load_from_string(result.onnx_bytes)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits", "probs", "cam"]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    info = result.onnx
    assert info.exporter == "dynamo"
    assert info.ir_version == proto.ir_version
    assert info.input_size == (32, 32)
    assert info.num_classes == 3
    assert info.cam_grid == (8, 8)  # two stride-2 convolutions: 32 / 4
    assert [(t.name, t.shape) for t in info.inputs] == [("image", ["batch", 1, 32, 32])]
    assert [(t.name, t.shape) for t in info.outputs] == [
        ("logits", ["batch", 3]),
        ("probs", ["batch", 3]),
        ("cam", ["batch", 3, 8, 8]),
    ]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["mimicry.class_names"]) == ["Normal", "CHF", "pneumonia"]
    assert props["mimicry.cam_layer"] == "block3"
    assert result.cam_layer == "block3"
    assert result.class_names == ("Normal", "CHF", "pneumonia")


def test_parity_report_values() -> None:
    _, x, result = toy_export()
    p = result.parity
    assert p.batch_sizes == [1, 4]
    assert p.held_batch_size == 4
    assert (p.probs_atol, p.logits_atol, p.cam_atol) == (1e-5, 1e-4, 1e-4)
    assert 0.0 <= p.probs_max_abs_diff <= 1e-5
    assert 0.0 <= p.cam_vs_captum_max_abs_diff <= 1e-4
    assert p.onnxruntime_provider == "CPUExecutionProvider"
    np.testing.assert_array_equal(result.reference_input, x.numpy())


@pytest.mark.parametrize("n", [1, 5])
def test_onnx_alone_reproduces_torch_and_captum_at_any_batch_size(n: int) -> None:
    """ONNX Runtime on fresh inputs (batch sizes 1 and 5, neither was the export example) vs torch/captum."""
    model, _, result = toy_export()
    x = held_batch(n, seed=100 + n)
    logits, probs, cam = _run(result.onnx_bytes, x)
    with torch.no_grad():
        ref_logits = model(x)
    assert (logits.shape, probs.shape, cam.shape) == ((n, 3), (n, 3), (n, 3, 8, 8))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs, torch.softmax(ref_logits, 1).numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(cam, _captum(model, x), atol=1e-5, rtol=0)
    assert float(cam.max()) > 0.0  # a non-trivial map was compared


def test_torchscript_exporter_is_supported() -> None:
    model, _, result = toy_export(exporter="torchscript")
    assert result.onnx.exporter == "torchscript"
    assert result.onnx.inputs[0].shape == ["batch", 1, 32, 32]
    logits, _, cam = _run(result.onnx_bytes, held_batch(5, seed=7))
    with torch.no_grad():
        ref_logits, _, ref_cam = model.forward_with_cam(held_batch(5, seed=7))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(cam, ref_cam.numpy(), atol=1e-6, rtol=0)


def test_held_batch_of_one_also_checks_a_batch_of_two() -> None:
    model = LeftRightToyNet()
    result = export_model(model, torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3)))
    assert result.parity.batch_sizes == [1, 2]
    assert result.onnx.cam_grid == (8, 8)


class _ScaledCam(ToyCamNet):
    """Sabotaged: the in-graph CAM is 1.5 × Grad-CAM (still non-negative, right shape)."""

    def forward_with_cam(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, probs, cam = super().forward_with_cam(x)
        return logits, probs, cam * 1.5


class _TemperedProbs(ToyCamNet):
    """Sabotaged: reports softmax(logits / 4) — still a distribution, but not the model's probabilities."""

    def forward_with_cam(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, _, cam = super().forward_with_cam(x)
        return logits, torch.softmax(logits / 4.0, dim=1), cam


def _sabotaged(cls: type[ToyCamNet]) -> ToyCamNet:
    model = cls()
    model.load_state_dict(toy_model().state_dict())
    return model.eval()


def test_sabotaged_cam_raises_export_parity_error() -> None:
    with pytest.raises(ExportParityError, match="captum") as info:
        export_model(_sabotaged(_ScaledCam), held_batch(), exporter="torchscript")
    err = info.value
    assert err.check == "cam_vs_captum"
    assert err.tolerance == 1e-4
    # 1.5·cam − cam = 0.5·cam: the largest difference is half the largest true Grad-CAM value
    assert err.measured == pytest.approx(0.5 * float(_captum(toy_model(), held_batch()).max()), rel=1e-4)
    assert err.measured > 1e-4
    assert err.details["probs"] <= 1e-5  # probabilities were fine


def test_sabotaged_probabilities_raise_export_parity_error() -> None:
    with pytest.raises(ExportParityError) as info:
        export_model(_sabotaged(_TemperedProbs), held_batch(), exporter="torchscript")
    assert info.value.check == "probs"
    model, x = toy_model(), held_batch()
    with torch.no_grad():
        logits = model(x)
    expected = (torch.softmax(logits / 4.0, 1) - torch.softmax(logits, 1)).abs().max().item()
    assert info.value.measured == pytest.approx(expected, rel=1e-4)
    assert info.value.measured > 1e-5


def test_parity_check_refuses_another_models_graph() -> None:
    """A graph exported from different weights must not pass as this model's."""
    _, x, result = toy_export()
    other = toy_model(seed=5)
    with pytest.raises(ExportParityError) as info:
        check_onnx_parity(other, result.onnx_bytes, x)
    assert info.value.check == "probs"


def test_tighter_tolerance_than_float_noise_fails() -> None:
    _, x, result = toy_export()
    model = toy_model()
    with pytest.raises(ExportParityError):
        check_onnx_parity(model, result.onnx_bytes, x * 50.0, probs_atol=0.0, logits_atol=0.0, cam_atol=0.0)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.randn(2, 3, 32, 32), r"\[N>=1, 1, H, W\]"),
        (torch.randn(2, 1, 32, 32, dtype=torch.float64), "float32"),
        (torch.full((2, 1, 32, 32), float("nan")), "non-finite"),
        (torch.randn(0, 1, 32, 32), r"\[N>=1, 1, H, W\]"),
    ],
)
def test_bad_held_batch_is_refused(batch: Tensor, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        export_model(toy_model(), batch)


def test_contract_violation_is_an_export_error() -> None:
    class InplaceRelu(ToyCamNet):
        def __init__(self) -> None:
            super().__init__()
            self.block3[1] = torch.nn.ReLU(inplace=True)

    with pytest.raises(ExportError, match="contract"):
        export_model(InplaceRelu(), held_batch())


def test_export_onnx_argument_checks() -> None:
    with pytest.raises(ExportError, match="opset"):
        export_onnx(toy_model(), held_batch(2), opset=13)
    with pytest.raises(ExportError, match="at least 2"):
        export_onnx(toy_model(), held_batch(1))
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(toy_model(), held_batch(2), exporter="tflite")  # type: ignore[arg-type]


def test_export_restores_training_mode() -> None:
    model = toy_model().train()
    export_model(model, held_batch(2), exporter="torchscript")
    assert model.training
