"""Tiny CNNs satisfying the :class:`~mimicry.models.base.CamClassifier` contract (tests, benchmarks).

* :class:`ToyCamNet` — a randomly initialised three-block CNN, fast enough for unit tests on 32–64 px.
* :class:`LeftRightToyNet` — hand-set weights with a *known* explanation: class 0 is driven only by the left
  half of the image, class 1 only by the right half, class 2 by nothing (a constant bias). Every faithful
  saliency method must put its mass on the left half for class 0 and on the right half for class 1, which
  makes it a known-answer fixture for saliency and audit tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mimicry.models.base import DEFAULT_CLASS_NAMES, CamClassifier

__all__ = ["HalfGate", "LeftRightToyNet", "ToyCamNet"]


class ToyCamNet(CamClassifier):
    """Toy classifier: ``conv3×3 → ReLU → conv3×3/2 → ReLU → conv3×3/2 → ReLU → GAP → Linear``.

    Args:
        width: Number of channels of every convolution (``C`` of the feature map).
        class_names: Output classes (``K = len(class_names)``).

    The blocks are exposed as ``block1`` (full resolution), ``block2`` (½) and ``block3`` (¼, the
    :attr:`cam_layer`), so layer-wise methods (IBA, multi-layer IBA) have several depths to use.
    """

    def __init__(self, width: int = 8, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=False))
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=False))
        self.block3 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(width, len(self.class_names))

    def features(self, x: Tensor) -> Tensor:
        return self.block3(self.block2(self.block1(x)))

    @property
    def cam_layer(self) -> nn.Module:
        return self.block3


class HalfGate(nn.Module):
    """Keeps channel 0 on the left half of the map (columns ``< w/2``) and channel 1 on the right half;
    zeroes the rest. Parameter-free; ``w`` must be even."""

    def forward(self, a: Tensor) -> Tensor:
        w = a.shape[-1]
        left = (torch.arange(w, device=a.device) < w // 2).to(a.dtype)
        mask = torch.stack([left, 1.0 - left])[:, None, :]  # [2, 1, w]
        return a * mask


class LeftRightToyNet(CamClassifier):
    """Known-answer classifier on ``[N, 1, H, W]`` (``H, W`` divisible by 4), all weights set by hand.

    ``block1``: 3×3 identity convolution into two channels, ReLU (``relu(x)`` twice, full resolution);
    ``block2`` (the :attr:`cam_layer`): 2×2 average pooling as a stride-2 depthwise convolution, ReLU, then
    :class:`HalfGate` (channel 0 ← left half, channel 1 ← right half). Head: ``logit_0 = scale · mean(A_0)``,
    ``logit_1 = scale · mean(A_1)``, ``logit_2 = bias2``. On bright images (pixel values near 1) the defaults
    give ``p_0 ≈ p_1 ≈ 0.1`` and make class 2 the most probable, so tests must name classes 0/1 explicitly,
    and the softmax coupling between the halves stays small. (IBA measures information relative to the
    layer statistics, so estimate them on images of varying brightness.)
    """

    def __init__(self, scale: float = 40.0, bias2: float = 20.0) -> None:
        super().__init__()
        conv1 = nn.Conv2d(1, 2, 3, padding=1)
        conv2 = nn.Conv2d(2, 2, 2, stride=2, groups=2)
        self.classifier = nn.Linear(2, 3)
        with torch.no_grad():
            conv1.weight.zero_()
            conv1.weight[:, 0, 1, 1] = 1.0
            conv1.bias.zero_()
            conv2.weight.fill_(0.25)
            conv2.bias.zero_()
            self.classifier.weight.copy_(torch.tensor([[scale, 0.0], [0.0, scale], [0.0, 0.0]]))
            self.classifier.bias.copy_(torch.tensor([0.0, 0.0, bias2]))
        self.block1 = nn.Sequential(conv1, nn.ReLU(inplace=False))
        self.block2 = nn.Sequential(conv2, nn.ReLU(inplace=False), HalfGate())

    def features(self, x: Tensor) -> Tensor:
        return self.block2(self.block1(x))

    @property
    def cam_layer(self) -> nn.Module:
        return self.block2
