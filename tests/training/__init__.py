"""Helpers for the training tests: a shared tiny phantom, an easy synthetic problem, config builders and a
tiny multi-task model implementing the ``forward_multitask`` interface of the Improved UNet.

Test modules wrap :func:`phantom_root` / :func:`cache_dir` in their own fixtures (the phantom is generated
once per session under pytest's base temp and shared by every module).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mimicry.models.base import DEFAULT_CLASS_NAMES
from mimicry.models.toy import ToyCamNet
from mimicry.models.zoo import list_architectures, register_architecture
from mimicry.preprocess import PreprocessSpec
from training.config import TrainConfig, parse_config
from training.data import DataBundle, SplitTensors

PHANTOM_N = 40
PHANTOM_SIZE = 64
MODEL_SIZE = 32
MULTITASK_ARCH = "test_multitask_toy"

_PHANTOMS: dict[tuple[int, int], Path] = {}


def phantom_root(factory: pytest.TempPathFactory, n: int = PHANTOM_N, size: int = PHANTOM_SIZE) -> Path:
    """A phantom dataset (generated once per session and parameters)."""
    key = (n, size)
    if key not in _PHANTOMS:
        from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset

        root = factory.mktemp(f"phantom-{n}-{size}") / "root"
        generate_phantom_dataset(root, PhantomConfig(n=n, size=size, seed=0))
        _PHANTOMS[key] = root
    return _PHANTOMS[key]


def cache_dir(factory: pytest.TempPathFactory) -> Path:
    """The session-wide tensor cache directory."""
    return factory.getbasetemp() / "training-tensor-cache"


def make_config(
    root: Path,
    cache: Path | None = None,
    *,
    recipe: dict[str, Any] | None = None,
    size: int = MODEL_SIZE,
    **sections: Any,
) -> TrainConfig:
    """A tiny run config on ``root`` (toy architecture, 2 epochs, batch 8, one thread, no progress bar).

    One intra-op thread: the test machine's cores are shared, and oversubscribed OpenMP threads make tiny
    convolutions ~100× slower.

    ``sections`` replace or extend top-level entries (nested dicts are merged one level deep).
    """
    base: dict[str, Any] = {
        "seed": 0,
        "progress": False,
        "num_threads": 1,
        "data": {"root": str(root), "cache_dir": None if cache is None else str(cache)},
        "preprocessing": {"size": size},
        "model": {"arch": "toy", "arch_kwargs": {"width": 8}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "schedule": {"epochs": 2, "batch_size": 8},
        "recipe": recipe or {"name": "baseline"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return parse_config(base)


def _easy_split(n: int, size: int, generator: torch.Generator) -> SplitTensors:
    """Class ``k`` = a square of brightness ``1.5·k`` at a random position, on noise; the heatmap covers the
    square (a position-invariant cue, learnable by GAP classifiers)."""
    labels = (torch.arange(n) % 3)[torch.randperm(n, generator=generator)]
    image = 0.3 * torch.randn(n, 1, size, size, generator=generator)
    heatmap = torch.zeros(n, 1, size, size)
    side = size // 4
    corners = torch.randint(0, size - side, (n, 2), generator=generator)
    for i, k in enumerate(labels.tolist()):
        top, left = (int(v) for v in corners[i])
        image[i, 0, top : top + side, left : left + side] += 1.5 * k
        heatmap[i, 0, top : top + side, left : left + side] = 1.0
    heatmap = heatmap / heatmap.sum(dim=(1, 2, 3), keepdim=True)
    roi = torch.zeros(n, 1, size, size, dtype=torch.bool)
    roi[:, :, side : size - side, side : size - side] = True
    return SplitTensors(
        image=image,
        label=labels.to(torch.int64),
        heatmap=heatmap,
        roi_mask=roi,
        has_mask=torch.ones(n, dtype=torch.bool),
        has_heatmap=torch.ones(n, dtype=torch.bool),
        rows=torch.arange(n, dtype=torch.int64),
    )


def easy_bundle(
    n_train: int = 24, n_val: int = 12, n_test: int = 12, size: int = MODEL_SIZE, seed: int = 0
) -> DataBundle:
    """An easy, fully synthetic 3-class problem as a :class:`DataBundle` (no files)."""
    g = torch.Generator().manual_seed(seed)
    return DataBundle(
        train=_easy_split(n_train, size, g),
        val=_easy_split(n_val, size, g),
        test=_easy_split(n_test, size, g),
        class_names=DEFAULT_CLASS_NAMES,
        fingerprint=hashlib.sha256(f"easy-{n_train}-{n_val}-{n_test}-{size}-{seed}".encode()).hexdigest(),
        preprocessing=PreprocessSpec(size=size),
    )


class MultiTaskToyNet(ToyCamNet):
    """:class:`ToyCamNet` + a heatmap decoder: ``forward_multitask(x) -> (logits, heatmap_logits[N,1,H,W])``
    (the interface of ``mimicry.models.unet.EgdUNetClassifier``), for the ``unet_egd`` recipe tests."""

    def __init__(self, width: int = 8, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> None:
        super().__init__(width, class_names)
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=4, mode="nearest"), nn.Conv2d(width, 1, 3, padding=1)
        )

    def forward_multitask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.features(x)
        return self.classifier(a.mean(dim=(2, 3))), self.decoder(a)


if MULTITASK_ARCH not in list_architectures():
    register_architecture(MULTITASK_ARCH)(MultiTaskToyNet)


def state_of(module: nn.Module) -> dict[str, Tensor]:
    """Detached clones of ``module``'s state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_states_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    """Bit-for-bit equality of two state dicts (same keys, ``torch.equal`` values)."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"
