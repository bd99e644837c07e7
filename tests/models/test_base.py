"""The CamClassifier contract: in-graph Grad-CAM values and the assert_contract checker."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimicry.models import (
    CamClassifier,
    LeftRightToyNet,
    ModelContractError,
    ToyCamNet,
    assert_contract,
    cam_from_features,
)


def test_toy_models_satisfy_the_contract() -> None:
    assert_contract(ToyCamNet())
    assert_contract(LeftRightToyNet(), size=32)


def test_left_right_toy_forward_with_cam_exact_values() -> None:
    """Constant image of ones, 4×4: A_0 = [[1, 0], [1, 0]], A_1 = [[0, 1], [0, 1]] (h = w = 2)."""
    model = LeftRightToyNet(scale=4.0, bias2=3.0)
    x = torch.ones(1, 1, 4, 4)
    a = model.features(x)
    assert torch.equal(a[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(a[0, 1], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    logits, probs, cam = model.forward_with_cam(x)
    # logit_c = 4 · mean(A_c) = 2 for c = 0, 1; logit_2 = bias 3
    torch.testing.assert_close(logits, torch.tensor([[2.0, 2.0, 3.0]]))
    e = torch.exp(torch.tensor([2.0, 2.0, 3.0]))
    torch.testing.assert_close(probs, (e / e.sum())[None])
    # cam_c = relu(Σ_k W_ck A_k / (h·w)) = 4 · A_c / 4 = A_c; class 2 has zero weights → zero map
    torch.testing.assert_close(cam[0, 0], a[0, 0])
    torch.testing.assert_close(cam[0, 1], a[0, 1])
    assert torch.equal(cam[0, 2], torch.zeros(2, 2))


def test_cam_from_features_is_relu_of_weighted_sum() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 5, 3, 4, generator=g)
    w = torch.randn(3, 5, generator=g)
    expected = torch.relu(torch.einsum("kc,nchw->nkhw", w, a) / 12.0)
    torch.testing.assert_close(cam_from_features(a, w), expected)
    assert bool((cam_from_features(a, w) == 0).any())  # the relu is active somewhere in this draw


def test_assert_contract_refuses_inplace_relu() -> None:
    model = ToyCamNet()
    model.block2[1] = nn.ReLU(inplace=True)
    with pytest.raises(ModelContractError, match="in-place"):
        assert_contract(model)


class _FunctionalRelu(ToyCamNet):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().features(x))


class _TensorMethodRelu(ToyCamNet):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x).relu()))


@pytest.mark.parametrize("cls", [_FunctionalRelu, _TensorMethodRelu])
def test_assert_contract_refuses_functional_relu(cls: type[ToyCamNet]) -> None:
    with pytest.raises(ModelContractError, match="functional relu"):
        assert_contract(cls())


class _WrongCamLayer(ToyCamNet):
    @property
    def cam_layer(self) -> nn.Module:
        return self.block2


def test_assert_contract_refuses_a_cam_layer_that_is_not_the_feature_output() -> None:
    with pytest.raises(ModelContractError, match="cam_layer"):
        assert_contract(_WrongCamLayer())


def test_assert_contract_refuses_wrong_class_names_and_non_models() -> None:
    model = ToyCamNet()
    model.class_names = ("a", "b")
    with pytest.raises(ModelContractError, match="class names"):
        assert_contract(model)
    with pytest.raises(ModelContractError, match="not a CamClassifier"):
        assert_contract(nn.Conv2d(1, 1, 3))


class _HeadWithExtraLayer(ToyCamNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def test_assert_contract_refuses_a_forward_that_is_not_gap_linear() -> None:
    with pytest.raises(ModelContractError, match="global_average_pool"):
        assert_contract(_HeadWithExtraLayer())


def test_assert_contract_restores_train_mode() -> None:
    model = ToyCamNet().train()
    assert_contract(model)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_cam_classifier_is_abstract() -> None:
    with pytest.raises(TypeError):
        CamClassifier()  # type: ignore[abstract]


class _CamGraph(nn.Module):
    def __init__(self, model: CamClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.forward_with_cam(x)


def test_forward_with_cam_exports_to_onnx_with_a_dynamic_batch(tmp_path) -> None:
    import onnxruntime as ort

    model = ToyCamNet().eval()
    path = tmp_path / "toy.onnx"
    torch.onnx.export(
        _CamGraph(model).eval(),
        (torch.randn(2, 1, 32, 32),),
        str(path),
        input_names=["image"],
        output_names=["logits", "probs", "cam"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # another batch size
    outputs = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model.forward_with_cam(x)
    assert [o.shape for o in outputs] == [(3, 3), (3, 3), (3, 3, 8, 8)]
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-6)
