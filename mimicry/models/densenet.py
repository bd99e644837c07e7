"""DenseNet classifiers (MONAI ``DenseNet``, one input channel, GAP → linear head).

DenseNet-121 (Huang et al., CVPR 2017) is the reproducibility architecture of the saliency audit: Arun et al.
(Radiology: AI 2021) compare maps of two architectures trained on the same data (docs/methods.md, "Sanity
checks": reproducibility), and CheXplain-IBA (Khakzar et al., MICCAI 2021) explains DenseNet-121. Unlike the
EfficientNet UNet it is a ReLU network, so guided backprop is meaningful on it.

Built from MONAI's ``DenseNet`` (pure torch; no torchvision here, no pretrained download) with every
activation ``nn.ReLU(inplace=False)`` (MONAI's default is in-place, which breaks captum's backward hooks;
the constructor's ``act`` argument sets it). MONAI puts the final ReLU in its ``class_layers``; here the
feature extractor is MONAI's ``features`` (… ``denseblock4 → norm5``) followed by that ReLU (``relu5``), and
this whole ``backbone`` is the :attr:`~DenseNetClassifier.cam_layer` — the torchvision/CheXNet convention of
Grad-CAM on the rectified final feature map. MONAI's ``class_layers`` (ReLU → pool → linear) is replaced by
the contract's GAP → ``classifier``.

Presets (parameter counts at one input channel and three classes, counted in the tests):

==================  =====================================================  ==========
registered name     configuration                                          parameters
==================  =====================================================  ==========
``densenet121``     init 64, growth 32, blocks (6, 12, 24, 16); C = 1024   6,950,659
``densenet_tiny``   init 8, growth 8, blocks (2, 2, 2); C = 30             18,681
==================  =====================================================  ==========

The feature map is at stride 32 for DenseNet-121 (``H/32``; 2×2 at 64²) and stride 16 for the tiny preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mimicry.models.base import DEFAULT_CLASS_NAMES, CamClassifier
from mimicry.models.zoo import register_architecture

__all__ = ["DenseNetClassifier", "densenet121", "densenet_tiny"]


class DenseNetClassifier(CamClassifier):
    """MONAI DenseNet feature extractor + ReLU → GAP → ``nn.Linear`` (registered as ``densenet``).

    Args:
        init_features: Filters of the first convolution.
        growth_rate: Filters added by each dense layer (``k``).
        block_config: Dense layers per block (one transition halves the channels between blocks).
        bn_size: Bottleneck width multiplier (``bn_size · k`` channels in each 1×1 convolution).
        dropout_prob: Dropout after each dense layer.
        class_names: Output classes (``K = len(class_names)``).

    All arguments are JSON-serialisable; :attr:`arch_kwargs` holds the resolved values, so
    ``build_model("densenet", **model.arch_kwargs)`` rebuilds the architecture.

    Attributes:
        backbone: ``conv0 → norm0 → relu0 → pool0 → denseblock1 → transition1 → … → norm5 → relu5``.
        classifier: ``nn.Linear(C, K)``.
    """

    def __init__(
        self,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        dropout_prob: float = 0.0,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    ) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet

        self.class_names = tuple(class_names)
        if not self.class_names:
            raise ValueError("class_names must name at least one class")
        blocks = tuple(int(b) for b in block_config)
        if not blocks or min(blocks) < 1:
            raise ValueError(f"block_config needs at least one positive entry, got {blocks}")
        net = DenseNet(
            spatial_dims=2,
            in_channels=self.in_channels,
            out_channels=len(self.class_names),
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=blocks,
            bn_size=bn_size,
            act=("relu", {"inplace": False}),
            norm="batch",
            dropout_prob=dropout_prob,
        )
        self.backbone: nn.Sequential = net.features
        self.backbone.add_module("relu5", nn.ReLU(inplace=False))
        channels = int(net.class_layers.out.in_features)
        self.classifier = nn.Linear(channels, len(self.class_names))
        nn.init.zeros_(self.classifier.bias)  # as MONAI initialises its head
        self.arch_kwargs: dict[str, Any] = {
            "init_features": int(init_features),
            "growth_rate": int(growth_rate),
            "block_config": list(blocks),
            "bn_size": int(bn_size),
            "dropout_prob": float(dropout_prob),
            "class_names": list(self.class_names),
        }

    def features(self, x: Tensor) -> Tensor:
        """Rectified final feature map ``A[N, C, h, w]`` (output of ``norm5 → relu5``)."""
        return self.backbone(x)

    @property
    def cam_layer(self) -> nn.Module:
        """The whole ``backbone`` (its output is :meth:`features`); its blocks serve layer-wise methods."""
        return self.backbone


register_architecture("densenet")(DenseNetClassifier)


@register_architecture("densenet121")
def densenet121(
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES, dropout_prob: float = 0.0
) -> DenseNetClassifier:
    """DenseNet-121 (init 64, growth 32, blocks 6-12-24-16), randomly initialised."""
    return DenseNetClassifier(class_names=class_names, dropout_prob=dropout_prob)


@register_architecture("densenet_tiny")
def densenet_tiny(class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> DenseNetClassifier:
    """Tiny DenseNet for tests (init 8, growth 8, blocks 2-2-2)."""
    return DenseNetClassifier(init_features=8, growth_rate=8, block_config=(2, 2, 2), class_names=class_names)
