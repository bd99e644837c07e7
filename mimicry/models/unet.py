"""UNet classifiers with an EfficientNet encoder: the paper's ``unet`` and the "Improved UNet" ``unet_egd``.

Watson et al. (WACV 2023, §4) train a UNet whose encoder is EfficientNet-b0 and whose encoder
*bottleneck* feeds a classification head; its baselines add the "Improved UNet" of Karargyris et al. (2021),
whose decoder also reconstructs the static eye-gaze (EGD) heatmap under the multi-task loss
``γ·BCE(cls) + (1−γ)·BCE-or-Dice(heatmap)`` (docs/methods.md, "Explanation ensemble"). Viviano et al. (ICLR
2021) need the same UNet for its mask-guided regularisers: ActDiff compares the *pre-activation* output of
the encoder's last stage between ``x`` and ``x_masked`` (Eq. 1), GradMask differentiates an input gradient
(``create_graph=True``), and reconstruct-masked trains the decoder (docs/methods.md, "Mask-guided training").

Architecture (no torchvision / timm here; everything is MONAI, no pretrained download):

* **Encoder** — MONAI's ``EfficientNet`` MBConv blocks, regrouped into the stages whose outputs the
  FlexibleUNet decoder consumes (one per stride: ``/2, /4, /8, /16, /32`` for b0, channels
  ``16, 24, 40, 112, 320``). The classification-only head of MONAI's EfficientNet (``_conv_head`` to
  1280 channels, ``_bn1``, ``_fc``) is not kept: the classifier sits on the bottleneck, as the
  classification head of ``segmentation_models_pytorch``'s ``Unet(aux_params=...)`` does. Swish is
  MONAI's *plain* ``Swish`` module, ``x·sigmoid(x)`` (``set_swish(memory_efficient=False)``): MONAI's default
  ``MemoryEfficientSwish`` is ``F.silu(x, inplace=True)`` on this torch (a custom autograd function on older
  ones), and in-place activations break captum's backward hooks and the contract. The plain one is
  differentiable to any order (differentiable Grad-CAM, GradMask's ``create_graph=True``; checked with
  ``gradgradcheck``) and exports to ONNX as ``Sigmoid`` + ``Mul``. Drop-connect and BatchNorm are kept
  (inactive / running statistics in eval mode).
* **Classifier** — ``GAP → nn.Linear`` on the last encoder stage (:attr:`cam_layer` ``= encoder.stages[-1]``),
  so Grad-CAM is exact as a forward op (:mod:`mimicry.models.base`).
* **Decoder** — MONAI FlexibleUNet's ``UNetDecoder`` (nearest upsampling + concatenated skips + two
  conv–BN–ReLU per level, ReLU modules with ``inplace=False``) and ``SegmentationHead`` (3×3 conv → one
  channel). It never runs in :meth:`forward` / :meth:`forward_with_cam`: serving pays nothing for it and the
  ONNX graph holds only the classifier path. Trainers call :meth:`encode`, :meth:`decode` and
  :meth:`forward_multitask`.

**Pre-activation for ActDiff.** An MBConv block ends in a *linear bottleneck* (MobileNetV2): its output is
``BN(project_conv(·)) (+ identity skip)`` and no activation follows it anywhere — the classifier pools it
directly. The last stage's output (``encode(x)[-1]``, which is also :meth:`features` and the cam-layer
output) is therefore the encoder's pre-activation output; :meth:`encoder_preactivation` returns it. Its
values can be negative (tested).

EfficientNet has no ReLU (Swish only), so captum's guided backprop, which rewrites ReLU gradients, reduces to
the plain gradient on these models; use :mod:`mimicry.models.densenet` for ReLU-network saliency studies.

Presets (parameter counts at three classes, asserted in the tests):

============================  =====================  ===========  ==================  ==========
registered name               encoder                encoder      decoder + head      total
============================  =====================  ===========  ==================  ==========
``unet`` / ``unet_egd``       ``efficientnet-b0``    3,594,812    1,771,729           5,367,504
``unet_tiny`` / ``_egd_tiny`` ``efficientnet-tiny``  6,042        9,853               15,970
============================  =====================  ===========  ==================  ==========

(The classifier adds ``C·K + K``: 963 for b0, 75 for tiny. Only the encoder and the classifier are in the
ONNX graph.)

The tiny encoder is MONAI's EfficientNet with three one-block stacks at width 0.5 (channels 8, 16, 24;
strides /2, /4, /8) — same blocks, activations and pre-activation semantics as b0, trains in seconds on CPU.

A freshly initialised encoder is nearly silent in eval mode (MONAI's TF-style initialisation shrinks
activations ~4× per stage while the BatchNorm running statistics still hold their initial values, and the
BN momentum is TF's 0.01): estimate the statistics with train-mode passes before using an untrained model in
eval mode (the tests do so with ``momentum=None``, a cumulative average).

Input sizes: the classifier accepts any ``H, W`` ≥ the encoder stride; :meth:`decode` returns the input
resolution when ``H`` and ``W`` are multiples of :attr:`UNetClassifier.size_divisor` (32 for b0, 8 for
tiny), which :meth:`forward_multitask` enforces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mimicry.models.base import DEFAULT_CLASS_NAMES, CamClassifier
from mimicry.models.zoo import register_architecture

__all__ = [
    "EFFICIENTNET_TINY_BLOCKS",
    "ENCODERS",
    "EfficientNetStages",
    "EgdUNetClassifier",
    "InputSizeError",
    "UNetClassifier",
    "unet_egd_tiny",
    "unet_tiny",
]

#: MONAI ``BlockArgs`` strings of the tiny encoder (before width scaling): one MBConv block per stack.
EFFICIENTNET_TINY_BLOCKS: tuple[str, ...] = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r1_k3_s22_e4_i16_o24_se0.25",
    "r1_k3_s22_e4_i24_o40_se0.25",
)
_TINY_WIDTH = 0.5
_TINY_DROP_CONNECT = 0.2
_TINY_IMAGE_SIZE = 64  # only feeds MONAI's TF-"same" padding, which is size-independent for even inputs

#: Encoders accepted by :class:`UNetClassifier` and their default decoder channels (one per stage).
ENCODERS: dict[str, tuple[int, ...]] = {
    **{f"efficientnet-b{i}": (256, 128, 64, 32, 16) for i in range(8)},
    "efficientnet-tiny": (16, 8, 8),
}


class InputSizeError(ValueError):
    """An input whose size the UNet decoder cannot return at full resolution."""


class EfficientNetStages(nn.Module):
    """A MONAI ``EfficientNet`` encoder regrouped into its output stages (no classification head).

    Args:
        encoder: ``"efficientnet-b0"`` … ``"efficientnet-b7"`` (MONAI ``EfficientNetBNFeatures`` block
            configuration, random initialisation) or ``"efficientnet-tiny"``.
        drop_connect_rate: Stochastic-depth rate of the MBConv blocks (``None`` → the preset's, 0.2).

    Attributes:
        stem: ``pad → conv3×3/2 → BN → Swish`` (MONAI's ``_conv_stem``, ``_bn0``).
        stages: One ``nn.Sequential`` of MONAI ``MBConvBlock`` per output stride, split where MONAI's
            ``EfficientNetBNFeatures`` extracts its features (``extract_stacks``).
        channels: Output channels of every stage.
    """

    def __init__(
        self,
        encoder: str = "efficientnet-b0",
        drop_connect_rate: float | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        from monai.networks.nets.efficientnet import EfficientNet, EfficientNetBNFeatures

        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; use one of {sorted(ENCODERS)}")
        if encoder == "efficientnet-tiny":
            net: Any = EfficientNet(
                list(EFFICIENTNET_TINY_BLOCKS),
                spatial_dims=2,
                in_channels=1,
                num_classes=1,
                width_coefficient=_TINY_WIDTH,
                image_size=_TINY_IMAGE_SIZE,
                drop_connect_rate=_TINY_DROP_CONNECT if drop_connect_rate is None else drop_connect_rate,
            )
        else:
            net = EfficientNetBNFeatures(
                encoder, pretrained=False, progress=False, spatial_dims=2, in_channels=1, num_classes=1
            )
            if drop_connect_rate is not None:
                _set_drop_connect(net, drop_connect_rate)
        net.set_swish(memory_efficient=False)  # plain Swish: ONNX-exportable, double-backward-safe
        if 0 in net.extract_stacks:  # pragma: no cover - every EfficientNet starts with a stride-1 stack
            raise ValueError("encoders whose first stack downsamples are not supported")
        self.stem = nn.Sequential(
            OrderedDict(pad=net._conv_stem_padding, conv=net._conv_stem, bn=net._bn0, act=net._swish)
        )
        stacks = list(net._blocks)
        stages, channels, start = [], [], 0
        for end in net.extract_stacks:
            stages.append(nn.Sequential(*[block for stack in stacks[start:end] for block in stack]))
            channels.append(int(net._blocks_args[end - 1].output_filters))
            start = end
        self.stages = nn.ModuleList(stages)
        self.channels: tuple[int, ...] = tuple(channels)
        # MONAI copies TF's BatchNorm momentum (0.99 decay = torch momentum 0.01): trained from scratch for a
        # few hundred steps, the running statistics then lag far behind and eval-mode outputs collapse to one
        # class. torch's default 0.1 tracks them; kept configurable (arch_kwargs) for long paper-scale runs.
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x[N, 1, H, W]`` → the output of every stage, shallowest first (strides 2, 4, …)."""
        out = []
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out


def _set_drop_connect(net: nn.Module, rate: float) -> None:
    """Rescale MONAI's per-block drop-connect rates (``rate · block_index / num_blocks``) to ``rate``."""
    blocks = [b for stack in net._blocks for b in stack]  # type: ignore[union-attr]
    for i, block in enumerate(blocks):
        block.drop_connect_rate = rate * i / len(blocks)


class UNetClassifier(CamClassifier):
    """UNet with an EfficientNet encoder whose bottleneck feeds a GAP → linear classifier (Watson et al.).

    Args:
        encoder: Key of :data:`ENCODERS` (``"efficientnet-b0"``: the paper's; ``"efficientnet-tiny"``).
        decoder_channels: Channels of each decoder level, one per encoder stage (``None`` → the
            encoder's default, FlexibleUNet's ``(256, 128, 64, 32, 16)`` for b0).
        class_names: Output classes (``K = len(class_names)``).
        drop_connect_rate: Encoder stochastic-depth rate (``None`` → 0.2, EfficientNet's).

    All arguments are JSON-serialisable; :attr:`arch_kwargs` holds the resolved values, so
    ``build_model("unet", **model.arch_kwargs)`` (or ``"unet_egd"`` for :class:`EgdUNetClassifier`) rebuilds
    a model whose ``state_dict`` loads with ``strict=True``.

    Attributes:
        encoder: :class:`EfficientNetStages`.
        decoder: MONAI ``UNetDecoder``; ``head``: MONAI ``SegmentationHead`` (one output channel).
        classifier: ``nn.Linear(C_bottleneck, K)``.
    """

    def __init__(
        self,
        encoder: str = "efficientnet-b0",
        decoder_channels: Sequence[int] | None = None,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        drop_connect_rate: float | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder

        self.class_names = tuple(class_names)
        if not self.class_names:
            raise ValueError("class_names must name at least one class")
        self.encoder = EfficientNetStages(encoder, drop_connect_rate, bn_momentum)
        channels = self.encoder.channels
        dec = tuple(int(c) for c in (ENCODERS[encoder] if decoder_channels is None else decoder_channels))
        if len(dec) != len(channels) or min(dec) < 1:
            raise ValueError(
                f"decoder_channels needs {len(channels)} positive entries (one per encoder stage), got {dec}"
            )
        self.decoder = UNetDecoder(
            spatial_dims=2,
            encoder_channels=(self.in_channels, *channels),
            decoder_channels=dec,
            act=("relu", {"inplace": False}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="nearest",
            align_corners=None,
            is_pad=True,
        )
        self.head = SegmentationHead(spatial_dims=2, in_channels=dec[-1], out_channels=1, kernel_size=3)
        self.classifier = nn.Linear(channels[-1], len(self.class_names))
        self.arch_kwargs: dict[str, Any] = {
            "encoder": encoder,
            "decoder_channels": list(dec),
            "class_names": list(self.class_names),
            "drop_connect_rate": drop_connect_rate,
            "bn_momentum": bn_momentum,
        }

    @property
    def size_divisor(self) -> int:
        """``H`` and ``W`` must be multiples of this for :meth:`decode` to return the input resolution."""
        return 2 ** len(self.encoder.stages)

    @property
    def cam_layer(self) -> nn.Module:
        """The encoder's last stage (the bottleneck); its output is :meth:`features`."""
        return self.encoder.stages[-1]

    def encode(self, x: Tensor) -> list[Tensor]:
        """``x[N, 1, H, W]`` → encoder feature maps, shallowest first; the last is the bottleneck ``A``."""
        return self.encoder(x)

    def features(self, x: Tensor) -> Tensor:
        """The bottleneck ``A[N, C, H/s, W/s]`` (``s`` = :attr:`size_divisor`), input of GAP → linear."""
        return self.encode(x)[-1]

    def encoder_preactivation(self, x: Tensor) -> Tensor:
        """ActDiff's tensor (Viviano et al., Eq. 1): the pre-activation output of the encoder's last stage.

        EfficientNet's MBConv blocks end in a linear bottleneck (BN of the 1×1 projection, plus the identity
        skip) with no activation after it, so this is the last stage's output itself — the same tensor as
        :meth:`features` and the cam-layer output, and it takes negative values. ActDiff's penalty is the
        mean L2 distance between this tensor for ``x_masked`` and for ``x``.
        """
        return self.encode(x)[-1]

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Decoder output ``[N, 1, H, W]`` (raw, no activation) from :meth:`encode`'s feature list.

        Reconstruction (reconstruct-masked) uses it as an image; the Improved UNet reads it as heatmap
        logits. Full input resolution when ``H, W`` are multiples of :attr:`size_divisor`.
        """
        feats = list(features)
        if len(feats) != len(self.encoder.stages):
            raise ValueError(f"decode needs {len(self.encoder.stages)} feature maps, got {len(feats)}")
        return self.head(self.decoder(feats, len(feats) - 1))

    def forward_multitask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One encoder pass, both heads: ``(logits[N, K], decoder_output[N, 1, H, W])``.

        Raises:
            InputSizeError: ``H`` or ``W`` is not a multiple of :attr:`size_divisor`.
        """
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = self.size_divisor
        if h % d or w % d:
            raise InputSizeError(
                f"input {h}×{w} is not a multiple of {d}; the decoder output would not be {h}×{w}"
            )
        feats = self.encode(x)
        logits = self.classifier(feats[-1].mean(dim=(2, 3)))
        return logits, self.decode(feats)


class EgdUNetClassifier(UNetClassifier):
    """The "Improved UNet" of Karargyris et al. (2021), a baseline of Watson et al. (WACV 2023, Table 1).

    Same network as :class:`UNetClassifier`; the decoder is trained to reconstruct the static EGD heatmap.
    :meth:`forward_multitask` returns ``(logits[N, K], heatmap_logits[N, 1, H, W])`` and the trainer owns the
    loss ``γ·BCE(cls) + (1−γ)·BCE-or-Dice(heatmap)`` (``binary_cross_entropy_with_logits`` on
    ``heatmap_logits``, or Dice on ``sigmoid(heatmap_logits)``; the target heatmap scaled to ``[0, 1]``).
    The separate class records in the model card what the decoder was trained for.
    """

    def heatmap(self, x: Tensor) -> Tensor:
        """Predicted EGD heatmap ``sigmoid(heatmap_logits)`` in ``[0, 1]``, ``[N, 1, H, W]``."""
        return torch.sigmoid(self.forward_multitask(x)[1])


register_architecture("unet")(UNetClassifier)
register_architecture("unet_egd")(EgdUNetClassifier)


@register_architecture("unet_tiny")
def unet_tiny(class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> UNetClassifier:
    """Tiny :class:`UNetClassifier` (``efficientnet-tiny`` encoder; 15,970 parameters at K = 3)."""
    return UNetClassifier(encoder="efficientnet-tiny", class_names=class_names)


@register_architecture("unet_egd_tiny")
def unet_egd_tiny(class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> EgdUNetClassifier:
    """Tiny :class:`EgdUNetClassifier` (``efficientnet-tiny`` encoder; 15,970 parameters at K = 3)."""
    return EgdUNetClassifier(encoder="efficientnet-tiny", class_names=class_names)
