"""The explanation discriminator D of the explanation ensemble (Watson et al., WACV 2023, §3–4).

"We use a CNN for our discriminator, with two convolution layers. Max pooling (with kernel size and stride of
2) and ReLU activations are used after each convolution layer." Its input is one sub-model's Grad-CAM map
``E_i(x)`` (final conv layer, ``[N, 1, h, w]``) and its output the logits over the ``S`` sub-models
("which sub-model produced this explanation"), trained with ``F.cross_entropy`` (log-softmax + NLL; the
released code applied NLLLoss to raw logits, a bug not reproduced here; docs/methods.md, "Explanation
ensemble").

A linear layer maps the flattened features to the ``S`` classes (the paper does not spell out the read-out;
a CNN classifier needs one). The maps must be at least 4×4 (two 2×2 poolings).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DiscriminatorError", "ExplanationDiscriminator", "normalise_maps"]


class DiscriminatorError(ValueError):
    """The discriminator cannot be built for the requested map size or number of sub-models."""


class ExplanationDiscriminator(nn.Module):
    """``conv → maxpool(2,2) → ReLU → conv → maxpool(2,2) → ReLU → flatten → linear(S)``.

    Args:
        n_models: ``S``, the number of sub-models (output classes).
        map_shape: ``(h, w)`` of the explanation maps.
        channels: Output channels of the two convolutions.
        kernel_size: Odd kernel size of both convolutions ("same" padding).

    Attributes:
        features: the ``nn.Sequential`` of the six conv / pool / ReLU layers.
        head: ``nn.Linear(channels[1] · (h // 4) · (w // 4), S)``.
    """

    def __init__(
        self,
        n_models: int,
        map_shape: tuple[int, int],
        channels: tuple[int, int] = (8, 16),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        h, w = int(map_shape[0]), int(map_shape[1])
        if n_models < 2:
            raise DiscriminatorError(f"the discriminator needs at least 2 sub-models, got {n_models}")
        if h < 4 or w < 4:
            raise DiscriminatorError(
                f"explanation maps of {h}×{w} are too small for two 2×2 poolings (need ≥ 4×4); "
                "use a larger input or recipe.map_size"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise DiscriminatorError(f"kernel_size must be a positive odd number, got {kernel_size}")
        c1, c2 = int(channels[0]), int(channels[1])
        pad = kernel_size // 2
        self.map_shape = (h, w)
        self.n_models = int(n_models)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size, padding=pad),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(inplace=False),
            nn.Conv2d(c1, c2, kernel_size, padding=pad),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(inplace=False),
        )
        self.head = nn.Linear(c2 * (h // 4) * (w // 4), self.n_models)

    def forward(self, maps: Tensor) -> Tensor:
        """``maps[N, 1, h, w]`` (or ``[N, h, w]``) → logits ``[N, S]``."""
        if maps.ndim == 3:
            maps = maps[:, None]
        if tuple(maps.shape[-2:]) != self.map_shape:
            raise DiscriminatorError(f"expected maps of {self.map_shape}, got {tuple(maps.shape[-2:])}")
        return self.head(self.features(maps).flatten(1))


def normalise_maps(maps: Tensor, eps: float, mode: str = "max") -> Tensor:
    """Per-sample normalisation of non-negative maps ``[N, h, w]`` with an epsilon (differentiable).

    ``"max"``: ``m / (max(m) + eps)`` → ``[0, 1]``; ``"sum"``: ``m / (Σ m + eps)`` → a distribution. The
    epsilon keeps all-zero maps (Grad-CAM's ReLU can zero a whole map) finite with a zero gradient instead of
    NaN. docs/methods.md, "Explanation ensemble": normalise each map per sample with an epsilon.
    """
    if mode == "max":
        scale = maps.amax(dim=(-2, -1), keepdim=True)
    elif mode == "sum":
        scale = maps.sum(dim=(-2, -1), keepdim=True)
    else:
        raise ValueError(f"map normalisation must be 'max' or 'sum', got {mode!r}")
    return maps / (scale + eps)
