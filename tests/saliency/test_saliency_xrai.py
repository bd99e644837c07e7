"""XRAI through saliency.core with a torch call_model_function."""

from __future__ import annotations

import numpy as np
import saliency.core as saliency_core
import torch

from mimicry.models import ToyCamNet
from mimicry.saliency import explain, explain_raw


def test_xrai_full_algorithm_is_deterministic() -> None:
    torch.manual_seed(0)
    model = ToyCamNet().eval()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    a = explain(model, x, 1, "xrai", steps=10)
    b = explain(model, x, 1, "xrai", steps=10)
    assert a.shape == (1, 32, 32)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) > 2  # region gains, not a constant map


def test_xrai_equals_the_reference_implementation_given_the_same_gradients() -> None:
    torch.manual_seed(1)
    model = ToyCamNet().eval()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))

    def call_model(batch: np.ndarray, call_model_args=None, expected_keys=None) -> dict:
        t = torch.from_numpy(batch.astype(np.float32)).permute(0, 3, 1, 2).requires_grad_(True)
        (g,) = torch.autograd.grad(model(t)[:, 2].sum(), t)
        return {saliency_core.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}

    image = x[0].permute(1, 2, 0).numpy().astype(np.float64)
    reference = saliency_core.XRAI().GetMask(
        image,
        call_model,
        batch_size=4,
        extra_parameters=saliency_core.XRAIParameters(steps=6, algorithm="fast"),
    )
    raw = explain_raw(model, x, 2, "xrai", steps=6, algorithm="fast", batch_size=4)
    np.testing.assert_allclose(raw[0, 0].numpy(), reference, rtol=1e-5, atol=1e-7)
