"""Architecture registry: build a :class:`~mimicry.models.base.CamClassifier` from a name and JSON kwargs.

The model card stores ``architecture`` and ``arch_kwargs``; the registry rebuilds the torch twin with
``build_model(card.architecture, **card.arch_kwargs)`` and loads its ``weights.safetensors`` with
``strict=True`` (docs/architecture.md, "The registry", "Why a twin").
Every architecture that can be published must
therefore be registered here under a stable name, with JSON-serialisable constructor arguments::

    @register_architecture("unet")
    class UNetClassifier(CamClassifier): ...

    register_architecture("toy")(ToyCamNet)          # a class defined elsewhere

Registered here: ``toy`` (:class:`~mimicry.models.toy.ToyCamNet`) and ``toy_left_right``
(:class:`~mimicry.models.toy.LeftRightToyNet`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from mimicry.models.base import CamClassifier
from mimicry.models.toy import LeftRightToyNet, ToyCamNet

__all__ = [
    "ArchitectureError",
    "UnknownArchitectureError",
    "architecture_of",
    "build_model",
    "list_architectures",
    "register_architecture",
]

Builder = Callable[..., CamClassifier]
B = TypeVar("B", bound=Callable[..., Any])

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_ARCHITECTURES: dict[str, Callable[..., Any]] = {}


class ArchitectureError(ValueError):
    """An architecture that cannot be registered or built as asked."""


class UnknownArchitectureError(ArchitectureError, KeyError):
    """No architecture is registered under that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def register_architecture(name: str) -> Callable[[B], B]:
    """Decorator registering a :class:`CamClassifier` class (or a factory returning one) under ``name``.

    Names are lower-case (``[a-z][a-z0-9_.-]*``) and permanent: published model cards refer to them.
    Registering a second, different builder under a taken name raises :class:`ArchitectureError`
    (re-registering the same object is a no-op, so module reloads are harmless).
    """
    if not _NAME.match(name):
        raise ArchitectureError(f"invalid architecture name {name!r}: use [a-z][a-z0-9_.-]*, ≤ 64 chars")

    def decorator(builder: B) -> B:
        existing = _ARCHITECTURES.get(name)
        if existing is not None and existing is not builder:
            raise ArchitectureError(f"architecture {name!r} is already registered")
        _ARCHITECTURES[name] = builder
        return builder

    return decorator


def list_architectures() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_ARCHITECTURES)


def build_model(arch: str, /, **kwargs: Any) -> CamClassifier:
    """Build a freshly initialised model of architecture ``arch`` with constructor ``kwargs``.

    Raises:
        UnknownArchitectureError: ``arch`` is not registered (the message lists what is).
        ArchitectureError: the kwargs are not accepted, or the builder does not return a CamClassifier.
    """
    try:
        builder = _ARCHITECTURES[arch]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r}; registered: {', '.join(list_architectures()) or 'none'}"
        ) from None
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise ArchitectureError(f"architecture {arch!r} rejected its arguments: {exc}") from exc
    if not isinstance(model, CamClassifier):
        raise ArchitectureError(f"architecture {arch!r} built a {type(model).__name__}, not a CamClassifier")
    return model


def architecture_of(model: CamClassifier) -> str | None:
    """The registered name whose builder is exactly ``type(model)`` (``None`` if none or ambiguous)."""
    names = [name for name, builder in _ARCHITECTURES.items() if builder is type(model)]
    return names[0] if len(names) == 1 else None


register_architecture("toy")(ToyCamNet)
register_architecture("toy_left_right")(LeftRightToyNet)
