"""Occlusion: the torch method, the NumPy-forward variant (ONNX Runtime / Triton) and captum agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Occlusion

from mimicry.models import LeftRightToyNet, ToyCamNet
from mimicry.saliency import (
    InvalidTargetError,
    SaliencyError,
    explain_raw,
    occlusion_from_forward,
    occlusion_geometry,
)


def _model() -> ToyCamNet:
    torch.manual_seed(0)
    return ToyCamNet().eval()


def _numpy_forward(model: torch.nn.Module, calls: list[int]):
    def forward(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32
        assert batch.ndim == 4
        calls.append(batch.shape[0])
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()

    return forward


@pytest.mark.parametrize(("window", "stride"), [(8, 4), (6, 5), (32, 1)])
def test_numpy_forward_matches_captum_and_the_torch_method(window: int, stride: int) -> None:
    model = _model()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [2, 0]
    reference = Occlusion(lambda t: torch.softmax(model(t), dim=1)).attribute(
        x,
        sliding_window_shapes=(1, window, window),
        strides=(1, stride, stride),
        baselines=0.0,
        target=targets,
        perturbations_per_eval=1,
    )
    calls: list[int] = []
    from_numpy = occlusion_from_forward(
        _numpy_forward(model, calls), x.numpy(), targets, window=window, stride=stride, batch_size=5
    )
    assert from_numpy.dtype == np.float32
    assert from_numpy.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(from_numpy, reference.numpy(), rtol=0, atol=1e-5)
    assert max(calls) <= 5
    torch_method = explain_raw(model, x, targets, "occlusion", window=window, stride=stride, batch_size=3)
    np.testing.assert_allclose(torch_method.numpy(), reference.numpy(), rtol=0, atol=1e-5)


def test_occlusion_of_a_window_is_the_probability_drop() -> None:
    """One window covering the whole image: every pixel gets p_c(x) − p_c(baseline image)."""
    model = LeftRightToyNet()
    x = torch.full((1, 1, 8, 8), 0.9)
    with torch.no_grad():
        drop = torch.softmax(model(x), 1)[0, 0] - torch.softmax(model(torch.full_like(x, -1.0)), 1)[0, 0]
    out = explain_raw(model, x, 0, "occlusion", window=8, stride=8, baseline=-1.0)
    torch.testing.assert_close(out, torch.full_like(x, float(drop)))
    logits = explain_raw(model, x, 0, "occlusion", window=8, stride=8, baseline=-1.0, output="logits")
    torch.testing.assert_close(logits, torch.full_like(x, 40.0 * 0.9 / 2))  # logit_0 = 40 · mean(A_0)


def test_target_none_uses_the_backend_argmax() -> None:
    model = _model()
    x = torch.randn(2, 1, 16, 16).numpy()
    calls: list[int] = []
    fwd = _numpy_forward(model, calls)
    predicted = fwd(x).argmax(1)
    np.testing.assert_array_equal(
        occlusion_from_forward(fwd, x, None, window=4), occlusion_from_forward(fwd, x, predicted, window=4)
    )
    np.testing.assert_array_equal(
        occlusion_from_forward(fwd, x[:1], 1, window=4), occlusion_from_forward(fwd, x[:1], [1], window=4)
    )


def test_default_geometry_and_refusals() -> None:
    assert occlusion_geometry(224, 224, None, None) == (28, 14)
    assert occlusion_geometry(32, 32, None, None) == (4, 2)
    assert occlusion_geometry(32, 32, 5, None) == (5, 2)
    with pytest.raises(SaliencyError, match="stride"):
        occlusion_geometry(32, 32, 4, 5)
    with pytest.raises(SaliencyError, match="window"):
        occlusion_geometry(32, 32, 33, None)
    model = _model()
    fwd = _numpy_forward(model, [])
    x = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.raises(InvalidTargetError):
        occlusion_from_forward(fwd, x, 3)
    with pytest.raises(InvalidTargetError):
        occlusion_from_forward(fwd, x, [0, 1])
    with pytest.raises(SaliencyError, match="float32"):
        occlusion_from_forward(fwd, x.astype(np.float64), 0)
    with pytest.raises(SaliencyError, match="output"):
        explain_raw(model, torch.zeros(1, 1, 16, 16), 0, "occlusion", output="softmax")


def test_occlusion_runs_against_an_onnx_runtime_session(tmp_path) -> None:
    import onnxruntime as ort

    model = _model()
    path = tmp_path / "toy.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 1, 16, 16),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(batch: np.ndarray) -> np.ndarray:
        (logits,) = session.run(None, {"image": batch})
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    from_onnx = occlusion_from_forward(forward, x.numpy(), [0, 1], window=4, stride=2, batch_size=8)
    from_torch = explain_raw(model, x, [0, 1], "occlusion", window=4, stride=2)
    np.testing.assert_allclose(from_onnx, from_torch.numpy(), rtol=0, atol=1e-5)
