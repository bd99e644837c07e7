"""Tests of the model registry and ONNX export (mimicry.registry, mimicry.models.zoo).

Shared, cached fixtures live here (the tests package is importable): exporting a toy model costs about a
second with the dynamo exporter, so each distinct export is done once per test session.
"""

from __future__ import annotations

from functools import cache

import torch

from mimicry.models.toy import ToyCamNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import ExportResult, Registry, export_model

SIZE = 32
TOY_KWARGS = {"width": 8}


def toy_model(seed: int = 0, width: int = 8, class_names: tuple[str, ...] | None = None) -> ToyCamNet:
    """A randomly initialised ToyCamNet with non-trivial biases (so classes differ), in eval mode."""
    torch.manual_seed(seed)
    kwargs = {"width": width} if class_names is None else {"width": width, "class_names": class_names}
    model = ToyCamNet(**kwargs)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.linspace(-0.5, 0.5, model.num_classes))
    return model.eval()


def held_batch(n: int = 4, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@cache
def toy_export(
    seed: int = 0, width: int = 8, size: int = SIZE, exporter: str = "dynamo"
) -> tuple[ToyCamNet, torch.Tensor, ExportResult]:
    """(model, held batch, export result), cached per argument tuple for the whole session."""
    model = toy_model(seed, width)
    x = held_batch(4, size)
    return model, x, export_model(model, x, exporter=exporter)  # type: ignore[arg-type]


def publish_toy(registry: Registry, name: str = "cxr-toy", **card_fields: object) -> object:
    """Publish the cached toy export under ``name`` (fast: no re-export)."""
    _, _, result = toy_export()
    return registry.publish_exported(
        result,
        name=name,
        preprocessing=PreprocessSpec(size=SIZE),
        architecture="toy",
        arch_kwargs=TOY_KWARGS,
        **card_fields,  # type: ignore[arg-type]
    )
